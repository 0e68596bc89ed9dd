//! The per-row parts of a llama layer on CPU f32: RMS norm, rotary embedding, SiLU gate and
//! causal attention over a sequence's KV cache.
//!
//! Why plain loops and not candle ops: in a decode step each of these works on a handful of
//! vectors of a few hundred floats; a candle op costs more in dispatch and allocation than the
//! arithmetic, and attention must read each sequence's own cache. The loops are written so the
//! compiler vectorises them; `attention_rows` is also compiled for AVX2+FMA and picked at run
//! time.

use super::config::RopeStyle;

/// `out = x / rms(x) * weight`, row by row.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
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
        let mean = head.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, w) in head.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    }
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

    /// Appends `(cos, sin)` of every pair for position `pos` to `out`.
    pub fn push_position(&self, pos: usize, out: &mut Vec<(f32, f32)>) {
        let p = pos as f64 / self.linear_scale;
        out.extend(self.inv_freq.iter().map(|f| {
            let (s, c) = (p * f).sin_cos();
            (c as f32, s as f32)
        }));
    }

    /// Pairs per head.
    pub fn pairs(&self) -> usize {
        self.inv_freq.len()
    }
}

/// Rotates every head of one row (`heads × head_dim`) with the angles of its position.
pub fn apply_rope(row: &mut [f32], head_dim: usize, angles: &[(f32, f32)], style: RopeStyle) {
    let pairs = angles.len();
    for head in row.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in angles.iter().enumerate() {
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
pub fn silu_mul(gate_up: &[f32], width: usize, out: &mut [f32]) {
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

/// What one attention task needs: one query head of one sequence's new rows.
pub struct AttentionTask<'a> {
    /// Query rows, each `head_dim` wide (already rotated), `rows` of them.
    pub queries: Vec<&'a [f32]>,
    /// Absolute position of the first query row; row `i` sees keys `0..=first_pos + i`.
    pub first_pos: usize,
    /// The sequence's cache for this layer: `[pos][kv_width]`.
    pub keys: &'a [f32],
    pub values: &'a [f32],
    /// Offset of this head's key/value slice inside a cache row.
    pub kv_offset: usize,
    pub kv_width: usize,
}

/// Softmax attention of each query row over its causal window; writes `head_dim` floats per
/// row into `out[i]`. `scores` is scratch.
pub fn attention_rows(
    task: &AttentionTask<'_>,
    head_dim: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *FMA.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
        {
            // SAFETY: AVX2 and FMA were detected at run time.
            return unsafe { attention_rows_avx2(task, head_dim, out, scores) };
        }
    }
    attention_body(task, head_dim, out, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_rows_avx2(
    task: &AttentionTask<'_>,
    head_dim: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    attention_body(task, head_dim, out, scores)
}

#[inline(always)]
fn attention_body(
    task: &AttentionTask<'_>,
    head_dim: usize,
    out: &mut [&mut [f32]],
    scores: &mut Vec<f32>,
) {
    let scale = 1.0 / (head_dim as f32).sqrt();
    for (i, (q, o)) in task.queries.iter().zip(out.iter_mut()).enumerate() {
        let seen = task.first_pos + i + 1;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for t in 0..seen {
            let k = &task.keys[t * task.kv_width + task.kv_offset..][..head_dim];
            let s = dot(q, k) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        let inv = 1.0 / total;
        o.fill(0.0);
        for (t, &w) in scores.iter().enumerate() {
            let v = &task.values[t * task.kv_width + task.kv_offset..][..head_dim];
            let w = w * inv;
            for (o, v) in o.iter_mut().zip(v) {
                *o += w * v;
            }
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
    fn attention_is_causal_and_normalised() {
        // Two positions, one head of width 2; values are one-hot so the output is the weights.
        let keys = [1.0, 0.0, 0.0, 1.0];
        let values = [1.0, 0.0, 0.0, 1.0];
        let q0 = [5.0, 0.0];
        let q1 = [0.0, 0.0];
        let task = AttentionTask {
            queries: vec![&q0, &q1],
            first_pos: 0,
            keys: &keys,
            values: &values,
            kv_offset: 0,
            kv_width: 2,
        };
        let (mut o0, mut o1) = ([0f32; 2], [0f32; 2]);
        attention_rows(&task, 2, &mut [&mut o0, &mut o1], &mut Vec::new());
        assert_eq!(o0, [1.0, 0.0], "row 0 sees only position 0");
        assert!((o1[0] - 0.5).abs() < 1e-6 && (o1[1] - 0.5).abs() < 1e-6);
    }
}
