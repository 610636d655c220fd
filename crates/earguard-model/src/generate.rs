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
    /// The stop token that ended the reply when `finish` is `Stop` (not part of `tokens`).
    pub stop_token: Option<u32>,
}

impl Generation {
    /// Every token the model produced, its stop token included: what a model trained on this
    /// reply has to learn to write, its ending too.
    pub fn produced(&self) -> Vec<u32> {
        self.tokens.iter().copied().chain(self.stop_token).collect()
    }
}

#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_tokens: &'a [u32],
    /// Token fed into padding columns; never attended to.
    pub pad_token: u32,
}

impl<'a> GenerateRequest<'a> {
    /// Greedy decoding of at most `max_tokens` tokens, ending early on any of `stop_tokens`.
    pub fn greedy(max_tokens: usize, stop_tokens: &'a [u32], pad_token: u32) -> Self {
        Self {
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop_tokens,
            pad_token,
        }
    }
}

/// Generate for every prompt in one left-padded batch. `on_token(row, token)` sees each new
/// (non-stop) token as it is produced, for streaming. A gate in the plan decides for each row
/// from its own prompt (see [`crate::hooks::Gate`]). Row `i` samples with seed `row_seeds[i]`, or `seed + i` when
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
    cache: KvCache,
    request: &GenerateRequest<'_>,
    plan: &InterventionPlan,
    row_seeds: Option<&[u64]>,
    on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    decode(
        decoder, logits, cache, request, plan, row_seeds, None, on_token,
    )
}

/// Control of the first answer tokens by contrast with a companion input: the same prompts
/// with a corrupted input (same ids), decoded in lockstep as rows `b..2b` of the same batch
/// (SafeCoDe).
pub trait Guide {
    /// Whether `row` is guided at `step` (its token comes from [`choose`](Self::choose)).
    /// Once no unfinished row is guided, the companion rows are dropped from the cache.
    fn guided(&self, row: usize, step: usize) -> bool;

    /// The token of `row` at a guided `step`, from its real and companion logits (f32) and
    /// the answer so far.
    fn choose(
        &mut self,
        row: usize,
        step: usize,
        real: &[f32],
        companion: &[f32],
        answer: &[u32],
    ) -> Result<u32>;

    /// A cap on `row`'s answer length set by the guide, if any (below `max_tokens`).
    fn max_tokens(&self, _row: usize) -> Option<usize> {
        None
    }
}

/// [`generate_from`] with a [`Guide`]: `logits` `[2b, vocab]` and `cache` come from one
/// [`prefill`] of the b real prompts followed by their b companions, with `plan` (plans do not
/// depend on the batch). While any unfinished row is guided every step
/// runs 2b rows; after that the companion rows leave the cache and steps run b rows, as plain
/// decoding does.
#[allow(clippy::too_many_arguments)]
pub fn generate_guided(
    decoder: &Decoder,
    logits: Tensor,
    cache: KvCache,
    request: &GenerateRequest<'_>,
    plan: &InterventionPlan,
    row_seeds: Option<&[u64]>,
    guide: &mut dyn Guide,
    on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    let rows = logits.dim(0)?;
    if rows % 2 != 0 || cache.batch() != rows {
        return Err(ModelError::Invalid(format!(
            "a guided batch holds each prompt and its companion ({rows} logit rows, a cache of \
             {})",
            cache.batch()
        )));
    }
    decode(
        decoder,
        logits,
        cache,
        request,
        plan,
        row_seeds,
        Some(guide),
        on_token,
    )
}

#[allow(clippy::too_many_arguments)]
fn decode(
    decoder: &Decoder,
    logits: Tensor,
    mut cache: KvCache,
    request: &GenerateRequest<'_>,
    plan: &InterventionPlan,
    row_seeds: Option<&[u64]>,
    mut guide: Option<&mut dyn Guide>,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    request.sampling.validate()?;
    let context = decoder.config().context_length;
    let b = logits.dim(0)? / if guide.is_some() { 2 } else { 1 };
    let _span = tracing::info_span!("decode", rows = b, guided = guide.is_some()).entered();
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
    let cap: Vec<usize> = (0..b)
        .map(|row| {
            guide
                .as_ref()
                .and_then(|g| g.max_tokens(row))
                .map_or(request.max_tokens, |c| c.min(request.max_tokens))
        })
        .collect();

    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: vec![],
            finish: FinishReason::Length,
            stop_token: None,
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
            let token = match guide.as_deref_mut() {
                Some(g) if g.guided(row, step) => {
                    let real: Vec<f32> = step_logits.get(row)?.to_vec1()?;
                    let companion: Vec<f32> = step_logits.get(b + row)?.to_vec1()?;
                    g.choose(row, step, &real, &companion, &out[row].tokens)?
                }
                _ => samplers[row].sample(&step_logits.get(row)?)?,
            };
            if request.stop_tokens.contains(&token) {
                done[row] = true;
                out[row].finish = FinishReason::Stop;
                out[row].stop_token = Some(token);
            } else {
                out[row].tokens.push(token);
                on_token(row, token);
                if out[row].tokens.len() >= cap[row] {
                    done[row] = true;
                }
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
        // The companion rows are dropped as soon as no unfinished row needs them.
        if let Some(g) = guide.as_deref() {
            if !(0..b).any(|row| !done[row] && g.guided(row, step + 1)) {
                cache.keep_rows(b)?;
                guide = None;
            }
        }
        let ids = match guide {
            Some(_) => {
                let mut both = next.clone();
                both.extend_from_slice(&next);
                Tensor::from_vec(both, (2 * b, 1), decoder.device())?
            }
            None => Tensor::from_vec(next, (b, 1), decoder.device())?,
        };
        logits = decoder
            .forward(&ids, &mut cache, plan, Logits::Last)?
            .logits;
    }
    Ok(out)
}
