//! Resident memory: where the verified model bytes live, keeping them from being resident twice,
//! and allocator tuning so inference reuses its activation buffers.
//!
//! `serve` copies every file of its bundle out of its own executable into memory from
//! [`VerifiedCopies`] and hashes the copy (seal-core's `Bundle::verify`), so the bytes the
//! loader, tokenizer and config parser read are the bytes that were hashed: nothing is ever
//! re-read from the executable, whatever happens to it (or its page cache) after startup. The
//! copies are anonymous, page-aligned, read-only mappings. Loading then copies the weights into
//! tensors; [`release_pages`] gives back each tensor's source pages as soon as it is copied, so
//! the weights are never resident twice (peak RSS stays near one copy of the weights).

use seal_core::bundle::Copies;
use std::sync::Mutex;

/// Address ranges `[start, end)` of every verified copy made so far (they live until exit).
/// Only [`release_pages`] reads it: it is the proof that a range is ours to drop.
static COPIES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Memory for verified bundle files: one anonymous private mapping per file, page aligned (so
/// tensors can be read in place and pages released one by one), made read-only once its digest
/// matched, and kept for the life of the process (`'static`).
#[derive(Debug, Default)]
pub struct VerifiedCopies;

impl Copies<'static> for VerifiedCopies {
    fn allocate(&mut self, len: usize) -> std::io::Result<&'static mut [u8]> {
        if len == 0 {
            return Ok(&mut []);
        }
        let mapped = len.div_ceil(page_size()) * page_size();
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = ptr as usize;
        COPIES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((start, start + mapped));
        // SAFETY: the mapping is `mapped >= len` bytes, readable and writable, zero-filled, owned
        // by nobody else, and never unmapped, so handing it out for 'static is sound.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) })
    }

    fn seal(&mut self, copy: &'static mut [u8]) -> &'static [u8] {
        if copy.is_empty() {
            return copy;
        }
        let len = copy.len().div_ceil(page_size()) * page_size();
        // SAFETY: `copy` starts a mapping of at least `len` bytes made by `allocate`; dropping
        // write access cannot invalidate the shared reference we return.
        unsafe { libc::mprotect(copy.as_mut_ptr().cast(), len, libc::PROT_READ) };
        copy
    }
}

/// Gives back the pages fully inside `bytes` (partial pages at either end stay) when `bytes`
/// lies in a [`VerifiedCopies`] copy, and does nothing anywhere else (heap, executable, test
/// buffers). Returns the bytes released.
///
/// Call it only for bytes that will never be read again, such as a tensor's source once the
/// tensor holds its own copy: the pages are dropped and made inaccessible, so a later read
/// faults loudly instead of seeing zeros.
pub fn release_pages(bytes: &[u8]) -> usize {
    let page = page_size();
    let start = bytes.as_ptr() as usize;
    let first = start.div_ceil(page) * page;
    let last = (start + bytes.len()) / page * page;
    if last <= first || !in_verified_copy(first, last) {
        return 0;
    }
    let len = last - first;
    // SAFETY: the range is page aligned and lies inside one of our own anonymous mappings whose
    // contents the caller no longer reads; PROT_NONE turns any later read into a fault.
    let rc = unsafe {
        libc::madvise(first as *mut libc::c_void, len, libc::MADV_DONTNEED)
            | libc::mprotect(first as *mut libc::c_void, len, libc::PROT_NONE)
    };
    if rc == 0 {
        len
    } else {
        0
    }
}

fn in_verified_copy(first: usize, last: usize) -> bool {
    COPIES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .any(|(start, end)| *start <= first && last <= *end)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

/// Resident set size and its peak, in bytes, from /proc/self/status (for logs and /info).
pub fn resident_bytes() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Keeps freed activation buffers in the allocator instead of returning them to the kernel.
///
/// Why: a CPU forward allocates a few megabyte-sized buffers per op. glibc's malloc serves such
/// sizes with fresh `mmap`s, or trims the heap top after they are freed, so every op paid for
/// page faults and kernel page zeroing: about 10% of a forward's time in profiles on 2 cores.
/// With a fixed mmap threshold of 32 MiB (glibc's maximum) and a trim threshold of 32 MiB (above
/// the ~20 MiB working set of a 1024-token forward), the next forward reuses the same heap pages.
/// At most two arenas: glibc otherwise gives the engine, compute and HTTP threads arenas of their
/// own, each keeping its own high-water mark, which under HTTP load added ~9 MiB of peak RSS.
/// Process-wide and idempotent; other allocators and targets are left alone.
pub fn keep_activation_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts allocator parameters; all values are in range.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        });
    }
}

/// Hands the allocator's free memory back to the kernel (`malloc_trim(0)`: free pages in every
/// arena and the heap top), after a request large enough to have grown the heap well past the
/// working set that [`keep_activation_memory`] keeps for reuse. Without it, the memory of a
/// burst of large requests stayed resident for minutes (issue 12). The next forward re-faults
/// its buffers once. Other allocators and targets: nothing to do.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_read_only_page_aligned_and_released_only_where_ours() {
        let mut copies = VerifiedCopies;
        let page = page_size();
        let copy = copies.allocate(3 * page + 10).unwrap();
        assert_eq!(copy.as_ptr() as usize % page, 0);
        copy.fill(7);
        let copy = copies.seal(copy);
        assert!(copy.iter().all(|b| *b == 7));
        // Only whole pages inside the range go; the first and last page stay readable.
        assert_eq!(release_pages(&copy[1..3 * page + 5]), 2 * page);
        assert_eq!(copy[0], 7);
        assert_eq!(copy[3 * page + 9], 7);
        // Heap memory is never touched.
        let heap = vec![1u8; 4 * page];
        assert_eq!(release_pages(&heap), 0);
        assert!(heap.iter().all(|b| *b == 1));
    }
}
