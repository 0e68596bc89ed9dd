//! Streams a bundle's files into their memory regions, hashing while they arrive.
//!
//! Each file is cut into ranges fetched over up to `connections` parallel requests (one range
//! per file when `connections` is 1). Every range is written straight into its place in the
//! file's [`Region`]; a hashing thread per file follows behind the writers, in file order,
//! hashing the bytes *in the region* (never a network buffer), so the digest checked is the
//! digest of exactly the bytes the loader will read. An interrupted range is resumed where it
//! stopped; transient failures are retried with exponential backoff and jitter.
//!
//! The only `unsafe` here is the shared region: writers copy into disjoint ranges through a raw
//! pointer and publish how far they got under a mutex; the hasher reads only below what was
//! published. No byte is written after it was published, and regions outlive every writer and
//! hasher (all are joined before `download_all` returns, on success or failure).

use super::buffer::Region;
use super::error::{FetchError, FetchErrorKind};
use super::progress::Progress;
use super::store::Store;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes per ranged request when several connections share a file.
pub const RANGE_BYTES: u64 = 16 << 20;
/// How often a writer tells the hasher about new bytes.
const PUBLISH_EVERY: u64 = 1 << 20;

/// How hard to try a request before giving up.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with ±25% jitter, so parallel requests do not retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
        base.mul_f64(jitter)
    }
}

/// Runs `op` until it succeeds, fails for good, or runs out of attempts; logs each retry.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut op: F,
) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FetchError>>,
{
    let mut retry = 0;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if e.kind.is_retryable() && retry + 1 < policy.attempts => {
                let delay = policy.delay(retry);
                retry += 1;
                tracing::warn!(
                    "{what}: {e}; retry {retry}/{} in {:.1} s",
                    policy.attempts - 1,
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One file to fetch, with the region it goes into.
pub struct Job {
    pub name: String,
    pub region: Region,
}

/// A fetched file and the sha256 (hex) of the bytes in its region.
pub struct Fetched {
    pub name: String,
    pub region: Region,
    pub sha256: String,
}

/// Totals of one download.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub bytes: u64,
    /// Time the hashing threads spent hashing (overlapping the download).
    pub hash_time: Duration,
    pub retries: u64,
}

/// A raw pointer to a region, shared by the writers and the hasher of one file.
#[derive(Clone, Copy)]
struct Base(*mut u8);
// SAFETY: see the module doc: disjoint writes, reads only below published progress, and the
// region outlives every user of the pointer.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

struct FileState {
    name: String,
    base: Base,
    ranges: Vec<Range<u64>>,
    /// Bytes written (and published) per range, counted from the range's start.
    filled: Mutex<Vec<u64>>,
    wake: Condvar,
}

struct Shared {
    files: Vec<FileState>,
    failed: AtomicBool,
    retries: AtomicU64,
}

impl Shared {
    fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        for file in &self.files {
            let _guard = file.filled.lock().unwrap_or_else(|p| p.into_inner());
            file.wake.notify_all();
        }
    }
}

/// Fetches every job's file into its region over up to `connections` parallel requests.
pub async fn download_all(
    store: &Store,
    jobs: Vec<Job>,
    connections: usize,
    policy: &RetryPolicy,
    progress: &Progress,
) -> Result<(Vec<Fetched>, Stats), FetchError> {
    let connections = connections.max(1);
    let mut regions = Vec::with_capacity(jobs.len());
    let mut states = Vec::with_capacity(jobs.len());
    for Job { name, mut region } in jobs {
        let size = region.len() as u64;
        let step = if connections == 1 {
            size.max(1)
        } else {
            RANGE_BYTES
        };
        let ranges = (0..size.div_ceil(step))
            .map(|i| i * step..((i + 1) * step).min(size))
            .collect::<Vec<_>>();
        states.push(FileState {
            name,
            base: Base(region.as_mut_ptr()),
            filled: Mutex::new(vec![0; ranges.len()]),
            ranges,
            wake: Condvar::new(),
        });
        regions.push(region);
    }
    let shared = Arc::new(Shared {
        files: states,
        failed: AtomicBool::new(false),
        retries: AtomicU64::new(0),
    });
    // Largest files first, each file's ranges in order: the hashers can follow closely.
    let mut order: Vec<usize> = (0..shared.files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(regions[i].len()));
    let queue: Mutex<VecDeque<(usize, usize)>> = Mutex::new(
        order
            .iter()
            .flat_map(|&f| (0..shared.files[f].ranges.len()).map(move |r| (f, r)))
            .collect(),
    );
    let hashers: Vec<_> = (0..shared.files.len())
        .map(|f| {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || hash_in_order(&shared, f))
        })
        .collect();
    let workers = (0..connections).map(|_| async {
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some((f, r)) = next else { return Ok(()) };
            if shared.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            if let Err(e) = fetch_range(store, &shared, f, r, policy, progress).await {
                shared.fail();
                return Err(e);
            }
        }
    });
    let outcome = futures_util::future::try_join_all(workers).await;
    if outcome.is_err() {
        shared.fail();
    }
    // Join every hasher before the regions can be dropped.
    let mut digests = Vec::with_capacity(hashers.len());
    for hasher in hashers {
        digests.push(hasher.await);
    }
    outcome?;
    let mut stats = Stats {
        retries: shared.retries.load(Ordering::SeqCst),
        ..Stats::default()
    };
    let mut fetched = Vec::with_capacity(regions.len());
    for ((region, state), digest) in regions.into_iter().zip(&shared.files).zip(digests) {
        let (sha256, busy) = digest
            .map_err(|e| FetchError::new(FetchErrorKind::Permanent, &state.name, e.to_string()))?
            .ok_or_else(|| {
                FetchError::new(FetchErrorKind::Permanent, &state.name, "hashing stopped")
            })?;
        stats.bytes += region.len() as u64;
        stats.hash_time += busy;
        fetched.push(Fetched {
            name: state.name.clone(),
            region,
            sha256,
        });
    }
    Ok((fetched, stats))
}

