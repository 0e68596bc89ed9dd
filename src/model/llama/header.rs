//! A bounds check of a GGUF header, walked before candle's `gguf_file::Content::read` parses it.
//!
//! Defence in depth: a GGUF only reaches the loader after the bundle's signature and digests
//! have been verified, so a malformed one means a signed bad file (a broken converter, a signing
//! mistake), not an attacker. Still, it must end as a clear [`HeaderError`] rather than an abort.
//! Candle 0.11 bounds most lengths by the bytes left, but not everything: a `general.alignment`
//! of 0 divides by zero, dimension products and `data offset + tensor offset` can overflow, the
//! byte-swapped magic is accepted and read as little-endian, and every metadata element becomes
//! a 32-byte `Value` (a 1-byte `u8` element: 32× the file). Here every length and count is
//! bounded by the bytes left, every product and sum is checked, and every tensor's data must lie
//! inside the file, so what candle then reads is known to fit.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Only versions 2 and 3
//! (64-bit lengths) are accepted; version 1 is refused as llama.cpp refuses it.

use candle_core::quantized::GgmlDType;
use std::collections::HashSet;

/// Metadata values (array elements included) a header may hold. Candle keeps each as a
/// 32-byte `Value`, so this caps the parsed metadata at 128 MiB whatever the file claims. The
/// largest vocabularies in use (262,144 tokens: tokens, scores and types, plus merges) stay
/// under 1.5 million values.
pub const MAX_METADATA_VALUES: u64 = 1 << 22;

/// Dimensions a tensor may have (ggml's `GGML_MAX_DIMS`, as candle).
const MAX_DIMS: u32 = 4;

/// The key that sets the tensor data alignment (default 32).
const ALIGNMENT_KEY: &str = "general.alignment";
const DEFAULT_ALIGNMENT: u64 = 32;

/// Why the header was refused. Byte positions count from the start of the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the file does not start with the GGUF magic (\"GGUF\", little-endian)")]
    Magic,
    #[error(
        "GGUF version {0} is not supported (2 and 3 are); re-convert with a current llama.cpp"
    )]
    Version(u32),
    #[error("the file ends inside {what} at byte {at}")]
    Truncated { what: &'static str, at: u64 },
    #[error("{what} at byte {at} claims {claimed} bytes, only {left} are left in the file")]
    TooLong {
        what: &'static str,
        at: u64,
        claimed: u128,
        left: u64,
    },
    #[error("metadata value type {0} at byte {1} is not a GGUF type")]
    ValueType(u32, u64),
    #[error("metadata {0:?} is an array of arrays, which no GGUF writer produces")]
    NestedArray(String),
    #[error("the metadata holds more than 2^22 values (array elements included)")]
    TooManyValues,
    #[error("metadata key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("general.alignment is {0}; it must be a power of two")]
    Alignment(u64),
    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),
    #[error("tensor {name:?} has {dims} dimensions (at most 4)")]
    Dims { name: String, dims: u32 },
    #[error("tensor {name:?}: shape {shape:?} has more elements than a size can count")]
    Elements { name: String, shape: Vec<u64> },
    #[error("tensor {name:?} has the unknown ggml type {id}")]
    TensorType { name: String, id: u32 },
    #[error("tensor {name:?}: {elements} elements do not fill whole {dtype:?} blocks of {block}")]
    Blocks {
        name: String,
        elements: u64,
        dtype: GgmlDType,
        block: usize,
    },
    #[error("tensor {name:?}: {len} bytes at offset {offset} past the data start {data_start} lie outside the {file}-byte file")]
    TensorOutside {
        name: String,
        offset: u64,
        len: u128,
        data_start: u64,
        file: u64,
    },
}

