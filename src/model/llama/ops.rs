//! The per-row parts of a llama layer on CPU f32: RMS norm, rotary embedding and SiLU gate
//! (attention has its own module).
//!
//! Why plain loops and not candle ops: in a decode step each of these works on a handful of
//! vectors of a few hundred floats; a candle op costs more in dispatch and allocation than the
//! arithmetic, and attention must read each sequence's own cache. The loops are written so the
//! compiler vectorises them.

use super::config::RopeStyle;

/// The widest instruction set the llama CPU kernels may use, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum IsaCap {
    /// The portable loops as compiled.
    Scalar,
    /// AVX2, FMA, F16C (no AVX-512 even where the CPU has it).
    Avx2,
    /// Whatever the CPU has.
    Best,
}

/// `SEALSERVE_LLM_ISA` = `avx2` or `scalar` caps the kernels below what the CPU offers, so the
/// narrower paths (what an AVX2-only Xeon or EPYC runs) can be tested and measured on a wider
/// CPU; unset or `best`, the CPU decides. `SEALSERVE_LLM_SCALAR` (set to anything) is the older
/// spelling of `scalar`. An unknown value is ignored with a warning, once.
pub(super) fn isa_cap() -> IsaCap {
    static CAP: std::sync::OnceLock<IsaCap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        if std::env::var_os("SEALSERVE_LLM_SCALAR").is_some() {
            return IsaCap::Scalar;
        }
        match std::env::var("SEALSERVE_LLM_ISA").as_deref() {
            Err(_) | Ok("best") | Ok("") => IsaCap::Best,
            Ok("avx2") => IsaCap::Avx2,
            Ok("scalar") => IsaCap::Scalar,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "SEALSERVE_LLM_ISA must be best, avx2 or scalar; using best"
                );
                IsaCap::Best
            }
        }
    })
}

/// `out = x / rms(x) * weight`, row by row.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = sum_squares(row) / width as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// RMS norm of each `head_dim` slice of a row in place (Qwen3's Q/K norm).
pub fn rms_norm_heads(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for head in x.chunks_exact_mut(width) {
        let mean = sum_squares(head) / width as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in head.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
}

/// `Σ v²` with 16 partial sums added by a fixed tree. Why: one running float sum is a chain of
/// dependent adds the compiler may not reorder (~4 cycles a value), and the step's norms run on
/// one thread while the other waits: at 8 streams the serial norms were ~1 ms of a 12 ms step.
/// The order depends only on the row, so batching cannot change a result.
fn sum_squares(row: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for j in 0..16 {
            acc[j] += c[j] * c[j];
        }
    }
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            acc[j] += acc[j + n];
        }
    }
    acc[0] + rest
}

/// Rotation angles of one position: `cos`/`sin` for each rotating pair.
pub struct RopeTable {
    inv_freq: Vec<f64>,
    linear_scale: f64,
}

impl RopeTable {
    /// `inv_freq[i] = theta^(-2i/dims) / factor[i]` (factors: Llama 3 `rope_freqs`).
    pub fn new(dims: usize, theta: f32, linear_scale: f32, factors: Option<&[f32]>) -> Self {
        let inv_freq = (0..dims / 2)
            .map(|i| {
                let f = f64::from(theta).powf(-((2 * i) as f64) / dims as f64);
                f / factors
                    .and_then(|fs| fs.get(i))
                    .map_or(1.0, |&x| f64::from(x))
            })
            .collect();
        Self {
            inv_freq,
            linear_scale: f64::from(linear_scale),
        }
    }

    /// Appends `[cos, sin]` of every pair for position `pos` to `out` (arrays, not tuples:
    /// the vector rotation reads them as consecutive floats, which only arrays guarantee).
    pub fn push_position(&self, pos: usize, out: &mut Vec<[f32; 2]>) {
        let p = pos as f64 / self.linear_scale;
        out.extend(self.inv_freq.iter().map(|f| {
            let (s, c) = (p * f).sin_cos();
            [c as f32, s as f32]
        }));
    }

    /// Pairs per head.
    pub fn pairs(&self) -> usize {
        self.inv_freq.len()
    }
}

