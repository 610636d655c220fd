//! Batched generation: left-pad the prompts, prefill once, then sample one token per row per
//! step with the KV cache, applying the same intervention plan at every forward call.
//!
//! Sampling only: a caller that also scores the prompts ([`crate::score`]) runs [`prefill`]
//! itself, scores its logits, and continues with [`generate_from`] (one prefill for both).

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, KvCache, Logits};
use crate::error::{ModelError, Result};
use crate::hooks::InterventionPlan;
use crate::prompt::{prefill, Prompt};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            )));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ModelError::Invalid(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
        }
        if self.top_k == Some(0) {
            return Err(ModelError::Invalid("top_k must be at least 1".into()));
        }
        Ok(())
    }

    /// One sampler per batch row, each with its own stream derived from the seed, so a
    /// prompt's output does not depend on which other prompts share its batch.
    fn processor(&self, row_seed: u64) -> LogitsProcessor {
        let sampling = if self.temperature == 0.0 {
            Sampling::ArgMax
        } else {
            let temperature = self.temperature;
            match (self.top_k, self.top_p) {
                (None, None) => Sampling::All { temperature },
                (Some(k), None) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            }
        };
        LogitsProcessor::from_sampling(row_seed, sampling)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was produced (it is not part of `tokens`).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The model's context is full.
    Context,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: &'a [u32],
    /// Token fed into padding columns; never attended to.
    pub pad_token: u32,
}

/// Generate for every prompt in one left-padded batch. `on_token(row, token)` sees each new
/// (non-stop) token as it is produced, for streaming. Row `i` of the plan's per-row scales
/// applies to `prompts[i]`. Row `i` samples with seed `row_seeds[i]`, or `seed + i` when
/// `row_seeds` is None.
pub fn generate_batch(
    decoder: &Decoder,
    prompts: &[Prompt],
    request: &GenerateRequest<'_>,
    plan: &InterventionPlan,
    row_seeds: Option<&[u64]>,
    on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    request.sampling.validate()?;
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let (out, cache) = prefill(decoder, prompts, request.pad_token, plan, Logits::Last)?;
    let logits = out
        .logits
        .ok_or_else(|| ModelError::Invalid("the prefill returned no logits".into()))?;
    generate_from(decoder, logits, cache, request, plan, row_seeds, on_token)
}

/// [`generate_batch`] after its prefill: `logits` `[batch, vocab]` are the prefill's
/// last-position logits and `cache` its KV cache (both from [`prefill`] with
/// [`Logits::Last`] and the same `plan`).
pub fn generate_from(
    decoder: &Decoder,
    logits: Tensor,
    mut cache: KvCache,
    request: &GenerateRequest<'_>,
    plan: &InterventionPlan,
    row_seeds: Option<&[u64]>,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    request.sampling.validate()?;
    let context = decoder.config().context_length;
    let b = logits.dim(0)?;
    let _span = tracing::info_span!("decode", rows = b).entered();
    if row_seeds.is_some_and(|s| s.len() != b) {
        return Err(ModelError::Invalid(format!(
            "{} row seeds for a batch of {b}",
            row_seeds.map_or(0, <[u64]>::len)
        )));
    }
    let mut samplers: Vec<LogitsProcessor> = (0..b)
        .map(|i| {
            let seed = row_seeds.map_or(request.sampling.seed.wrapping_add(i as u64), |s| s[i]);
            request.sampling.processor(seed)
        })
        .collect();

    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: vec![],
            finish: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; b];
    let mut logits = Some(logits);
    for step in 0..request.max_tokens {
        let _step = tracing::debug_span!("decode_step", step).entered();
        let Some(step_logits) = logits.take() else {
            break;
        };
        let step_logits = step_logits.to_dtype(DType::F32)?;
        let mut next = Vec::with_capacity(b);
        for row in 0..b {
            if done[row] {
                next.push(request.pad_token);
                continue;
            }
            let token = samplers[row].sample(&step_logits.get(row)?)?;
            if request.stop_tokens.contains(&token) {
                done[row] = true;
                out[row].finish = FinishReason::Stop;
            } else {
                out[row].tokens.push(token);
                on_token(row, token);
            }
            next.push(token);
        }
        if done.iter().all(|&d| d) || step + 1 == request.max_tokens {
            break;
        }
        if cache.len() >= context {
            for (row, g) in out.iter_mut().enumerate() {
                if !done[row] {
                    g.finish = FinishReason::Context;
                }
            }
            break;
        }
        let next = Tensor::from_vec(next, (b, 1), decoder.device())?;
        logits = decoder
            .forward(&next, &mut cache, plan, Logits::Last)?
            .logits;
    }
    Ok(out)
}
