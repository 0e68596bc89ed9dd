//! CPU matrix products of GGUF block-quantized weights (Q4_0, Q4_1, Q8_0) with many activation
//! rows at once.
//!
//! Why our own kernel: candle 0.11's CPU `QMatMul` has no SIMD dot product for Q4_1 at all (it
//! runs `vec_dot_unopt`, scalar), and for every block type it decodes each weight block again for
//! every activation row (`vec_dot_4` per row inside its row tiles). Decoding many sequences at
//! once only pays off if a weight block is read and unpacked once and then multiplied with every
//! row of the step: that is what turns one step of 8 streams into one pass over the weights.
//!
//! Layout: weights are repacked at load into tiles of 16 output rows. For one 32-value block of a
//! tile, byte group `g` holds 4 consecutive values of each of the 16 rows side by side
//! (`[g][row][4]`), so one 512-bit load feeds one `vpdpbusd` that advances 16 output columns by 4
//! values each, against 4 activation bytes broadcast to every lane. Nothing is reduced
//! horizontally. 4-bit values keep their nibble packing (byte = v[8g+j] | v[8g+4+j] << 4), so the
//! repacked weights are as small as the GGUF ones; scales stay f16.
//!
//! Activations are quantized per 32-value block to i8 with an f32 scale, as llama.cpp does
//! (Q8_0/Q8_1). The integer block sums are exact on every path; per block the float update is
//! `acc = fma(isum, d_w * d_a, acc)` (+ `fma(m_w, d_a * Σq_a, acc)` for Q4_1), in block order,
//! whatever the number of rows in the call. So a row's result never depends on which other rows
//! share the step: batching cannot change a sequence's tokens.

use super::ops::IsaCap;
use half::f16;
use rayon::prelude::*;

/// Values per quantization block (all supported types).
pub const BLOCK: usize = 32;
/// Output rows per tile.
pub const TILE: usize = 16;
/// Activation rows one kernel call keeps in registers.
const ROWS: usize = 8;

/// The GGUF block types with a native kernel here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    /// `d * (q - 8)`, q in 0..16.
    Q4_0,
    /// `d * q + m`, q in 0..16.
    Q4_1,
    /// `d * q`, q in -128..128.
    Q8_0,
}

impl QuantKind {
    /// Bytes of one GGUF block of this type.
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
            QuantKind::Q8_0 => 34,
        }
    }

    /// The kind a SIMD kernel's type parameter `K` names (0 = Q4_0, 1 = Q4_1, 2 = Q8_0): a
    /// constant, so each type gets its own loop.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    const fn from_param(k: u8) -> Self {
        match k {
            0 => QuantKind::Q4_0,
            1 => QuantKind::Q4_1,
            _ => QuantKind::Q8_0,
        }
    }

    /// Bytes of repacked quants per tile block (16 rows × 32 values).
    const fn tile_qs_bytes(self) -> usize {
        match self {
            QuantKind::Q4_0 | QuantKind::Q4_1 => TILE * BLOCK / 2,
            QuantKind::Q8_0 => TILE * BLOCK,
        }
    }

    /// The constant subtracted from stored quants (times the activation block sum) to get the
    /// real integer dot product.
    const fn offset(self) -> i32 {
        match self {
            QuantKind::Q4_0 => 8,
            QuantKind::Q4_1 => 0,
            QuantKind::Q8_0 => 128,
        }
    }
}

/// A weight matrix `[n, k]` (n outputs, k inputs) repacked into 16-row tiles.
pub struct PackedMatrix {
    kind: QuantKind,
    n: usize,
    k: usize,
    /// Blocks per row (`k / 32`).
    kb: usize,
    /// `[tile][block][tile_qs_bytes]`.
    qs: Vec<u8>,
    /// Scales `[tile][block][16]`.
    d: Vec<f16>,
    /// Q4_1 minimums `[tile][block][16]`; empty for other kinds.
    m: Vec<f16>,
}

/// Why raw GGUF bytes could not be repacked.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{k} inputs is not a multiple of the {BLOCK}-value block")]
    Inputs { k: usize },
    #[error("expected {expected} bytes for a [{n}, {k}] {kind:?} matrix, got {got}")]
    Size {
        kind: QuantKind,
        n: usize,
        k: usize,
        expected: usize,
        got: usize,
    },
}

impl PackedMatrix {
    /// Repacks row-major GGUF blocks of one or more matrices with the same `k` and `kind`,
    /// stacked along the output dimension (e.g. Q, K and V into one `[q+k+v, hidden]`).
    pub fn pack(kind: QuantKind, k: usize, parts: &[(&[u8], usize)]) -> Result<Self, PackError> {
        if !k.is_multiple_of(BLOCK) {
            return Err(PackError::Inputs { k });
        }
        let kb = k / BLOCK;
        let row_bytes = kb * kind.gguf_block_bytes();
        let mut rows: Vec<&[u8]> = Vec::new();
        for &(bytes, n) in parts {
            if bytes.len() != n * row_bytes {
                return Err(PackError::Size {
                    kind,
                    n,
                    k,
                    expected: n * row_bytes,
                    got: bytes.len(),
                });
            }
            rows.extend(bytes.chunks_exact(row_bytes));
        }
        let n = rows.len();
        let tiles = n.div_ceil(TILE);
        let qs_bytes = kind.tile_qs_bytes();
        let mut qs = vec![0u8; tiles * kb * qs_bytes];
        let mut d = vec![f16::ZERO; tiles * kb * TILE];
        let mut m = if kind == QuantKind::Q4_1 {
            vec![f16::ZERO; tiles * kb * TILE]
        } else {
            Vec::new()
        };
        let mut values = [0u8; BLOCK];
        for (row, bytes) in rows.iter().enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for b in 0..kb {
                let block = &bytes[b * kind.gguf_block_bytes()..(b + 1) * kind.gguf_block_bytes()];
                let at = (tile * kb + b) * TILE + r;
                d[at] = f16::from_le_bytes([block[0], block[1]]);
                let quants = match kind {
                    QuantKind::Q4_0 => &block[2..],
                    QuantKind::Q4_1 => {
                        m[at] = f16::from_le_bytes([block[2], block[3]]);
                        &block[4..]
                    }
                    QuantKind::Q8_0 => &block[2..],
                };
                let out = &mut qs[(tile * kb + b) * qs_bytes..(tile * kb + b + 1) * qs_bytes];
                match kind {
                    QuantKind::Q4_0 | QuantKind::Q4_1 => {
                        // GGUF: value j in the low nibble of byte j, value j+16 in the high one.
                        for j in 0..BLOCK / 2 {
                            values[j] = quants[j] & 0x0F;
                            values[j + BLOCK / 2] = quants[j] >> 4;
                        }
                        for g in 0..BLOCK / 8 {
                            for j in 0..4 {
                                out[(g * TILE + r) * 4 + j] =
                                    values[8 * g + j] | (values[8 * g + 4 + j] << 4);
                            }
                        }
                    }
                    QuantKind::Q8_0 => {
                        // Stored +128 so the weights are the unsigned operand of u8×i8 products.
                        for g in 0..BLOCK / 4 {
                            for j in 0..4 {
                                out[(g * TILE + r) * 4 + j] =
                                    (quants[4 * g + j] as i8 as i32 + 128) as u8;
                            }
                        }
                    }
                }
            }
        }
        Ok(Self {
            kind,
            n,
            k,
            kb,
            qs,
            d,
            m,
        })
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The block type.
    pub fn kind(&self) -> QuantKind {
        self.kind
    }

