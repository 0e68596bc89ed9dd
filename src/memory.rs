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
//!
//! Weights read in place (BERT's word-embedding table: half of MiniLM) would stay resident in
//! full in such a copy, although a request touches a few rows. [`PagedCopy`] gives those pages
//! back too and reads each one again from the executable on first use, checked against the
//! SHA-256 the page had in the verified copy — fs-verity's idea at page granularity: a page
//! whose bytes changed on disk is refused, never used.

use rayon::prelude::*;
use seal_core::bundle::Copies;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
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
        let (ptr, mapped) = map_anonymous(len, 0)?;
        register_copy(ptr.as_ptr() as usize, mapped);
        // SAFETY: the mapping is `mapped >= len` bytes, readable and writable, zero-filled, owned
        // by nobody else, and never unmapped, so handing it out for 'static is sound.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) })
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

/// A fresh, zero-filled, readable and writable anonymous private mapping for `len` (> 0) bytes,
/// rounded up to whole pages: its start and mapped length. `extra_flags` are or-ed into mmap's
/// flags (a remote download adds `MAP_NORESERVE`). Shared by [`VerifiedCopies`] and
/// `remote::buffer`, the two places verified bytes are held.
pub(crate) fn map_anonymous(
    len: usize,
    extra_flags: libc::c_int,
) -> std::io::Result<(std::ptr::NonNull<u8>, usize)> {
    let mapped = len.div_ceil(page_size()) * page_size();
    // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mapped,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
        .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
    Ok((ptr, mapped))
}

/// Records `[start, start + len)` as a verified copy whose pages [`release_pages`] may give back:
/// [`VerifiedCopies`] mappings, and a remote bundle's download regions once their digests
/// matched (`remote::buffer`).
pub(crate) fn register_copy(start: usize, len: usize) {
    COPIES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((start, start + len));
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

/// Where verified copies came from: `(copy start, copy len, file, file offset of its first
/// byte)`. Recorded by `serve` for the copies it made from its own executable.
static BACKINGS: Mutex<Vec<(usize, usize, &'static File, u64)>> = Mutex::new(Vec::new());

/// Records that `copy` (a verified copy) holds the bytes of `file` at `offset`, so that
/// [`PagedCopy::page_out`] may give its pages back and read them again from there.
pub fn record_backing(copy: &'static [u8], file: &'static File, offset: u64) {
    BACKINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push((copy.as_ptr() as usize, copy.len(), file, offset));
}

/// A page read back from the executable did not hash to what was verified.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("cannot read the model bytes at offset {offset} of this executable again: {source}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the model bytes at offset {offset} of this executable changed after they were verified; refusing to use them (restart serve from a trusted binary)")]
    Changed { offset: u64 },
}

/// Part of a verified copy whose whole pages were given back to the kernel and are read again
/// from the executable on first use, each checked against its SHA-256 taken from the verified
/// copy before release. Partial pages at either end stay resident and are always readable.
pub struct PagedCopy {
    bytes: &'static [u8],
    /// Address of the first released page.
    first: usize,
    /// File offset of that page's first byte.
    file_offset: u64,
    file: &'static File,
    page: usize,
    hashes: Vec<[u8; 32]>,
    present: Vec<AtomicBool>,
    /// One refill at a time: two threads never write the same page.
    fill: Mutex<()>,
}

impl std::fmt::Debug for PagedCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedCopy")
            .field("len", &self.bytes.len())
            .field("pages", &self.hashes.len())
            .finish()
    }
}

