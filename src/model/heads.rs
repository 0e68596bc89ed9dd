//! Task heads on top of a [`Network`]: sequence classification (TEI's `/predict`; with one label
//! a cross-encoder reranker, TEI's `/rerank`) and SPLADE sparse embeddings from a masked-LM head
//! (`/embed_sparse`).
//!
//! Every `*ForSequenceClassification` head in the supported families is the same few steps on
//! one pooled row per sequence — pick a row (first, last, or the mean), optionally a dense layer
//! with an activation and a norm, then the output projection — so one [`ClassifierHead`] with
//! per-family settings covers them:
//!
//! | family | pooled row | dense + act | norm | output |
//! |---|---|---|---|---|
//! | BERT, GTE | first | `pooler.dense` + tanh | – | `classifier` |
//! | RoBERTa / XLM-R, MPNet | first | `classifier.dense` + tanh | – | `classifier.out_proj` |
//! | DistilBERT | first | `pre_classifier` + ReLU | – | `classifier` |
//! | ModernBERT | first or mean (`classifier_pooling`) | `head.dense` + act | `head.norm` | `classifier` |
//! | Qwen2/3 | last | – | – | `score` (no bias) |

use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::layers::{self, Activation};
use super::network::{Network, PackedBatch};

/// Which row of a sequence the head reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadPooling {
    First,
    /// The rightmost token whose id is not `pad` (transformers' rule for decoder classifiers,
    /// which tells padding apart by id; the first token if all are `pad`); with no pad id, the
    /// last token.
    LastNonPad(Option<u32>),
    Mean,
}

/// The activation after the head's dense layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadActivation {
    Tanh,
    Other(Activation),
}

