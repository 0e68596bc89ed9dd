//! Fused CPU f32 kernels for the encoder layer, used instead of separate candle ops.
//!
//! Why: profiling the candle-op version on 2 cores showed only ~40% of a forward in the matmul
//! kernel. The rest went to (a) exact GELU through scalar libm `erff` (~7%), (b) scalar `expf` in
//! softmax, (c) separate passes for every bias add, residual add and the Q/K/V/context copies,
//! each allocating and page-faulting a fresh buffer, (d) attention matmuls per (sequence, head)
//! that are below gemm's threading threshold, so attention ran on one core, and (e) spinning in
//! candle's barrier pool between those small ops. Here each layer is four matmuls (candle/gemm)
//! plus three fused, rayon-parallel passes:
//! - attention: Q/K/V bias added while gathering each (sequence, head), scores, softmax and
//!   context in registers-sized tiles, written straight into `[tokens, hidden]`; one parallel
//!   task per (sequence, head); padded keys and padded query rows are skipped outright;
//! - bias + residual + layer norm, one pass per row (two-pass mean/variance in f32);
//! - bias + exact-erf GELU, one pass, with a branch-free erf/exp that vectorises.
//!
//! The loops are plain Rust compiled three times (AVX-512, AVX2+FMA, baseline) and picked at run
//! time, so the static x86-64 binary still uses the machine's vector width. No `mul_add`: results
//! are the same bits on every path (mul and add are never contracted).

// Index loops over fixed-size tiles are what the vectoriser turns into register blocks.
#![allow(clippy::needless_range_loop)]

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, InplaceOp2, Layout, Result, Shape};
use rayon::prelude::*;

/// Layer-norm parameters.
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    /// The parameters of a candle `LayerNorm` with bias, as the fused kernels read them.
    pub fn of(norm: &candle_nn::LayerNorm, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: norm.weight().to_vec1::<f32>()?,
            beta: norm
                .bias()
                .ok_or_else(|| candle_core::Error::Msg("layer norm has no bias".into()))?
                .to_vec1::<f32>()?,
            eps: eps as f32,
        })
    }
}

/// The bias of a candle `Linear`, which every fused BERT-style layer has.
pub fn linear_bias(linear: &candle_nn::Linear) -> Result<Vec<f32>> {
    linear
        .bias()
        .ok_or_else(|| candle_core::Error::Msg("linear layer has no bias".into()))?
        .to_vec1::<f32>()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    V4,
    V3,
    Base,
}

#[allow(unreachable_code)]
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        return *ISA.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                Isa::V4
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                Isa::V3
            } else {
                Isa::Base
            }
        });
    }
    Isa::Base
}

/// Defines `fn name(args)` whose body is compiled for AVX-512, AVX2+FMA and the baseline, and
/// dispatches on the CPU found at run time. Everything the body calls must be
/// `#[inline(always)]` so it is compiled with the same features.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident $(<$(const $c:ident: usize),*>)? ($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name $(<$(const $c: usize),*>)? ($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$(const $c: usize),*>)? ($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4 $(<$(const $c: usize),*>)? ($($arg: $ty),*) {
                    body $(::<$($c),*>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3 $(<$(const $c: usize),*>)? ($($arg: $ty),*) {
                    body $(::<$($c),*>)? ($($arg),*)
                }
                match isa() {
                    // SAFETY: the features these were compiled for were detected at run time.
                    Isa::V4 => return unsafe { v4 $(::<$($c),*>)? ($($arg),*) },
                    Isa::V3 => return unsafe { v3 $(::<$($c),*>)? ($($arg),*) },
                    Isa::Base => {}
                }
            }
            body $(::<$($c),*>)? ($($arg),*)
        }
    };
}

