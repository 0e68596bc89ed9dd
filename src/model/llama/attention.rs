//! Causal softmax attention of a step's new query rows over one sequence's KV cache, for one KV
//! head and the query heads that share it (grouped-query attention).
//!
//! Why a kernel of its own: attention is the part of a decode step that grows with the number of
//! sequences and their lengths (each sequence reads its own cache), so at 8 streams the plain
//! loop (one horizontal sum per key, one libm `expf` per score, every key read again for each
//! query head) was a third of the step. The AVX-512 path, for head widths 64 and 128:
//! - reads and converts each key and value row once for all query heads of the group;
//! - scores 16 keys per pass, one vector per key, summed by one transpose-add tree instead of
//!   16 horizontal sums;
//! - exponentiates 16 scores at once (Cody-Waite reduction, Cephes' degree-6 polynomial,
//!   ~1 ulp) and scales by the softmax sum once at the end.
//!
//! Every query row is computed on its own, in the same order whatever else is in the step, so
//! batching or chunking a prefill never changes a sequence's result.

use half::f16;

/// One sequence's new rows for one KV head.
pub struct AttentionTask<'a> {
    /// Query rows; row `i` holds the group's query heads side by side (`group × head_dim`).
    pub queries: &'a [&'a [f32]],
    /// Absolute position of the first query row; row `i` sees keys `0..=first_pos + i`.
    pub first_pos: usize,
    /// The sequence's cache for this layer: `[pos][kv_width]`, f16 (see `KvCache`).
    pub keys: &'a [f16],
    pub values: &'a [f16],
    /// Offset of this KV head's slice inside a cache row.
    pub kv_offset: usize,
    pub kv_width: usize,
}

/// Asks for the first 16 key and 8 value rows of `task` (a hint, for the task after the current
/// one; the task's own loops prefetch further ahead once it runs).
pub fn prefetch_start(task: &AttentionTask<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let row = task.kv_width * 2;
        let k = task.keys.as_ptr().wrapping_add(task.kv_offset) as *const i8;
        let v = task.values.as_ptr().wrapping_add(task.kv_offset) as *const i8;
        let kb = (16 * row).min(task.keys.len() * 2);
        let vb = (8 * row).min(task.values.len() * 2);
        // SAFETY: prefetch is a hint; it never faults.
        unsafe {
            for line in (0..kb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(k.wrapping_add(line));
            }
            for line in (0..vb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(v.wrapping_add(line));
            }
        }
    }
}

/// Writes `group × head_dim` floats per query row into `out[i]`. `scores` is scratch.
pub fn attend(
    task: &AttentionTask<'_>,
    head_dim: usize,
    group: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    let path = cpu();
    #[cfg(not(target_arch = "x86_64"))]
    let path = Cpu::Plain;
    attend_on(path, task, head_dim, group, out, scores)
}

/// [`attend`] with the given kernels (tests run every path the CPU has).
fn attend_on(
    path: Cpu,
    task: &AttentionTask<'_>,
    head_dim: usize,
    group: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    debug_assert_eq!(task.queries.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        match path {
            Cpu::Plain => {}
            // SAFETY: AVX2, FMA and F16C were detected at run time.
            _ if !(matches!(head_dim, 64 | 128) && check(task, head_dim, group, out)) => {
                return unsafe { portable_avx2(task, head_dim, group, out, scores) };
            }
            // SAFETY (both): the CPU has the features (detected at run time, `cpu`); the task's
            // slices were bounds-checked in `check` just above.
            Cpu::Avx512 => {
                return match head_dim {
                    64 => unsafe { x86::attend::<4>(task, group, out, scores) },
                    _ => unsafe { x86::attend::<8>(task, group, out, scores) },
                };
            }
            Cpu::Avx2 => {
                return match head_dim {
                    64 => unsafe { avx2::attend::<8>(task, group, out, scores) },
                    _ => unsafe { avx2::attend::<16>(task, group, out, scores) },
                };
            }
        }
    }
    portable(task, head_dim, group, out, scores)
}

