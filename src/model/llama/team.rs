//! Keeping the rayon pool's other threads awake for the length of one forward step, and
//! turning the step's parallel loops off on a thread that runs one group of a split step
//! ([`serial`]).
//!
//! Why: a step makes ~180 parallel calls (five per layer, the SiLU gate, attention, the output
//! projection), separated by short serial parts (norms, rotary embedding, KV appends, the
//! activation quantizer). Between two calls rayon's idle workers spin for a few dozen
//! `sched_yield`s and then sleep, and the next call wakes them with a `futex` system call on the
//! step's own thread. On the project's 2-core Intel VM that cost ~12 % of an 8-stream decode
//! step in the kernel's scheduler, 5 % of it `futex_wake` on the critical path (profile in
//! benches/RESULTS.md, 2026-12-02). llama.cpp's thread pool spins between its graph nodes for the
//! same reason.
//!
//! [`with_team`] runs a step with one helper job per other pool thread. A helper takes pending
//! work (`rayon::yield_now`) until the step ends, so the threads are awake whenever the step
//! forks. Safety valves: a helper that finds nothing to do for [`MAX_IDLE`] returns to rayon's
//! normal idling (a step does not spin a core for long while its own thread runs serial code,
//! and no helper can stall the pool indefinitely when several steps share it, as tests do), and
//! the step's end is signalled even when it panics, so a panic propagates instead of hanging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a helper spins without finding work before it gives its thread back to rayon. A
/// step's serial parts take microseconds; one stream's whole decode step is ~3–6 ms here.
pub const MAX_IDLE: Duration = Duration::from_millis(1);

thread_local! {
    /// Set while this thread runs a part of a split step ([`serial`]).
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the step's parallel loops (matrix products, attention, SiLU) running on this
/// thread alone: each thread of a split step owns its part of the batch.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Whether the step's loops may fork here (false inside [`serial`] or on a one-thread pool).
pub fn parallel() -> bool {
    rayon::current_num_threads() > 1 && !SERIAL.with(|s| s.get())
}

/// Sets the flag when dropped: the step's end, on return or unwinding.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `step` on the current rayon thread (entering the global pool if the caller is outside
/// it) while the pool's other threads stay awake to take the step's parallel work.
pub fn with_team<R: Send>(step: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        // Inside `scope` we are on a pool thread: the step's.
        let home = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let done = &done;
            scope.spawn(move |_| {
                // The step's own thread can pick a helper up while it waits inside a join: there
                // it would only delay the step.
                if rayon::current_thread_index() == home {
                    return;
                }
                let mut last_work = Instant::now();
                while !done.load(Ordering::Acquire) {
                    match rayon::yield_now() {
                        Some(rayon::Yield::Executed) => last_work = Instant::now(),
                        _ if last_work.elapsed() > MAX_IDLE => return,
                        _ => std::hint::spin_loop(),
                    }
                }
            });
        }
        let _done = Done(&done);
        step()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
    }

    /// Parallel work like a step's: many short fork/joins with serial code between them.
    fn step_like(seed: u64) -> u64 {
        let mut total = seed;
        for call in 0..50u64 {
            let sum: u64 = (0..2_000u64)
                .into_par_iter()
                .map(|i| i.wrapping_mul(call + 1))
                .sum();
            total = total.wrapping_add(sum);
        }
        total
    }

    #[test]
    fn a_step_gives_the_same_result_with_and_without_a_team_at_every_pool_size() {
        let expected = step_like(7);
        for threads in [1, 2, 3, 8] {
            let got = pool(threads).install(|| with_team(|| step_like(7)));
            assert_eq!(got, expected, "{threads} threads");
        }
        // From outside any pool (the global one).
        assert_eq!(with_team(|| step_like(7)), expected);
    }

    #[test]
    fn serial_turns_the_loops_off_on_its_thread_until_it_returns_or_unwinds() {
        pool(2).install(|| {
            assert!(parallel());
            serial(|| {
                assert!(!parallel());
                serial(|| assert!(!parallel()));
                assert!(!parallel(), "an inner serial does not end the outer one");
            });
            assert!(parallel());
            let caught = std::panic::catch_unwind(|| serial(|| panic!("part failed")));
            assert!(caught.is_err());
            assert!(parallel());
        });
        assert!(!pool(1).install(parallel), "one thread never forks");
    }

    #[test]
    fn a_panicking_step_propagates_instead_of_hanging_its_helpers() {
        let pool = pool(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                with_team(|| {
                    step_like(1);
                    panic!("step failed");
                })
            })
        }));
        assert!(caught.is_err());
        // The pool still works afterwards.
        assert_eq!(pool.install(|| with_team(|| step_like(3))), step_like(3));
    }

    #[test]
    fn steps_sharing_a_pool_from_many_threads_all_finish() {
        // Tests run generators concurrently on one pool: helpers of one step can end up running
        // (or waiting beneath) another step's work. Every step must still finish and be right.
        let pool = pool(2);
        let expected: Vec<u64> = (0..6).map(step_like).collect();
        std::thread::scope(|s| {
            for (seed, want) in expected.iter().enumerate() {
                let pool = &pool;
                s.spawn(move || {
                    for _ in 0..20 {
                        let got = pool.install(|| with_team(|| step_like(seed as u64)));
                        assert_eq!(got, *want);
                    }
                });
            }
        });
    }
}