/// Walks the whole header of `bytes` and checks that candle's parser will stay inside it.
pub fn check(bytes: &[u8]) -> Result<(), HeaderError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4, "the magic")? != b"GGUF" {
        return Err(HeaderError::Magic);
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // The smallest entries: a key or name length, a type (and dims count), one byte of value or
    // a data offset.
    r.fits(kv_count, 8 + 4 + 1, "the metadata count")?;
    r.fits(tensor_count, 8 + 4 + 4 + 8, "the tensor count")?;

    let mut values: u64 = 0;
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key")?;
        values += 1;
        let kind = r.u32("a metadata type")?;
        if key == ALIGNMENT_KEY {
            alignment = r.alignment(kind)?;
        } else {
            r.value(kind, &key, &mut values)?;
        }
        if values > MAX_METADATA_VALUES {
            return Err(HeaderError::TooManyValues);
        }
        if !keys.insert(key.clone()) {
            return Err(HeaderError::DuplicateKey(key));
        }
    }

    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let name = r.string("a tensor name")?;
        let dims = r.u32("a tensor's dimension count")?;
        if dims > MAX_DIMS {
            return Err(HeaderError::Dims { name, dims });
        }
        let mut shape = Vec::with_capacity(dims as usize);
        for _ in 0..dims {
            shape.push(r.u64("a tensor dimension")?);
        }
        let id = r.u32("a tensor type")?;
        let offset = r.u64("a tensor offset")?;
        let len = tensor_bytes(&name, &shape, id)?;
        if !names.insert(name.clone()) {
            return Err(HeaderError::DuplicateTensor(name));
        }
        tensors.push((name, offset, len));
    }

    // Tensor data starts at the next multiple of the alignment, as candle computes it.
    let file = bytes.len() as u64;
    let data_start = r.at.div_ceil(alignment).saturating_mul(alignment);
    for (name, offset, len) in tensors {
        let end = u128::from(data_start) + u128::from(offset) + len;
        if end > u128::from(file) {
            return Err(HeaderError::TensorOutside {
                name,
                offset,
                len,
                data_start,
                file,
            });
        }
    }
    Ok(())
}

/// Bytes of a tensor's data, from its shape and type, as candle computes them but checked.
fn tensor_bytes(name: &str, shape: &[u64], id: u32) -> Result<u128, HeaderError> {
    let Some(dtype) = ggml_type(id) else {
        return Err(HeaderError::TensorType {
            name: name.to_string(),
            id,
        });
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| HeaderError::Elements {
            name: name.to_string(),
            shape: shape.to_vec(),
        })?;
    let block = dtype.block_size();
    if !elements.is_multiple_of(block as u64) {
        return Err(HeaderError::Blocks {
            name: name.to_string(),
            elements,
            dtype,
            block,
        });
    }
    Ok(u128::from(elements / block as u64) * dtype.type_size() as u128)
}

