//! Choosing the next token from logits: penalties, then greedy or temperature sampling with
//! top-k, top-p and min-p, from a seeded generator. Same order as llama.cpp and vLLM: penalties
//! on the raw logits, temperature, then the truncations, then the draw.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Decoding settings of one request (OpenAI / TGI names and meanings).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax; ties go to the lowest id), as does anything below [`GREEDY_BELOW`].
    pub temperature: f32,
    /// Nucleus: keep the most likely tokens whose probabilities sum to at least this. 1 = off.
    pub top_p: f32,
    /// Keep only the k most likely tokens. 0 = off.
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the most likely one. 0 = off.
    pub min_p: f32,
    /// Locally typical sampling (TGI's `typical_p`, Meister et al. 2022): keep the tokens whose
    /// surprisal is closest to the distribution's entropy, as many as reach this much
    /// probability. Applied after top-k, top-p and min-p, as transformers and TGI do. 1 = off.
    pub typical_p: f32,
    /// CTRL-style: logits of tokens already in prompt or output are divided (if positive) or
    /// multiplied (if negative) by this. 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI: minus `frequency_penalty` × times the token was generated. 0 = off.
    pub frequency_penalty: f32,
    /// OpenAI: minus `presence_penalty` if the token was generated at all. 0 = off.
    pub presence_penalty: f32,
    /// Seed of the draw; the same seed, prompt and settings give the same tokens.
    pub seed: Option<u64>,
    /// Log-probabilities of this many most likely alternatives per token (0 = only the
    /// chosen token's), `None` = none.
    pub logprobs: Option<usize>,
    /// OpenAI's `logit_bias`: `(token id, bias)`, sorted by id, one entry per id. Each bias
    /// (−100 to 100) is added to its token's logit after the penalties and before
    /// temperature and truncation, so ±100 bans or forces a token in practice, greedy or not.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            logprobs: None,
            logit_bias: Vec::new(),
        }
    }
}

/// Largest `logit_bias` magnitude (OpenAI's range).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// Most alternatives `logprobs` may ask for (OpenAI allows 20).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks ranges; the message names the field and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |v: f32| v.is_finite();
        if !finite(self.temperature) || self.temperature < 0.0 {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !finite(self.top_p) || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !finite(self.typical_p) || self.typical_p <= 0.0 || self.typical_p > 1.0 {
            return Err(format!(
                "typical_p must be in (0, 1], got {}",
                self.typical_p
            ));
        }
        if !finite(self.min_p) || !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !finite(self.repetition_penalty) || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !finite(v) || !(-2.0..=2.0).contains(&v) {
                return Err(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"));
        }
        for &(id, bias) in &self.logit_bias {
            if !finite(bias) || !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(&bias) {
                return Err(format!(
                    "logit_bias of token {id} must be in [-100, 100], got {bias}"
                ));
            }
        }
        if let Some(w) = self.logit_bias.windows(2).find(|w| w[0].0 >= w[1].0) {
            return Err(format!(
                "logit_bias must list each token once, in increasing order (token {} after {})",
                w[1].0, w[0].0
            ));
        }
        Ok(())
    }
}

/// The chosen token's log-probability and the most likely alternatives'.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Temperatures below this decode greedily (vLLM's rule): dividing logits by a smaller one
/// overflows f32, and the draw would be argmax anyway.
pub const GREEDY_BELOW: f32 = 1e-5;

/// Per-sequence sampling state: the generator and token counts for the penalties.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Times each token was generated.
    counts: HashMap<u32, u32>,
    /// Tokens of the prompt (for the repetition penalty).
    prompt: Vec<u32>,
}

