//! Token sequences in, embeddings out, synchronously: packs a batch, lets the model run it (the
//! model decides padding and forward sizes), and pools each sequence or returns its token states.
//!
//! Never names a model family: it talks to [`Model`] only.

use super::pooling;
use crate::model::{HiddenChunk, Model, ModelError, Packed};
use crate::spec::Pooling;
use candle_core::DType;

/// What a sequence of a batch asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// One vector per sequence, pooled the way the embedder is configured.
    Pooled,
    /// Every token's final hidden state (TEI's `/embed_all`).
    Tokens,
    /// Raw logits of the classification head, one per label (`/predict`, `/rerank`).
    Scores,
    /// SPLADE weights: non-zero `(vocabulary index, weight)` pairs (`/embed_sparse`).
    Sparse,
}

/// A sequence's result, matching the [`Output`] it asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Embedding {
    Pooled(Vec<f32>),
    Tokens(Vec<Vec<f32>>),
    Scores(Vec<f32>),
    Sparse(Vec<(u32, f32)>),
}

impl Embedding {
    /// The pooled vector, if this is one.
    pub fn into_pooled(self) -> Option<Vec<f32>> {
        match self {
            Embedding::Pooled(vector) => Some(vector),
            _ => None,
        }
    }

    /// The token vectors, if these are.
    pub fn into_tokens(self) -> Option<Vec<Vec<f32>>> {
        match self {
            Embedding::Tokens(tokens) => Some(tokens),
            _ => None,
        }
    }

    /// The head's logits, if these are.
    pub fn into_scores(self) -> Option<Vec<f32>> {
        match self {
            Embedding::Scores(scores) => Some(scores),
            _ => None,
        }
    }

    /// The sparse weights, if these are.
    pub fn into_sparse(self) -> Option<Vec<(u32, f32)>> {
        match self {
            Embedding::Sparse(weights) => Some(weights),
            _ => None,
        }
    }
}

/// A loaded model plus how its outputs are pooled.
pub struct Embedder {
    model: Box<dyn Model>,
    pooling: Pooling,
    max_forward_tokens: usize,
}

impl Embedder {
    /// `max_forward_tokens` bounds the padded tokens of one forward (activation memory).
    pub fn new(model: Box<dyn Model>, pooling: Pooling, max_forward_tokens: usize) -> Self {
        crate::memory::keep_activation_memory();
        Self {
            model,
            pooling,
            max_forward_tokens: max_forward_tokens.max(1),
        }
    }

    /// Width of the embeddings.
    pub fn hidden_size(&self) -> usize {
        self.model.hidden_size()
    }

