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
/// With AVX-512 the exponentials are 16 at a time (`x86::exp16`, ~1 ulp of libm's): at 8 streams
/// a step has ~370k of them, on one thread while the other waits, and libm's scalar `expf` was
/// ~6 % of the step.
pub fn silu_mul(gate_up: &[f32], width: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x86::avx512() {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { x86::silu_mul(gate_up, width, out) };
    }
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

    /// An associative, commutative lane operation for [`reduce16`]. A trait rather than a
    /// closure: closures are not compiled with the caller's target features and did not inline.
    pub(in crate::model::llama) trait Combine {
        unsafe fn op(a: __m512, b: __m512) -> __m512;
    }

    /// Float addition (attention's 16 dot products at once).
    pub(in crate::model::llama) struct AddF32;
    impl Combine for AddF32 {
        #[inline(always)]
        unsafe fn op(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
    }

    /// Float maximum (the quantizer's block maxima; no NaNs reach it).
    pub(in crate::model::llama) struct Max;
    impl Combine for Max {
        #[inline(always)]
        unsafe fn op(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
    }

    /// Integer addition on the lanes' bits (the quantizer's block sums).
    pub(in crate::model::llama) struct AddI32;
    impl Combine for AddI32 {
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
    pub(in crate::model::llama) unsafe fn reduce16<C: Combine>(p: &[__m512; 16]) -> __m512 {
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

    /// `e^x`, ~1 ulp: Cody-Waite reduction and Cephes' degree-6 polynomial. Below -104 the
    /// result is under the smallest subnormal (flushed towards zero); above ~88.7 it is +inf,
    /// as libm's.
    #[inline(always)]
    pub(in crate::model::llama) unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // x - n·ln2 in two parts (Cephes' C1 + C2 = ln 2).
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(
            y,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(y, n)
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
        let mut out = vec![0f32; 3 * width];
        silu_mul(&rows, width, &mut out);
        for (row, o) in rows.chunks_exact(2 * width).zip(out.chunks_exact(width)) {
            let (gate, up) = row.split_at(width);
            for ((g, u), o) in gate.iter().zip(up).zip(o) {
                let (g, u) = (f64::from(*g), f64::from(*u));
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (f64::from(*o) - want).abs() <= 1e-6 * want.abs() + 1e-30,
                    "silu({g}) * {u} = {o}, want {want}"
                );
            }
        }
    }

    #[test]
    fn the_vector_exponential_is_within_two_ulps_of_libm_where_it_is_finite() {
        #[cfg(target_arch = "x86_64")]
        if x86::avx512() {
            use std::arch::x86_64::*;
            let mut x = -104.0f32;
            while x <= 89.0 {
                let xs: Vec<f32> = (0..16).map(|i| x + i as f32 * 0.0007).collect();
                let mut got = [0f32; 16];
                // SAFETY: AVX-512F detected above.
                unsafe {
                    #[target_feature(enable = "avx512f")]
                    unsafe fn run(xs: &[f32], got: &mut [f32; 16]) {
                        _mm512_storeu_ps(
                            got.as_mut_ptr(),
                            x86::exp16(_mm512_loadu_ps(xs.as_ptr())),
                        );
                    }
                    run(&xs, &mut got);
                }
                for (v, g) in xs.iter().zip(got) {
                    let want = v.exp();
                    if want.is_infinite() {
                        assert_eq!(g, f32::INFINITY, "exp({v})");
                    } else if want >= f32::MIN_POSITIVE {
                        let ulps = (g.to_bits() as i64 - want.to_bits() as i64).abs();
                        assert!(ulps <= 2, "exp({v}) = {g}, libm {want} ({ulps} ulps)");
                    } else {
                        assert!(g < 2.0 * f32::MIN_POSITIVE, "exp({v}) = {g}");
                    }
                }
                x += 0.0113;
            }
        }
    }
}
