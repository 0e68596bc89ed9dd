//! The scheduler thread: continuous batching over the model.
//!
//! Each step: admit queued requests into free slots (FIFO), drop sequences whose receiver is
//! gone (cancellation), then run one model step holding every decoding sequence's next token
//! plus at most `prefill_chunk` prompt tokens of each prefilling sequence, oldest first, within
//! `max_step_tokens`. Decode tokens are always scheduled, so a long prompt costs the running
//! streams one chunk per step, never its whole prefill. Sequences that finish leave at once.

use super::sampling::Sampler;
use super::stop::{Delta, TextStream};
use super::{Completion, Event, FinishReason, GeneratorConfig, Queued, Shared, TextModel, Usage};
use crate::model::llama::{KvCache, Scratch, SeqInput};
use crate::telemetry::generate as m;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A sequence holding a batch slot.
struct Active {
    queued: Queued,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// Sampled but not yet fed back.
    next: Option<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    text: TextStream,
    stop_ids: HashSet<u32>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Active {
    fn new(model: &TextModel, queued: Queued) -> Self {
        let mut stop_ids: HashSet<u32> = queued.request.stop_token_ids.iter().copied().collect();
        if !queued.request.ignore_eos {
            stop_ids.extend(model.tokenizer.eos());
        }
        let mut cache = model.model.new_cache();
        cache.limit_to(queued.reserve());
        Self {
            cache,
            fed: 0,
            next: None,
            generated: Vec::new(),
            sampler: Sampler::new(queued.request.sampling.clone(), &queued.prompt),
            text: TextStream::new(&queued.request.stop),
            stop_ids,
            first_token: None,
            last_token: None,
            queued,
        }
    }

    fn prefilling(&self) -> bool {
        self.fed < self.queued.prompt.len()
    }
}

/// Runs until the generator is dropped.
pub(super) fn run(model: &TextModel, shared: &Shared, config: &GeneratorConfig) {
    let mut active: Vec<Active> = Vec::new();
    let mut scratch = Scratch::default();
    loop {
        // Admission (and sleeping while there is nothing to do).
        {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            run_control_tasks(shared);
            while active.is_empty() && queue.is_empty() {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                if shared.control_pending.load(Ordering::Acquire) {
                    break;
                }
                queue = match shared.wake.wait(queue) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if shared.shutdown.load(Ordering::Acquire) {
                for a in active.drain(..) {
                    let _ = a
                        .queued
                        .events
                        .send(Event::Error("the server is shutting down".into()));
                }
                for q in queue.drain(..) {
                    let _ = q
                        .events
                        .send(Event::Error("the server is shutting down".into()));
                }
                return;
            }
            // FIFO within the token budget: the oldest request waits for room rather than
            // being overtaken by smaller ones (every request fits alone: `submit` checks it).
            let mut reserved: usize = active.iter().map(|a| a.queued.reserve()).sum();
            while active.len() < config.max_batch {
                let Some(front) = queue.front() else { break };
                if front.events.is_closed() {
                    queue.pop_front();
                    finish_cancelled(shared);
                    continue;
                }
                if reserved + front.reserve() > config.max_batch_total_tokens {
                    break;
                }
                let Some(q) = queue.pop_front() else { break };
                reserved += q.reserve();
                active.push(Active::new(model, q));
            }
            metrics::gauge!(m::RESERVED_TOKENS).set(reserved as f64);
            shared.stats.queued.store(queue.len(), Ordering::Relaxed);
            metrics::gauge!(m::QUEUE_DEPTH).set(queue.len() as f64);
        }
        // Cancellation: the caller dropped its receiver.
        active.retain(|a| {
            let gone = a.queued.events.is_closed();
            if gone {
                finish_cancelled(shared);
            }
            !gone
        });
        shared.stats.active.store(active.len(), Ordering::Relaxed);
        if active.is_empty() {
            continue;
        }
        step(model, shared, config, &mut active, &mut scratch);
        shared.stats.active.store(active.len(), Ordering::Relaxed);
    }
}

/// Runs the tasks handed to this thread with `Generator::run_on_scheduler` (per-thread
/// hardening), between steps.
fn run_control_tasks(shared: &Shared) {
    if !shared.control_pending.swap(false, Ordering::AcqRel) {
        return;
    }
    let tasks = match shared.control.lock() {
        Ok(mut tasks) => std::mem::take(&mut *tasks),
        Err(_) => return,
    };
    for task in tasks {
        task();
    }
}

fn finish_cancelled(shared: &Shared) {
    shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(m::REQUESTS, "reason" => "cancelled").increment(1);
}

/// One model step over the active sequences; removes the ones that finish.
fn step(
    model: &TextModel,
    shared: &Shared,
    config: &GeneratorConfig,
    active: &mut Vec<Active>,
    scratch: &mut Scratch,
) {
    let started = Instant::now();
    // Decode tokens first, then prompt chunks in admission order while the budget lasts.
    let decoding = active.iter().filter(|a| a.next.is_some()).count();
    let mut budget = config.max_step_tokens.saturating_sub(decoding);
    let mut plan: Vec<(usize, usize)> = Vec::with_capacity(active.len()); // (index, prompt tokens)
    let mut prompt_tokens = 0;
    for (i, a) in active.iter().enumerate() {
        if a.next.is_some() {
            plan.push((i, 0));
        } else if a.prefilling() && budget > 0 {
            let n = (a.queued.prompt.len() - a.fed)
                .min(config.prefill_chunk)
                .min(budget);
            budget -= n;
            prompt_tokens += n;
            plan.push((i, n));
        }
    }
    if plan.is_empty() {
        return;
    }
    let decode_tokens: Vec<[u32; 1]> = plan
        .iter()
        .map(|&(i, _)| [active[i].next.unwrap_or(0)])
        .collect();
    let outcome = {
        let mut planned: Vec<&mut Active> = Vec::with_capacity(plan.len());
        let mut rest: &mut [Active] = active;
        let mut offset = 0;
        for &(i, _) in &plan {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - offset);
            let (item, tail) = tail.split_at_mut(1);
            planned.push(&mut item[0]);
            rest = tail;
            offset = i + 1;
        }
        let mut inputs: Vec<SeqInput<'_>> = planned
            .into_iter()
            .zip(&plan)
            .zip(&decode_tokens)
            .map(|((a, &(_, n)), token)| {
                if n == 0 {
                    SeqInput {
                        cache: &mut a.cache,
                        tokens: token,
                        logits: true,
                    }
                } else {
                    let from = a.fed;
                    a.fed += n;
                    SeqInput {
                        cache: &mut a.cache,
                        tokens: &a.queued.prompt[from..from + n],
                        logits: a.fed == a.queued.prompt.len(),
                    }
                }
            })
            .collect();
        model.model.forward(&mut inputs, scratch)
    };
    let logits = match outcome {
        Ok(logits) => logits,
        Err(e) => {
            // A failed step poisons every planned sequence's cache: end them all with the error.
            let failed: HashSet<usize> = plan.iter().map(|p| p.0).collect();
            let mut i = 0;
            active.retain_mut(|a| {
                let keep = !failed.contains(&i);
                i += 1;
                if !keep {
                    a.queued.ticket.release();
                    let _ = a
                        .queued
                        .events
                        .send(Event::Error(format!("generation failed: {e}")));
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(m::REQUESTS, "reason" => "error").increment(1);
                }
                keep
            });
            return;
        }
    };

    // Sample for every sequence that got logits, in plan order.
    let now = Instant::now();
    let mut logits = logits.into_iter();
    let mut finished = Vec::new();
    let mut generated_now = 0u64;
    for &(i, n) in &plan {
        let a = &mut active[i];
        let wants = n == 0 || !a.prefilling();
        if !wants {
            continue;
        }
        let Some(row) = logits.next() else { break };
        let (token, logprob) = a.sampler.sample(row);
        a.generated.push(token);
        generated_now += 1;
        match a.last_token {
            Some(prev) => {
                metrics::histogram!(m::INTER_TOKEN_LATENCY).record((now - prev).as_secs_f64())
            }
            None => {
                a.first_token = Some(now);
                metrics::histogram!(m::TIME_TO_FIRST_TOKEN)
                    .record((now - a.queued.submitted).as_secs_f64());
            }
        }
        a.last_token = Some(now);
        let stop_token = a.stop_ids.contains(&token);
        let (text, stopped) = if stop_token || model.tokenizer.is_special(token) {
            (String::new(), false)
        } else {
            match a.text.push(model.tokenizer.token_bytes(token)) {
                Delta::Text(t) => (t, false),
                Delta::Stopped(t) => (t, true),
            }
        };
        let _ = a.queued.events.send(Event::Token {
            id: token,
            text,
            logprob,
        });
        let context_full = a.queued.prompt.len() + a.generated.len() >= config.max_context;
        let reason = if stop_token || stopped {
            Some(FinishReason::Stop)
        } else if a.generated.len() >= a.queued.max_tokens || context_full {
            Some(FinishReason::Length)
        } else {
            None
        };
        match reason {
            Some(reason) => finished.push((i, reason, stopped)),
            None => a.next = Some(token),
        }
    }
    // Finished sequences leave (highest index first; `remove` keeps the others in admission
    // order, which is the prefill priority).
    finished.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (i, reason, stopped) in finished {
        let mut a = active.remove(i);
        let trailing = if stopped {
            String::new()
        } else {
            a.text.finish()
        };
        if !trailing.is_empty() {
            let _ = a.queued.events.send(Event::Token {
                id: *a.generated.last().unwrap_or(&0),
                text: trailing,
                logprob: None,
            });
        }
        let text = final_text(model, &a);
        let usage = Usage {
            prompt_tokens: a.queued.prompt.len(),
            completion_tokens: a.generated.len(),
        };
        // Counted before the answer goes out, so whoever has received `Done` also sees it in
        // the stats (the engine tests read `completed` right after draining their streams).
        shared.stats.completed.fetch_add(1, Ordering::Relaxed);
        a.queued.ticket.release();
        let _ = a.queued.events.send(Event::Done(Completion {
            text,
            tokens: std::mem::take(&mut a.generated),
            finish_reason: reason,
            usage,
            time_to_first_token: a
                .first_token
                .map_or(0.0, |t| (t - a.queued.submitted).as_secs_f64()),
            total_time: a.queued.submitted.elapsed().as_secs_f64(),
        }));
        metrics::counter!(m::REQUESTS, "reason" => reason.as_str()).increment(1);
    }

    let seconds = started.elapsed().as_secs_f64();
    let stats = &shared.stats;
    stats.steps.fetch_add(1, Ordering::Relaxed);
    stats
        .generated_tokens
        .fetch_add(generated_now, Ordering::Relaxed);
    stats
        .prompt_tokens
        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    stats.max_occupancy.fetch_max(plan.len(), Ordering::Relaxed);
    metrics::histogram!(m::STEP_SECONDS).record(seconds);
    metrics::histogram!(m::BATCH_OCCUPANCY).record(plan.len() as f64);
    metrics::counter!(m::GENERATED_TOKENS).increment(generated_now);
    metrics::counter!(m::PROMPT_TOKENS).increment(prompt_tokens as u64);
    if seconds > 0.0 {
        metrics::gauge!(m::TOKENS_PER_SECOND).set(generated_now as f64 / seconds);
    }
}

/// The completion text from all tokens at once (specials and the final stop token skipped),
/// cut at the first stop string: independent of how the deltas were split.
fn final_text(model: &TextModel, a: &Active) -> String {
    let ids: Vec<u32> = a
        .generated
        .iter()
        .copied()
        .filter(|t| !a.stop_ids.contains(t))
        .collect();
    let mut text = model.tokenizer.decode(&ids, true);
    if let Some(at) = a
        .queued
        .request
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        text.truncate(at);
    }
    text
}