/// Rotates every head of one row (`heads × head_dim`) with the angles of its position.
///
/// Adjacent pairs (llama) are rotated 8 pairs at a time with AVX-512, with the same products
/// and sums as the loop below (bit for bit): at 8 streams the scalar loop was ~1.3 % of a step,
/// on one thread while the other waited.
pub fn apply_rope(row: &mut [f32], head_dim: usize, angles: &[[f32; 2]], style: RopeStyle) {
    #[cfg(target_arch = "x86_64")]
    if style == RopeStyle::Interleaved && 2 * angles.len() <= head_dim && x86::avx512() {
        // SAFETY: AVX-512F was detected at run time; every rotated pair lies inside its head.
        return unsafe { x86::rope_interleaved(row, head_dim, angles) };
    }
    rope_portable(row, head_dim, angles, style)
}

fn rope_portable(row: &mut [f32], head_dim: usize, angles: &[[f32; 2]], style: RopeStyle) {
    let pairs = angles.len();
    for head in row.chunks_exact_mut(head_dim) {
        for (i, &[c, s]) in angles.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Halves => (i, i + pairs),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x0 * s + x1 * c;
        }
    }
}

/// `out = silu(gate) * up` for rows laid out as `[gate | up]` of width `2 * width`.
///
/// With AVX-512 the exponentials are 16 at a time (`x86::exp16`, ~1 ulp of libm's), with AVX2 8
/// at a time (`avx2::exp8`): at 8 streams a step has ~370k of them, on one thread while the
/// other waits, and libm's scalar `expf` was ~6 % of the step (~3 % with the AVX2 kernels).
pub fn silu_mul(gate_up: &[f32], width: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::avx512() {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { x86::silu_mul(gate_up, width, out) };
    } else if avx2::usable() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { avx2::silu_mul(gate_up, width, out) };
    }
    silu_mul_portable(gate_up, width, out)
}

