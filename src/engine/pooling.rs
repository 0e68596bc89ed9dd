//! Pooling (token hidden states → one vector per sequence) and the per-request post-processing
//! of pooled vectors: Matryoshka truncation and L2 normalisation.
//!
//! Pooling has one implementation, on tensors of packed hidden states (`[tokens, hidden]`, the
//! shape every model family returns), so it runs on whatever device the model uses and only the
//! pooled `[sequences, hidden]` result is copied out.
//!
//! The engine returns raw pooled vectors so one batch can serve requests that ask for different
//! `normalize` / `dimensions`; [`finish`] runs after the batch is split back per request.

use crate::spec::Pooling;
use candle_core::{DType, Tensor};

/// Pools packed hidden states `[sum(lengths), hidden]` into `[lengths.len(), hidden]`, in f32
/// (half-precision sums overflow).
pub fn pool(hidden: &Tensor, lengths: &[usize], pooling: Pooling) -> candle_core::Result<Tensor> {
    let device = hidden.device();
    let rows = |pick: &dyn Fn(usize, usize) -> usize| -> candle_core::Result<Tensor> {
        let mut first = 0;
        let indices: Vec<u32> = lengths
            .iter()
            .map(|len| {
                let row = pick(first, *len) as u32;
                first += len;
                row
            })
            .collect();
        Tensor::from_vec(indices, lengths.len(), device)
    };
    match pooling {
        Pooling::Cls => hidden
            .index_select(&rows(&|first, _| first)?, 0)?
            .to_dtype(DType::F32),
        Pooling::LastToken => hidden
            .index_select(&rows(&|first, len| first + len - 1)?, 0)?
            .to_dtype(DType::F32),
        Pooling::Mean => {
            let hidden = hidden.to_dtype(DType::F32)?;
            let width = hidden.dim(1)?;
            let owner: Vec<u32> = lengths
                .iter()
                .enumerate()
                .flat_map(|(sequence, len)| std::iter::repeat_n(sequence as u32, *len))
                .collect();
            let tokens = owner.len();
            let owner = Tensor::from_vec(owner, tokens, device)?;
            let counts: Vec<f32> = lengths.iter().map(|l| *l as f32).collect();
            let counts = Tensor::from_vec(counts, (lengths.len(), 1), device)?;
            Tensor::zeros((lengths.len(), width), DType::F32, device)?
                .index_add(&owner, &hidden, 0)?
                .broadcast_div(&counts)
        }
    }
}

/// Why a `dimensions` value was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("dimensions must be between 1 and {max} (the model's embedding size), got {got}")]
pub struct DimensionsError {
    pub got: usize,
    pub max: usize,
}

/// Checks a requested `dimensions` against the model's width.
pub fn check_dimensions(dimensions: Option<usize>, width: usize) -> Result<(), DimensionsError> {
    match dimensions {
        Some(d) if d == 0 || d > width => Err(DimensionsError { got: d, max: width }),
        _ => Ok(()),
    }
}

/// Truncates to `dimensions` (if any), then L2-normalises (if asked). Truncating first is what
/// Matryoshka models expect: the leading components, renormalised.
pub fn finish(mut vector: Vec<f32>, normalize: bool, dimensions: Option<usize>) -> Vec<f32> {
    if let Some(d) = dimensions {
        vector.truncate(d);
    }
    if normalize {
        l2_normalize(&mut vector);
    }
    vector
}

/// In-place L2 normalisation; a zero vector stays zero (as torch's F.normalize with eps).
pub fn l2_normalize(vector: &mut [f32]) {
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    let norm = norm.max(1e-12) as f32;
    vector.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_then_normalise() {
        let v = finish(vec![3.0, 4.0, 12.0], true, Some(2));
        assert_eq!(v.len(), 2);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn raw_vectors_are_untouched() {
        assert_eq!(finish(vec![3.0, 4.0], false, None), vec![3.0, 4.0]);
    }

    #[test]
    fn pooling_packed_rows() {
        // Two sequences of widths 2: rows [1,2],[3,4],[5,6] then [7,8].
        let hidden = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 5., 6., 7., 8.],
            (4, 2),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let pooled = |p| pool(&hidden, &[3, 1], p).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled(Pooling::Cls), vec![vec![1., 2.], vec![7., 8.]]);
        assert_eq!(pooled(Pooling::LastToken), vec![vec![5., 6.], vec![7., 8.]]);
        assert_eq!(pooled(Pooling::Mean), vec![vec![3., 4.], vec![7., 8.]]);
    }

    #[test]
    fn dimensions_bounds() {
        assert!(check_dimensions(Some(0), 384).is_err());
        assert!(check_dimensions(Some(385), 384).is_err());
        assert!(check_dimensions(Some(384), 384).is_ok());
        assert!(check_dimensions(None, 384).is_ok());
    }
}
