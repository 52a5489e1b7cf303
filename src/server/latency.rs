//! Latency histograms (HdrHistogram, nanoseconds) shared between the thread that records them
//! (a worker, the control thread) and the operations threads that read them.

/// A latency histogram shared between its recorder and its readers: the recorder fills a
/// private histogram and merges it in here once per batch period, so the lock is taken a few
/// times a second, never per packet.
#[derive(Debug)]
pub struct SharedLatency {
    inner: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

/// Highest latency recorded, in nanoseconds (one minute; anything slower is clamped).
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// A new histogram for nanosecond latencies, 3 significant digits.
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 ns .. 60 s at 3 significant figures: fixed bounds, so creation cannot fail.
    hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

impl Default for SharedLatency {
    fn default() -> Self {
        SharedLatency {
            inner: std::sync::Mutex::new(latency_histogram()),
        }
    }
}

impl SharedLatency {
    /// Adds `local` into the shared histogram and clears `local`.
    pub fn merge_from(&self, local: &mut hdrhistogram::Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        if let Ok(mut shared) = self.inner.lock() {
            // Same bounds on both sides, so adding cannot fail.
            let _ = shared.add(&*local);
        }
        local.reset();
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> hdrhistogram::Histogram<u64> {
        self.inner
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| latency_histogram())
    }
}

/// Records `value_ns` for `count` packets, clamping to the histogram's range.
pub fn record_latency(h: &mut hdrhistogram::Histogram<u64>, value_ns: u64, count: u64) {
    let _ = h.record_n(value_ns.clamp(1, LATENCY_MAX_NS), count);
}

/// Names a file that receives the workers' latency histograms when the server stops.
pub const LATENCY_DUMP_ENV: &str = "CONCENTRATOR_LATENCY_DUMP";

/// Writes one line per worker, `<worker id> <HdrHistogram V2, base64>` (nanoseconds, batch
/// received to sent), readable by any HdrHistogram implementation.
pub fn write_latency_dump(
    path: &std::path::Path,
    latencies: &[std::sync::Arc<SharedLatency>],
) -> std::io::Result<()> {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Serializer as _, V2Serializer};
    let mut text = String::new();
    for (id, l) in latencies.iter().enumerate() {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&l.snapshot(), &mut bytes)
            .map_err(|e| {
                std::io::Error::other(format!("serializing worker {id}'s histogram: {e:?}"))
            })?;
        text += &format!(
            "{id} {}\n",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
    }
    std::fs::write(path, text)
}