impl PagedCopy {
    /// Hashes the whole pages inside `bytes` and gives them back, when `bytes` lies in a verified
    /// copy with a recorded backing; `None` anywhere else (heap, tests, `seal`), where the bytes
    /// simply stay as they are. Call it only for bytes that are read through [`Self::ensure`].
    pub fn page_out(bytes: &'static [u8]) -> Option<Self> {
        let page = page_size();
        let start = bytes.as_ptr() as usize;
        let first = start.div_ceil(page) * page;
        let last = (start + bytes.len()) / page * page;
        if last <= first || !in_verified_copy(first, last) {
            return None;
        }
        let (file, file_offset) = BACKINGS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|(copy, len, _, _)| *copy <= first && last <= copy + len)
            .map(|(copy, _, file, offset)| (*file, offset + (first - copy) as u64))?;
        let count = (last - first) / page;
        // On every core: this runs once at start-up, over tens of MB, before the server is ready.
        let hashes = (0..count)
            .into_par_iter()
            .map(|i| Sha256::digest(&bytes[first - start + i * page..][..page]).into())
            .collect();
        // SAFETY: page-aligned range inside one of our anonymous copies; nothing reads it except
        // through `ensure`, which refills a page before any read of it.
        let rc = unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            ) | libc::mprotect(first as *mut libc::c_void, last - first, libc::PROT_NONE)
        };
        if rc != 0 {
            return None;
        }
        Some(Self {
            bytes,
            first,
            file_offset,
            file,
            page,
            hashes,
            present: (0..count).map(|_| AtomicBool::new(false)).collect(),
            fill: Mutex::new(()),
        })
    }

    /// The whole range (read it only where [`Self::ensure`] succeeded).
    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }

    /// Makes `bytes()[range]` readable: every released page in it is read again from the
    /// executable and checked against its verified hash, once.
    pub fn ensure(&self, range: std::ops::Range<usize>) -> Result<(), PageError> {
        let start = self.bytes.as_ptr() as usize;
        let (lo, hi) = (start + range.start, start + range.end);
        if hi <= lo || hi <= self.first || lo >= self.first + self.hashes.len() * self.page {
            return Ok(());
        }
        let first_page = lo.saturating_sub(self.first) / self.page;
        let last_page = ((hi - self.first).div_ceil(self.page)).min(self.hashes.len());
        for i in first_page..last_page {
            if !self.present[i].load(Ordering::Acquire) {
                self.refill(i)?;
            }
        }
        Ok(())
    }

    fn refill(&self, i: usize) -> Result<(), PageError> {
        let _one = self
            .fill
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.present[i].load(Ordering::Acquire) {
            return Ok(());
        }
        let address = self.first + i * self.page;
        let offset = self.file_offset + (i * self.page) as u64;
        // SAFETY: one page of our own released range; no reader touches it until `present`.
        unsafe {
            libc::mprotect(
                address as *mut libc::c_void,
                self.page,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        // SAFETY: the page is mapped read-write just above and owned by this (locked) refill.
        let buf = unsafe { std::slice::from_raw_parts_mut(address as *mut u8, self.page) };
        let read = self.file.read_exact_at(buf, offset);
        let matches = read.is_ok() && <[u8; 32]>::from(Sha256::digest(&*buf)) == self.hashes[i];
        // SAFETY: as above; read-only again whatever happened, released again on failure so
        // the bytes that did not match are not kept.
        unsafe {
            if !matches {
                libc::madvise(address as *mut libc::c_void, self.page, libc::MADV_DONTNEED);
            }
            let protection = if matches {
                libc::PROT_READ
            } else {
                libc::PROT_NONE
            };
            libc::mprotect(address as *mut libc::c_void, self.page, protection);
        }
        match read {
            Err(source) => Err(PageError::Read { offset, source }),
            Ok(()) if !matches => Err(PageError::Changed { offset }),
            Ok(()) => {
                self.present[i].store(true, Ordering::Release);
                Ok(())
            }
        }
    }
}

pub(crate) fn page_size() -> usize {
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
/// Also limits the arenas to one ([`one_arena`]), which takes effect only where no thread has
/// allocated yet: `serve` calls that first thing. Process-wide and idempotent; other allocators
/// and targets are left alone.
pub fn keep_activation_memory() {
    one_arena();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts allocator parameters; all values are in range.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
            }
        });
    }
}

