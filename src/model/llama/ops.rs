//! The per-row parts of a llama layer on CPU f32: RMS norm, rotary embedding and SiLU gate
//! (attention has its own module).
//!
//! Why plain loops and not candle ops: in a decode step each of these works on a handful of
//! vectors of a few hundred floats; a candle op costs more in dispatch and allocation than the
//! arithmetic, and attention must read each sequence's own cache. The loops are written so the
//! compiler vectorises them.

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
}
