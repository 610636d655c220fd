//! The RRS paper's four SFT baselines (§5.1, App. E; SPEC §4.6), trained with the same LoRA,
//! prompt pool and adapter penalty as RRS:
//!
//! - **full**: the whole response after the question (harmful → a refusal, benign → an answer);
//! - **shallow-mirror**: only the first response token, "I" for a harmful question and the
//!   frozen model's own first token for its benign mirror rewrite (Qi et al. 2025);
//! - **shallow-parallel**: the same, with unpaired benign questions instead of the rewrites;
//! - **deep** (Qi et al. 2025, prefill cut to 0–10 tokens as the paper does): for a harmful
//!   question, the refusal after the first k tokens of a harmful answer (k drawn per epoch);
//!   for a benign one, its answer, as full SFT.
//!
//! The paper takes responses from BeaverTails; the prompt sets here have none, so responses are
//! the frozen model's own greedy replies: to a harmful question under the refusal-inducing
//! instruction t̃ (kept only where the caller's judge calls it a refusal), to a benign one under
//! t, and, for deep's harmful-answer prefixes, to a harmful question under a caller-given attack
//! plan (e.g. refusal-direction ablation; kept only where the judge does *not* call it a
//! refusal). Every reply is generated on the model as loaded (quantized or not) before training.

use earguard_model::generate::{generate_batch, GenerateRequest, Generation};
use earguard_model::InterventionPlan;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::objective::{Completion, ResponseTokens, Sample};
use crate::prompts::{refusal_instruction, Prompter, Question, INSTRUCTION};
use crate::rrs::refusal_token;

/// Which SFT baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SftMethod {
    Full,
    ShallowMirror,
    ShallowParallel,
    Deep,
}

impl SftMethod {
    pub fn name(self) -> &'static str {
        match self {
            SftMethod::Full => "sft-full",
            SftMethod::ShallowMirror => "shallow-mirror",
            SftMethod::ShallowParallel => "shallow-parallel",
            SftMethod::Deep => "deep",
        }
    }

    fn shallow(self) -> bool {
        matches!(self, SftMethod::ShallowMirror | SftMethod::ShallowParallel)
    }
}

/// What a baseline is built from.
pub struct SftInputs<'a> {
    pub harmful: &'a [Question],
    /// The mirror rewrites (shallow-mirror, deep, full) or unpaired benign questions
    /// (shallow-parallel).
    pub benign: &'a [Question],
    /// deep: a plan under which the model answers harmful questions (an attack).
    pub attack: Option<&'a InterventionPlan>,
    /// Longest generated response (full, deep), and deep's harmful-answer prefix.
    pub response_tokens: usize,
    /// deep: the most harmful-answer tokens read before the refusal (the paper: 10).
    pub max_prefill: usize,
    /// Prompts per generation batch.
    pub batch_size: usize,
    pub progress: bool,
}

/// What building the samples found, for the run's config.json.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SftSummary {
    pub harmful_samples: usize,
    pub benign_samples: usize,
    /// Harmful questions dropped because the model's reply under t̃ was not a refusal.
    pub harmful_without_refusal: usize,
    /// deep: harmful questions dropped because the model refused even under the attack.
    pub attack_refused: usize,
    /// Mean response length in tokens (the first token only, for the shallow baselines).
    pub mean_response_tokens: f64,
}

/// `n` of `pool` in a seeded random order (shallow-parallel's unpaired benign questions).
pub fn draw<T>(mut pool: Vec<T>, n: usize, seed: u64) -> Vec<T> {
    pool.shuffle(&mut StdRng::seed_from_u64(seed));
    pool.truncate(n);
    pool
}

