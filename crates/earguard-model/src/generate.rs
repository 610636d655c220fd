//! Batched generation: left-pad the prompts, prefill once, then decode one token per row per
//! step with the KV cache, applying the same intervention plan at every forward call.

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, Logits};
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
    /// `log P(S) − log(1 − P(S))` of the first answer token over `score_tokens` (the
    /// refusal score of SPEC §2 when those are refusal-start tokens); None if none were given.
    pub first_token_log_odds: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: &'a [u32],
    /// Token fed into padding columns; never attended to.
    pub pad_token: u32,
    /// Tokens whose first-step probability mass is reported as log-odds (may be empty).
    pub score_tokens: &'a [u32],
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
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    request.sampling.validate()?;
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let _span = tracing::info_span!("generate", rows = prompts.len()).entered();
    let context = decoder.config().context_length;
    let b = prompts.len();
    let (prefill_out, mut cache) =
        prefill(decoder, prompts, request.pad_token, plan, Logits::Last)?;
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
            first_token_log_odds: None,
        })
        .collect();
    let mut done = vec![false; b];
    let mut logits = prefill_out.logits;
    for step in 0..request.max_tokens {
        let _step = tracing::debug_span!("decode_step", step).entered();
        let Some(step_logits) = logits.take() else {
            break;
        };
        let step_logits = step_logits.to_dtype(DType::F32)?;
        if step == 0 && !request.score_tokens.is_empty() {
            for (g, odds) in out
                .iter_mut()
                .zip(log_odds(&step_logits, request.score_tokens)?)
            {
                g.first_token_log_odds = Some(odds);
            }
        }
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

/// Per row of `logits` (`[batch, vocab]`): `log P(S) − log(1 − P(S))` with P(S) the softmax
/// mass of `tokens`.
pub fn log_odds(logits: &Tensor, tokens: &[u32]) -> Result<Vec<f32>> {
    let vocab = logits.dim(1)?;
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Invalid(format!(
            "score token {t} is outside the vocabulary"
        )));
    }
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let ids = Tensor::new(tokens, logits.device())?;
    let rows: Vec<Vec<f32>> = logp.index_select(&ids, 1)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|r| {
            // log-sum-exp of the selected log-probs, then log-odds; clamp keeps ±inf out.
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_p = m + r.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            let p = log_p.exp().clamp(1e-12, 1.0 - 1e-7);
            p.ln() - (1.0 - p).ln()
        })
        .collect())
}
