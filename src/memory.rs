//! Resident memory: keeps the embedded model from being resident twice, and tunes the allocator
//! so inference reuses its activation buffers.
//!
//! The bundle lives in the binary's read-only data. Hashing it at startup pulls every page into
//! our resident set; loading copies the weights into tensors. Without help the weights would be
//! counted twice (≈2× their size). After a region has been hashed or copied we ask the kernel to
//! drop its pages: they are clean, file-backed pages of our own executable, so dropping them loses
//! nothing and a later read simply faults them back in from the page cache.

/// Drops the resident pages fully inside `bytes` (partial pages at either end stay) — but only
/// when the whole range lies in a read-only, file-backed mapping (our executable's data), checked
/// against /proc/self/maps. For such pages `MADV_DONTNEED` loses nothing: they are clean, stay in
/// the page cache, and fault back in on the next read. Anywhere else (heap, anonymous memory,
/// where DONTNEED would zero data) this does nothing. Returns the bytes released.
pub fn release_pages(bytes: &[u8]) -> usize {
    let page = page_size();
    let start = bytes.as_ptr() as usize;
    let first = start.div_ceil(page) * page;
    let last = (start + bytes.len()) / page * page;
    if last <= first || !in_read_only_file_mapping(first, last) {
        return 0;
    }
    let len = last - first;
    // SAFETY: the range is page aligned, inside a live borrowed slice, and (checked above) backed
    // by a read-only private file mapping, so dropping the pages cannot change what they read as.
    let rc = unsafe { libc::madvise(first as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc == 0 {
        len
    } else {
        0
    }
}

/// True when `[first, last)` is covered by mappings that are not writable and map a file.
fn in_read_only_file_mapping(first: usize, last: usize) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    let mut covered_to = first;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), _offset, _dev, Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        if lo <= covered_to && covered_to < hi {
            if perms.contains('w') || inode == "0" {
                return false;
            }
            covered_to = hi;
            if covered_to >= last {
                return true;
            }
        }
    }
    false
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
