//! Where a remote bundle's files are downloaded to: one anonymous, page-aligned mapping per file,
//! sized before the first byte arrives, never a file, a memfd or a cache.
//!
//! Why mappings and not `Vec`s: page alignment keeps tensors (and the 64-byte alignment the
//! embedded bundle guarantees) readable in place; once the digest matched, the pages are made
//! read-only, so nothing in the process can change verified bytes; and after the loader copied a
//! tensor out, its source pages can be given back one by one ([`crate::memory::release_pages`]),
//! which keeps peak memory near one copy of the model.

use std::ptr::NonNull;

/// A writable mapping being filled by a download. Unmapped on drop unless [`Region::freeze`]
/// hands it to the rest of the program.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    mapped: usize,
}

// SAFETY: a Region owns its mapping outright; moving it between threads moves that ownership.
unsafe impl Send for Region {}

impl Region {
    /// A zero-filled mapping for `len` bytes. Anonymous private memory is committed page by
    /// page as it is written, so a size announced by a store costs nothing until data arrives.
    pub fn new(len: usize) -> std::io::Result<Self> {
        if len == 0 {
            return Ok(Self {
                ptr: NonNull::dangling(),
                len: 0,
                mapped: 0,
            });
        }
        let (ptr, mapped) = crate::memory::map_anonymous(len, libc::MAP_NORESERVE)?;
        Ok(Self { ptr, len, mapped })
    }

    /// Bytes the file occupies.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where writers put bytes (see [`super::download`], which writes disjoint ranges of it from
    /// several tasks and hashes what is already written from another thread).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The bytes written so far, read-only (tests, small files).
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping is `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Makes the verified bytes read-only, registers them as pages the loader may give back
    /// once copied out, and keeps them for the life of the process.
    pub fn freeze(self) -> &'static [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr..ptr+mapped` is this region's own mapping; dropping write access cannot
        // invalidate the shared reference returned below.
        unsafe { libc::mprotect(self.ptr.as_ptr().cast(), self.mapped, libc::PROT_READ) };
        let region = std::mem::ManuallyDrop::new(self);
        // SAFETY: the mapping is never unmapped from here on (ManuallyDrop), `len` bytes long
        // and readable, so a 'static shared slice over it is sound.
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(region.ptr.as_ptr(), region.len) };
        crate::memory::register_copy(region.ptr.as_ptr() as usize, region.mapped);
        bytes
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: unmaps exactly the mapping `new` made; nothing borrows it any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::page_size;

    #[test]
    fn regions_are_page_aligned_frozen_read_only_and_releasable() {
        let page = page_size();
        let mut region = Region::new(3 * page + 10).unwrap();
        assert_eq!(region.as_mut_ptr() as usize % page, 0);
        // SAFETY: within the region, nobody else holds it.
        unsafe { std::ptr::write_bytes(region.as_mut_ptr(), 7, region.len()) };
        let frozen = region.freeze();
        assert!(frozen.iter().all(|b| *b == 7));
        // Whole pages inside the range go; the partial first and last page stay readable.
        assert_eq!(
            crate::memory::release_pages(&frozen[1..3 * page + 5]),
            2 * page
        );
        assert_eq!(frozen[0], 7);
        assert_eq!(frozen[3 * page + 9], 7);
        assert!(Region::new(0).unwrap().freeze().is_empty());
    }
}