/// Makes every thread allocate from glibc's main arena, so that [`release_free_heap`] can give
/// back all free heap memory. Call it before the process starts its second thread: glibc fixes
/// its arena limit the first time a thread other than the main one allocates, and ignores later
/// changes (`serve` used to set the limit when the model was loaded, after the runtime had
/// started, so its threads had up to 8 arenas per core).
///
/// Why one: `malloc_trim` returns the free top of the main heap and free pages inside every
/// arena, but not the free top of another arena's heap while it is under the trim threshold,
/// which [`keep_activation_memory`] raises to 32 MiB. A burst of 2 MiB requests left up to
/// 17 MiB there (RSS 10 s later 1.22x what it was before; tests/http_memory.rs). One arena also
/// keeps one high-water mark instead of one per arena. The cost is one lock for allocations
/// that miss the per-thread cache (over 1 KiB, or more than 7 of a size held), which a forward
/// and a request make few of next to the work they do. Process-wide and idempotent; other
/// allocators and targets are left alone.
pub fn one_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only adjusts an allocator parameter; the value is in range.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        });
    }
}

/// Hands the allocator's free memory back to the kernel (`malloc_trim(0)`: free pages in every
/// arena and the main heap's top, which is all of it under [`one_arena`]), after a request large
/// enough to have grown the heap well past the working set that [`keep_activation_memory`] keeps
/// for reuse. Without it, the memory of a burst of large requests stayed resident for minutes
/// (issue 12). The next forward re-faults its buffers once. Other allocators and targets:
/// nothing to do.
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

    /// A copy of `content` backed by a temporary file holding it at `offset`.
    fn backed_copy(
        content: &[u8],
        offset: u64,
    ) -> (&'static [u8], &'static File, tempfile::NamedTempFile) {
        let mut copies = VerifiedCopies;
        let copy = copies.allocate(content.len()).unwrap();
        copy.copy_from_slice(content);
        let copy = copies.seal(copy);
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().write_all_at(content, offset).unwrap();
        let reopened: &'static File = Box::leak(Box::new(file.reopen().unwrap()));
        record_backing(copy, reopened, offset);
        (copy, reopened, file)
    }

    #[test]
    fn paged_out_pages_come_back_verified_and_changed_ones_are_refused() {
        let page = page_size();
        let content: Vec<u8> = (0..6 * page + 100).map(|i| (i % 251) as u8).collect();
        let (copy, _, file) = backed_copy(&content, 3 * page as u64 + 7);
        // A range that starts and ends mid-page: its 4 whole pages are released.
        let paged = PagedCopy::page_out(&copy[10..5 * page + 50]).expect("backed copy pages out");
        assert_eq!(paged.hashes.len(), 4);
        paged.ensure(0..paged.bytes().len()).unwrap();
        assert_eq!(paged.bytes(), &content[10..5 * page + 50]);
        // A page changed on disk after verification is refused, and the others still serve.
        let paged = PagedCopy::page_out(&copy[page..6 * page]).unwrap();
        file.as_file()
            .write_all_at(b"tampered", 3 * page as u64 + 7 + 2 * page as u64 + 5)
            .unwrap();
        assert!(matches!(
            paged.ensure(page + 5..page + 6),
            Err(PageError::Changed { .. })
        ));
        assert!(
            paged.ensure(page + 5..page + 6).is_err(),
            "refused every time"
        );
        paged.ensure(0..page).unwrap();
        assert_eq!(&paged.bytes()[..page], &content[page..2 * page]);
    }

    #[test]
    fn unbacked_bytes_are_never_paged_out() {
        let mut copies = VerifiedCopies;
        let page = page_size();
        let copy = copies.allocate(4 * page).unwrap();
        copy.fill(3);
        let copy = copies.seal(copy);
        assert!(PagedCopy::page_out(copy).is_none());
        let heap: &'static [u8] = Box::leak(vec![1u8; 4 * page].into_boxed_slice());
        assert!(PagedCopy::page_out(heap).is_none());
        assert!(copy.iter().all(|b| *b == 3));
    }
}