    /// Raw (unnormalised) pooled vectors, one per sequence, in input order.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_with(sequences, self.pooling)
    }

    /// Like `embed` with an explicit pooling (tests compare CLS, mean and last-token pooling
    /// against the reference).
    pub fn embed_with(
        &self,
        sequences: &[Vec<u32>],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let outputs = vec![Output::Pooled; sequences.len()];
        Ok(self
            .run_with(sequences, &[], &outputs, pooling)?
            .into_iter()
            .filter_map(Embedding::into_pooled)
            .collect())
    }

    /// One result per sequence, in input order, each as its `outputs` entry asks.
    pub fn run(
        &self,
        sequences: &[Vec<u32>],
        outputs: &[Output],
    ) -> Result<Vec<Embedding>, ModelError> {
        self.run_with(sequences, &[], outputs, self.pooling)
    }

    /// Like [`Self::run`] with segment ids for pair inputs: `type_ids` is empty (no pairs) or
    /// holds one entry per sequence (`None` = all segment 0). Only heads read them.
    pub fn run_typed(
        &self,
        sequences: &[Vec<u32>],
        type_ids: &[Option<Vec<u32>>],
        outputs: &[Output],
    ) -> Result<Vec<Embedding>, ModelError> {
        self.run_with(sequences, type_ids, outputs, self.pooling)
    }

    /// Label names of the model's classification head (empty without one).
    pub fn labels(&self) -> &[String] {
        self.model.labels()
    }

    /// On the CPU the whole call runs on a thread of rayon's global pool, the pool the forward's
    /// matmuls and fused kernels split their work over. Why: called from any other thread, each
    /// parallel op handed its work to the pool's threads and blocked the caller, and between ops
    /// those threads spun (`sched_yield`) on the cores the caller's serial work needed: one more
    /// runnable thread than cores, a third of a small forward's time in the scheduler.
    fn run_with(
        &self,
        sequences: &[Vec<u32>],
        type_ids: &[Option<Vec<u32>>],
        outputs: &[Output],
        pooling: Pooling,
    ) -> Result<Vec<Embedding>, ModelError> {
        if self.model.device().is_cpu() {
            rayon::scope(|_| self.run_here(sequences, type_ids, outputs, pooling))
        } else {
            self.run_here(sequences, type_ids, outputs, pooling)
        }
    }

    fn run_here(
        &self,
        sequences: &[Vec<u32>],
        type_ids: &[Option<Vec<u32>>],
        outputs: &[Output],
        pooling: Pooling,
    ) -> Result<Vec<Embedding>, ModelError> {
        if outputs.len() != sequences.len() {
            return Err(ModelError::Batch(
                "one output kind per sequence is required".into(),
            ));
        }
        if !type_ids.is_empty() && type_ids.len() != sequences.len() {
            return Err(ModelError::Batch(
                "segment ids must be given for every sequence or none".into(),
            ));
        }
        let is_hidden = |o: &Output| matches!(o, Output::Pooled | Output::Tokens);
        if outputs.iter().all(is_hidden) {
            return self.hidden_outputs(sequences, outputs, pooling);
        }
        let mut results: Vec<Option<Embedding>> = vec![None; sequences.len()];
        let hidden: Vec<usize> = (0..outputs.len())
            .filter(|i| is_hidden(&outputs[*i]))
            .collect();
        if !hidden.is_empty() {
            let subset: Vec<Vec<u32>> = hidden.iter().map(|i| sequences[*i].clone()).collect();
            let kinds: Vec<Output> = hidden.iter().map(|i| outputs[*i]).collect();
            let done = self.hidden_outputs(&subset, &kinds, pooling)?;
            for (member, result) in hidden.iter().zip(done) {
                results[*member] = Some(result);
            }
        }
        for kind in [Output::Scores, Output::Sparse] {
            let members: Vec<usize> = (0..outputs.len()).filter(|i| outputs[*i] == kind).collect();
            if members.is_empty() {
                continue;
            }
            let batch = typed_batch(sequences, type_ids, &members)?;
            let done: Vec<Embedding> = if kind == Output::Scores {
                self.model
                    .predict(&batch, self.max_forward_tokens)?
                    .into_iter()
                    .map(Embedding::Scores)
                    .collect()
            } else {
                self.model
                    .sparse_embed(&batch, self.max_forward_tokens)?
                    .into_iter()
                    .map(Embedding::Sparse)
                    .collect()
            };
            for (member, result) in members.iter().zip(done) {
                results[*member] = Some(result);
            }
        }
        complete(results)
    }

    /// Pooled vectors or token states (the embedding path), in input order.
    fn hidden_outputs(
        &self,
        sequences: &[Vec<u32>],
        outputs: &[Output],
        pooling: Pooling,
    ) -> Result<Vec<Embedding>, ModelError> {
        let batch = Packed::from_sequences(sequences)?;
        let mut results: Vec<Option<Embedding>> = vec![None; sequences.len()];
        // Each chunk is pooled (or copied out) and dropped before the model runs the next
        // forward, so that forward reuses its memory (see `Model::for_each_hidden_chunk`).
        self.model
            .for_each_hidden_chunk(&batch, self.max_forward_tokens, &mut |chunk| {
                take_chunk(&chunk, &batch.lengths, outputs, pooling, &mut results)
            })?;
        complete(results)
    }
}

/// Every sequence's result, or which one the model left out.
fn complete(results: Vec<Option<Embedding>>) -> Result<Vec<Embedding>, ModelError> {
    results
        .into_iter()
        .enumerate()
        .map(|(index, result)| {
            result.ok_or_else(|| {
                ModelError::Batch(format!("the model returned nothing for sequence {index}"))
            })
        })
        .collect()
}

