//! Token sequences in, pooled vectors out, synchronously: groups a batch into forwards with as
//! little padding as possible, runs them, and pools each sequence.
//!
//! Why grouping: sequences are sorted by length and packed into forwards whose padded size stays
//! under a token budget and whose members differ in length by at most a quarter. When every
//! sequence in a forward has the same length (the common case under load), the model runs with no
//! attention mask at all.
//!
//! On CPU in f32 the encoder can run sequences back to back without any padding
//! ([`BertModel::forward_packed`]); then a batch is cut only by the token budget, in input order,
//! and mixed lengths cost one forward instead of one per length group.

use crate::model::bert::BertModel;
use crate::model::Encoder;
use crate::spec::Pooling;
use candle_core::{DType, IndexOp, Tensor};

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("empty token sequence at position {0}: every input has at least [CLS] and [SEP]")]
    EmptySequence(usize),
}

/// Sequences (by index into the batch) that run in one forward, padded to `padded_len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub members: Vec<usize>,
    pub padded_len: usize,
}

/// Plans the forwards for sequences of the given lengths. Every index appears exactly once; a
/// forward's padded size (`members × padded_len`) stays within `max_tokens` unless a single
/// sequence alone exceeds it; members are at least 3/4 of the padded length.
pub fn plan_forwards(lengths: &[usize], max_tokens: usize) -> Vec<Forward> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|a, b| lengths[*b].cmp(&lengths[*a]).then(a.cmp(b)));
    let mut forwards: Vec<Forward> = Vec::new();
    for index in order {
        let len = lengths[index];
        let fits = forwards.last().is_some_and(|f| {
            (f.members.len() + 1) * f.padded_len <= max_tokens && len * 4 >= f.padded_len * 3
        });
        match forwards.last_mut() {
            Some(current) if fits => current.members.push(index),
            _ => forwards.push(Forward {
                members: vec![index],
                padded_len: len,
            }),
        }
    }
    forwards
}

/// A loaded encoder plus how its outputs are pooled.
pub struct Embedder {
    encoder: Encoder,
    pooling: Pooling,
    max_forward_tokens: usize,
}

impl Embedder {
    /// `max_forward_tokens` bounds the padded tokens of one forward (activation memory).
    pub fn new(encoder: Encoder, pooling: Pooling, max_forward_tokens: usize) -> Self {
        crate::memory::keep_activation_memory();
        Self {
            encoder,
            pooling,
            max_forward_tokens: max_forward_tokens.max(1),
        }
    }

