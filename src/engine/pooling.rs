//! Per-request post-processing of pooled vectors: Matryoshka truncation and L2 normalisation.
//!
//! The engine returns raw pooled vectors so one batch can serve requests that ask for different
//! `normalize` / `dimensions`; this runs after the batch is split back per request.

/// Why a `dimensions` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    fn dimensions_bounds() {
        assert!(check_dimensions(Some(0), 384).is_err());
        assert!(check_dimensions(Some(385), 384).is_err());
        assert!(check_dimensions(Some(384), 384).is_ok());
        assert!(check_dimensions(None, 384).is_ok());
    }
}