/// Fetches range `r` of file `f`, resuming after interruptions.
async fn fetch_range(
    store: &Store,
    shared: &Shared,
    f: usize,
    r: usize,
    policy: &RetryPolicy,
    progress: &Progress,
) -> Result<(), FetchError> {
    let file = &shared.files[f];
    let range = file.ranges[r].clone();
    let mut done = 0u64;
    let mut retry = 0u32;
    loop {
        let result = pump(store, file, r, &range, &mut done, progress).await;
        match result {
            Ok(()) => return Ok(()),
            Err(e)
                if e.kind.is_retryable()
                    && !store.retries_internally()
                    && retry + 1 < policy.attempts =>
            {
                let delay = policy.delay(retry);
                retry += 1;
                shared.retries.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(
                    "{} bytes {}-{}: {e}; resuming at byte {} (retry {retry}/{} in {:.1} s)",
                    file.name,
                    range.start,
                    range.end - 1,
                    range.start + done,
                    policy.attempts - 1,
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One request for the rest of a range: copies each chunk into the region and publishes it.
async fn pump(
    store: &Store,
    file: &FileState,
    r: usize,
    range: &Range<u64>,
    done: &mut u64,
    progress: &Progress,
) -> Result<(), FetchError> {
    let len = range.end - range.start;
    if *done == len {
        return Ok(());
    }
    let mut stream = store
        .stream(&file.name, range.start + *done..range.end)
        .await?;
    let mut published = *done;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let n = chunk.len() as u64;
        if *done + n > len {
            return Err(FetchError::new(
                FetchErrorKind::Permanent,
                &file.name,
                format!(
                    "the store sent more than the {} bytes asked for (bytes {}-{}); the object changed or the server ignores ranges",
                    len,
                    range.start,
                    range.end - 1
                ),
            ));
        }
        // SAFETY: `range.start + done .. + n` lies inside this file's region (checked just
        // above against the range, and ranges lie within the region), belongs to this range
        // only, and has not been published yet, so no hasher reads it concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(
                chunk.as_ptr(),
                file.base.0.add((range.start + *done) as usize),
                chunk.len(),
            );
        }
        *done += n;
        progress.add(n);
        if *done - published >= PUBLISH_EVERY || *done == len {
            publish(file, r, *done);
            published = *done;
        }
    }
    publish(file, r, *done);
    if *done < len {
        let kind = if store.is_local() {
            FetchErrorKind::Permanent
        } else {
            FetchErrorKind::Transient
        };
        return Err(FetchError::new(
            kind,
            &file.name,
            format!(
                "the answer ended after {} of {} bytes (bytes {}-{})",
                *done,
                len,
                range.start,
                range.end - 1
            ),
        ));
    }
    Ok(())
}

fn publish(file: &FileState, r: usize, done: u64) {
    let mut filled = file.filled.lock().unwrap_or_else(|p| p.into_inner());
    filled[r] = done;
    file.wake.notify_all();
}

/// Hashes file `f` range by range as the writers publish bytes. `None` when the download failed.
fn hash_in_order(shared: &Shared, f: usize) -> Option<(String, Duration)> {
    let file = &shared.files[f];
    let mut hasher = Sha256::new();
    let mut busy = Duration::ZERO;
    for (r, range) in file.ranges.iter().enumerate() {
        let len = range.end - range.start;
        let mut hashed = 0u64;
        while hashed < len {
            let filled = {
                let mut filled = file.filled.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if shared.failed.load(Ordering::SeqCst) {
                        return None;
                    }
                    if filled[r] > hashed {
                        break filled[r];
                    }
                    filled = file.wake.wait(filled).unwrap_or_else(|p| p.into_inner());
                }
            };
            let started = Instant::now();
            // SAFETY: bytes below `filled` of this range were written before `filled` was
            // published under the mutex we just held, and are never written again; the region
            // outlives this thread (download_all joins it first).
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    file.base.0.add((range.start + hashed) as usize),
                    (filled - hashed) as usize,
                )
            };
            hasher.update(bytes);
            busy += started.elapsed();
            hashed = filled;
        }
    }
    Some((hex::encode(hasher.finalize()), busy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_bounded_jitter() {
        let policy = RetryPolicy::default();
        let first = policy.delay(0);
        assert!(first >= Duration::from_millis(150) && first <= Duration::from_millis(250));
        let late = policy.delay(10);
        assert!(late <= Duration::from_millis(6250) && late >= Duration::from_millis(3750));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_ranges_of_a_local_file_hash_to_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * RANGE_BYTES as usize + 12345;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("big.bin"), &data).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let store = Store::File(super::super::file::FileStore::new(dir.path().to_path_buf()));
        let progress = Progress::new(size as u64);
        for connections in [1, 3] {
            let jobs = vec![
                Job {
                    name: "big.bin".into(),
                    region: Region::new(size).unwrap(),
                },
                Job {
                    name: "empty".into(),
                    region: Region::new(0).unwrap(),
                },
            ];
            let (fetched, stats) = download_all(
                &store,
                jobs,
                connections,
                &RetryPolicy::default(),
                &progress,
            )
            .await
            .unwrap();
            assert_eq!(stats.bytes, size as u64);
            assert_eq!(fetched[0].sha256, crate::manifest::sha256_hex(&data));
            assert_eq!(fetched[0].region.as_slice(), &data[..]);
            assert_eq!(fetched[1].sha256, crate::manifest::sha256_hex(b""));
        }
        // A file shorter than its region is refused, not padded with zeros.
        let jobs = vec![Job {
            name: "big.bin".into(),
            region: Region::new(size + 1).unwrap(),
        }];
        let err = download_all(&store, jobs, 2, &RetryPolicy::default(), &progress)
            .await
            .err()
            .unwrap();
        assert!(err.detail.contains("ended after"), "{err}");
    }
}