fn silu_mul_portable(gate_up: &[f32], width: usize, out: &mut [f32]) {
    for (row, o) in gate_up
        .chunks_exact(2 * width)
        .zip(out.chunks_exact_mut(width))
    {
        let (gate, up) = row.split_at(width);
        for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// Whether AVX-512F is there and allowed ([`super::isa_cap`]), detected once.
    pub(in crate::model::llama) fn avx512() -> bool {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| {
            super::isa_cap() == super::IsaCap::Best && is_x86_feature_detected!("avx512f")
        })
    }

    /// See [`super::apply_rope`]: lane `2p` gets `x0·c − x1·s`, lane `2p + 1` gets
    /// `x1·c + x0·s` (the scalar `x0·s + x1·c`: float addition commutes), 16 floats at a time,
    /// the tail masked. Callers checked `2 × angles.len() ≤ head_dim`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rope_interleaved(row: &mut [f32], head_dim: usize, angles: &[[f32; 2]]) {
        let n = 2 * angles.len();
        let ang = angles.as_ptr() as *const f32;
        for head in row.chunks_exact_mut(head_dim) {
            let mut i = 0;
            while i < n {
                let m = lanes(n - i);
                let x = _mm512_maskz_loadu_ps(m, head.as_ptr().add(i));
                let a = _mm512_maskz_loadu_ps(m, ang.add(i));
                let (c, s) = (_mm512_moveldup_ps(a), _mm512_movehdup_ps(a));
                let swapped = _mm512_permute_ps::<0b10_11_00_01>(x);
                let (t1, t2) = (_mm512_mul_ps(x, c), _mm512_mul_ps(swapped, s));
                let r = _mm512_mask_sub_ps(_mm512_add_ps(t1, t2), 0x5555, t1, t2);
                _mm512_mask_storeu_ps(head.as_mut_ptr().add(i), m, r);
                i += 16;
            }
        }
    }

    /// See [`super::silu_mul`]. Tails shorter than 16 use masked loads and stores, so every
    /// value goes through the same arithmetic.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul(gate_up: &[f32], width: usize, out: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        for (row, o) in gate_up
            .chunks_exact(2 * width)
            .zip(out.chunks_exact_mut(width))
        {
            let (gate, up) = row.split_at(width);
            let mut i = 0;
            while i < width {
                let m = lanes(width - i);
                let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
                let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
                let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                _mm512_mask_storeu_ps(o.as_mut_ptr().add(i), m, _mm512_mul_ps(s, u));
                i += 16;
            }
        }
    }

    /// Mask of the first `n` lanes (all 16 when `n ≥ 16`).
    #[inline(always)]
    pub(in crate::model::llama) fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// An associative, commutative lane operation on vectors `V` for [`reduce16`] (and the
    /// 8-lane [`super::avx2::reduce8`]). A trait rather than a closure: closures are not
    /// compiled with the caller's target features and did not inline.
    pub(in crate::model::llama) trait Combine<V> {
        unsafe fn op(a: V, b: V) -> V;
    }

    /// Float addition (attention's dot products, several at once).
    pub(in crate::model::llama) struct AddF32;
    impl Combine<__m512> for AddF32 {
        #[inline(always)]
        unsafe fn op(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
    }

    /// Float maximum (the quantizer's block maxima; no NaNs reach it).
    pub(in crate::model::llama) struct Max;
    impl Combine<__m512> for Max {
        #[inline(always)]
        unsafe fn op(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
    }

    /// Integer addition on the lanes' bits (the quantizer's block sums).
    pub(in crate::model::llama) struct AddI32;
    impl Combine<__m512> for AddI32 {
        #[inline(always)]
        unsafe fn op(a: __m512, b: __m512) -> __m512 {
            _mm512_castsi512_ps(_mm512_add_epi32(
                _mm512_castps_si512(a),
                _mm512_castps_si512(b),
            ))
        }
    }

    /// Sixteen horizontal reductions at once: lane `j` of the result is `C::op` over the 16
    /// lanes of `p[j]`, by a fixed tree (so float sums do not depend on anything but `p`).
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn reduce16<C: Combine<__m512>>(p: &[__m512; 16]) -> __m512 {
        // Pairs: within each 128-bit lane [a0∘a2, b0∘b2, a1∘a3, b1∘b3].
        let mut a = [_mm512_setzero_ps(); 8];
        for (j, a) in a.iter_mut().enumerate() {
            let (x, y) = (p[2 * j], p[2 * j + 1]);
            *a = C::op(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
        }
        // Quads: within each 128-bit lane one partial result of each of 4 inputs.
        let mut b = [_mm512_setzero_ps(); 4];
        for (j, b) in b.iter_mut().enumerate() {
            let (x, y) = (_mm512_castps_pd(a[2 * j]), _mm512_castps_pd(a[2 * j + 1]));
            let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
            let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
            *b = C::op(lo, hi);
        }
        // 128-bit lanes: [inputs 0-3 (two partials), inputs 4-7 (two partials)] per pair of quads.
        let c0 = C::op(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(b[0], b[1]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(b[0], b[1]),
        );
        let c1 = C::op(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(b[2], b[3]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(b[2], b[3]),
        );
        C::op(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(c0, c1),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(c0, c1),
        )
    }

    /// ln 2 in two parts for the reduction `x - n·ln2` (Cephes' C1 + C2).
    pub(in crate::model::llama) const EXP_LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];

    /// Cephes' `expf` polynomial on the reduced argument, highest degree first (then
    /// `y·r² + r + 1`).
    pub(in crate::model::llama) const EXP_POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    /// `e^x`, ~1 ulp: Cody-Waite reduction and Cephes' degree-6 polynomial. Below -104 the
    /// result is under the smallest subnormal (flushed towards zero); above ~88.7 it is +inf,
    /// as libm's.
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[0]), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[1]), r);
        let mut y = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_fmadd_ps(
            y,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(y, n)
    }
}