/// What this CPU runs attention with, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cpu {
    /// AVX-512F and F16C (and AVX2, FMA, which every AVX-512 CPU has): the 16-lane kernel for
    /// head widths 64 and 128, the AVX2 build of the portable loops for other widths.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    /// AVX2, FMA and F16C: the 8-lane kernel for head widths 64 and 128, the AVX2 build of the
    /// portable loops for other widths.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// Neither, or `SEALSERVE_LLM_ISA=scalar`: the portable loops as compiled.
    Plain,
}

/// The same decision as the step's other vector loops (SiLU, RoPE): `ops` detects once.
#[cfg(target_arch = "x86_64")]
fn cpu() -> Cpu {
    if !super::ops::avx2::usable() {
        Cpu::Plain
    } else if super::ops::x86::avx512() {
        Cpu::Avx512
    } else {
        Cpu::Avx2
    }
}

/// The portable loops compiled for AVX2 machines (no AVX-512): they vectorise 8 wide and
/// convert f16 with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn portable_avx2(
    task: &AttentionTask<'_>,
    head_dim: usize,
    group: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    portable(task, head_dim, group, out, scores)
}

/// Whether every read and write of the unchecked path lies inside the task's slices.
#[cfg(target_arch = "x86_64")]
fn check(task: &AttentionTask<'_>, head_dim: usize, group: usize, out: &[&mut [f32]]) -> bool {
    let rows = task.queries.len();
    let seen = task.first_pos + rows;
    let cache = (seen.saturating_sub(1)) * task.kv_width + task.kv_offset + head_dim;
    group <= x86::MAX_GROUP
        && task.queries.iter().all(|q| q.len() >= group * head_dim)
        && out.iter().all(|o| o.len() >= group * head_dim)
        && task.kv_offset + head_dim <= task.kv_width
        && task.keys.len() >= cache
        && task.values.len() >= cache
}

use half::slice::HalfFloatSliceExt;

