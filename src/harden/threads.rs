//! Reaching threads that already exist: per-thread hardening (Landlock) must run *on* each
//! thread, so every pool the server knows about offers a way to run a task on all its threads.

use std::sync::{Arc, Mutex};

/// A task run once on each thread of a pool.
pub type ThreadTask = Arc<dyn Fn() + Send + Sync>;

/// A set of threads that can run a task on each of its threads and wait for all of them.
pub trait ThreadRunner {
    /// Name for logs and the report (`engine`, `rayon`, `candle-bp`).
    fn name(&self) -> &'static str;
    /// Runs `task` once on every thread of the pool and returns when all have run it. May also
    /// run it on the calling thread (candle's barrier pool does).
    fn run_on_each(&self, task: ThreadTask) -> Result<(), String>;
}

/// The global rayon pool (our fused CPU kernels, gemm). `rayon::broadcast` runs the task once
/// on each of its threads, starting the pool if it does not exist yet.
pub struct RayonGlobalPool;

impl ThreadRunner for RayonGlobalPool {
    fn name(&self) -> &'static str {
        "rayon"
    }

    fn run_on_each(&self, task: ThreadTask) -> Result<(), String> {
        rayon::broadcast(|_| task());
        Ok(())
    }
}

/// candle's own barrier pool (`candle-bp-N` threads), which candle's CPU backend uses for
/// element-wise and reduction ops. It is not a rayon pool, so `rayon::broadcast` never reaches
/// it: the threads the 2026-11-29 review found without Landlock. `execute` runs the task on
/// every worker and on the calling thread. Use it only where candle runs on the CPU: calling
/// it starts the pool if it was never used.
pub struct CandleBarrierPool;

impl ThreadRunner for CandleBarrierPool {
    fn name(&self) -> &'static str {
        "candle-bp"
    }

    fn run_on_each(&self, task: ThreadTask) -> Result<(), String> {
        // A panic in the task is re-raised by `execute` on the calling thread; turn it into an
        // error instead of tearing the server down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            candle_core::utils::barrier_pool().execute(|_worker| task());
        }))
        .map_err(|_| "a task panicked on candle's barrier pool".to_owned())
    }
}

/// Runs `f` on every thread of `runner`, collecting each thread's result.
pub(super) fn collect_on_each<T: Send + 'static>(
    runner: &dyn ThreadRunner,
    f: impl Fn() -> T + Send + Sync + 'static,
) -> Result<Vec<T>, String> {
    let results = Arc::new(Mutex::new(Vec::new()));
    let sink = results.clone();
    runner.run_on_each(Arc::new(move || {
        let value = f();
        sink.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(value);
    }))?;
    let mut guard = results
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(std::mem::take(&mut *guard))
}