/// The AVX2 (+ FMA, F16C) counterparts of [`x86`]'s helpers, for CPUs without AVX-512 (most
/// Intel Xeons before Skylake-SP, AMD EPYC before Zen 4) or with `SEALSERVE_LLM_ISA=avx2`.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    pub(in crate::model::llama) use super::x86::{AddF32, AddI32, Combine, Max};
    use super::x86::{EXP_LN2, EXP_POLY};
    use std::arch::x86_64::*;

    /// Whether AVX2, FMA and F16C are there and allowed ([`super::isa_cap`]), detected once.
    /// (Every AVX-512 CPU has them too; callers try [`super::x86::avx512`] first.)
    pub(in crate::model::llama) fn usable() -> bool {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            super::isa_cap() >= super::IsaCap::Avx2
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// See [`super::silu_mul`]; a tail shorter than 8 takes the scalar formula.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate_up: &[f32], width: usize, out: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        for (row, o) in gate_up
            .chunks_exact(2 * width)
            .zip(out.chunks_exact_mut(width))
        {
            let (gate, up) = row.split_at(width);
            let full = width - width % 8;
            let mut i = 0;
            while i < full {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(o.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
                i += 8;
            }
            for ((o, g), u) in o[full..].iter_mut().zip(&gate[full..]).zip(&up[full..]) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
    }

    /// All-ones in the first `n` lanes (all 8 when `n ≥ 8`), zeros after: a blend or `and` mask.
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn lanes(n: usize) -> __m256 {
        let n = _mm256_set1_epi32(n.min(8) as i32);
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            n,
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ))
    }

    impl Combine<__m256> for AddF32 {
        #[inline(always)]
        unsafe fn op(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
    }

    impl Combine<__m256> for Max {
        #[inline(always)]
        unsafe fn op(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
    }

    impl Combine<__m256> for AddI32 {
        #[inline(always)]
        unsafe fn op(a: __m256, b: __m256) -> __m256 {
            _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_castps_si256(a),
                _mm256_castps_si256(b),
            ))
        }
    }

    /// Eight horizontal reductions at once: lane `j` of the result is `C::op` over the 8 lanes
    /// of `p[j]`, by a fixed tree (so float sums depend on nothing but `p`).
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn reduce8<C: Combine<__m256>>(p: &[__m256; 8]) -> __m256 {
        // Pairs: per 128-bit half [x0∘x2, y0∘y2, x1∘x3, y1∘y3].
        let mut a = [_mm256_setzero_ps(); 4];
        for (j, a) in a.iter_mut().enumerate() {
            let (x, y) = (p[2 * j], p[2 * j + 1]);
            *a = C::op(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
        }
        // Quads: per 128-bit half one partial result of each of 4 inputs.
        let mut b = [_mm256_setzero_ps(); 2];
        for (j, b) in b.iter_mut().enumerate() {
            let (x, y) = (_mm256_castps_pd(a[2 * j]), _mm256_castps_pd(a[2 * j + 1]));
            let lo = _mm256_castpd_ps(_mm256_unpacklo_pd(x, y));
            let hi = _mm256_castpd_ps(_mm256_unpackhi_pd(x, y));
            *b = C::op(lo, hi);
        }
        // Halves: inputs 0-3 from b[0], 4-7 from b[1].
        C::op(
            _mm256_permute2f128_ps::<0x20>(b[0], b[1]),
            _mm256_permute2f128_ps::<0x31>(b[0], b[1]),
        )
    }

    /// The 8 lanes of `x` combined into one value (by a fixed tree).
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn fold<C: Combine<__m256>>(x: __m256) -> f32 {
        let h = C::op(x, _mm256_permute2f128_ps::<0x01>(x, x));
        let h = C::op(h, _mm256_permute_ps::<0b01_00_11_10>(h));
        let h = C::op(h, _mm256_permute_ps::<0b10_11_00_01>(h));
        _mm256_cvtss_f32(h)
    }

    /// `e^x` as [`super::x86::exp16`] (same reduction and polynomial, ~1 ulp). AVX2 has no
    /// `scalef`: `2^n` is built in the exponent field in two factors, since `n` runs from -150
    /// to 129 and one factor holds only -126 to 127; the second product rounds once, into the
    /// subnormals where the result is that small. Above ~88.7 the result is +inf, as libm's.
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-104.0)),
            _mm256_set1_ps(89.0),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2[0]), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2[1]), r);
        let mut y = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let n = _mm256_cvtps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(n);
        let n2 = _mm256_sub_epi32(n, n1);
        _mm256_mul_ps(_mm256_mul_ps(y, pow2(n1)), pow2(n2))
    }

    /// `2^k` for -126 ≤ k ≤ 127, lane by lane.
    #[inline(always)]
    unsafe fn pow2(k: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_styles_rotate_the_right_pairs() {
        let table = RopeTable::new(4, 10_000.0, 1.0, None);
        let mut angles = Vec::new();
        table.push_position(1, &mut angles);
        // pair 0 has inv_freq 1: angle 1 rad.
        let (c, s) = (1f32.cos(), 1f32.sin());
        let mut row = vec![1.0, 0.0, 0.0, 0.0];
        apply_rope(&mut row, 4, &angles, RopeStyle::Interleaved);
        assert!((row[0] - c).abs() < 1e-6 && (row[1] - s).abs() < 1e-6);
        let mut row = vec![1.0, 0.0, 0.0, 0.0];
        apply_rope(&mut row, 4, &angles, RopeStyle::Halves);
        assert!((row[0] - c).abs() < 1e-6 && (row[2] - s).abs() < 1e-6);
    }

    #[test]
    fn the_vector_rotation_gives_the_loops_bits() {
        // Head widths 64 and 48 (a masked tail), full and partial rotary, several positions.
        for (hd, dims) in [(64, 64), (48, 48), (64, 32), (128, 96)] {
            let table = RopeTable::new(dims, 10_000.0, 1.0, None);
            for pos in [0, 1, 7, 300, 4095] {
                let mut angles = Vec::new();
                table.push_position(pos, &mut angles);
                let row: Vec<f32> = (0..3 * hd)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
                    .collect();
                let (mut fast, mut slow) = (row.clone(), row.clone());
                apply_rope(&mut fast, hd, &angles, RopeStyle::Interleaved);
                rope_portable(&mut slow, hd, &angles, RopeStyle::Interleaved);
                assert_eq!(
                    fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "hd {hd} dims {dims} pos {pos}"
                );
                assert_eq!(
                    fast == row,
                    pos == 0,
                    "only position 0 leaves the row as it was"
                );
            }
        }
    }

    #[test]
    fn norms_and_gates_match_f64_references() {
        let x: Vec<f32> = (0..2 * 45)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let w: Vec<f32> = (0..45).map(|i| 0.5 + i as f32 / 45.0).collect();
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, &w, 1e-5, &mut out);
        for (row, o) in x.chunks_exact(45).zip(out.chunks_exact(45)) {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 45.0;
            for ((v, w), o) in row.iter().zip(&w).zip(o) {
                let want = f64::from(*v) / (ms + 1e-5).sqrt() * f64::from(*w);
                assert!((f64::from(*o) - want).abs() < 1e-5 * want.abs().max(1.0));
            }
        }
        // Gates from -120 to 120, past both ends of the exponential's range; width 37 leaves
        // a 5-value tail after two 16-lane chunks.
        let width = 37;
        let rows: Vec<f32> = (0..3 * 2 * width)
            .map(|i| (i as f32 - 111.0) * 1.09 + 0.013 * (i % 7) as f32)
            .collect();
        for (path, silu) in silu_paths() {
            let mut out = vec![0f32; 3 * width];
            silu(&rows, width, &mut out);
            for (row, o) in rows.chunks_exact(2 * width).zip(out.chunks_exact(width)) {
                let (gate, up) = row.split_at(width);
                for ((g, u), o) in gate.iter().zip(up).zip(o) {
                    let (g, u) = (f64::from(*g), f64::from(*u));
                    let want = g / (1.0 + (-g).exp()) * u;
                    assert!(
                        (f64::from(*o) - want).abs() <= 1e-6 * want.abs() + 1e-30,
                        "{path}: silu({g}) * {u} = {o}, want {want}"
                    );
                }
            }
        }
    }

    type Silu = Box<dyn Fn(&[f32], usize, &mut [f32])>;

    /// Every SiLU path this CPU can run, whatever `SEALSERVE_LLM_ISA` says.
    fn silu_paths() -> Vec<(&'static str, Silu)> {
        let mut paths: Vec<(&'static str, Silu)> = vec![
            ("dispatched", Box::new(silu_mul)),
            ("portable", Box::new(silu_mul_portable)),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: AVX2 and FMA detected just above.
                paths.push((
                    "avx2",
                    Box::new(|a, w, o| unsafe { avx2::silu_mul(a, w, o) }),
                ));
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected just above.
                paths.push((
                    "avx512",
                    Box::new(|a, w, o| unsafe { x86::silu_mul(a, w, o) }),
                ));
            }
        }
        paths
    }

    /// 16 inputs to 16 exponentials.
    #[cfg(target_arch = "x86_64")]
    type Exp = fn(&[f32; 16]) -> [f32; 16];

    /// Every vector exponential this CPU has.
    #[cfg(target_arch = "x86_64")]
    fn exp_paths() -> Vec<(&'static str, Exp)> {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn e16(xs: &[f32; 16]) -> [f32; 16] {
            let mut got = [0f32; 16];
            _mm512_storeu_ps(got.as_mut_ptr(), x86::exp16(_mm512_loadu_ps(xs.as_ptr())));
            got
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn e8(xs: &[f32; 16]) -> [f32; 16] {
            let mut got = [0f32; 16];
            for h in 0..2 {
                let v = avx2::exp8(_mm256_loadu_ps(xs.as_ptr().add(8 * h)));
                _mm256_storeu_ps(got.as_mut_ptr().add(8 * h), v);
            }
            got
        }
        let mut paths: Vec<(&'static str, Exp)> = Vec::new();
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected just above.
            paths.push(("exp16", |xs| unsafe { e16(xs) }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA detected just above.
            paths.push(("exp8", |xs| unsafe { e8(xs) }));
        }
        paths
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_reductions_combine_each_input_vectors_lanes() {
        use std::arch::x86_64::*;
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        #[target_feature(enable = "avx2")]
        unsafe fn run(rows: &[[f32; 8]; 8]) -> ([f32; 8], [f32; 8], [i32; 8], [f32; 8]) {
            let p = rows.map(|r| _mm256_loadu_ps(r.as_ptr()));
            let ints =
                rows.map(|r| _mm256_castsi256_ps(_mm256_cvttps_epi32(_mm256_loadu_ps(r.as_ptr()))));
            let (mut sum, mut max, mut isum, mut folded) =
                ([0f32; 8], [0f32; 8], [0i32; 8], [0f32; 8]);
            _mm256_storeu_ps(sum.as_mut_ptr(), avx2::reduce8::<avx2::AddF32>(&p));
            _mm256_storeu_ps(max.as_mut_ptr(), avx2::reduce8::<avx2::Max>(&p));
            _mm256_storeu_si256(
                isum.as_mut_ptr() as *mut __m256i,
                _mm256_castps_si256(avx2::reduce8::<avx2::AddI32>(&ints)),
            );
            for (f, v) in folded.iter_mut().zip(&p) {
                *f = avx2::fold::<avx2::Max>(*v);
            }
            (sum, max, isum, folded)
        }
        // Small integers: every order of summation gives the same float.
        let rows: [[f32; 8]; 8] =
            std::array::from_fn(|j| std::array::from_fn(|l| ((j * 13 + l * 7) % 23) as f32 - 11.0));
        // SAFETY: AVX2 detected above.
        let (sum, max, isum, folded) = unsafe { run(&rows) };
        for (j, row) in rows.iter().enumerate() {
            let want_max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(sum[j], row.iter().sum::<f32>(), "sum of input {j}");
            assert_eq!(max[j], want_max, "max of input {j}");
            assert_eq!(
                isum[j],
                row.iter().map(|&v| v as i32).sum::<i32>(),
                "int sum {j}"
            );
            assert_eq!(folded[j], want_max, "fold of input {j}");
        }
    }

    #[test]
    fn the_vector_exponentials_are_within_two_ulps_of_libm_where_they_are_finite() {
        #[cfg(target_arch = "x86_64")]
        for (name, exp) in exp_paths() {
            let check = |xs: &[f32; 16]| {
                for (v, g) in xs.iter().zip(exp(xs)) {
                    let want = v.exp();
                    if want.is_infinite() {
                        assert_eq!(g, f32::INFINITY, "{name}: exp({v})");
                    } else if want >= f32::MIN_POSITIVE {
                        let ulps = (g.to_bits() as i64 - want.to_bits() as i64).abs();
                        assert!(
                            ulps <= 2,
                            "{name}: exp({v}) = {g}, libm {want} ({ulps} ulps)"
                        );
                    } else {
                        assert!(
                            (0.0..2.0 * f32::MIN_POSITIVE).contains(&g),
                            "{name}: exp({v}) = {g}"
                        );
                    }
                }
            };
            let mut x = -104.0f32;
            while x <= 89.0 {
                check(&std::array::from_fn(|i| x + i as f32 * 0.0007));
                x += 0.0113;
            }
            // Far past both ends, and the infinities.
            let mut far: [f32; 16] = std::array::from_fn(|i| (i as f32 - 7.5) * 40.0);
            far[0] = f32::NEG_INFINITY;
            far[15] = f32::INFINITY;
            check(&far);
        }
    }
}