/// Settings and weight names of a family's classification head.
pub struct HeadSpec<'a> {
    pub pooling: HeadPooling,
    /// Dense layer before the output: name, whether it has a bias, activation.
    pub dense: Option<(&'a str, bool, HeadActivation)>,
    /// Norm after the dense layer: name, eps, whether it has a bias.
    pub norm: Option<(&'a str, f64, bool)>,
    /// Output projection: name, whether it has a bias.
    pub output: (&'a str, bool),
}

/// A loaded classification head.
pub struct ClassifierHead {
    pooling: HeadPooling,
    dense: Option<(Linear, HeadActivation)>,
    norm: Option<LayerNorm>,
    output: Linear,
}

impl ClassifierHead {
    pub fn load(
        spec: &HeadSpec,
        hidden: usize,
        labels: usize,
        vb: &VarBuilder,
    ) -> candle_core::Result<Self> {
        let dense = spec
            .dense
            .map(|(name, bias, act)| {
                Ok::<_, candle_core::Error>((
                    layers::linear(hidden, hidden, bias, vb.pp(name))?,
                    act,
                ))
            })
            .transpose()?;
        let norm = spec
            .norm
            .map(|(name, eps, bias)| layers::layer_norm(hidden, eps, bias, vb.pp(name)))
            .transpose()?;
        let (name, bias) = spec.output;
        Ok(Self {
            pooling: spec.pooling,
            dense,
            norm,
            output: layers::linear(hidden, labels, bias, vb.pp(name))?,
        })
    }

    /// Logits `[sequences, labels]` from packed hidden states `[Σ lengths, hidden]` of `batch`.
    pub fn logits(&self, hidden: &Tensor, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        let mut x = pool_rows(hidden, batch, self.pooling)?;
        if let Some((dense, act)) = &self.dense {
            x = dense.forward(&x)?;
            x = match act {
                HeadActivation::Tanh => x.tanh()?,
                HeadActivation::Other(act) => act.apply(&x)?,
            };
        }
        if let Some(norm) = &self.norm {
            x = norm.forward(&x)?;
        }
        self.output.forward(&x)
    }
}

/// One row per sequence of packed `[Σ lengths, hidden]`: the first, the last (non-padding), or
/// the mean.
pub fn pool_rows(
    hidden: &Tensor,
    batch: &PackedBatch,
    pooling: HeadPooling,
) -> candle_core::Result<Tensor> {
    let mut rows = Vec::with_capacity(batch.lengths.len());
    for (first, len) in batch.spans() {
        let row = match pooling {
            HeadPooling::First => hidden.narrow(0, first, 1)?,
            HeadPooling::LastNonPad(None) => hidden.narrow(0, first + len - 1, 1)?,
            HeadPooling::LastNonPad(Some(pad)) => {
                let ids = &batch.ids[first..first + len];
                let last = ids.iter().rposition(|id| *id != pad).unwrap_or(0);
                hidden.narrow(0, first + last, 1)?
            }
            HeadPooling::Mean => {
                let dtype = hidden.dtype();
                hidden
                    .narrow(0, first, len)?
                    .to_dtype(DType::F32)?
                    .mean_keepdim(0)?
                    .to_dtype(dtype)?
            }
        };
        rows.push(row);
    }
    Tensor::cat(&rows, 0)
}

/// Label names by index from `config.json`'s `id2label` (`LABEL_i` where it has none).
pub fn label_names(config: &serde_json::Value) -> Vec<String> {
    let map = config.get("id2label").and_then(|m| m.as_object());
    let count = config
        .get("num_labels")
        .and_then(|n| n.as_u64())
        .map(|n| n as usize)
        .or_else(|| map.map(|m| m.len()))
        .unwrap_or(2);
    (0..count)
        .map(|i| {
            map.and_then(|m| m.get(&i.to_string()))
                .and_then(|v| v.as_str())
                .map_or_else(|| format!("LABEL_{i}"), str::to_string)
        })
        .collect()
}

/// A network with a classification head.
pub struct Classifier {
    network: Box<dyn Network>,
    head: ClassifierHead,
    labels: Vec<String>,
}

impl Classifier {
    pub fn new(network: Box<dyn Network>, head: ClassifierHead, labels: Vec<String>) -> Self {
        Self {
            network,
            head,
            labels,
        }
    }

    /// Raw logits `[sequences, labels]` (f32). One label: a reranker score; TEI reports
    /// `sigmoid(logit)` unless raw scores are asked for, several: softmax over labels.
    pub fn predict_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        let hidden = self.network.forward_packed(batch)?;
        self.head.logits(&hidden, batch)?.to_dtype(DType::F32)
    }

    /// Label names, by logit index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The body.
    pub fn network(&self) -> &dyn Network {
        self.network.as_ref()
    }
}

/// BERT's masked-LM head: `decoder(norm(act(dense(h)))) + bias`, decoder tied to the word
/// embeddings unless the checkpoint stores its own.
pub struct MaskedLmHead {
    dense: Linear,
    activation: Activation,
    norm: LayerNorm,
    decoder: Tensor,
    bias: Tensor,
}

impl MaskedLmHead {
    /// `vb` is the checkpoint root (`cls.predictions.…`), `word_embeddings` the tied table.
    pub fn load_bert(
        vb: &VarBuilder,
        hidden: usize,
        vocab: usize,
        activation: Activation,
        eps: f64,
        word_embeddings: impl FnOnce() -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Self> {
        let p = vb.pp("cls.predictions");
        let decoder = if p.contains_tensor("decoder.weight") {
            p.get((vocab, hidden), "decoder.weight")?
        } else {
            word_embeddings()?
        };
        let bias = if p.contains_tensor("bias") {
            p.get(vocab, "bias")?
        } else {
            p.get(vocab, "decoder.bias")?
        };
        Ok(Self {
            dense: layers::linear(hidden, hidden, true, p.pp("transform.dense"))?,
            activation,
            norm: layers::layer_norm(hidden, eps, true, p.pp("transform.LayerNorm"))?,
            decoder: decoder.t()?.contiguous()?,
            bias,
        })
    }

    /// Vocabulary logits `[tokens, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.activation.apply(&self.dense.forward(hidden)?)?;
        self.norm
            .forward(&x)?
            .matmul(&self.decoder)?
            .broadcast_add(&self.bias)
    }
}

/// SPLADE: `max over tokens of log(1 + relu(MLM logits))`, one vocabulary-wide vector per
/// sequence (as sentence-transformers' `SpladePooling("max")`).
pub struct SparseEncoder {
    network: Box<dyn Network>,
    head: MaskedLmHead,
}

impl SparseEncoder {
    pub fn new(network: Box<dyn Network>, head: MaskedLmHead) -> Self {
        Self { network, head }
    }

    /// Dense `[sequences, vocab]` weights (mostly zero), f32.
    pub fn encode_packed(&self, batch: &PackedBatch) -> candle_core::Result<Tensor> {
        let hidden = self.network.forward_packed(batch)?;
        let weights = self
            .head
            .logits(&hidden)?
            .to_dtype(DType::F32)?
            .relu()?
            .affine(1.0, 1.0)?
            .log()?;
        let mut first = 0;
        let mut rows = Vec::with_capacity(batch.lengths.len());
        for len in batch.lengths {
            rows.push(weights.narrow(0, first, *len)?.max_keepdim(0)?);
            first += len;
        }
        Tensor::cat(&rows, 0)
    }

    /// Non-zero `(index, weight)` pairs of each sequence's vector, by index.
    pub fn sparse(&self, batch: &PackedBatch) -> candle_core::Result<Vec<Vec<(u32, f32)>>> {
        let dense = self.encode_packed(batch)?.to_vec2::<f32>()?;
        Ok(dense
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .enumerate()
                    .filter(|(_, w)| *w > 0.0)
                    .map(|(i, w)| (i as u32, w))
                    .collect()
            })
            .collect())
    }

    pub fn network(&self) -> &dyn Network {
        self.network.as_ref()
    }
}

/// `sigmoid(x)` for a reranker's single logit (what TEI returns unless `raw_scores`).
pub fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}