/// The frozen model's greedy replies to `questions` under `instruction`, at most `max_tokens`
/// tokens each (a reply that ended says on which stop token: a target learns its ending too);
/// `plan` applies at every step.
pub fn own_replies(
    prompter: &Prompter<'_>,
    questions: &[Question],
    instruction: &str,
    plan: &InterventionPlan,
    max_tokens: usize,
    batch_size: usize,
    progress: bool,
) -> Result<Vec<Generation>> {
    let model = prompter.model;
    let stop = model.tokenizer.stop_token_ids();
    let request = GenerateRequest::greedy(max_tokens, &stop, model.tokenizer.pad_id());
    let bar = earguard_data::progress::bar(
        progress.then_some("replies"),
        "prompt",
        questions.len() as u64,
    );
    let mut out = Vec::with_capacity(questions.len());
    for chunk in questions.chunks(batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|q| prompter.prompt(q, instruction))
            .collect::<Result<Vec<_>>>()?;
        let gens = generate_batch(&model.decoder, &prompts, &request, plan, None, |_, _| {})?;
        out.extend(gens);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Build a baseline's samples. `is_refusal(reply)` judges a generated reply (e.g. the
/// substring judge); it decides which self-generated targets are kept.
pub fn build_sft(
    prompter: &Prompter<'_>,
    method: SftMethod,
    inputs: &SftInputs<'_>,
    is_refusal: &dyn Fn(&str) -> bool,
) -> Result<(ResponseTokens, SftSummary)> {
    if inputs.harmful.is_empty() || inputs.benign.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{} needs harmful and benign questions ({} harmful, {} benign given)",
            method.name(),
            inputs.harmful.len(),
            inputs.benign.len()
        )));
    }
    if inputs.response_tokens == 0 {
        return Err(TrainError::Invalid(
            "responses must be at least one token long".into(),
        ));
    }
    let model = prompter.model;
    let none = InterventionPlan::new();
    let reply = |qs: &[Question], instruction: &str, plan: &InterventionPlan, n: usize| {
        own_replies(
            prompter,
            qs,
            instruction,
            plan,
            n,
            inputs.batch_size,
            inputs.progress,
        )
    };
    let text = |ids: &[u32]| model.tokenizer.decode(ids, true);
    let mut summary = SftSummary::default();
    let mut samples = Vec::new();

    // Benign targets: the model's own reply under t (its first token for the shallow ones).
    let benign_len = if method.shallow() {
        1
    } else {
        inputs.response_tokens
    };
    for (q, r) in inputs
        .benign
        .iter()
        .zip(reply(inputs.benign, INSTRUCTION, &none, benign_len)?)
    {
        if r.tokens.is_empty() {
            tracing::warn!("no reply to the benign question {:?} (dropped)", q.text);
            continue;
        }
        // The shallow baselines learn the first token alone; the others the whole reply.
        let target = if method.shallow() {
            r.tokens
        } else {
            r.produced()
        };
        samples.push(Sample {
            variants: prompter.variants(q)?,
            target: Completion::tokens(target),
        });
        summary.benign_samples += 1;
    }

    // Harmful targets.
    if method.shallow() {
        let i = refusal_token(model)?;
        for q in inputs.harmful {
            samples.push(Sample {
                variants: prompter.variants(q)?,
                target: Completion::tokens(vec![i]),
            });
        }
        summary.harmful_samples = inputs.harmful.len();
    } else {
        let refusal_instruction = refusal_instruction();
        let refusals = reply(
            inputs.harmful,
            &refusal_instruction,
            &none,
            inputs.response_tokens,
        )?;
        let answers = match method {
            SftMethod::Deep => {
                let attack = inputs.attack.ok_or_else(|| {
                    TrainError::Invalid(
                        "deep needs harmful answers to prefill: give an attack under which the \
                         model answers harmful questions (e.g. ablate=DIR of a refusal \
                         direction)"
                            .into(),
                    )
                })?;
                Some(reply(
                    inputs.harmful,
                    INSTRUCTION,
                    attack,
                    inputs.max_prefill.max(1),
                )?)
            }
            _ => None,
        };
        for (i, (q, refusal)) in inputs.harmful.iter().zip(refusals).enumerate() {
            if refusal.tokens.is_empty() || !is_refusal(&text(&refusal.tokens)?) {
                summary.harmful_without_refusal += 1;
                continue;
            }
            let prefill = match &answers {
                Some(a) if a[i].tokens.is_empty() || is_refusal(&text(&a[i].tokens)?) => {
                    summary.attack_refused += 1;
                    continue;
                }
                // A prefill is the start of an answer that goes on: never its stop token.
                Some(a) => a[i].tokens.clone(),
                None => Vec::new(),
            };
            samples.push(Sample {
                variants: prompter.variants(q)?,
                target: Completion {
                    prefill,
                    max_prefill: inputs.max_prefill,
                    response: refusal.produced(),
                },
            });
            summary.harmful_samples += 1;
        }
    }
    if summary.harmful_samples == 0 {
        return Err(TrainError::Invalid(format!(
            "{}: no harmful sample is left ({} replies were not refusals, {} attack answers \
             were refusals)",
            method.name(),
            summary.harmful_without_refusal,
            summary.attack_refused
        )));
    }
    let total: usize = samples.iter().map(|s| s.target.response.len()).sum();
    summary.mean_response_tokens = total as f64 / samples.len() as f64;
    Ok((
        ResponseTokens {
            samples,
            frozen: None,
        },
        summary,
    ))
}
