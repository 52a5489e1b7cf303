//! Latency histograms as HdrHistogram interval logs (V2, compressed, the format of Java's
//! `HistogramLogWriter`, readable by `HistogramLogProcessor` and Python's `hdrh`).
//!
//! Every `latency_log_interval` seconds one file `latency-<unix ms>.hlog` is written in
//! `latency_log_dir`, holding that interval's histograms: one per worker (tag `worker-N`, the
//! per-packet processing latency) and one for handshakes (tag `handshake`), values in
//! nanoseconds. Only the newest `latency_log_keep` files are kept. The shared histograms are
//! cumulative, so an interval is the difference between two snapshots.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::server::latency::{latency_histogram, SharedLatency};

/// File name prefix and suffix.
const PREFIX: &str = "latency-";
const SUFFIX: &str = ".hlog";

/// Reads one cumulative histogram (a worker's, the handshakes').
pub type Source = Box<dyn Fn() -> Histogram<u64> + Send>;

/// A source reading a shared histogram.
pub fn source(shared: Arc<SharedLatency>) -> Source {
    Box::new(move || shared.snapshot())
}

/// Writes the interval logs.
pub struct LatencyLog {
    dir: PathBuf,
    keep: usize,
    sources: Vec<(String, Source)>,
    previous: Vec<Histogram<u64>>,
    interval_start: SystemTime,
    /// The last file's name stamp: names must be unique and ordered even when two intervals
    /// start within one millisecond (the final interval at shutdown, or tests).
    last_stamp: u128,
}

impl LatencyLog {
    /// A log of `sources` (tag, histogram) into `dir` (created if missing).
    pub fn new(dir: &Path, keep: usize, sources: Vec<(String, Source)>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let previous = sources.iter().map(|(_, s)| s()).collect();
        Ok(LatencyLog {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            sources,
            previous,
            interval_start: SystemTime::now(),
            last_stamp: 0,
        })
    }

    /// Writes the interval that ends now into a new file; returns its path.
    pub fn write_interval(&mut self) -> std::io::Result<PathBuf> {
        let end = SystemTime::now();
        let start = self.interval_start;
        let duration = end.duration_since(start).unwrap_or_default();
        let mut deltas = Vec::with_capacity(self.sources.len());
        for ((_, read), prev) in self.sources.iter().zip(self.previous.iter_mut()) {
            let now = read();
            let mut delta = now.clone();
            if delta.subtract(&*prev).is_err() {
                // Cannot happen with cumulative histograms of equal bounds; start afresh.
                delta = latency_histogram();
            }
            *prev = now;
            deltas.push(delta);
        }
        let mut text = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .add_comment("concentrator latency log: values in nanoseconds")
                .with_start_time(start)
                .with_base_time(start)
                .begin_log_with(&mut text, &mut serializer)?;
            for ((tag, _), h) in self.sources.iter().zip(&deltas) {
                w.write_histogram(h, Duration::ZERO, duration, Tag::new(tag))
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            }
        }
        let ms = start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .max(self.last_stamp + 1);
        self.last_stamp = ms;
        let path = self.dir.join(format!("{PREFIX}{ms:015}{SUFFIX}"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
        self.interval_start = end;
        self.prune()?;
        Ok(path)
    }

    fn prune(&self) -> std::io::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
            })
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(self.keep);
        for f in &files[..excess] {
            std::fs::remove_file(f)?;
        }
        Ok(())
    }

    /// Writes an interval every `interval` until `stop`; returns the log, so that the caller
    /// can write the last (partial) interval once the workers have stopped.
    pub fn run(mut self, interval: Duration, stop: Arc<AtomicBool>) -> Self {
        let mut next = std::time::Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if std::time::Instant::now() >= next {
                if let Err(e) = self.write_interval() {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "could not write the latency log");
                }
                next += interval;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::latency::record_latency;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    fn read_counts(path: &Path) -> Vec<(String, u64)> {
        let text = std::fs::read(path).unwrap();
        let mut out = Vec::new();
        for e in IntervalLogIterator::new(&text) {
            if let Ok(LogEntry::Interval(h)) = e {
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    h.encoded_histogram(),
                )
                .unwrap();
                let hist: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut std::io::Cursor::new(bytes))
                    .unwrap();
                out.push((h.tag().unwrap().as_str().to_string(), hist.len()));
            }
        }
        out
    }

    #[test]
    fn intervals_hold_deltas_and_old_files_go() {
        let dir = std::env::temp_dir().join(format!("ctr-latlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let w0 = Arc::new(SharedLatency::default());
        let hs = Arc::new(SharedLatency::default());
        let mut local = latency_histogram();
        record_latency(&mut local, 5_000, 7);
        w0.merge_from(&mut local);
        let mut log = LatencyLog::new(
            &dir,
            2,
            vec![
                ("worker-0".into(), source(w0.clone())),
                ("handshake".into(), source(hs.clone())),
            ],
        )
        .unwrap();
        // Recorded before the log started: not in any interval.
        record_latency(&mut local, 10_000, 3);
        w0.merge_from(&mut local);
        record_latency(&mut local, 2_000_000, 1);
        hs.merge_from(&mut local);
        let p1 = log.write_interval().unwrap();
        assert_eq!(
            read_counts(&p1),
            vec![("worker-0".to_string(), 3), ("handshake".to_string(), 1)]
        );
        std::thread::sleep(Duration::from_millis(5));
        let p2 = log.write_interval().unwrap();
        assert_eq!(read_counts(&p2)[0], ("worker-0".to_string(), 0));
        std::thread::sleep(Duration::from_millis(5));
        let _p3 = log.write_interval().unwrap();
        assert!(!p1.exists(), "only the newest 2 files are kept");
        assert!(p2.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