/// exp(x) for f32 without branches (Cephes' polynomial after reduction by ln 2), so loops
/// over it vectorise; within 2 ulp of libm over the range used (softmax inputs ≤ 0, -x²).
/// Inputs are clamped to about [-87.3, 88.3]: below, the result is ~1e-38 instead of 0.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), the approximation
/// PyTorch's vectorised CPU GELU uses too.
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    f32::from_bits(y.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// Sum with 16 independent accumulators (vectorises; order differs from a serial sum).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += *x;
        }
    }
    acc.iter().sum::<f32>() + rest
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused CPU kernel needs a contiguous f32 input"),
    }
}

fn contiguous_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fused CPU kernel needs an f32 tensor");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("fused CPU kernel needs a contiguous f32 tensor"),
    }
}

/// `x · weight` for `x` `[rows, k]` and `weight` `[k, n]` (row-major, the transposed layout
/// `FastLayer` keeps), as `[rows, n]`.
///
/// Why not candle's `matmul`: it zero-fills every output before gemm overwrites it, about 14 MB
/// of pure memory traffic per layer of a 1024-token forward. This makes the very same `gemm`
/// call (same strides, kernels and thread count, so the same bits) into a buffer that is not
/// filled first.
pub struct MatMul<'a> {
    pub weight: &'a [f32],
    pub n: usize,
}

impl CustomOp1 for MatMul<'_> {
    fn name(&self) -> &'static str {
        "matmul-unfilled"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout)?;
        let (m, k) = layout.shape().dims2()?;
        let n = self.n;
        if self.weight.len() != k * n {
            candle_core::bail!("matmul: a [{m}, {k}] input does not fit a [{k}, {n}] weight");
        }
        let threads = compute_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: `x` holds m × k and `weight` k × n contiguous f32s (checked above), and `out`
        // has room for m × n. With `read_dst` false gemm never reads the destination; it
        // writes each of the m × n elements (row stride n, column stride 1) before returning,
        // so the length can then cover them.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                self.weight.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
            out.set_len(m * n);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// The compute thread count candle reports, read once. Why: without `RAYON_NUM_THREADS` in the
/// environment, candle 0.11's `get_num_threads` parses /proc/cpuinfo on every call, 24 times per
/// MiniLM forward, which cost a single 16-token forward ~1 ms on 2 cores (`serve` sets the
/// variable; library users and the benches did not). The count cannot change once rayon's global
/// pool exists.
fn compute_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// A linear layer's weight `[out, in]` kept transposed as row-major `[in, out]`, the layout gemm
/// reads fastest as a right-hand side, in a plain vector the fused matmul
/// ([`MatMul`]) reads directly.
pub struct Transposed {
    values: Vec<f32>,
    outputs: usize,
}

impl Transposed {
    pub fn new(weight: &candle_core::Tensor) -> Result<Self> {
        let (outputs, _) = weight.dims2()?;
        let values = weight.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { values, outputs })
    }

    /// `x · weightᵀ` for `x` `[rows, in]`: `[rows, out]`.
    pub fn apply(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        x.apply_op1_no_bwd(&MatMul {
            weight: &self.values,
            n: self.outputs,
        })
    }
}

/// Per-layer parameters of the fused CPU f32 path (BERT and the BERT-like families), converted
/// at load: matmul weights transposed to `[in, out]` (for small batches gemm then reads them
/// without packing: a single 16-token request ran ~2x faster than with `[out, in]`), biases and
/// layer-norm parameters as plain vectors that the kernels here read directly.
pub struct FusedLayer {
    qkv_weight: Transposed,
    qkv_bias: Vec<f32>,
    out_weight: Transposed,
    out_bias: Vec<f32>,
    attention_norm: Norm,
    ffn_in_weight: Transposed,
    ffn_in_bias: Vec<f32>,
    ffn_out_weight: Transposed,
    ffn_out_bias: Vec<f32>,
    ffn_norm: Norm,
}