/// The `members` of a batch packed with their segment ids (zeros where a sequence has none);
/// no segment ids at all when none of them is a pair.
fn typed_batch(
    sequences: &[Vec<u32>],
    type_ids: &[Option<Vec<u32>>],
    members: &[usize],
) -> Result<Packed, ModelError> {
    let chosen: Vec<Vec<u32>> = members.iter().map(|m| sequences[*m].clone()).collect();
    let mut batch = Packed::from_sequences(&chosen)?;
    let typed = |m: &usize| type_ids.get(*m).and_then(Option::as_ref);
    if members.iter().any(|m| typed(m).is_some()) {
        batch.token_type_ids = Some(
            members
                .iter()
                .flat_map(|m| {
                    typed(m)
                        .cloned()
                        .unwrap_or_else(|| vec![0; sequences[*m].len()])
                })
                .collect(),
        );
    }
    batch.check()?;
    Ok(batch)
}

/// Stores one chunk's results in `results` (indexed like the batch): a pooled vector or the
/// token vectors of each member, as its `outputs` entry asks.
fn take_chunk(
    chunk: &HiddenChunk,
    lengths_of_batch: &[usize],
    outputs: &[Output],
    pooling: Pooling,
    results: &mut [Option<Embedding>],
) -> Result<(), ModelError> {
    let lengths: Vec<usize> = chunk.members.iter().map(|m| lengths_of_batch[*m]).collect();
    let wants_tokens = chunk.members.iter().any(|m| outputs[*m] == Output::Tokens);
    let wants_pooled = chunk.members.iter().any(|m| outputs[*m] == Output::Pooled);
    let mut pooled = if wants_pooled {
        pooling::pool(&chunk.hidden, &lengths, pooling)?
            .to_vec2::<f32>()?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        Vec::new()
    };
    let mut rows = if wants_tokens {
        chunk
            .hidden
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?
            .into_iter()
    } else {
        Vec::new().into_iter()
    };
    for (position, (member, len)) in chunk.members.iter().zip(&lengths).enumerate() {
        let rows_of_member: Vec<Vec<f32>> = if wants_tokens {
            rows.by_ref().take(*len).collect()
        } else {
            Vec::new()
        };
        results[*member] = Some(match outputs[*member] {
            Output::Pooled => Embedding::Pooled(
                pooled
                    .get_mut(position)
                    .and_then(Option::take)
                    .unwrap_or_default(),
            ),
            Output::Tokens => Embedding::Tokens(rows_of_member),
            Output::Scores | Output::Sparse => {
                return Err(ModelError::Batch(
                    "a head output reached the hidden-state path".into(),
                ))
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attention, HiddenChunk};
    use candle_core::{DType, Device, Tensor};
    use std::sync::{Arc, Mutex};

    /// A model that records which rayon thread (if any) ran each call, and returns zeros.
    struct Probe {
        device: Device,
        threads: Arc<Mutex<Vec<Option<usize>>>>,
    }

    impl Model for Probe {
        fn hidden_size(&self) -> usize {
            4
        }
        fn max_positions(&self) -> usize {
            16
        }
        fn attention(&self) -> Attention {
            Attention::Bidirectional
        }
        fn dtype(&self) -> DType {
            DType::F32
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn hidden_states(
            &self,
            batch: &Packed,
            _max_forward_tokens: usize,
        ) -> Result<Vec<HiddenChunk>, ModelError> {
            self.threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(rayon::current_thread_index());
            Ok(vec![HiddenChunk {
                members: (0..batch.lengths.len()).collect(),
                hidden: Tensor::zeros((batch.ids.len(), 4), DType::F32, &self.device)?,
            }])
        }
    }

    #[test]
    fn cpu_calls_run_on_the_compute_pool_from_any_thread() {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            device: Device::Cpu,
            threads: threads.clone(),
        };
        let embedder = Embedder::new(Box::new(probe), Pooling::Mean, 64);
        // From a plain thread (as the engine thread is) and from the test thread.
        std::thread::scope(|s| {
            s.spawn(|| embedder.embed(&[vec![1, 2, 3]]).map(|_| ()))
                .join()
                .expect("thread")
        })
        .expect("embed");
        let vectors = embedder.embed(&[vec![1, 2], vec![3]]).expect("embed");
        assert_eq!(vectors.len(), 2);
        let threads = threads.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(threads.len(), 2);
        assert!(
            threads.iter().all(Option::is_some),
            "a CPU forward ran outside rayon's pool: {threads:?}"
        );
    }
}