/// Any head width, any CPU: the same steps with scalar loops.
#[inline(always)]
fn portable(
    task: &AttentionTask<'_>,
    head_dim: usize,
    group: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut k = vec![0f32; head_dim];
    let mut v = vec![0f32; head_dim];
    let (mut max, mut total) = (vec![0f32; group], vec![0f32; group]);
    // Each key and value row is converted from f16 once for all the group's query heads (per
    // head it was the largest cost of this path); each head's sums run in the same order.
    for (i, (q, o)) in task.queries.iter().zip(out.iter_mut()).enumerate() {
        let seen = task.first_pos + i + 1;
        scores.clear();
        scores.resize(group * seen, 0.0);
        max.fill(f32::NEG_INFINITY);
        for t in 0..seen {
            let row = &task.keys[t * task.kv_width + task.kv_offset..][..head_dim];
            row.convert_to_f32_slice(&mut k);
            for (g, m) in max.iter_mut().enumerate() {
                let s = dot(&q[g * head_dim..(g + 1) * head_dim], &k) * scale;
                *m = m.max(s);
                scores[g * seen + t] = s;
            }
        }
        total.fill(0.0);
        for (g, head) in scores.chunks_exact_mut(seen).enumerate() {
            for s in head.iter_mut() {
                *s = (*s - max[g]).exp();
                total[g] += *s;
            }
        }
        o[..group * head_dim].fill(0.0);
        for t in 0..seen {
            let row = &task.values[t * task.kv_width + task.kv_offset..][..head_dim];
            row.convert_to_f32_slice(&mut v);
            for (g, o) in o.chunks_exact_mut(head_dim).take(group).enumerate() {
                let w = scores[g * seen + t];
                for (o, v) in o.iter_mut().zip(&v) {
                    *o += w * v;
                }
            }
        }
        for (g, o) in o.chunks_exact_mut(head_dim).take(group).enumerate() {
            let inv = 1.0 / total[g];
            o.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// Dot product with 8 independent partial sums (vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::AttentionTask;
    use crate::model::llama::ops::x86::{exp16, lanes, reduce16, AddF32};
    use std::arch::x86_64::*;

    /// 16 cache values from f16.
    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    /// Prefetch distances in the key (16-row chunks) and value (rows) passes. At 8 streams most
    /// attention samples sat on the loads of cache rows (each task's rows come from memory and
    /// the hardware prefetcher restarts at every 4 KiB); with these, 8 paired rounds on the
    /// 2-core Xeon (2026-11-30) gave 8 streams +6 % and one stream +3 % (medians; the VM's
    /// memory bandwidth swings more than that between rounds); twice the distance was no better.
    pub(super) const KEY_AHEAD: usize = 2;
    pub(super) const VALUE_AHEAD: usize = 24;

    /// Most query heads per KV head the vector path takes (Llama 3 and Qwen2 have up to 8);
    /// wider groups use the portable loops.
    pub(super) const MAX_GROUP: usize = 16;

    /// Query heads of one value pass: `HEADS × C` accumulators stay in registers.
    const PASS_VECTORS: usize = 24;

    /// Head width `16 × C`. Callers checked the bounds (`super::check`).
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn attend<const C: usize>(
        task: &AttentionTask<'_>,
        group: usize,
        out: &mut [&mut [f32]],
        scores: &mut Vec<f32>,
    ) {
        let hd = 16 * C;
        let scale = _mm512_set1_ps(1.0 / (hd as f32).sqrt());
        let (keys, values) = (task.keys.as_ptr(), task.values.as_ptr());
        let (kw, off) = (task.kv_width, task.kv_offset);
        // On the stack: a task is ~2 µs at 8 streams, and two heap vectors per task were
        // measurable (`super::check` keeps `group` within MAX_GROUP).
        let mut inv = [0f32; MAX_GROUP];
        let inv = &mut inv[..group];
        let mut vmax = [_mm512_set1_ps(f32::NEG_INFINITY); MAX_GROUP];
        let vmax = &mut vmax[..group];
        // One 16-key chunk converted to f32 once for every head of the group.
        let mut chunk = [[_mm512_setzero_ps(); C]; 16];
        for (i, (q, o)) in task.queries.iter().zip(out.iter_mut()).enumerate() {
            let seen = task.first_pos + i + 1;
            let padded = seen.next_multiple_of(16);
            scores.resize(group * padded, 0.0);
            vmax.fill(_mm512_set1_ps(f32::NEG_INFINITY));
            let mut t0 = 0;
            while t0 < seen {
                // KV rows are read once per step, straight from memory: ask for the chunk
                // KEY_AHEAD chunks on (a hint; past the window it is never read).
                let ahead = keys.wrapping_add((t0 + 16 * KEY_AHEAD) * kw + off) as *const i8;
                for line in (0..16 * kw * 2).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                }
                for (j, key) in chunk.iter_mut().enumerate() {
                    // Past the end of the window the last key is read again and masked.
                    let k = keys.add((t0 + j).min(seen - 1) * kw + off);
                    for (c, x) in key.iter_mut().enumerate() {
                        *x = load16(k.add(16 * c));
                    }
                }
                let valid = lanes(seen - t0);
                for (g, vmax) in vmax.iter_mut().enumerate() {
                    let qp = q.as_ptr().add(g * hd);
                    let mut p = [_mm512_setzero_ps(); 16];
                    for (p, key) in p.iter_mut().zip(&chunk) {
                        let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qp), key[0]);
                        for (c, k) in key.iter().enumerate().skip(1) {
                            acc = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(16 * c)), *k, acc);
                        }
                        *p = acc;
                    }
                    let s = _mm512_mask_mov_ps(
                        _mm512_set1_ps(f32::NEG_INFINITY),
                        valid,
                        _mm512_mul_ps(reduce16::<AddF32>(&p), scale),
                    );
                    _mm512_storeu_ps(scores.as_mut_ptr().add(g * padded + t0), s);
                    *vmax = _mm512_max_ps(*vmax, s);
                }
                t0 += 16;
            }
            for (g, (inv, vmax)) in inv.iter_mut().zip(vmax.iter()).enumerate() {
                let srow = scores.as_mut_ptr().add(g * padded);
                let max = _mm512_set1_ps(_mm512_reduce_max_ps(*vmax));
                let mut vsum = _mm512_setzero_ps();
                let mut t0 = 0;
                while t0 < seen {
                    let s = _mm512_loadu_ps(srow.add(t0));
                    let e = _mm512_maskz_mov_ps(lanes(seen - t0), exp16(_mm512_sub_ps(s, max)));
                    _mm512_storeu_ps(srow.add(t0), e);
                    vsum = _mm512_add_ps(vsum, e);
                    t0 += 16;
                }
                *inv = 1.0 / _mm512_reduce_add_ps(vsum);
            }
            let heads_per_pass = (PASS_VECTORS / C).max(1);
            let mut g0 = 0;
            while g0 < group {
                let n = heads_per_pass.min(group - g0);
                let pass = Pass {
                    values,
                    kw,
                    off,
                    seen,
                    scores: scores.as_ptr().add(g0 * padded),
                    padded,
                    inv: &inv[g0..g0 + n],
                    out: o.as_mut_ptr().add(g0 * hd),
                };
                match n {
                    1 => weigh::<C, 1>(&pass),
                    2 => weigh::<C, 2>(&pass),
                    3 => weigh::<C, 3>(&pass),
                    4 => weigh::<C, 4>(&pass),
                    5 => weigh::<C, 5>(&pass),
                    _ => weigh::<C, 6>(&pass),
                }
                g0 += n;
            }
        }
    }

    /// One value pass over `N` query heads.
    struct Pass<'a> {
        values: *const half::f16,
        kw: usize,
        off: usize,
        seen: usize,
        /// Exponentiated scores of the first head; head `g` at `g × padded`.
        scores: *const f32,
        padded: usize,
        inv: &'a [f32],
        out: *mut f32,
    }

    /// `out[g] = inv[g] · Σ_t scores[g][t] · v_t`, each value row loaded once for all heads.
    #[inline(always)]
    unsafe fn weigh<const C: usize, const N: usize>(p: &Pass<'_>) {
        let mut acc = [[_mm512_setzero_ps(); C]; N];
        for t in 0..p.seen {
            let v = p.values.add(t * p.kw + p.off);
            let ahead = v.wrapping_add(VALUE_AHEAD * p.kw) as *const i8;
            for line in (0..p.kw * 2).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
            }
            let mut vv = [_mm512_setzero_ps(); C];
            for (c, x) in vv.iter_mut().enumerate() {
                *x = load16(v.add(16 * c));
            }
            for (g, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.scores.add(g * p.padded + t));
                for (a, x) in acc.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(w, *x, *a);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            let inv = _mm512_set1_ps(p.inv[g]);
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(p.out.add(16 * (g * C + c)), _mm512_mul_ps(*a, inv));
            }
        }
    }
}

