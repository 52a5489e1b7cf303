//! The threads a server cannot run without (its workers and its control thread): a death before
//! the stop stops the whole server, so that it exits with an error its service manager sees,
//! instead of running on with a hole in it (`SO_REUSEPORT` and the TUN would keep handing a
//! dead worker its share of the traffic).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// A thread the server cannot run without that ended before the stop.
#[derive(Debug, Clone)]
pub struct ThreadDeath {
    /// Which thread, for people ("worker 2").
    pub thread: String,
    /// Its panic message, or that it returned.
    pub reason: String,
    /// It panicked (rather than returned).
    pub panicked: bool,
}

/// Starts essential threads and collects their deaths.
pub struct Essential {
    stop: Arc<AtomicBool>,
    died: Sender<ThreadDeath>,
    deaths: Receiver<ThreadDeath>,
    threads: Vec<JoinHandle<()>>,
}

impl Essential {
    /// Threads that set `stop` when one of them dies.
    pub fn new(stop: Arc<AtomicBool>) -> Self {
        let (died, deaths) = crossbeam_channel::unbounded();
        Essential {
            stop,
            died,
            deaths,
            threads: Vec::new(),
        }
    }

    /// Starts `body` on a thread called `name`. If it panics or returns before `stop` is set, it
    /// logs which thread (`label`) and why, records the death and sets `stop`.
    pub fn spawn(
        &mut self,
        name: String,
        label: String,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let (died, stop) = (self.died.clone(), self.stop.clone());
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // The server stops after a panic, so no state it left half-changed is used again.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let (reason, panicked) = match outcome {
                Ok(()) if stop.load(Ordering::Relaxed) => return,
                Ok(()) => ("it returned before the stop".to_string(), false),
                Err(payload) => (
                    format!("panicked: {}", panic_message(payload.as_ref())),
                    true,
                ),
            };
            tracing::error!(thread = %label, reason = %reason, "{label} died; stopping the server");
            let _ = died.send(ThreadDeath {
                thread: label,
                reason,
                panicked,
            });
            stop.store(true, Ordering::Relaxed);
        })?;
        self.threads.push(thread);
        Ok(())
    }

    /// Whether a thread died so far.
    pub fn any_died(&self) -> bool {
        !self.deaths.is_empty()
    }

    /// Sets `stop`, waits for every thread, and returns the deaths, panics first (one death can
    /// end others: the control thread returns once every worker is gone).
    pub fn stop_and_join(&mut self) -> Vec<ThreadDeath> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut deaths: Vec<ThreadDeath> = self.deaths.try_iter().collect();
        deaths.sort_by_key(|d| !d.panicked);
        deaths
    }
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_before_the_stop_is_a_death_that_stops_the_rest() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Essential::new(stop.clone());
        let watcher = stop.clone();
        threads
            .spawn("steady".into(), "the steady one".into(), move || {
                while !watcher.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
            .unwrap();
        threads
            .spawn("fragile".into(), "worker 7".into(), || panic!("boom"))
            .unwrap();
        let deaths = threads.stop_and_join();
        assert_eq!(deaths.len(), 1, "{deaths:?}");
        assert_eq!(deaths[0].thread, "worker 7");
        assert!(deaths[0].panicked);
        assert_eq!(deaths[0].reason, "panicked: boom");
    }

    #[test]
    fn returning_after_the_stop_is_no_death() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Essential::new(stop.clone());
        let watcher = stop.clone();
        threads
            .spawn("t".into(), "t".into(), move || {
                while !watcher.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                }
            })
            .unwrap();
        assert!(!threads.any_died());
        assert!(threads.stop_and_join().is_empty());
    }
}