impl Sampler {
    /// A sampler for a sequence whose prompt is `prompt`.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let prompt = if params.repetition_penalty != 1.0 {
            let mut p = prompt.to_vec();
            p.sort_unstable();
            p.dedup();
            p
        } else {
            Vec::new()
        };
        Self {
            params,
            rng,
            counts: HashMap::new(),
            prompt,
        }
    }

    /// Picks the next token from `logits` (modified in place) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, Option<TokenLogprob>) {
        self.adjust(logits);
        let logprobs = self.params.logprobs.map(|n| (n, log_softmax(logits)));
        let id = if self.params.temperature < GREEDY_BELOW {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        *self.counts.entry(id).or_insert(0) += 1;
        let logprob = logprobs.map(|(n, lp)| {
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            let n = n.min(order.len());
            if n > 0 {
                order.select_nth_unstable_by(n - 1, |a, b| {
                    lp[*b as usize].total_cmp(&lp[*a as usize])
                });
                order.truncate(n);
                order.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b)));
            } else {
                order.clear();
            }
            TokenLogprob {
                id,
                logprob: lp[id as usize],
                top: order.into_iter().map(|t| (t, lp[t as usize])).collect(),
            }
        });
        (id, logprob)
    }

    /// The penalties, then the logit biases: what the log-probabilities and the draw see.
    fn adjust(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt.iter().chain(self.counts.keys());
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    // Clamped: an extreme penalty must not make a logit infinite (the draw and
                    // the log-probabilities would turn NaN).
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    }
                    .clamp(-f32::MAX, f32::MAX);
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
        for &(t, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = (*l + bias).clamp(-f32::MAX, f32::MAX);
            }
        }
    }

    /// Temperature, top-k, top-p, min-p, typical-p, then a draw.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cands.is_empty() {
            return argmax(logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cands.len() {
            cands.select_nth_unstable_by(p.top_k - 1, by_logit);
            cands.truncate(p.top_k);
        }
        cands.sort_unstable_by(by_logit);
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut sum = 0.0;
            for (i, x) in probs.iter().enumerate() {
                sum += x;
                if sum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        probs.truncate(keep);
        if p.typical_p < 1.0 {
            typical(&mut probs, p.typical_p);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        let mut last = cands[0].0;
        for (c, x) in cands.iter().zip(&probs) {
            if *x > 0.0 {
                if r < *x {
                    return c.0;
                }
                r -= x;
                last = c.0;
            }
        }
        last
    }
}

/// Zeroes the probabilities outside the locally typical set: renormalised, the tokens sorted by
/// how far their surprisal `-ln p` lies from the entropy, kept while the kept mass is below
/// `mass`, and always the first (transformers' `TypicalLogitsWarper` with one token kept at
/// least). `probs` are sorted most likely first; the kept ones keep their values.
fn typical(probs: &mut [f32], mass: f32) {
    let total: f32 = probs.iter().sum();
    if probs.len() < 2 || total <= 0.0 {
        return;
    }
    let entropy: f32 = probs
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| {
            let q = x / total;
            -q * q.ln()
        })
        .sum();
    let distance = |x: f32| {
        if x > 0.0 {
            (-(x / total).ln() - entropy).abs()
        } else {
            f32::INFINITY
        }
    };
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable: equal distances keep the more likely token first.
    order.sort_by(|&a, &b| distance(probs[a]).total_cmp(&distance(probs[b])));
    let mut kept = 0.0;
    let mut cut = order.len();
    for (n, &i) in order.iter().enumerate() {
        kept += probs[i] / total;
        if kept >= mass {
            cut = n + 1;
            break;
        }
    }
    for &i in &order[cut..] {
        probs[i] = 0.0;
    }
}

