//! Progress of a bundle download in the log: bytes, rate and time left, every few seconds, so a
//! multi-GB fetch over a slow link is visibly alive (and its speed visible in the logs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often progress is logged while a download runs.
pub const LOG_EVERY: Duration = Duration::from_secs(2);

/// Bytes fetched so far out of a known total.
#[derive(Debug)]
pub struct Progress {
    total: u64,
    done: AtomicU64,
    started: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        Self {
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Counts `bytes` more as fetched.
    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes fetched so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Logs one progress line.
    pub fn log(&self) {
        let done = self.done();
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed;
        let left = self.total.saturating_sub(done) as f64;
        let eta = if rate > 0.0 {
            left / rate
        } else {
            f64::INFINITY
        };
        tracing::info!(
            fetched_mib = format!("{:.1}", mib(done)),
            total_mib = format!("{:.1}", mib(self.total)),
            percent = format!("{:.0}", 100.0 * done as f64 / self.total.max(1) as f64),
            rate_mib_s = format!("{:.1}", mib(rate as u64)),
            eta_s = format!("{eta:.1}"),
            "fetching bundle"
        );
    }

    /// Logs progress every [`LOG_EVERY`] until the returned guard is dropped.
    pub fn spawn_logger(self: &Arc<Self>) -> LoggerGuard {
        let progress = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(LOG_EVERY);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                progress.log();
            }
        });
        LoggerGuard(task)
    }
}

/// Stops the progress log when dropped.
pub struct LoggerGuard(tokio::task::JoinHandle<()>);

impl Drop for LoggerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