    /// Row `i` of the matrix as f32 (an embedding lookup when the matrix is a token table).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let (tile, r) = (i / TILE, i % TILE);
        let qs_bytes = self.kind.tile_qs_bytes();
        for b in 0..self.kb {
            let at = (tile * self.kb + b) * TILE + r;
            let d = self.d[at].to_f32();
            let m = if self.kind == QuantKind::Q4_1 {
                self.m[at].to_f32()
            } else {
                0.0
            };
            let tq = &self.qs[(tile * self.kb + b) * qs_bytes..];
            for j in 0..BLOCK {
                let q = self.quant(tq, r, j);
                out[b * BLOCK + j] = match self.kind {
                    QuantKind::Q4_1 => q as f32 * d + m,
                    _ => (q - self.kind.offset()) as f32 * d,
                };
            }
        }
    }

    /// Stored quant of value `j` of row `r` in one tile block (before the offset).
    #[inline(always)]
    fn quant(&self, tile_block: &[u8], r: usize, j: usize) -> i32 {
        match self.kind {
            QuantKind::Q4_0 | QuantKind::Q4_1 => {
                let (g, within) = (j / 8, j % 8);
                let byte = tile_block[(g * TILE + r) * 4 + within % 4];
                i32::from(if within < 4 { byte & 0x0F } else { byte >> 4 })
            }
            QuantKind::Q8_0 => i32::from(tile_block[((j / 4) * TILE + r) * 4 + j % 4]),
        }
    }
}