    /// The network.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The pooling this embedder applies.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Raw (unnormalised) pooled vectors, one per sequence, in input order.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.embed_with(sequences, self.pooling)
    }

    /// Like `embed` with an explicit pooling (tests compare CLS and mean against the reference).
    pub fn embed_with(
        &self,
        sequences: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        if let Some(empty) = sequences.iter().position(Vec::is_empty) {
            return Err(InferenceError::EmptySequence(empty));
        }
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        match &self.encoder {
            Encoder::Bert(model) if model.supports_packed() => {
                return self.embed_packed(model, sequences, &lengths, pooling);
            }
            _ => {}
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); sequences.len()];
        for forward in plan_forwards(&lengths, self.max_forward_tokens) {
            let pooled = self.run_forward(sequences, &forward, pooling)?;
            for (index, vector) in forward.members.iter().zip(pooled) {
                out[*index] = vector;
            }
        }
        Ok(out)
    }

    fn embed_packed(
        &self,
        model: &BertModel,
        sequences: &[Vec<u32>],
        lengths: &[usize],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut out = Vec::with_capacity(sequences.len());
        for group in plan_packed(lengths, self.max_forward_tokens) {
            let ids: Vec<u32> = sequences[group.clone()].concat();
            let hidden = model.forward_packed(&ids, &lengths[group.clone()])?;
            let width = hidden.dim(1)?;
            let values = hidden
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut first = 0;
            for len in &lengths[group] {
                let rows = &values[first * width..(first + len) * width];
                out.push(pool_rows(rows, width, pooling));
                first += len;
            }
        }
        Ok(out)
    }

    fn run_forward(
        &self,
        sequences: &[Vec<u32>],
        forward: &Forward,
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let device = self.encoder.device();
        let batch = forward.members.len();
        let padded = forward.padded_len;
        let lengths: Vec<usize> = forward
            .members
            .iter()
            .map(|i| sequences[*i].len())
            .collect();
        let mut ids = Vec::with_capacity(batch * padded);
        for index in &forward.members {
            let sequence = &sequences[*index];
            ids.extend_from_slice(sequence);
            ids.resize(ids.len() + padded - sequence.len(), 0);
        }
        let input_ids = Tensor::from_vec(ids, (batch, padded), device)?;
        let needs_mask = lengths.iter().any(|l| *l != padded);
        let mask = needs_mask
            .then(|| {
                let values: Vec<f32> = lengths
                    .iter()
                    .flat_map(|len| (0..padded).map(move |p| if p < *len { 1.0 } else { 0.0 }))
                    .collect();
                Tensor::from_vec(values, (batch, padded), device)
            })
            .transpose()?;
        let hidden = self.encoder.forward(&input_ids, mask.as_ref())?;
        let pooled = pool(&hidden, mask.as_ref(), &lengths, pooling)?;
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// Consecutive runs of sequences (input order) whose total length stays within `max_tokens`,
/// for packed forwards; a sequence longer than the budget runs alone.
pub fn plan_packed(lengths: &[usize], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (index, len) in lengths.iter().enumerate() {
        if index > start && tokens + len > max_tokens {
            groups.push(start..index);
            (start, tokens) = (index, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

/// Pools one sequence's rows (`[len, width]`, row-major) into a vector, in f32.
fn pool_rows(rows: &[f32], width: usize, pooling: Pooling) -> Vec<f32> {
    match pooling {
        Pooling::Cls => rows[..width].to_vec(),
        Pooling::LastToken => rows[rows.len() - width..].to_vec(),
        Pooling::Mean => {
            let mut sum = vec![0f32; width];
            for row in rows.chunks_exact(width) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += *v;
                }
            }
            let count = (rows.len() / width) as f32;
            sum.iter_mut().for_each(|s| *s /= count);
            sum
        }
    }
}

/// Pools `[batch, seq, hidden]` into `[batch, hidden]` in f32 (half-precision sums overflow).
fn pool(
    hidden: &Tensor,
    mask: Option<&Tensor>,
    lengths: &[usize],
    pooling: Pooling,
) -> candle_core::Result<Tensor> {
    match pooling {
        Pooling::Cls => hidden.i((.., 0, ..))?.to_dtype(DType::F32),
        Pooling::LastToken => {
            let (batch, seq, width) = hidden.dims3()?;
            let rows: Vec<u32> = lengths
                .iter()
                .enumerate()
                .map(|(b, len)| (b * seq + len - 1) as u32)
                .collect();
            let rows = Tensor::from_vec(rows, batch, hidden.device())?;
            hidden
                .reshape((batch * seq, width))?
                .index_select(&rows, 0)?
                .to_dtype(DType::F32)
        }
        Pooling::Mean => {
            let hidden = hidden.to_dtype(DType::F32)?;
            match mask {
                None => hidden.mean(1),
                Some(mask) => {
                    let counts: Vec<f32> = lengths.iter().map(|l| *l as f32).collect();
                    let counts = Tensor::from_vec(counts, (lengths.len(), 1), hidden.device())?;
                    hidden
                        .broadcast_mul(&mask.unsqueeze(2)?)?
                        .sum(1)?
                        .broadcast_div(&counts)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_every_sequence_once_within_budget() {
        let lengths = [5, 250, 7, 6, 240, 5, 100, 9, 256, 5];
        let plan = plan_forwards(&lengths, 512);
        let mut seen: Vec<usize> = plan.iter().flat_map(|f| f.members.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for forward in &plan {
            assert!(
                forward.members.len() == 1 || forward.members.len() * forward.padded_len <= 512
            );
            for m in &forward.members {
                assert!(lengths[*m] <= forward.padded_len);
                assert!(lengths[*m] * 4 >= forward.padded_len * 3);
            }
        }
    }

    #[test]
    fn packed_plan_keeps_order_and_budget() {
        let lengths = [5, 250, 7, 6, 240, 5, 100, 9, 600, 5];
        let plan = plan_packed(&lengths, 512);
        let covered: Vec<usize> = plan.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(covered, (0..lengths.len()).collect::<Vec<_>>());
        for group in &plan {
            let tokens: usize = lengths[group.clone()].iter().sum();
            assert!(
                group.len() == 1 || tokens <= 512,
                "{group:?} has {tokens} tokens"
            );
        }
        assert_eq!(plan_packed(&[], 512), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn equal_lengths_share_one_forward() {
        let plan = plan_forwards(&[16; 32], 4096);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].padded_len, 16);
    }
}