impl FusedLayer {
    /// From a post-norm encoder layer: `[qkv, attention_out, ffn_in, ffn_out]` linears (with
    /// biases) and `[attention_norm, ffn_norm]` layer norms.
    pub fn new(
        [qkv, attention_out, ffn_in, ffn_out]: [&candle_nn::Linear; 4],
        [attention_norm, ffn_norm]: [&candle_nn::LayerNorm; 2],
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            qkv_weight: Transposed::new(qkv.weight())?,
            qkv_bias: linear_bias(qkv)?,
            out_weight: Transposed::new(attention_out.weight())?,
            out_bias: linear_bias(attention_out)?,
            attention_norm: Norm::of(attention_norm, eps)?,
            ffn_in_weight: Transposed::new(ffn_in.weight())?,
            ffn_in_bias: linear_bias(ffn_in)?,
            ffn_out_weight: Transposed::new(ffn_out.weight())?,
            ffn_out_bias: linear_bias(ffn_out)?,
            ffn_norm: Norm::of(ffn_norm, eps)?,
        })
    }
}

/// The encoder layers on `[tokens, hidden]`, attention (exact GELU, post-norm) within each
/// `(first_row, len)` span.
pub fn run_fused_layers(
    layers: &[FusedLayer],
    mut hidden: candle_core::Tensor,
    spans: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
) -> Result<candle_core::Tensor> {
    let rows = hidden.dim(0)?;
    for layer in layers {
        let qkv = layer.qkv_weight.apply(&hidden)?;
        let context = qkv.apply_op1_no_bwd(&Attention {
            rows,
            heads,
            head_dim,
            bias: &layer.qkv_bias,
            spans,
        })?;
        // The three fused passes below overwrite the matmul output they follow, which nothing
        // else holds (see `BiasResidualNorm`).
        let attended = layer.out_weight.apply(&context)?;
        attended.inplace_op2(
            &hidden,
            &BiasResidualNorm {
                bias: &layer.out_bias,
                norm: &layer.attention_norm,
            },
        )?;
        let inner = layer.ffn_in_weight.apply(&attended)?;
        inner.inplace_op1(&BiasGelu {
            bias: &layer.ffn_in_bias,
        })?;
        hidden = layer.ffn_out_weight.apply(&inner)?;
        hidden.inplace_op2(
            &attended,
            &BiasResidualNorm {
                bias: &layer.ffn_out_bias,
                norm: &layer.ffn_norm,
            },
        )?;
    }
    Ok(hidden)
}

/// Rows per parallel task: a few tasks per thread for balance, whole rows each.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * 4).max(1)
}

multiversion! {
    fn bias_residual_norm_rows(x: &mut [f32], residual: &[f32], bias: &[f32], norm: &Norm) {
        let width = bias.len();
        for (o, r) in x.chunks_exact_mut(width).zip(residual.chunks_exact(width)) {
            for i in 0..width {
                o[i] = o[i] + bias[i] + r[i];
            }
            let mean = sum(o) / width as f32;
            for v in o.iter_mut() {
                *v -= mean;
            }
            let mut sq = [0f32; 16];
            for chunk in o.chunks_exact(16) {
                for (a, v) in sq.iter_mut().zip(chunk) {
                    *a += *v * *v;
                }
            }
            let tail: f32 = o.chunks_exact(16).remainder().iter().map(|v| v * v).sum();
            let var = (sq.iter().sum::<f32>() + tail) / width as f32;
            let inv = 1.0 / (var + norm.eps).sqrt();
            for i in 0..width {
                o[i] = o[i] * inv * norm.gamma[i] + norm.beta[i];
            }
        }
    }
}

/// `layer_norm(x + bias + residual)` over rows of `[tokens, hidden]`, written over `x` (a matmul
/// output nothing else holds). In place because a fresh output buffer cost an allocation, a zeroing
/// pass and a cold write stream per layer for values nobody reads again.
pub struct BiasResidualNorm<'a> {
    pub bias: &'a [f32],
    pub norm: &'a Norm,
}

