//! Where a bundle sits in a file: the one rule `seal` (every subcommand) and `serve` (reading
//! its own executable) apply, so both always read the same bytes.
//!
//! - A `serve` binary (ELF) carries its bundle in the `.sealserve` section, which must lie inside
//!   a loadable segment at the address it claims. Nothing else is accepted: no scanning for the
//!   "first parseable" candidate.
//! - A bare bundle file (what build.rs writes, or a copy of it) is a bundle from its first byte to
//!   its last.
//! - Either way the bundle marker must occur exactly once in the whole file, at the start of that
//!   bundle. A second occurrence anywhere (a bundle planted earlier in the file, a copy appended
//!   after it, a stray header) makes the file ambiguous, and it is refused.

use crate::bundle::{marker, Source, VerifyError, CHUNK, SECTION};
use object::{Object, ObjectSection, ObjectSegment};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// What kind of file holds the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// An ELF executable; the bundle is its `.sealserve` section.
    Elf,
    /// A bare bundle file.
    Bundle,
}

/// Where the bundle lies in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub container: Container,
    /// File offset of the bundle's first byte.
    pub offset: u64,
    /// Bundle length in bytes.
    pub len: u64,
}

impl Placement {
    /// The bundle's bytes, read from `file` (the file this placement was found in).
    pub fn source<'f>(&self, file: &'f File) -> Source<'f> {
        Source::File {
            file,
            offset: self.offset,
            len: self.len,
        }
    }
}

fn malformed(message: String) -> VerifyError {
    VerifyError::Malformed(message)
}

/// Finds the one bundle `file` holds, or says why the file is not acceptable.
pub fn locate(file: &File) -> Result<Placement, VerifyError> {
    let size = file
        .metadata()
        .map_err(|e| malformed(format!("cannot stat the file: {e}")))?
        .len();
    let mut magic = [0u8; 16];
    let head = &mut magic[..size.min(16) as usize];
    file.read_exact_at(head, 0)
        .map_err(|e| malformed(format!("cannot read the file: {e}")))?;
    let placement = if magic.starts_with(b"\x7fELF") {
        elf_section(file)?
    } else if magic == marker() {
        Placement {
            container: Container::Bundle,
            offset: 0,
            len: size,
        }
    } else {
        return Err(malformed(format!(
            "neither a serve binary (ELF with a {SECTION} section) nor a bundle file"
        )));
    };
    let found = marker_offsets(file, size)?;
    if found != [placement.offset] {
        let listed: Vec<String> = found.iter().map(u64::to_string).collect();
        return Err(malformed(format!(
            "the bundle marker occurs {} times in this file (at offsets {}), but a serve binary holds it exactly once, at the start of its {SECTION} section (offset {}); a second (planted or appended) bundle makes what seal checks and what serve runs ambiguous, so the file is refused",
            found.len(),
            listed.join(", "),
            placement.offset
        )));
    }
    Ok(placement)
}

/// The `.sealserve` section's file range, checked to lie in a loadable segment at the address
/// the section header claims (so the section header cannot point somewhere the program never
/// maps).
fn elf_section(file: &File) -> Result<Placement, VerifyError> {
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache)
        .map_err(|e| malformed(format!("not a readable ELF file: {e}")))?;
    let section = elf.section_by_name(SECTION).ok_or_else(|| {
        malformed(format!(
            "this ELF file has no {SECTION} section; is it a serve binary?"
        ))
    })?;
    let (offset, len) = section
        .file_range()
        .ok_or_else(|| malformed(format!("the {SECTION} section has no bytes in the file")))?;
    let address = section.address();
    let in_segment = elf.segments().any(|segment| {
        let (seg_offset, seg_len) = segment.file_range();
        offset >= seg_offset
            && offset.saturating_add(len) <= seg_offset.saturating_add(seg_len)
            && segment.address().checked_add(offset - seg_offset) == Some(address)
    });
    if !in_segment {
        return Err(malformed(format!(
            "the {SECTION} section (file offset {offset}, {len} bytes, address {address:#x}) does not lie in a loadable segment at that address"
        )));
    }
    Ok(Placement {
        container: Container::Elf,
        offset,
        len,
    })
}

/// Every offset at which the bundle marker occurs in the first `size` bytes of `file`, read in
/// chunks (overlapping by the marker length, so none is missed at a boundary).
fn marker_offsets(file: &File, size: u64) -> Result<Vec<u64>, VerifyError> {
    let needle = marker();
    let finder = memchr::memmem::Finder::new(&needle);
    let overlap = (needle.len() - 1) as u64;
    let mut buf = vec![0u8; CHUNK];
    let mut found = Vec::new();
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| malformed(format!("cannot read the file: {e}")))?;
        found.extend(finder.find_iter(&buf[..n]).map(|i| at + i as u64));
        if at + n as u64 >= size {
            break;
        }
        at += n as u64 - overlap;
    }
    found.dedup();
    Ok(found)
}