/// Index of the largest value; ties go to the lowest index; NaNs are never chosen (all-NaN
/// gives 0).
///
/// Two passes that vectorise: the maximum with 16 running maxima, then the first chunk that
/// holds it. One pass with a running index is a chain of dependent compares (~3 cycles a
/// logit): over a 49k vocabulary that was ~0.5 ms of every 8-stream decode step, on one thread.
pub fn argmax(xs: &[f32]) -> u32 {
    const LANES: usize = 16;
    let chunks = xs.chunks_exact(LANES);
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks.clone() {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    let first_chunk = chunks
        .clone()
        .position(|c| c.iter().fold(false, |hit, &x| hit | (x == max)))
        .unwrap_or(xs.len() / LANES);
    xs[first_chunk * LANES..]
        .iter()
        .position(|&x| x == max)
        .map_or(0, |i| (first_chunk * LANES + i) as u32)
}

fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = xs.iter().map(|x| (x - max).exp()).sum();
    let log_sum = sum.ln() + max;
    xs.iter().map(|x| x - log_sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params, &[])
    }

    #[test]
    fn argmax_takes_the_first_largest_and_never_a_nan() {
        // Against the one-pass definition, over lengths around the 16-lane chunks and maxima
        // in the body, the tail, repeated and at the ends.
        let naive = |xs: &[f32]| -> u32 {
            let mut best: Option<usize> = None;
            for (i, &x) in xs.iter().enumerate() {
                if !x.is_nan() && best.is_none_or(|b| x > xs[b]) {
                    best = Some(i);
                }
            }
            best.unwrap_or(0) as u32
        };
        for len in [1, 2, 15, 16, 17, 31, 32, 33, 100, 49_152] {
            for peak in [0, len / 3, len - 1] {
                let mut xs: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1e3).collect();
                xs[peak] = 5.0;
                assert_eq!(argmax(&xs), naive(&xs), "len {len} peak {peak}");
                xs[len - 1] = 5.0;
                assert_eq!(argmax(&xs), naive(&xs), "len {len} tie");
                xs[0] = f32::NAN;
                assert_eq!(argmax(&xs), naive(&xs), "len {len} NaN first");
                xs.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                assert_eq!(argmax(&xs), 0, "len {len} all -inf");
                xs.iter_mut().for_each(|x| *x = f32::NAN);
                assert_eq!(argmax(&xs), 0, "len {len} all NaN");
            }
        }
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn greedy_picks_the_largest_and_ties_go_low() {
        let mut s = sampler(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.0, 3.0, 1.0, 3.0]).0, 1);
    }

    #[test]
    fn extreme_temperature_and_penalty_give_finite_log_probabilities() {
        let params = SamplingParams {
            temperature: f32::from_bits(1),
            repetition_penalty: f32::from_bits(1),
            logprobs: Some(0),
            seed: Some(1),
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params, &[2]);
        let (id, logprob) = s.sample(&mut [0.0, 3.0, 1.0, 4.0]);
        // Token 2 (seen in the prompt) is pushed to f32's largest logit, not to infinity.
        assert_eq!(id, 2);
        let logprob = logprob.expect("asked for");
        assert!(logprob.logprob.is_finite(), "{logprob:?}");
    }

    #[test]
    fn same_seed_same_tokens_and_truncations_are_respected() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 0.9,
            seed: Some(42),
            ..SamplingParams::default()
        };
        let run = |p: SamplingParams| {
            let mut s = sampler(p);
            (0..30)
                .map(|_| s.sample(&mut logits.clone()).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        // top_k = 1 is greedy whatever the temperature.
        let top1 = run(SamplingParams {
            top_k: 1,
            ..params.clone()
        });
        assert!(top1.iter().all(|&t| t == argmax(&logits)));
        // min_p = 1 keeps only the tokens as likely as the best (ties: ids 6, 13, 20, …).
        let minp = run(SamplingParams {
            min_p: 1.0,
            ..params.clone()
        });
        assert!(minp.iter().all(|t| t % 7 == 6), "{minp:?}");
        // A tiny top_p keeps only the single most likely token.
        let nucleus = run(SamplingParams {
            top_p: 1e-6,
            ..params
        });
        assert!(nucleus.iter().all(|&t| t == 6), "{nucleus:?}");
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let mut s = sampler(SamplingParams {
            frequency_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        let logits = [1.0, 0.5, 0.0];
        assert_eq!(s.sample(&mut logits.clone()).0, 0);
        // Token 0 now has 1 - 2 = -1 < 0.5.
        assert_eq!(s.sample(&mut logits.clone()).0, 1);
        let mut r = Sampler::new(
            SamplingParams {
                repetition_penalty: 3.0,
                ..SamplingParams::greedy()
            },
            &[0],
        );
        // 1.0 / 3 < 0.5: the prompt's token is penalised too.
        assert_eq!(r.sample(&mut logits.clone()).0, 1);
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens_and_shows_in_the_logprobs() {
        let logits = [1.0, 3.0, 2.0, 0.0];
        let biased = |bias: Vec<(u32, f32)>, temperature: f32| {
            let mut s = sampler(SamplingParams {
                temperature,
                seed: Some(7),
                logprobs: Some(1),
                logit_bias: bias,
                ..SamplingParams::default()
            });
            (0..20)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        // Greedy: -100 on the best token hands the step to the second; +100 forces the worst.
        assert_eq!(biased(vec![(1, -100.0)], 0.0)[0].0, 2);
        let forced = biased(vec![(3, 100.0)], 0.0);
        assert_eq!(forced[0].0, 3);
        // The log-probabilities are of the biased distribution.
        let lp = forced[0].1.clone().unwrap();
        assert!(lp.logprob > -1e-3 && lp.top[0].0 == 3, "{lp:?}");
        // Sampled: a banned token never comes, a forced one always does.
        assert!(biased(vec![(1, -100.0), (2, -100.0)], 1.0)
            .iter()
            .all(|(t, _)| *t == 0 || *t == 3));
        assert!(biased(vec![(0, 100.0)], 1.5).iter().all(|(t, _)| *t == 0));
        // Ids outside the logits are left alone (the server refuses them before this).
        assert_eq!(biased(vec![(9, 100.0)], 0.0)[0].0, 1);
    }

    #[test]
    fn typical_sampling_keeps_the_tokens_nearest_the_entropy() {
        // p = [0.5, 0.3, 0.15, 0.05]: entropy 1.1437 nats; surprisals 0.69, 1.20, 1.90, 3.00;
        // distances 0.45, 0.06, 0.75, 1.85, so the order is 0.3, 0.5, 0.15, 0.05.
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let kept = |mass: f32| {
            let mut q = p;
            typical(&mut q, mass);
            q.iter().map(|&x| x > 0.0).collect::<Vec<_>>()
        };
        assert_eq!(
            kept(0.2),
            [false, true, false, false],
            "the typical token alone"
        );
        assert_eq!(kept(0.8), [true, true, false, false]);
        assert_eq!(kept(0.9), [true, true, true, false]);
        assert_eq!(kept(1.0), [true, true, true, true]);
        // The most likely token is not always kept: draws never give it with a small mass.
        let logits: Vec<f32> = p.iter().map(|x| x.ln()).collect();
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            typical_p: 0.2,
            seed: Some(3),
            ..SamplingParams::default()
        });
        assert!((0..50).all(|_| s.sample(&mut logits.clone()).0 == 1));
        let bad = SamplingParams {
            typical_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("typical_p"));
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let mut s = sampler(SamplingParams {
            logprobs: Some(2),
            ..SamplingParams::greedy()
        });
        let (id, lp) = s.sample(&mut [0.0, 2.0, 1.0]);
        let lp = lp.unwrap();
        assert_eq!((id, lp.id), (1, 1));
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        let total: f32 = [0.0f32, 2.0, 1.0].iter().map(|x| x.exp()).sum();
        assert!((lp.logprob - (2.0 - total.ln())).abs() < 1e-5);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        for bias in [
            vec![(1, 100.5)],
            vec![(1, f32::NAN)],
            vec![(2, 1.0), (1, 1.0)],
        ] {
            let bad = SamplingParams {
                logit_bias: bias.clone(),
                ..SamplingParams::default()
            };
            assert!(
                bad.validate().unwrap_err().contains("logit_bias"),
                "{bias:?}"
            );
        }
        let ok = SamplingParams {
            logit_bias: vec![(0, -100.0), (5, 100.0)],
            ..SamplingParams::default()
        };
        assert!(ok.validate().is_ok());
        assert!(SamplingParams::default().validate().is_ok());
    }
}