impl InplaceOp2 for BiasResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "bias-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let residual = contiguous(s2, l2)?;
        let width = self.bias.len();
        if l1.shape() != l2.shape() {
            candle_core::bail!("bias-residual-layer-norm: shapes do not match");
        }
        let x = contiguous_mut(s1, l1)?;
        if x.len() % width != 0 {
            candle_core::bail!("bias-residual-layer-norm: width does not match the bias");
        }
        let chunk = rows_per_task(x.len() / width) * width;
        x.par_chunks_mut(chunk)
            .zip(residual.par_chunks(chunk))
            .for_each(|(x, r)| bias_residual_norm_rows(x, r, self.bias, self.norm));
        Ok(())
    }
}

multiversion! {
    fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
        let width = bias.len();
        for x in x.chunks_exact_mut(width) {
            for i in 0..width {
                let v = x[i] + bias[i];
                x[i] = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

/// Exact (erf) GELU of `x + bias` over rows of `[tokens, intermediate]`, written over `x` (see
/// [`BiasResidualNorm`] for why in place).
pub struct BiasGelu<'a> {
    pub bias: &'a [f32],
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let width = self.bias.len();
        let x = contiguous_mut(storage, layout)?;
        if x.len() % width != 0 {
            candle_core::bail!("bias-gelu: width does not match the bias");
        }
        let chunk = rows_per_task(x.len() / width) * width;
        x.par_chunks_mut(chunk)
            .for_each(|x| bias_gelu_rows(x, self.bias));
        Ok(())
    }
}

/// Query rows and key columns per score tile: 4 × 16 score accumulators and 4 × D context
/// accumulators stay in vector registers. Measured: 4 × 32 and 8 × 16 tiles were 1.5-2×
/// slower overall (the compiler no longer keeps the bigger tiles in registers).
const ROWS: usize = 4;
const COLS: usize = 16;

/// Per-thread buffers for one (sequence, head).
struct Scratch {
    keys_t: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
}

multiversion! {
    /// One (sequence, head): `softmax(q kᵀ) v` for the first `len` rows, written to
    /// `out[row * hidden + head * D ..][..D]`. `qkv` rows are `[q | k | v]` without bias; the
    /// 1/sqrt(D) scale is already in q's weights and bias.
    fn attend_head<const D: usize>(
        qkv: &[f32],
        bias: &[f32],
        first_row: usize,
        len: usize,
        head: usize,
        hidden: usize,
        keys_t: &mut [f32],
        values: &mut [f32],
        scores: &mut [f32],
        out: OutPtr,
    ) {
        let stride = 3 * hidden;
        let cols = len.div_ceil(COLS) * COLS;
        let (q_bias, k_bias, v_bias) = (
            &bias[head * D..][..D],
            &bias[hidden + head * D..][..D],
            &bias[2 * hidden + head * D..][..D],
        );
        // Keys transposed ([D][cols], zero columns past len) and values ([len][D]), biased.
        for j in 0..len {
            let row = &qkv[(first_row + j) * stride..][..stride];
            let k = &row[hidden + head * D..][..D];
            let v = &row[2 * hidden + head * D..][..D];
            for d in 0..D {
                keys_t[d * cols + j] = k[d] + k_bias[d];
            }
            let dst = &mut values[j * D..][..D];
            for d in 0..D {
                dst[d] = v[d] + v_bias[d];
            }
        }
        for d in 0..D {
            keys_t[d * cols + len..d * cols + cols].fill(0.0);
        }
        for i0 in (0..len).step_by(ROWS) {
            let rows = ROWS.min(len - i0);
            let mut q = [[0f32; D]; ROWS];
            for (r, q) in q.iter_mut().enumerate().take(rows) {
                let row = &qkv[(first_row + i0 + r) * stride + head * D..][..D];
                for d in 0..D {
                    q[d] = row[d] + q_bias[d];
                }
            }
            // Scores for ROWS queries × COLS keys at a time, accumulated in registers.
            for j0 in (0..cols).step_by(COLS) {
                let mut acc = [[0f32; COLS]; ROWS];
                for d in 0..D {
                    let k: &[f32; COLS] = keys_t[d * cols + j0..][..COLS].try_into().unwrap();
                    for r in 0..ROWS {
                        let qd = q[r][d];
                        for c in 0..COLS {
                            acc[r][c] += qd * k[c];
                        }
                    }
                }
                for r in 0..ROWS {
                    scores[r * cols + j0..][..COLS].copy_from_slice(&acc[r]);
                }
            }
            let mut inv = [0f32; ROWS];
            for r in 0..ROWS {
                let p = &mut scores[r * cols..][..cols];
                if r >= rows {
                    p.fill(0.0);
                    continue;
                }
                let p = &mut p[..len];
                let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for v in p.iter_mut() {
                    *v = exp(*v - max);
                }
                inv[r] = 1.0 / sum(p);
            }
            let mut acc = [[0f32; D]; ROWS];
            for j in 0..len {
                let v: &[f32; D] = values[j * D..][..D].try_into().unwrap();
                for r in 0..ROWS {
                    let w = scores[r * cols + j];
                    for d in 0..D {
                        acc[r][d] += w * v[d];
                    }
                }
            }
            for r in 0..rows {
                let offset = (first_row + i0 + r) * hidden + head * D;
                for d in 0..D {
                    // SAFETY: each (sequence, head) task writes only its own rows' D-wide
                    // column block; `out.len` bounds the index (checked below in debug).
                    debug_assert!(offset + d < out.len);
                    unsafe { *out.ptr.add(offset + d) = acc[r][d] * inv[r] };
                }
            }
        }
    }
}

/// The output buffer shared by the attention tasks, which write disjoint blocks of it.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: tasks write disjoint elements (see `attend_head`); the buffer outlives the tasks.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Multi-head self-attention from the fused `[tokens, 3 × hidden]` projection (no bias) to
/// `[tokens, hidden]`. Each sequence is a span of rows `(first_row, len)`: a padded batch has
/// spans `(b × seq, len_b)` (padded keys are never read, padded query rows stay zero: finite,
/// pooling ignores them and no real row reads them); a packed batch has back-to-back spans.
pub struct Attention<'a> {
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub bias: &'a [f32],
    pub spans: &'a [(usize, usize)],
}