/// The AVX-512 kernel's design on 8 lanes, for CPUs with AVX2 but not AVX-512 (and
/// `SEALSERVE_LLM_ISA=avx2`): each key and value row read and converted once for the group,
/// 8 keys scored per pass and summed by one transpose-add tree, 8 exponentials at once.
///
/// What differs: AVX2 has 16 vector registers, not 32, so a key pass accumulates its 8 dot
/// products column by column (one query vector load feeds 8 FMAs), and a value pass covers
/// 32 of the head's columns for up to 3 query heads (12 accumulators); a head of 64 (128)
/// takes 2 (4) passes over the value rows, each reading only its columns.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::AttentionTask;
    use crate::model::llama::ops::avx2::{exp8, fold, lanes, reduce8, AddF32, Max};
    use std::arch::x86_64::*;

    /// 8 cache values from f16.
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Prefetch distances, in rows: the AVX-512 kernel's.
    const KEY_AHEAD_ROWS: usize = 16 * super::x86::KEY_AHEAD;
    use super::x86::VALUE_AHEAD;

    /// Columns of one value pass, in 8-float vectors.
    const PASS_COLUMNS: usize = 4;

    /// Head width `8 × C` (8 or 16). Callers checked the bounds (`super::check`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend<const C: usize>(
        task: &AttentionTask<'_>,
        group: usize,
        out: &mut [&mut [f32]],
        scores: &mut Vec<f32>,
    ) {
        let hd = 8 * C;
        let scale = _mm256_set1_ps(1.0 / (hd as f32).sqrt());
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let (keys, values) = (task.keys.as_ptr(), task.values.as_ptr());
        let (kw, off) = (task.kv_width, task.kv_offset);
        let mut inv = [0f32; super::x86::MAX_GROUP];
        let inv = &mut inv[..group];
        let mut vmax = [neg_inf; super::x86::MAX_GROUP];
        let vmax = &mut vmax[..group];
        // One 8-key chunk converted to f32 once for every head of the group.
        let mut chunk = [[_mm256_setzero_ps(); C]; 8];
        for (i, (q, o)) in task.queries.iter().zip(out.iter_mut()).enumerate() {
            let seen = task.first_pos + i + 1;
            let padded = seen.next_multiple_of(8);
            scores.resize(group * padded, 0.0);
            vmax.fill(neg_inf);
            let mut t0 = 0;
            while t0 < seen {
                // A hint; past the window it is never read.
                let ahead = keys.wrapping_add((t0 + KEY_AHEAD_ROWS) * kw + off) as *const i8;
                for line in (0..8 * kw * 2).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                }
                for (j, key) in chunk.iter_mut().enumerate() {
                    // Past the end of the window the last key is read again and masked.
                    let k = keys.add((t0 + j).min(seen - 1) * kw + off);
                    for (c, x) in key.iter_mut().enumerate() {
                        *x = load8(k.add(8 * c));
                    }
                }
                let valid = lanes(seen - t0);
                for (g, vmax) in vmax.iter_mut().enumerate() {
                    let qp = q.as_ptr().add(g * hd);
                    let mut p = [_mm256_setzero_ps(); 8];
                    for c in 0..C {
                        let qc = _mm256_loadu_ps(qp.add(8 * c));
                        for (p, key) in p.iter_mut().zip(&chunk) {
                            *p = _mm256_fmadd_ps(qc, key[c], *p);
                        }
                    }
                    let s = _mm256_blendv_ps(
                        neg_inf,
                        _mm256_mul_ps(reduce8::<AddF32>(&p), scale),
                        valid,
                    );
                    _mm256_storeu_ps(scores.as_mut_ptr().add(g * padded + t0), s);
                    *vmax = _mm256_max_ps(*vmax, s);
                }
                t0 += 8;
            }
            for (g, (inv, vmax)) in inv.iter_mut().zip(vmax.iter()).enumerate() {
                let srow = scores.as_mut_ptr().add(g * padded);
                let max = _mm256_set1_ps(fold::<Max>(*vmax));
                let mut vsum = _mm256_setzero_ps();
                let mut t0 = 0;
                while t0 < seen {
                    let s = _mm256_loadu_ps(srow.add(t0));
                    let e = _mm256_and_ps(lanes(seen - t0), exp8(_mm256_sub_ps(s, max)));
                    _mm256_storeu_ps(srow.add(t0), e);
                    vsum = _mm256_add_ps(vsum, e);
                    t0 += 8;
                }
                *inv = 1.0 / fold::<AddF32>(vsum);
            }
            let mut g0 = 0;
            while g0 < group {
                let n = (group - g0).min(3);
                for col in (0..C).step_by(PASS_COLUMNS) {
                    let pass = Pass {
                        values: values.add(off + 8 * col),
                        kw,
                        seen,
                        scores: scores.as_ptr().add(g0 * padded),
                        padded,
                        inv: &inv[g0..g0 + n],
                        out: o.as_mut_ptr().add(g0 * hd + 8 * col),
                        hd,
                        prefetch: col == 0,
                    };
                    match n {
                        1 => weigh::<1>(&pass),
                        2 => weigh::<2>(&pass),
                        _ => weigh::<3>(&pass),
                    }
                }
                g0 += n;
            }
        }
    }

    /// One value pass: `PASS_COLUMNS` vectors of columns for `N` query heads.
    struct Pass<'a> {
        /// The pass's first column in row 0.
        values: *const half::f16,
        kw: usize,
        seen: usize,
        /// Exponentiated scores of the first head; head `g` at `g × padded`.
        scores: *const f32,
        padded: usize,
        inv: &'a [f32],
        /// The pass's first column of the first head's output; head `g` at `g × hd`.
        out: *mut f32,
        hd: usize,
        /// Whether to ask for rows ahead (the first pass over the rows; later ones find them
        /// in cache).
        prefetch: bool,
    }

    /// `out[g][cols] = inv[g] · Σ_t scores[g][t] · v_t[cols]`, each value vector converted once
    /// for all `N` heads.
    #[inline(always)]
    unsafe fn weigh<const N: usize>(p: &Pass<'_>) {
        let mut acc = [[_mm256_setzero_ps(); PASS_COLUMNS]; N];
        for t in 0..p.seen {
            let v = p.values.add(t * p.kw);
            if p.prefetch {
                let ahead = v.wrapping_add(VALUE_AHEAD * p.kw) as *const i8;
                for line in (0..p.kw * 2).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                }
            }
            let mut vv = [_mm256_setzero_ps(); PASS_COLUMNS];
            for (c, x) in vv.iter_mut().enumerate() {
                *x = load8(v.add(8 * c));
            }
            for (g, acc) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*p.scores.add(g * p.padded + t));
                for (a, x) in acc.iter_mut().zip(&vv) {
                    *a = _mm256_fmadd_ps(w, *x, *a);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            let inv = _mm256_set1_ps(p.inv[g]);
            for (c, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(p.out.add(g * p.hd + 8 * c), _mm256_mul_ps(*a, inv));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_is_causal_and_normalised() {
        // Two positions, one head of width 2; values are one-hot so the output is the weights.
        let keys = [1.0, 0.0, 0.0, 1.0].map(f16::from_f32);
        let values = [1.0, 0.0, 0.0, 1.0].map(f16::from_f32);
        let q0 = [5.0, 0.0];
        let q1 = [0.0, 0.0];
        let task = AttentionTask {
            queries: &[&q0, &q1],
            first_pos: 0,
            keys: &keys,
            values: &values,
            kv_offset: 0,
            kv_width: 2,
        };
        let (mut o0, mut o1) = ([0f32; 2], [0f32; 2]);
        attend(&task, 2, 1, &mut [&mut o0, &mut o1], &mut Vec::new());
        assert_eq!(o0, [1.0, 0.0], "row 0 sees only position 0");
        assert!((o1[0] - 0.5).abs() < 1e-6 && (o1[1] - 0.5).abs() < 1e-6);
    }

    /// Deterministic values in [-scale, scale).
    fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
        crate::model::llama::quant::tests::bytes(seed, len)
            .into_iter()
            .map(|b| (f32::from(b) / 128.0 - 1.0) * scale)
            .collect()
    }

    /// f64 softmax attention of one query head.
    fn reference(q: &[f64], keys: &[Vec<f64>], vals: &[Vec<f64>]) -> Vec<f64> {
        let scale = 1.0 / (q.len() as f64).sqrt();
        let s: Vec<f64> = keys
            .iter()
            .map(|k| k.iter().zip(q).map(|(a, b)| a * b).sum::<f64>() * scale)
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = e.iter().sum();
        (0..q.len())
            .map(|d| e.iter().zip(vals).map(|(w, v)| w * v[d]).sum::<f64>() / total)
            .collect()
    }

    #[test]
    fn every_path_matches_an_f64_reference_and_rows_do_not_depend_on_their_neighbours() {
        // Every path this CPU has; head widths with (64, 128) and without (48) the vector
        // kernels; groups of 1 to 7 query heads (a value pass takes up to 3 on AVX2); windows
        // that end inside and on an 8- and a 16-key chunk.
        for (path, (hd, group, kv_heads)) in paths().into_iter().flat_map(|p| {
            [
                (64, 3, 3),
                (128, 2, 2),
                (64, 7, 1),
                (48, 1, 2),
                (128, 1, 1),
                (128, 4, 1),
            ]
            .map(|shape| (p, shape))
        }) {
            let kw = hd * kv_heads;
            for (first_pos, rows) in [(0, 1), (0, 17), (7, 1), (15, 1), (31, 3), (100, 2)] {
                let seen = first_pos + rows;
                let half = |v: Vec<f32>| v.into_iter().map(f16::from_f32).collect::<Vec<_>>();
                let keys = half(values(hd as u64 + seen as u64, seen * kw, 3.0));
                let vals = half(values(7 + seen as u64, seen * kw, 1.0));
                let qs = values(11 + group as u64, rows * group * hd, 3.0);
                let qrows: Vec<&[f32]> = qs.chunks_exact(group * hd).collect();
                for kv in 0..kv_heads {
                    let task = AttentionTask {
                        queries: &qrows,
                        first_pos,
                        keys: &keys,
                        values: &vals,
                        kv_offset: kv * hd,
                        kv_width: kw,
                    };
                    let mut out = vec![0f32; rows * group * hd];
                    let mut outs: Vec<&mut [f32]> = out.chunks_exact_mut(group * hd).collect();
                    attend_on(path, &task, hd, group, &mut outs, &mut Vec::new());
                    for r in 0..rows {
                        let window = first_pos + r + 1;
                        let head = |data: &[f16], t: usize| -> Vec<f64> {
                            data[t * kw + kv * hd..][..hd]
                                .iter()
                                .map(|&x| f64::from(x))
                                .collect()
                        };
                        let ks: Vec<Vec<f64>> = (0..window).map(|t| head(&keys, t)).collect();
                        let vs: Vec<Vec<f64>> = (0..window).map(|t| head(&vals, t)).collect();
                        for g in 0..group {
                            let q: Vec<f64> = qs[(r * group + g) * hd..][..hd]
                                .iter()
                                .map(|&x| f64::from(x))
                                .collect();
                            let want = reference(&q, &ks, &vs);
                            let got = &out[(r * group + g) * hd..][..hd];
                            for (d, (g2, w)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (f64::from(*g2) - w).abs() < 2e-5,
                                    "{path:?}: hd {hd} group {group} pos {first_pos}+{r} head {g} dim {d}: {g2} vs {w}"
                                );
                            }
                        }
                        // The same row alone gives the same bits.
                        let alone = AttentionTask {
                            queries: &[&qs[r * group * hd..(r + 1) * group * hd]],
                            first_pos: first_pos + r,
                            keys: &keys,
                            values: &vals,
                            kv_offset: kv * hd,
                            kv_width: kw,
                        };
                        let mut one = vec![0f32; group * hd];
                        attend_on(path, &alone, hd, group, &mut [&mut one], &mut Vec::new());
                        assert_eq!(one, out[r * group * hd..(r + 1) * group * hd], "{path:?}");
                    }
                }
            }
        }
    }

    /// Every attention path this CPU can run, whatever `SEALSERVE_LLM_ISA` says.
    fn paths() -> Vec<Cpu> {
        #[allow(unused_mut)]
        let mut paths = vec![Cpu::Plain];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            paths.push(Cpu::Avx2);
            if is_x86_feature_detected!("avx512f") {
                paths.push(Cpu::Avx512);
            }
        }
        paths
    }
}