/// The ggml type of a GGUF type id: the ids candle's (crate-private) `GgmlDType::from_u32`
/// knows, so that a type candle cannot read is refused here with the tensor's name.
fn ggml_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// GGUF value types (`gguf_type`).
mod kind {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Bytes of one scalar of a value type; `None` for strings, arrays and unknown types.
fn scalar_size(kind: u32) -> Option<u64> {
    match kind {
        kind::U8 | kind::I8 | kind::BOOL => Some(1),
        kind::U16 | kind::I16 => Some(2),
        kind::U32 | kind::I32 | kind::F32 => Some(4),
        kind::U64 | kind::I64 | kind::F64 => Some(8),
        _ => None,
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: u64,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        self.bytes.len() as u64 - self.at
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], HeaderError> {
        if n > self.left() {
            return Err(HeaderError::Truncated { what, at: self.at });
        }
        // `at + n <= len`, so both fit in usize.
        let start = self.at as usize;
        self.at += n;
        Ok(&self.bytes[start..start + n as usize])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, HeaderError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, HeaderError> {
        let b = self.take(8, what)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    }

    /// Refuses `count` items of at least `min` bytes each that cannot fit in what is left.
    fn fits(&self, count: u64, min: u64, what: &'static str) -> Result<(), HeaderError> {
        let claimed = u128::from(count) * u128::from(min);
        if claimed > u128::from(self.left()) {
            return Err(HeaderError::TooLong {
                what,
                at: self.at,
                claimed,
                left: self.left(),
            });
        }
        Ok(())
    }

    /// A length-prefixed string, read as candle reads it (trailing NULs dropped, lossy UTF-8),
    /// so that duplicates are judged on the names candle will use.
    fn string(&mut self, what: &'static str) -> Result<String, HeaderError> {
        let len = self.u64(what)?;
        self.fits(len, 1, what)?;
        let mut raw = self.take(len, what)?;
        while let [rest @ .., 0] = raw {
            raw = rest;
        }
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    /// Skips one metadata value of type `kind`, counting array elements into `values`.
    fn value(&mut self, kind: u32, key: &str, values: &mut u64) -> Result<(), HeaderError> {
        let at = self.at;
        if let Some(size) = scalar_size(kind) {
            self.take(size, "a metadata value")?;
            return Ok(());
        }
        match kind {
            kind::STRING => {
                let len = self.u64("a string value")?;
                self.fits(len, 1, "a string value")?;
                self.take(len, "a string value")?;
            }
            kind::ARRAY => {
                let element = self.u32("an array's element type")?;
                let count = self.u64("an array's length")?;
                *values = values.saturating_add(count);
                if *values > MAX_METADATA_VALUES {
                    return Err(HeaderError::TooManyValues);
                }
                match (element, scalar_size(element)) {
                    (_, Some(size)) => {
                        self.fits(count, size, "an array")?;
                        self.take(count * size, "an array")?;
                    }
                    (kind::STRING, None) => {
                        self.fits(count, 8, "an array of strings")?;
                        for _ in 0..count {
                            let len = self.u64("a string in an array")?;
                            self.fits(len, 1, "a string in an array")?;
                            self.take(len, "a string in an array")?;
                        }
                    }
                    (kind::ARRAY, None) => return Err(HeaderError::NestedArray(key.to_string())),
                    (other, None) => return Err(HeaderError::ValueType(other, self.at - 12)),
                }
            }
            other => return Err(HeaderError::ValueType(other, at - 4)),
        }
        Ok(())
    }

    /// `general.alignment`, as candle reads it (a non-negative integer of at most 32 bits; any
    /// other type means the default), refused unless a power of two.
    fn alignment(&mut self, kind: u32) -> Result<u64, HeaderError> {
        let size = scalar_size(kind);
        let value = match (kind, size) {
            (kind::U8 | kind::U16 | kind::U32, Some(n)) => {
                let b = self.take(n, "a metadata value")?;
                b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x))
            }
            (kind::I8 | kind::I16 | kind::I32, Some(n)) => {
                let b = self.take(n, "a metadata value")?;
                let unsigned = b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x));
                // Sign-extend from the value's width; a negative value means the default.
                let shift = 64 - 8 * n;
                let signed = ((unsigned << shift) as i64) >> shift;
                u64::try_from(signed).unwrap_or(DEFAULT_ALIGNMENT)
            }
            _ => {
                let mut ignored = 0;
                self.value(kind, ALIGNMENT_KEY, &mut ignored)?;
                DEFAULT_ALIGNMENT
            }
        };
        if !value.is_power_of_two() {
            return Err(HeaderError::Alignment(value));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF header writer for crafted inputs.
    struct Gguf(Vec<u8>);

    impl Gguf {
        fn new(version: u32, tensors: u64, kvs: u64) -> Self {
            let mut g = Gguf(b"GGUF".to_vec());
            g.u32(version).u64(tensors).u64(kvs);
            g
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
            self.str(name).u32(dims.len() as u32);
            for &d in dims {
                self.u64(d);
            }
            self.u32(ty).u64(offset)
        }
        fn pad(&mut self, n: usize) -> &mut Self {
            self.0.resize(self.0.len() + n, 0);
            self
        }
        fn check(&self) -> Result<(), HeaderError> {
            check(&self.0)
        }
        /// What candle makes of the same bytes (must not panic once `check` passed).
        fn candle(&self) -> candle_core::Result<()> {
            let mut cursor = std::io::Cursor::new(&self.0);
            candle_core::quantized::gguf_file::Content::read(&mut cursor).map(|_| ())
        }
    }

    /// The `what` of a `TooLong` refusal.
    fn too_long(result: Result<(), HeaderError>) -> &'static str {
        match result {
            Err(HeaderError::TooLong { what, .. }) => what,
            other => panic!("expected TooLong, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_header_passes_and_candle_reads_it() {
        let mut g = Gguf::new(3, 1, 3);
        g.str("general.architecture").u32(kind::STRING).str("llama");
        g.str("general.alignment").u32(kind::U32).u32(64);
        g.str("tokenizer.ggml.tokens")
            .u32(kind::ARRAY)
            .u32(kind::STRING)
            .u64(2)
            .str("a")
            .str("b");
        g.tensor("w", &[32, 2], 0, 0);
        let header = g.0.len();
        g.pad(header.next_multiple_of(64) - header + 32 * 2 * 4);
        assert_eq!(g.check(), Ok(()));
        assert!(g.candle().is_ok());
        // One byte short of the tensor's data.
        g.0.pop();
        assert!(matches!(g.check(), Err(HeaderError::TensorOutside { .. })));
    }

    #[test]
    fn magic_and_version() {
        assert_eq!(
            check(b"GGUF"),
            Err(HeaderError::Truncated {
                what: "the version",
                at: 4
            })
        );
        let mut swapped = Gguf::new(3, 0, 0);
        swapped.0[..4].copy_from_slice(b"FUGG");
        assert_eq!(swapped.check(), Err(HeaderError::Magic));
        // Candle takes the byte-swapped magic for a GGUF.
        assert!(swapped.candle().is_ok());
        assert_eq!(Gguf::new(1, 0, 0).check(), Err(HeaderError::Version(1)));
        assert_eq!(Gguf::new(4, 0, 0).check(), Err(HeaderError::Version(4)));
        assert_eq!(Gguf::new(2, 0, 0).check(), Ok(()));
    }

    #[test]
    fn counts_are_bounded_by_the_bytes_left() {
        let check = |tensors, kvs| Gguf::new(3, tensors, kvs).check();
        assert_eq!(too_long(check(0, u64::MAX)), "the metadata count");
        assert_eq!(too_long(check(1 << 40, 0)), "the tensor count");
    }

    #[test]
    fn string_and_array_lengths_are_bounded_by_the_bytes_left() {
        // A 30-odd-byte file whose key claims 2^63 bytes.
        let mut g = Gguf::new(3, 0, 1);
        g.u64(1 << 63).pad(13);
        assert_eq!(too_long(g.check()), "a metadata key");

        let mut g = Gguf::new(3, 0, 1);
        g.str("k").u32(kind::STRING).u64(u64::MAX);
        assert_eq!(too_long(g.check()), "a string value");

        let mut g = Gguf::new(3, 0, 1);
        g.str("k").u32(kind::ARRAY).u32(kind::U64).u64(1 << 61);
        assert!(matches!(g.check(), Err(HeaderError::TooManyValues)));

        let mut g = Gguf::new(3, 0, 1);
        g.str("k").u32(kind::ARRAY).u32(kind::U64).u64(1000).pad(64);
        assert_eq!(too_long(g.check()), "an array");

        let mut g = Gguf::new(3, 0, 1);
        g.str("k")
            .u32(kind::ARRAY)
            .u32(kind::STRING)
            .u64(2)
            .str("a")
            .u64(1 << 40);
        assert_eq!(too_long(g.check()), "a string in an array");
    }

    #[test]
    fn metadata_values_are_capped() {
        // 2^22 + 1 one-byte elements: allowed by the bytes, refused by the value cap (candle
        // would hold 128 MiB of `Value`s for a 4 MiB file).
        let mut g = Gguf::new(3, 0, 1);
        g.str("k")
            .u32(kind::ARRAY)
            .u32(kind::U8)
            .u64(MAX_METADATA_VALUES + 1);
        g.pad(MAX_METADATA_VALUES as usize + 1);
        assert_eq!(g.check(), Err(HeaderError::TooManyValues));
    }

    #[test]
    fn unknown_types_nested_arrays_and_duplicates() {
        let mut g = Gguf::new(3, 0, 1);
        g.str("k").u32(13).pad(8);
        assert!(matches!(g.check(), Err(HeaderError::ValueType(13, _))));

        let mut g = Gguf::new(3, 0, 1);
        g.str("k").u32(kind::ARRAY).u32(kind::ARRAY).u64(1).pad(16);
        assert_eq!(g.check(), Err(HeaderError::NestedArray("k".into())));

        let mut g = Gguf::new(3, 0, 2);
        g.str("k").u32(kind::U8).pad(1);
        // The same key once candle has dropped the trailing NUL.
        g.str("k\0").u32(kind::U8).pad(1);
        assert_eq!(g.check(), Err(HeaderError::DuplicateKey("k".into())));

        let mut g = Gguf::new(3, 2, 0);
        g.tensor("t", &[1], 0, 0).tensor("t", &[1], 0, 0).pad(64);
        assert_eq!(g.check(), Err(HeaderError::DuplicateTensor("t".into())));
    }

    #[test]
    fn alignment_zero_is_refused_where_candle_would_divide_by_zero() {
        for (ty, bytes) in [(kind::U32, 4), (kind::U8, 1), (kind::I16, 2)] {
            let mut g = Gguf::new(3, 0, 1);
            g.str("general.alignment").u32(ty).pad(bytes);
            assert_eq!(g.check(), Err(HeaderError::Alignment(0)));
        }
        let mut g = Gguf::new(3, 0, 1);
        g.str("general.alignment").u32(kind::U32).u32(24);
        assert_eq!(g.check(), Err(HeaderError::Alignment(24)));
        // A negative or non-integer alignment means the default, for candle and for us.
        let mut g = Gguf::new(3, 0, 1);
        g.str("general.alignment").u32(kind::I8).0.push(0xFF);
        assert_eq!(g.check(), Ok(()));
        assert!(g.candle().is_ok());
    }

    #[test]
    fn tensor_shapes_types_and_offsets() {
        let mut g = Gguf::new(3, 1, 0);
        g.tensor("t", &[1, 1, 1, 1, 1], 0, 0);
        assert_eq!(
            g.check(),
            Err(HeaderError::Dims {
                name: "t".into(),
                dims: 5
            })
        );

        // The product of the dimensions overflows 64 bits.
        let mut g = Gguf::new(3, 1, 0);
        g.tensor("t", &[1 << 32, 1 << 32], 0, 0);
        assert!(matches!(g.check(), Err(HeaderError::Elements { .. })));

        // Fits in 64 bits but not in the file.
        let mut g = Gguf::new(3, 1, 0);
        g.tensor("t", &[1 << 31, 1 << 31], 0, 0).pad(64);
        assert!(matches!(g.check(), Err(HeaderError::TensorOutside { .. })));

        let mut g = Gguf::new(3, 1, 0);
        g.tensor("t", &[32], 5, 0).pad(64);
        assert!(matches!(
            g.check(),
            Err(HeaderError::TensorType { id: 5, .. })
        ));

        // 33 elements are not whole Q8_0 blocks of 32.
        let mut g = Gguf::new(3, 1, 0);
        g.tensor("t", &[33], 8, 0).pad(128);
        assert!(matches!(g.check(), Err(HeaderError::Blocks { .. })));

        // data start + offset overflows 64 bits.
        let mut g = Gguf::new(3, 1, 0);
        g.tensor("t", &[1], 0, u64::MAX - 8).pad(64);
        assert!(matches!(g.check(), Err(HeaderError::TensorOutside { .. })));
    }

    #[test]
    fn truncated_anywhere_is_an_error_not_a_panic() {
        let mut g = Gguf::new(3, 1, 2);
        g.str("general.architecture").u32(kind::STRING).str("llama");
        g.str("xs")
            .u32(kind::ARRAY)
            .u32(kind::U32)
            .u64(3)
            .u32(1)
            .u32(2)
            .u32(3);
        g.tensor("w", &[4], 0, 0);
        let header = g.0.len();
        g.pad(64);
        assert_eq!(g.check(), Ok(()));
        for len in 0..header {
            assert!(check(&g.0[..len]).is_err(), "{len} bytes");
        }
    }
}