impl Attention<'_> {
    /// Head widths the kernel is compiled for.
    pub fn supports(head_dim: usize) -> bool {
        matches!(head_dim, 32 | 64)
    }

    fn run<const D: usize>(&self, qkv: &[f32]) -> Vec<f32> {
        let hidden = self.heads * D;
        let mut out = vec![0f32; self.rows * hidden];
        let target = OutPtr {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        };
        let longest = self.spans.iter().map(|s| s.1).max().unwrap_or(0);
        let cols = longest.div_ceil(COLS) * COLS;
        (0..self.spans.len() * self.heads)
            .into_par_iter()
            .for_each_init(
                || Scratch {
                    keys_t: vec![0f32; D * cols],
                    values: vec![0f32; cols * D],
                    scores: vec![0f32; ROWS * cols],
                },
                |scratch, task| {
                    let (first_row, len) = self.spans[task / self.heads];
                    attend_head::<D>(
                        qkv,
                        self.bias,
                        first_row,
                        len,
                        task % self.heads,
                        hidden,
                        &mut scratch.keys_t,
                        &mut scratch.values,
                        &mut scratch.scores,
                        target,
                    );
                },
            );
        out
    }
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout)?;
        let hidden = self.heads * self.head_dim;
        let spans_fit = self
            .spans
            .iter()
            .all(|(first, len)| first + len <= self.rows);
        if qkv.len() != self.rows * 3 * hidden || self.bias.len() != 3 * hidden || !spans_fit {
            candle_core::bail!("fused-attention: input does not match the shape");
        }
        let out = match self.head_dim {
            32 => self.run::<32>(qkv),
            64 => self.run::<64>(qkv),
            other => candle_core::bail!("fused-attention: head width {other} not compiled"),
        };
        Ok((CpuStorage::F32(out), Shape::from((self.rows, hidden))))
    }
}