/// Activation rows quantized to i8 per 32-value block (llama.cpp's Q8_0/Q8_1 activations).
///
/// Stored block-major (`[block][row]`): the rows a kernel call multiplies lie at fixed offsets
/// from one pointer per block. With one pointer per row, 8 rows ran out of general registers
/// and the 8-row kernel spilled inside its inner loop.
#[derive(Default)]
pub struct QuantizedRows {
    rows: usize,
    k: usize,
    kb: usize,
    /// `[block][row][32]`.
    qs: Vec<i8>,
    /// Block scales `[block][row]`.
    d: Vec<f32>,
    /// Exact block sums of `qs` `[block][row]`.
    sums: Vec<i32>,
    /// `d · sum` per block `[block][row]` (the Q4_1 minimum's weight, computed once per row
    /// instead of once per weight tile).
    ds: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x` (`rows × k`, row-major), reusing this buffer's allocations.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        debug_assert_eq!(k % BLOCK, 0);
        let rows = x.len() / k;
        self.rows = rows;
        self.k = k;
        self.kb = k / BLOCK;
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * self.kb, 0.0);
        self.sums.resize(rows * self.kb, 0);
        self.ds.resize(rows * self.kb, 0.0);
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F/BW were detected at run time (`isa`).
            Isa::Vnni512 => unsafe {
                x86::quantize_avx512(x, self.kb, &mut self.qs, &mut self.d, &mut self.sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected at run time (`isa`).
            Isa::Avx2 => unsafe {
                x86::quantize_avx2(x, self.kb, &mut self.qs, &mut self.d, &mut self.sums)
            },
            _ => quantize_blocks(x, self.kb, &mut self.qs, &mut self.d, &mut self.sums),
        }
        for ((ds, d), sum) in self.ds.iter_mut().zip(&self.d).zip(&self.sums) {
            *ds = d * *sum as f32;
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Index of (row, block) in `d`, `sums` and `ds`; times 32 in `qs`.
    #[inline(always)]
    fn at(&self, row: usize, block: usize) -> usize {
        block * self.rows + row
    }
}

/// Where block `blk` of row-major `x` (`kb` blocks per row, `rows` rows) goes block-major.
#[inline(always)]
fn block_major(blk: usize, kb: usize, rows: usize) -> usize {
    (blk % kb) * rows + blk / kb
}

/// Per block: `d = max|x| / 127`, `q = round(x / d)` (halves away from zero, as `roundf`).
#[inline(always)]
fn quantize_blocks(x: &[f32], kb: usize, qs: &mut [i8], d: &mut [f32], sums: &mut [i32]) {
    let rows = d.len() / kb;
    for (blk, xb) in x.chunks_exact(BLOCK).enumerate() {
        let at = block_major(blk, kb, rows);
        let (qb, db, sb) = (
            &mut qs[at * BLOCK..(at + 1) * BLOCK],
            &mut d[at],
            &mut sums[at],
        );
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        // A subnormal scale has no finite inverse: `v * inf` would round to i32::MAX and
        // overflow the block sum (found by the gguf fuzz target). Such blocks are zero for
        // every purpose (|x| < 2^-126 · 127), so they quantize to zeros.
        let inv = 1.0 / scale;
        let inv = if inv.is_finite() { inv } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            let r = (v * inv).round() as i32;
            *q = r as i8;
            sum += r;
        }
        *db = scale;
        *sb = sum;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    /// AVX-512 (F, BW) with VNNI `vpdpbusd`.
    Vnni512,
    /// AVX2 + FMA + F16C, u8×i8 products through `vpmaddubsw`.
    Avx2,
    /// Portable Rust.
    Scalar,
}

impl Isa {
    /// Activation rows per kernel call (at most [`ROWS`]). AVX2 has 16 vector registers: at 8
    /// rows the kernel's accumulators and broadcast activations spilled to the stack, and two
    /// calls of 4 rows (the tile's weights decoded twice, the second time from L1) made 8-stream
    /// decode ×1.23 faster (median of 8 paired rounds on the Xeon with `SEALSERVE_LLM_ISA=avx2`,
    /// 2026-12-01). A row's sums do not depend on which call it is in.
    fn rows_per_call(self) -> usize {
        match self {
            Isa::Avx2 => 4,
            Isa::Vnni512 | Isa::Scalar => ROWS,
        }
    }
}

/// Which kernels the CPU engine runs on this machine (matrix products and activation
/// quantization; attention and the per-row loops follow the same choice), for the startup log
/// and `/info`: the figures of one kernel family say nothing about another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CpuKernels {
    /// AVX-512 F/BW with VNNI `vpdpbusd`.
    Avx512Vnni,
    /// AVX2, FMA and F16C.
    Avx2,
    /// The portable loops.
    Portable,
}

impl std::fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        })
    }
}

/// The kernels [`matmul`] and [`QuantizedRows::quantize`] use here (see `SEALSERVE_LLM_ISA`).
pub fn cpu_kernels() -> CpuKernels {
    match isa() {
        Isa::Vnni512 => CpuKernels::Avx512Vnni,
        Isa::Avx2 => CpuKernels::Avx2,
        Isa::Scalar => CpuKernels::Portable,
    }
}

/// The kernels this CPU can run, widest first (the portable one last, always).
fn detected() -> Vec<Isa> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
        {
            out.push(Isa::Vnni512);
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            out.push(Isa::Avx2);
        }
    }
    out.push(Isa::Scalar);
    out
}

/// The kernel matmul uses: the widest detected one the cap allows ([`super::ops::isa_cap`]).
#[allow(unreachable_code)]
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        return *ISA.get_or_init(|| {
            let cap = super::ops::isa_cap();
            detected()
                .into_iter()
                .find(|&isa| match isa {
                    Isa::Vnni512 => cap == IsaCap::Best,
                    Isa::Avx2 => cap >= IsaCap::Avx2,
                    Isa::Scalar => true,
                })
                .unwrap_or(Isa::Scalar)
        });
    }
    Isa::Scalar
}

/// `out[row][col] = Σ_k a[row][k] · w[col][k]` for every activation row: `out` is
/// `a.rows() × w.rows()`. Tiles are spread over the rayon pool; each tile walks all rows.
pub fn matmul(w: &PackedMatrix, a: &QuantizedRows, out: &mut [f32]) {
    assert_eq!(a.k, w.k, "activation width does not match the weights");
    assert_eq!(out.len(), a.rows * w.n, "output buffer has the wrong size");
    let tiles = w.n.div_ceil(TILE);
    let threads = rayon::current_num_threads().max(1);
    // A few tasks per thread for balance, but whole tiles and not too small (a task switch costs
    // more than a small tile's work).
    let per_task = tiles.div_ceil(threads * 4).max(1);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let isa = isa();
    let run = |task: usize| {
        let first = task * per_task;
        let last = tiles.min(first + per_task);
        // Once per task: zeroed per tile it was a memset call per tile and row chunk. A
        // kernel writes all of rows 0..count, and only those are read.
        let mut block = [[0f32; TILE]; ROWS];
        for tile in first..last {
            let mut row0 = 0;
            while row0 < a.rows {
                let count = (a.rows - row0).min(isa.rows_per_call());
                tile_rows(isa, w, tile, a, row0, count, &mut block);
                let cols = TILE.min(w.n - tile * TILE);
                for (r, res) in block.iter().take(count).enumerate() {
                    // SAFETY: each (row, tile) output range is written by exactly one task, and
                    // the range lies inside `out` (checked by the asserts above).
                    unsafe {
                        let dst = out_ptr.get().add((row0 + r) * w.n + tile * TILE);
                        if cols == TILE {
                            // A whole tile: one inlined 64-byte store (a length known only
                            // at run time made this a memmove call per row and tile).
                            (dst as *mut [f32; TILE]).write_unaligned(*res);
                        } else {
                            std::ptr::copy_nonoverlapping(res.as_ptr(), dst, cols);
                        }
                    }
                }
                row0 += count;
            }
        }
    };
    let tasks = tiles.div_ceil(per_task);
    if super::team::parallel() {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint output ranges from rayon tasks (see `matmul`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One tile (16 outputs) for `count` (≤ 8) activation rows starting at `row0`.
fn tile_rows(
    isa: Isa,
    w: &PackedMatrix,
    tile: usize,
    a: &QuantizedRows,
    row0: usize,
    count: usize,
    out: &mut [[f32; TILE]; ROWS],
) {
    macro_rules! dispatch {
        ($($f:ident)::+) => {
            match count {
                1 => $($f)::+::<1>(w, tile, a, row0, out),
                2 => $($f)::+::<2>(w, tile, a, row0, out),
                3 => $($f)::+::<3>(w, tile, a, row0, out),
                4 => $($f)::+::<4>(w, tile, a, row0, out),
                5 => $($f)::+::<5>(w, tile, a, row0, out),
                6 => $($f)::+::<6>(w, tile, a, row0, out),
                7 => $($f)::+::<7>(w, tile, a, row0, out),
                _ => $($f)::+::<8>(w, tile, a, row0, out),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU features were detected at run time (`isa`); all indices are checked by
        // `matmul` (rows and tile in range, k equal).
        Isa::Vnni512 => unsafe { dispatch!(x86::tile_vnni512) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { dispatch!(x86::tile_avx2) },
        _ => dispatch!(tile_scalar),
    }
}

/// Portable kernel with the same arithmetic (exact integer block sums, then the same fmas in the
/// same order) as the SIMD ones.
fn tile_scalar<const R: usize>(
    w: &PackedMatrix,
    tile: usize,
    a: &QuantizedRows,
    row0: usize,
    out: &mut [[f32; TILE]; ROWS],
) {
    let kb = w.kb;
    let qs_bytes = w.kind.tile_qs_bytes();
    let offset = w.kind.offset();
    let mut acc = [[0f32; TILE]; R];
    for b in 0..kb {
        let tq = &w.qs[(tile * kb + b) * qs_bytes..(tile * kb + b + 1) * qs_bytes];
        let at = (tile * kb + b) * TILE;
        for (i, acc) in acc.iter_mut().enumerate() {
            let row = row0 + i;
            let at_a = a.at(row, b);
            let aq = &a.qs[at_a * BLOCK..(at_a + 1) * BLOCK];
            let da = a.d[at_a];
            let asum = a.sums[at_a];
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut isum = 0i32;
                for (j, &q) in aq.iter().enumerate() {
                    isum += w.quant(tq, r, j) * i32::from(q);
                }
                isum -= offset * asum;
                let scale = w.d[at + r].to_f32() * da;
                *acc = (isum as f32).mul_add(scale, *acc);
                if w.kind == QuantKind::Q4_1 {
                    *acc = w.m[at + r].to_f32().mul_add(a.ds[at_a], *acc);
                }
            }
        }
    }
    out[..R].copy_from_slice(&acc);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedMatrix, QuantKind, QuantizedRows, BLOCK, ROWS, TILE};
    use crate::model::llama::ops::x86::{reduce16, AddI32, Combine, Max};
    use std::arch::x86_64::*;

    /// `quantize_blocks` for 8 blocks at a time, as [`quantize_avx512`] for 16 (the same
    /// scales, rounding, NaN handling and exact sums, bit for bit). Compiled from the portable
    /// loops it was ~6 % of an 8-stream step (profile on the Xeon with `SEALSERVE_LLM_ISA=avx2`),
    /// most of it in two horizontal reductions and two divisions per block.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_avx2(
        x: &[f32],
        kb: usize,
        qs: &mut [i8],
        d: &mut [f32],
        sums: &mut [i32],
    ) {
        use crate::model::llama::ops::avx2;
        let rows = d.len() / kb;
        let blocks = x.len() / BLOCK;
        assert!(qs.len() >= blocks * BLOCK && d.len() >= blocks && sums.len() >= blocks);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        let xp = x.as_ptr();
        // packs_epi32 then packs_epi16 leave each 128-bit half holding 4 values of each of the
        // 4 inputs; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut first = 0;
        while first < blocks {
            let n = (blocks - first).min(8);
            // Largest magnitudes; `max` returns its second operand when the first is NaN, so
            // NaNs are skipped as in the scalar fold.
            let mut amax = [_mm256_setzero_ps(); 8];
            let mut at = [0usize; 8];
            for (i, m) in amax.iter_mut().enumerate().take(n) {
                at[i] = super::block_major(first + i, kb, rows);
                let p = xp.add((first + i) * BLOCK);
                for h in 0..4 {
                    let a = _mm256_and_ps(_mm256_loadu_ps(p.add(8 * h)), abs_mask);
                    *m = _mm256_max_ps(a, *m);
                }
            }
            let amax = avx2::reduce8::<avx2::Max>(&amax);
            let scale = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
            let inv = _mm256_div_ps(_mm256_set1_ps(1.0), scale);
            let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(
                _mm256_and_ps(inv, abs_mask),
                _mm256_set1_ps(f32::INFINITY),
            );
            let mut invs = [0f32; 8];
            _mm256_storeu_ps(invs.as_mut_ptr(), _mm256_and_ps(finite, inv));
            let mut scales = [0f32; 8];
            _mm256_storeu_ps(scales.as_mut_ptr(), scale);

            let mut totals = [_mm256_setzero_ps(); 8];
            for (i, total) in totals.iter_mut().enumerate().take(n) {
                let p = xp.add((first + i) * BLOCK);
                let inv = _mm256_set1_ps(invs[i]);
                let mut q = [_mm256_setzero_si256(); 4];
                for (h, q) in q.iter_mut().enumerate() {
                    *q = round_away8(_mm256_mul_ps(_mm256_loadu_ps(p.add(8 * h)), inv));
                }
                let s =
                    _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
                *total = _mm256_castsi256_ps(s);
                // |q| ≤ 127, so the saturating packs change nothing.
                let bytes = _mm256_packs_epi16(
                    _mm256_packs_epi32(q[0], q[1]),
                    _mm256_packs_epi32(q[2], q[3]),
                );
                _mm256_storeu_si256(
                    qs.as_mut_ptr().add(at[i] * BLOCK) as *mut __m256i,
                    _mm256_permutevar8x32_epi32(bytes, order),
                );
                *d.get_unchecked_mut(at[i]) = scales[i];
            }
            let totals = avx2::reduce8::<avx2::AddI32>(&totals);
            let mut block_sums = [0i32; 8];
            _mm256_storeu_si256(
                block_sums.as_mut_ptr() as *mut __m256i,
                _mm256_castps_si256(totals),
            );
            for (&at, &s) in at.iter().zip(&block_sums).take(n) {
                *sums.get_unchecked_mut(at) = s;
            }
            first += n;
        }
    }

    /// [`round_away`] on 8 lanes (no `ternarylogic` or mask registers in AVX2: `or` and `and`).
    #[inline(always)]
    pub(super) unsafe fn round_away8(r: __m256) -> __m256i {
        let sign = _mm256_and_ps(r, _mm256_set1_ps(-0.0));
        let signed_half = _mm256_or_ps(sign, _mm256_set1_ps(0.5));
        let magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0), r);
        let big = _mm256_cmp_ps::<_CMP_GE_OQ>(magnitude, _mm256_set1_ps(0.5));
        _mm256_and_si256(
            _mm256_castps_si256(big),
            _mm256_cvttps_epi32(_mm256_add_ps(r, signed_half)),
        )
    }

    /// `quantize_blocks` for 16 blocks at a time: the same scales (`max / 127`, then `1 / d`, as
    /// two divisions), the same rounding (halves away from zero), NaN to 0, the same exact sums.
    ///
    /// Why 16 at a time: one block per iteration spent most of its time in two horizontal
    /// reductions (the block's largest magnitude, then its sum) and two scalar divisions in one
    /// dependency chain. This runs on one thread while the other waits for the step's next
    /// matrix product (~5 % of an 8-stream decode step). Here the 16 blocks' reductions share
    /// one shuffle tree, the divisions are two vector ones, and the blocks are independent.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_avx512(
        x: &[f32],
        kb: usize,
        qs: &mut [i8],
        d: &mut [f32],
        sums: &mut [i32],
    ) {
        let rows = d.len() / kb;
        let blocks = x.len() / BLOCK;
        assert!(qs.len() >= blocks * BLOCK && d.len() >= blocks && sums.len() >= blocks);
        let abs_mask = _mm512_set1_epi32(i32::MAX);
        let half = _mm512_castps_si512(_mm512_set1_ps(0.5));
        let xp = x.as_ptr();
        let mut first = 0;
        while first < blocks {
            let n = (blocks - first).min(16);
            // Each block's largest magnitude, reduced 16 blocks together. `max` returns its
            // second operand when the first is NaN: NaNs are skipped, as in the scalar fold.
            let mut amax = [_mm512_setzero_ps(); 16];
            let mut at = [0usize; 16];
            for (i, m) in amax.iter_mut().enumerate().take(n) {
                at[i] = super::block_major(first + i, kb, rows);
                let p = xp.add((first + i) * BLOCK);
                let a = _mm512_abs_ps(_mm512_loadu_ps(p));
                let b = _mm512_abs_ps(_mm512_loadu_ps(p.add(16)));
                *m = _mm512_max_ps(b, _mm512_max_ps(a, _mm512_setzero_ps()));
            }
            let amax = reduce16::<Max>(&amax);
            // Two divisions, as the scalar code: IEEE division is exact-rounded in both.
            let scale = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
            let inv = _mm512_div_ps(_mm512_set1_ps(1.0), scale);
            // A subnormal (or zero) scale has no finite inverse: such blocks quantize to zeros.
            let finite =
                _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(inv), _mm512_set1_ps(f32::INFINITY));
            let mut invs = [0f32; 16];
            _mm512_storeu_ps(invs.as_mut_ptr(), _mm512_maskz_mov_ps(finite, inv));
            let mut scales = [0f32; 16];
            _mm512_storeu_ps(scales.as_mut_ptr(), scale);

            let mut totals = [_mm512_setzero_ps(); 16];
            for (i, total) in totals.iter_mut().enumerate().take(n) {
                let at = at[i];
                let p = xp.add((first + i) * BLOCK);
                let inv = _mm512_set1_ps(invs[i]);
                for h in 0..2 {
                    let r = _mm512_mul_ps(_mm512_loadu_ps(p.add(16 * h)), inv);
                    let q = round_away(r, abs_mask, half);
                    *total = AddI32::op(*total, _mm512_castsi512_ps(q));
                    _mm_storeu_si128(
                        qs.as_mut_ptr().add(at * BLOCK + 16 * h) as *mut __m128i,
                        _mm512_cvtepi32_epi8(q),
                    );
                }
                *d.get_unchecked_mut(at) = scales[i];
            }
            let totals = reduce16::<AddI32>(&totals);
            let mut block_sums = [0i32; 16];
            _mm512_storeu_si512(
                block_sums.as_mut_ptr() as *mut _,
                _mm512_castps_si512(totals),
            );
            for (&at, &s) in at.iter().zip(&block_sums).take(n) {
                *sums.get_unchecked_mut(at) = s;
            }
            first += n;
        }
    }

    /// `roundf` to i32 for |r| < 2^31, NaN to 0: `trunc(r ± 0.5)` where `|r| ≥ 0.5`, else 0.
    ///
    /// Why this is exact: for |r| ≥ 0.5 the sum `|r| + 0.5` is exact within r's binade (0.5 is
    /// a multiple of its ulp), and where it rounds (crossing into the next binade) it cannot
    /// round below that binade's first value, an integer that `round` also gives. Below 0.5 the
    /// sum could round up to 1 (0.5 − 2⁻²⁵ + 0.5), hence the mask, which is also false for NaN.
    /// Checked against `f32::round` for every |r| ≤ 128 by the test below.
    #[inline(always)]
    pub(super) unsafe fn round_away(r: __m512, abs_mask: __m512i, half: __m512i) -> __m512i {
        let ri = _mm512_castps_si512(r);
        // copysign(0.5, r): the sign bit from r, the rest from 0.5.
        let signed_half =
            _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xCA>(abs_mask, half, ri));
        let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(r), _mm512_set1_ps(0.5));
        _mm512_maskz_cvttps_epi32(big, _mm512_add_ps(r, signed_half))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub(super) unsafe fn tile_vnni512<const R: usize>(
        w: &PackedMatrix,
        tile: usize,
        a: &QuantizedRows,
        row0: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        match w.kind {
            QuantKind::Q4_0 => vnni512::<R, 0>(w, tile, a, row0, out),
            QuantKind::Q4_1 => vnni512::<R, 1>(w, tile, a, row0, out),
            QuantKind::Q8_0 => vnni512::<R, 2>(w, tile, a, row0, out),
        }
    }

    /// How far ahead of the block being multiplied its tile's weights are prefetched.
    const PREFETCH_BYTES: usize = 2048;

    /// Where one kernel call's tile and activation rows start (both SIMD kernels walk the same
    /// layouts).
    struct TileData {
        /// The tile's first block of quants; block `b` at `b * qs_bytes`.
        tq0: *const u8,
        /// The tile's f16 scales (and Q4_1 minimums; the scales again otherwise), `TILE` a block.
        d0: *const half::f16,
        m0: *const half::f16,
        /// Block-major activations: block b's rows row0.. start at `xq + b * rows * BLOCK`.
        xq: *const u8,
        rows: usize,
        /// Per (block, row) from row0: scale, scale × sum, integer sum (at `b * rows + i`).
        ad: *const f32,
        ads: *const f32,
        asums: *const i32,
    }

    impl TileData {
        /// `qs_bytes`: the tile's quant bytes per block (a constant per kernel instantiation).
        /// SAFETY (caller): `tile` and `row0` lie inside `w` and `a` (checked by `matmul`).
        #[inline(always)]
        unsafe fn new(
            w: &PackedMatrix,
            tile: usize,
            a: &QuantizedRows,
            row0: usize,
            qs_bytes: usize,
        ) -> Self {
            let kb = w.kb;
            let d0 = w.d.as_ptr().add(tile * kb * TILE);
            Self {
                tq0: w.qs.as_ptr().add(tile * kb * qs_bytes),
                d0,
                m0: if w.kind == QuantKind::Q4_1 {
                    w.m.as_ptr().add(tile * kb * TILE)
                } else {
                    d0
                },
                xq: a.qs.as_ptr().add(row0 * BLOCK) as *const u8,
                rows: a.rows,
                ad: a.d.as_ptr().add(row0),
                ads: a.ds.as_ptr().add(row0),
                asums: a.sums.as_ptr().add(row0),
            }
        }

        /// Block `b`'s quants, after prefetching those `PREFETCH_BYTES` ahead and their scales.
        ///
        /// The weights stream from memory once per step; the hardware prefetcher alone left the
        /// multiply work of a many-row step waiting on them (rows × tiles took the sum of the
        /// two times, not the larger). 2 KiB ahead covered the latency on the AVX-512 Xeon; on
        /// the AVX2 kernel (Zen 5 capped to AVX2, 2026-12-03) it made 8-stream decode ~×1.13
        /// and one stream ~×1.10 faster (16 paired rounds against the build without it). A
        /// prefetch past the end of the matrix is a harmless hint, hence `wrapping_add`.
        #[inline(always)]
        unsafe fn block(&self, b: usize, qs_bytes: usize, has_min: bool) -> *const u8 {
            let tq = self.tq0.add(b * qs_bytes);
            let ahead = tq.wrapping_add(PREFETCH_BYTES);
            for line in (0..qs_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
            }
            let scales = (b + PREFETCH_BYTES / qs_bytes) * TILE;
            _mm_prefetch::<_MM_HINT_T0>(self.d0.wrapping_add(scales) as *const i8);
            if has_min {
                _mm_prefetch::<_MM_HINT_T0>(self.m0.wrapping_add(scales) as *const i8);
            }
            tq
        }

        /// Block `b`'s activation rows (32 bytes each, consecutive).
        #[inline(always)]
        unsafe fn rows_of(&self, b: usize) -> *const u8 {
            self.xq.add(b * self.rows * BLOCK)
        }
    }

    /// `K`: the weight type ([`QuantKind::from_param`]).
    ///
    /// Per block the 8 weight vectors are loaded and unpacked once, then each row's block sum
    /// is built from two independent `vpdpbusd` chains (one long chain made a single row wait
    /// on its latency) and folded into the float accumulator right away.
    #[inline(always)]
    unsafe fn vnni512<const R: usize, const K: u8>(
        w: &PackedMatrix,
        tile: usize,
        a: &QuantizedRows,
        row0: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let kind = const { QuantKind::from_param(K) };
        let nibbles = kind != QuantKind::Q8_0;
        let has_min = kind == QuantKind::Q4_1;
        let offset = const { QuantKind::from_param(K).offset() };
        let qs_bytes = const { QuantKind::from_param(K).tile_qs_bytes() };
        let t = TileData::new(w, tile, a, row0, qs_bytes);
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..w.kb {
            let tq = t.block(b, qs_bytes, has_min);
            // Weight vector j multiplies activation bytes 4j..4j+4 of the block.
            let mut wv = [_mm512_setzero_si512(); 8];
            if nibbles {
                for g in 0..4 {
                    let v = _mm512_loadu_si512(tq.add(g * 64) as *const _);
                    wv[2 * g] = _mm512_and_si512(v, low);
                    wv[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                }
            } else {
                for (g, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(tq.add(g * 64) as *const _);
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(t.d0.add(b * TILE) as *const _));
            let mw = if has_min {
                _mm512_cvtph_ps(_mm256_loadu_si256(t.m0.add(b * TILE) as *const _))
            } else {
                _mm512_setzero_ps()
            };
            let xb = t.rows_of(b);
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = xb.add(i * BLOCK);
                let mut s = [_mm512_setzero_si512(); 2];
                for (j, wv) in wv.iter().enumerate() {
                    let xj = _mm512_set1_epi32((x.add(4 * j) as *const i32).read_unaligned());
                    s[j % 2] = _mm512_dpbusd_epi32(s[j % 2], *wv, xj);
                }
                let at = b * t.rows + i;
                let mut isum = _mm512_add_epi32(s[0], s[1]);
                if offset != 0 {
                    isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(offset * *t.asums.add(at)));
                }
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*t.ad.add(at)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
                if has_min {
                    *acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(*t.ads.add(at)), *acc);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), *acc);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const R: usize>(
        w: &PackedMatrix,
        tile: usize,
        a: &QuantizedRows,
        row0: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        match w.kind {
            QuantKind::Q4_0 => avx2::<R, 0>(w, tile, a, row0, out),
            QuantKind::Q4_1 => avx2::<R, 1>(w, tile, a, row0, out),
            QuantKind::Q8_0 => avx2::<R, 2>(w, tile, a, row0, out),
        }
    }

    /// One group of 4 values per row of a nibble block, for 4 rows: both halves of the tile
    /// unpacked once (ymm8..11), each row's two broadcasts (ymm13, ymm14) feeding both halves.
    #[rustfmt::skip]
    macro_rules! q4_group {
        ($g:literal) => {
            concat!(
                "vmovdqu ymm9, ymmword ptr [{tq} + 64*", stringify!($g), "]\n",
                "vpand ymm8, ymm9, ymm12\n",
                "vpsrlw ymm9, ymm9, 4\n",
                "vpand ymm9, ymm9, ymm12\n",
                "vmovdqu ymm11, ymmword ptr [{tq} + 64*", stringify!($g), " + 32]\n",
                "vpand ymm10, ymm11, ymm12\n",
                "vpsrlw ymm11, ymm11, 4\n",
                "vpand ymm11, ymm11, ymm12\n",
                q4_row!($g, 0, "ymm0", "ymm1"),
                q4_row!($g, 1, "ymm2", "ymm3"),
                q4_row!($g, 2, "ymm4", "ymm5"),
                q4_row!($g, 3, "ymm6", "ymm7"),
            )
        };
    }

    /// Row `$i`'s part of [`q4_group`]: pair sums added as i16 into `$p0` (outputs 0..8) and
    /// `$p1` (8..16).
    #[rustfmt::skip]
    macro_rules! q4_row {
        ($g:literal, $i:literal, $p0:literal, $p1:literal) => {
            concat!(
                "vpbroadcastd ymm13, dword ptr [{x} + 32*", stringify!($i), " + 8*", stringify!($g), "]\n",
                "vpmaddubsw ymm15, ymm8, ymm13\n",
                "vpaddw ", $p0, ", ", $p0, ", ymm15\n",
                "vpmaddubsw ymm15, ymm10, ymm13\n",
                "vpaddw ", $p1, ", ", $p1, ", ymm15\n",
                "vpbroadcastd ymm14, dword ptr [{x} + 32*", stringify!($i), " + 8*", stringify!($g), " + 4]\n",
                "vpmaddubsw ymm15, ymm9, ymm14\n",
                "vpaddw ", $p0, ", ", $p0, ", ymm15\n",
                "vpmaddubsw ymm15, ymm11, ymm14\n",
                "vpaddw ", $p1, ", ", $p1, ", ymm15\n",
            )
        };
    }

    /// The i16 pair sums of one nibble block for 4 rows (`[row][half]`), in assembly.
    ///
    /// Why not intrinsics: the 8 pair sums, 4 unpacked weight vectors, the mask and 3
    /// temporaries fill the 16 ymm registers exactly, and LLVM's scheduler, free to reorder,
    /// hoisted broadcasts and products of later groups and spilled them (the block loop stored
    /// and reloaded ~20 vectors). Written out, the loop has no spill by construction.
    #[target_feature(enable = "avx2")]
    unsafe fn q4_block4(tq: *const u8, x: *const u8, low: __m256i) -> [[__m256i; 2]; 4] {
        let (p00, p01, p10, p11, p20, p21, p30, p31): (
            __m256i,
            __m256i,
            __m256i,
            __m256i,
            __m256i,
            __m256i,
            __m256i,
            __m256i,
        );
        // SAFETY (caller): `tq` points at a nibble block of a tile (256 bytes) and `x` at 4
        // consecutive activation rows of one block (4 · 32 bytes).
        std::arch::asm!(
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "vpxor ymm4, ymm4, ymm4",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm6, ymm6, ymm6",
            "vpxor ymm7, ymm7, ymm7",
            q4_group!(0),
            q4_group!(1),
            q4_group!(2),
            q4_group!(3),
            tq = in(reg) tq,
            x = in(reg) x,
            in("ymm12") low,
            out("ymm0") p00,
            out("ymm1") p01,
            out("ymm2") p10,
            out("ymm3") p11,
            out("ymm4") p20,
            out("ymm5") p21,
            out("ymm6") p30,
            out("ymm7") p31,
            out("ymm8") _,
            out("ymm9") _,
            out("ymm10") _,
            out("ymm11") _,
            out("ymm13") _,
            out("ymm14") _,
            out("ymm15") _,
            options(pure, readonly, nostack, preserves_flags),
        );
        [[p00, p01], [p10, p11], [p20, p21], [p30, p31]]
    }

    /// `K`: the weight type ([`QuantKind::from_param`]).
    ///
    /// Register budget (16 ymm): per 4-value group both halves of the tile (outputs 0..8 and
    /// 8..16) are unpacked once (4 registers) and multiplied with every row, so each row's
    /// broadcast activations serve both halves; the 2·R integer sums (8 at R = 4) stay in
    /// registers for the whole block. The float accumulators are updated once per block and
    /// wait in `out` (L1) between blocks: 8 of them next to 8 sums left no room for the
    /// unpacked weights. At R = 4, the case 8-stream decode runs, the nibble block is
    /// [`q4_block4`] (assembly); the other row counts leave LLVM fewer registers to spill.
    ///
    /// Kernels bench on the 2-core AMD EPYC Turin with `SEALSERVE_LLM_ISA=avx2` (2026-12-03,
    /// benches/RESULTS.md): Q4_1 at 8 rows ×1.2–1.3 against the previous loop (one half tile's
    /// broadcasts per group, accumulators in registers, ~20 spills a block); with the prefetch
    /// ([`TileData::block`]), 8-stream decode ×1.18 and one stream ×1.17 in 20 paired rounds.
    #[inline(always)]
    unsafe fn avx2<const R: usize, const K: u8>(
        w: &PackedMatrix,
        tile: usize,
        a: &QuantizedRows,
        row0: usize,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let kind = const { QuantKind::from_param(K) };
        let nibbles = kind != QuantKind::Q8_0;
        let has_min = kind == QuantKind::Q4_1;
        // Q8_0's offset is folded into signs instead (the 8-bit loop below).
        let offset = if nibbles { kind.offset() } else { 0 };
        let qs_bytes = const { QuantKind::from_param(K).tile_qs_bytes() };
        let t = TileData::new(w, tile, a, row0, qs_bytes);
        let low = _mm256_set1_epi8(0x0F);
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let bcast =
            |x: *const u8, j: usize| _mm256_set1_epi32((x.add(j) as *const i32).read_unaligned());
        for o in out.iter_mut().take(R) {
            *o = [0.0; TILE];
        }
        for b in 0..w.kb {
            let tq = t.block(b, qs_bytes, has_min);
            let xb = t.rows_of(b);
            let mut isum = [[_mm256_setzero_si256(); 2]; R];
            if nibbles {
                // A block's 8 `vpmaddubsw` pair sums per lane stay inside i16 (8 · 15·127·2 =
                // 30,480; |x| ≤ 127), so they are added as i16 and widened once per block.
                let mut pairs = [[_mm256_setzero_si256(); 2]; R];
                if R == 4 {
                    let p = q4_block4(tq, xb, low);
                    for (dst, src) in pairs.iter_mut().zip(p) {
                        *dst = src;
                    }
                } else {
                    for g in 0..BLOCK / 8 {
                        let v0 = _mm256_loadu_si256(tq.add(g * 64) as *const _);
                        let v1 = _mm256_loadu_si256(tq.add(g * 64 + 32) as *const _);
                        let lo0 = _mm256_and_si256(v0, low);
                        let hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
                        let lo1 = _mm256_and_si256(v1, low);
                        let hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
                        for (i, p) in pairs.iter_mut().enumerate() {
                            let x = xb.add(i * BLOCK);
                            let x0 = bcast(x, 8 * g);
                            p[0] = _mm256_add_epi16(p[0], _mm256_maddubs_epi16(lo0, x0));
                            p[1] = _mm256_add_epi16(p[1], _mm256_maddubs_epi16(lo1, x0));
                            let x1 = bcast(x, 8 * g + 4);
                            p[0] = _mm256_add_epi16(p[0], _mm256_maddubs_epi16(hi0, x1));
                            p[1] = _mm256_add_epi16(p[1], _mm256_maddubs_epi16(hi1, x1));
                        }
                    }
                }
                for (s, p) in isum.iter_mut().zip(&pairs) {
                    for h in 0..2 {
                        s[h] = _mm256_madd_epi16(p[h], ones);
                    }
                }
            } else {
                // 8-bit weights are stored +128; `vpmaddubsw` would saturate on 255·127·2, so
                // they are turned back into signed values and the sign moved onto the
                // activation (|w| · sign(x, w) ≤ 128·127 per product, pairs fit i16), which
                // makes the offset correction unnecessary. Two pair sums would not fit i16, so
                // each is widened right away.
                for g in 0..BLOCK / 4 {
                    let s0 = _mm256_xor_si256(_mm256_loadu_si256(tq.add(g * 64) as *const _), flip);
                    let s1 =
                        _mm256_xor_si256(_mm256_loadu_si256(tq.add(g * 64 + 32) as *const _), flip);
                    let m0 = _mm256_sign_epi8(s0, s0);
                    let m1 = _mm256_sign_epi8(s1, s1);
                    for (i, s) in isum.iter_mut().enumerate() {
                        let x = bcast(xb.add(i * BLOCK), 4 * g);
                        let p0 = _mm256_maddubs_epi16(m0, _mm256_sign_epi8(x, s0));
                        s[0] = _mm256_add_epi32(s[0], _mm256_madd_epi16(p0, ones));
                        let p1 = _mm256_maddubs_epi16(m1, _mm256_sign_epi8(x, s1));
                        s[1] = _mm256_add_epi32(s[1], _mm256_madd_epi16(p1, ones));
                    }
                }
            }
            for h in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(t.d0.add(b * TILE + 8 * h) as *const _));
                let mw = if has_min {
                    _mm256_cvtph_ps(_mm_loadu_si128(t.m0.add(b * TILE + 8 * h) as *const _))
                } else {
                    _mm256_setzero_ps()
                };
                for (i, s) in isum.iter().enumerate() {
                    let at = b * t.rows + i;
                    let mut s = s[h];
                    if offset != 0 {
                        s = _mm256_sub_epi32(s, _mm256_set1_epi32(offset * *t.asums.add(at)));
                    }
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*t.ad.add(at)));
                    let dst = out[i].as_mut_ptr().add(8 * h);
                    let mut acc = _mm256_loadu_ps(dst);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
                    if has_min {
                        acc = _mm256_fmadd_ps(mw, _mm256_set1_ps(*t.ads.add(at)), acc);
                    }
                    _mm256_storeu_ps(dst, acc);
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn tiny_huge_and_nan_activations_quantize_without_overflow() {
        // Found by the gguf fuzz target: a block whose largest value is subnormal had an
        // infinite inverse scale, and its quantized values overflowed the block sum.
        let mut x = vec![1e-40f32; BLOCK];
        x.extend([f32::INFINITY; BLOCK]);
        x.extend([f32::NAN; BLOCK]);
        x.extend((0..BLOCK).map(|i| i as f32 - 16.0));
        let mut rows = QuantizedRows::default();
        rows.quantize(&x, BLOCK);
        assert_eq!(rows.rows(), 4);
        assert!(rows.qs[..3 * BLOCK].iter().all(|&q| q == 0));
        assert_eq!(rows.sums[..3], [0, 0, 0]);
        assert_eq!(rows.qs[3 * BLOCK], -127);
    }

    #[test]
    fn halves_round_away_from_zero_and_every_quantizer_agrees_with_the_portable_one() {
        // Largest magnitude 127 makes the scale exactly 1: the quants are the inputs rounded.
        let mut x = vec![0f32; 2 * BLOCK];
        x[..9].copy_from_slice(&[
            127.0,
            2.5,
            -2.5,
            0.5,
            -0.5,
            1.499_999_9,
            -126.5,
            3.5,
            f32::NAN,
        ]);
        for (i, v) in x[BLOCK..].iter_mut().enumerate() {
            *v = (i as f32 - 15.5) * 0.37;
        }
        let mut rows = QuantizedRows::default();
        rows.quantize(&x, BLOCK);
        assert_eq!(rows.qs[..9], [127, 3, -3, 1, -1, 1, -127, 4, 0]);
        let (mut qs, mut d, mut sums) = (vec![0i8; 2 * BLOCK], vec![0f32; 2], vec![0i32; 2]);
        quantize_blocks(&x, 1, &mut qs, &mut d, &mut sums);
        assert_eq!((rows.qs, rows.d, rows.sums), (qs, d, sums));
    }

    /// Deterministic pseudo-random bytes (xorshift), so the test needs no RNG crate.
    pub(in crate::model::llama) fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// GGUF blocks with sane f16 scales and random quants.
    fn gguf(kind: QuantKind, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut raw = bytes(seed, n * k / BLOCK * kind.gguf_block_bytes());
        for (i, block) in raw.chunks_exact_mut(kind.gguf_block_bytes()).enumerate() {
            let d = f16::from_f32(0.001 + (i % 7) as f32 * 0.0007);
            block[..2].copy_from_slice(&d.to_le_bytes());
            if kind == QuantKind::Q4_1 {
                let m = f16::from_f32(-0.01 * (i % 5) as f32);
                block[2..4].copy_from_slice(&m.to_le_bytes());
            }
        }
        raw
    }

    /// Reference: dequantize the whole matrix, quantize activations the same way, and sum the
    /// block products in f64.
    fn reference(w: &PackedMatrix, a: &QuantizedRows) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * w.n];
        let mut row = vec![0f32; w.k];
        for col in 0..w.n {
            w.dequantize_row(col, &mut row);
            for r in 0..a.rows {
                let mut sum = 0f64;
                for b in 0..a.kb {
                    let at = a.at(r, b);
                    let d = f64::from(a.d[at]);
                    for j in 0..BLOCK {
                        let x = f64::from(a.qs[at * BLOCK + j]) * d;
                        sum += x * f64::from(row[b * BLOCK + j]);
                    }
                }
                out[r * w.n + col] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn kernels_match_dequantized_reference_for_every_type_and_row_count() {
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            // 40 outputs: two full tiles and a partial one; 3 parts stacked like Q/K/V.
            let k = 96;
            let parts: Vec<(Vec<u8>, usize)> = [(16, 1), (8, 2), (16, 3)]
                .iter()
                .map(|&(n, seed)| (gguf(kind, n, k, seed), n))
                .collect();
            let refs: Vec<(&[u8], usize)> = parts.iter().map(|(b, n)| (b.as_slice(), *n)).collect();
            let w = PackedMatrix::pack(kind, k, &refs).unwrap();
            assert_eq!(w.rows(), 40);
            for rows in [1, 3, 8, 11] {
                let x: Vec<f32> = bytes(rows as u64 + 9, rows * k)
                    .iter()
                    .map(|&b| (f32::from(b) - 128.0) / 37.0)
                    .collect();
                let mut a = QuantizedRows::default();
                a.quantize(&x, k);
                let mut out = vec![0f32; rows * w.rows()];
                matmul(&w, &a, &mut out);
                let want = reference(&w, &a);
                for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{kind:?} rows={rows} at {i}: {g} vs {e}"
                    );
                }
                // Every row alone gives the same bits as inside the batch.
                for r in 0..rows {
                    let mut one = QuantizedRows::default();
                    one.quantize(&x[r * k..(r + 1) * k], k);
                    let mut single = vec![0f32; w.rows()];
                    matmul(&w, &one, &mut single);
                    assert_eq!(
                        single,
                        out[r * w.rows()..(r + 1) * w.rows()],
                        "{kind:?} row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_this_cpu_has_agrees_with_the_portable_one() {
        // Every detected kernel, not only the one `isa()` picks: on an AVX-512 machine (where
        // CI runs) the AVX2 kernel, which AVX2-only CPUs run, is checked too. Every row count a
        // tile takes, several tiles, blocks enough for the unrolled loops and their tails.
        let kernels = detected();
        assert_eq!(kernels.last(), Some(&Isa::Scalar));
        if cfg!(target_arch = "x86_64") && is_avx2_machine() {
            assert!(kernels.contains(&Isa::Avx2), "{kernels:?}");
        }
        let (n, k) = (3 * TILE, 9 * BLOCK);
        // Random blocks, then the extremes the integer sums must hold without wrapping: every
        // weight at its largest value against activations all +127, then all -127.
        let cases = [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0]
            .into_iter()
            .flat_map(|kind| [(kind, 0), (kind, 1), (kind, -1)]);
        for (kind, extreme) in cases {
            let mut raw = gguf(kind, n, k, 5);
            if extreme != 0 {
                let skip = if kind == QuantKind::Q4_1 { 4 } else { 2 };
                for block in raw.chunks_exact_mut(kind.gguf_block_bytes()) {
                    block[skip..].fill(0xFF);
                }
            }
            let w = PackedMatrix::pack(kind, k, &[(&raw, n)]).unwrap();
            let x: Vec<f32> = bytes(77, ROWS * k)
                .iter()
                .map(|&b| match extreme {
                    0 => f32::from(b) / 50.0 - 2.5,
                    e => e as f32,
                })
                .collect();
            let mut a = QuantizedRows::default();
            a.quantize(&x, k);
            // Each kernel's rows one at a time: what every call of many rows must give bit for
            // bit (batching must not change a sequence's tokens).
            let single: Vec<Vec<[f32; TILE]>> = kernels
                .iter()
                .map(|&isa| {
                    (0..n / TILE * ROWS)
                        .map(|i| {
                            let mut one = [[0f32; TILE]; ROWS];
                            tile_rows(isa, &w, i / ROWS, &a, i % ROWS, 1, &mut one);
                            one[0]
                        })
                        .collect()
                })
                .collect();
            // Calls from the first row and calls ending at the last one (a row offset inside
            // the block-major activations).
            for (rows, row0) in (1..=ROWS).flat_map(|rows| [(rows, 0), (rows, ROWS - rows)]) {
                for tile in 0..n / TILE {
                    let mut slow = [[0f32; TILE]; ROWS];
                    tile_rows(Isa::Scalar, &w, tile, &a, row0, rows, &mut slow);
                    for (&isa, single) in kernels.iter().zip(&single) {
                        let mut fast = [[0f32; TILE]; ROWS];
                        tile_rows(isa, &w, tile, &a, row0, rows, &mut fast);
                        for (r, (fast, slow)) in fast.iter().zip(&slow).take(rows).enumerate() {
                            let alone = &single[tile * ROWS + row0 + r];
                            for ((f, s), one) in fast.iter().zip(slow).zip(alone) {
                                assert!(
                                    (f - s).abs() <= 1e-5 * (1.0 + s.abs()),
                                    "{isa:?} {kind:?} extreme {extreme} rows {row0}+{rows} \
                                     tile {tile}: {f} vs {s}"
                                );
                                assert_eq!(
                                    f.to_bits(),
                                    one.to_bits(),
                                    "{isa:?} {kind:?} extreme {extreme} rows {row0}+{rows} \
                                     tile {tile}: row {r} in a batch {f}, alone {one}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_avx2_machine() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The SIMD quantizers against the portable one, bit for bit, on rows with every kind of
    /// value (exact halves, ties at every magnitude, NaN, ±inf, subnormal and zero blocks) and
    /// shapes whose block counts leave partial 16-block groups and cross rows inside a group.
    #[test]
    fn every_quantizer_matches_the_portable_one_on_many_shapes() {
        let mut seed = 0;
        for rows in [1, 2, 3, 8, 9] {
            for kb in [1, 2, 5, 16, 17, 18, 48] {
                seed += 1;
                let k = kb * BLOCK;
                let raw = bytes(seed, 4 * rows * k);
                let mut x: Vec<f32> = raw
                    .chunks_exact(4)
                    .enumerate()
                    .map(|(i, b)| {
                        let u = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        let unit = (u >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0;
                        match (i / BLOCK) % 6 {
                            // The block's largest value 127·s makes the scale s: quants are the
                            // values rounded, with many exact halves.
                            0 => ((u % 509) as f32 / 2.0 - 127.0) * 0.25,
                            1 => unit * 1e-3,
                            2 => unit * 3e4,
                            3 => f32::from_bits(u % 0x0080_0000), // subnormal
                            _ => unit * 4.0,
                        }
                    })
                    .collect();
                // Whole blocks scaled so the largest magnitude is exactly 127 (scale 1).
                for b in (0..rows * kb).step_by(7) {
                    x[b * BLOCK] = if b % 2 == 0 { 127.0 } else { -127.0 };
                }
                let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.5, -0.5, 0.0];
                for (i, v) in specials.iter().enumerate() {
                    let at = (i * 131 + seed as usize) % x.len();
                    x[at] = *v;
                }
                let n = rows * kb;
                let (mut qs, mut d, mut sums) = (vec![0i8; n * BLOCK], vec![0f32; n], vec![0; n]);
                quantize_blocks(&x, kb, &mut qs, &mut d, &mut sums);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let mut rows_q = QuantizedRows::default();
                rows_q.quantize(&x, k);
                let mut got = vec![("dispatched", rows_q.qs, rows_q.d, rows_q.sums)];
                for (name, quantize) in quantizers() {
                    let (mut q2, mut d2, mut s2) =
                        (vec![0i8; n * BLOCK], vec![0f32; n], vec![0; n]);
                    quantize(&x, kb, &mut q2, &mut d2, &mut s2);
                    got.push((name, q2, d2, s2));
                }
                for (name, q2, d2, s2) in got {
                    assert_eq!(q2, qs, "{name}: quants, {rows} rows × {kb} blocks");
                    assert_eq!(bits(&d2), bits(&d), "{name}: scales, {rows} × {kb}");
                    assert_eq!(s2, sums, "{name}: sums, {rows} × {kb}");
                }
            }
        }
    }

    type Quantizer = fn(&[f32], usize, &mut [i8], &mut [f32], &mut [i32]);

    /// Every vector quantizer this CPU has, whatever `SEALSERVE_LLM_ISA` says.
    fn quantizers() -> Vec<(&'static str, Quantizer)> {
        #[allow(unused_mut)]
        let mut out: Vec<(&'static str, Quantizer)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        for isa in detected() {
            match isa {
                // SAFETY (both): `detected` found the features.
                Isa::Vnni512 => out.push(("avx512", |x, kb, q, d, s| unsafe {
                    x86::quantize_avx512(x, kb, q, d, s)
                })),
                Isa::Avx2 => out.push(("avx2", |x, kb, q, d, s| unsafe {
                    x86::quantize_avx2(x, kb, q, d, s)
                })),
                Isa::Scalar => {}
            }
        }
        out
    }

    /// `round_away` and `round_away8` (the vector quantizers' rounding) are `f32::round`
    /// around every integer up to 128 (the ±0.5 ties and the values a few ulps either side),
    /// below 0.5, and for NaN. (All 2.2 billion values |r| ≤ 128 were checked once outside the
    /// test suite, for `round_away`.)
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vector_rounding_is_round_half_away_from_zero() {
        let mut values = vec![f32::NAN, 0.0, -0.0, 0.25, 0.499_999_97, 0.5];
        for n in 0..=128 {
            for centre in [n as f32, n as f32 + 0.5] {
                let mut v = centre;
                let mut w = centre;
                for _ in 0..40 {
                    values.extend([v, w]);
                    v = v.next_up();
                    w = w.next_down();
                }
            }
        }
        values.extend(values.clone().iter().map(|v| -v));
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn r16(lanes: &[f32; 16]) -> [i32; 16] {
            let mut got = [0i32; 16];
            let q = x86::round_away(
                _mm512_loadu_ps(lanes.as_ptr()),
                _mm512_set1_epi32(i32::MAX),
                _mm512_castps_si512(_mm512_set1_ps(0.5)),
            );
            _mm512_storeu_si512(got.as_mut_ptr() as *mut _, q);
            got
        }
        #[target_feature(enable = "avx2")]
        unsafe fn r8(lanes: &[f32; 16]) -> [i32; 16] {
            let mut got = [0i32; 16];
            for h in 0..2 {
                let q = x86::round_away8(_mm256_loadu_ps(lanes.as_ptr().add(8 * h)));
                _mm256_storeu_si256(got.as_mut_ptr().add(8 * h) as *mut __m256i, q);
            }
            got
        }
        type Round = fn(&[f32; 16]) -> [i32; 16];
        let mut kernels: Vec<(&str, Round)> = Vec::new();
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected just above.
            kernels.push(("round_away", |l| unsafe { r16(l) }));
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected just above.
            kernels.push(("round_away8", |l| unsafe { r8(l) }));
        }
        for (name, round) in kernels {
            for chunk in values.chunks(16) {
                let mut lanes = [0f32; 16];
                lanes[..chunk.len()].copy_from_slice(chunk);
                for (v, q) in lanes.iter().zip(round(&lanes)) {
                    let want = if v.is_nan() { 0 } else { v.round() as i32 };
                    assert_eq!(q, want, "{name}: round({v:e})");
                }
            }
        }
    }

    #[test]
    fn pack_rejects_wrong_sizes() {
        assert!(matches!(
            PackedMatrix::pack(QuantKind::Q4_1, 33, &[(&[], 0)]),
            Err(PackError::Inputs { .. })
        ));
        assert!(matches!(
            PackedMatrix::pack(QuantKind::Q8_0, 32, &[(&[0u8; 10], 1)]),
            Err(PackError::Size { .. })
        ));
    }
}
