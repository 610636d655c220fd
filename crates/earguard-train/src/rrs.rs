//! RRS — Reshaping Representation Space (Yang et al.; SPEC §4, papers/rrs-paper.md §4), text
//! mode, and the prompt protocol its SFT baselines ([`crate::sft`]) share.
//!
//! From mirror pairs (a harmful question and its benign rewrite): ΔV = mean over pairs of
//! f₀(harmful, t̃) − f₀(benign, t), with t̃ the refusal-inducing instruction; keep the features
//! where `w_I · ΔV > 0` (`w_I` the LM-head row of the refusal token "I"; the paper's top-m % as
//! an option) → ΔVˢ; targets harmful f₀(x, t) + ΔVˢ, benign f₀(x, t) − ΔVˢ, all from the frozen
//! model. Training then draws the instruction from a 10-prompt pool per sample (paper App. A).
//!
//! Questions reach the model as [`crate::prompts`] says (text, or spoken with a text
//! instruction).

use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor};
use earguard_model::Model;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::objective::{last_hidden, FrozenPrefix, RepresentationTargets, Sample};
use crate::prompts::{refusal_instruction, Prompter, Question, INSTRUCTION};

/// Which features of ΔV make up ΔVˢ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureSelect {
    /// `w_I,p · ΔV_p > 0` (the released code; about 51 % of the dimensions).
    #[default]
    Positive,
    /// The top m % by `w_I,p · ΔV_p` (the paper's option).
    TopPercent(f64),
}

/// The id of the refusal token "I".
pub fn refusal_token(model: &Model) -> Result<u32> {
    let ids = model.tokenizer.encode("I", false)?;
    match ids[..] {
        [id] => Ok(id),
        _ => Err(TrainError::Invalid(format!(
            "\"I\" is not a single token in this vocabulary ({ids:?})"
        ))),
    }
}

/// What feature selection found, for the run's config.json.
#[derive(Debug, Clone, Serialize)]
pub struct RrsSummary {
    pub pairs: usize,
    pub refusal_token: u32,
    pub features_kept: usize,
    pub features: usize,
    pub delta_norm: f32,
    pub delta_s_norm: f32,
    /// `w_I · ΔVˢ`: how much the "I" logit rises along ΔVˢ.
    pub refusal_logit_gain: f32,
    /// ‖mean harmful − mean benign‖ of the frozen representations under t, and of the
    /// targets (training should move the first toward the second).
    pub base_gap: f32,
    pub target_gap: f32,
}

/// RRS's premise (paper §4.1): under the refusal-inducing instruction t̃ the frozen model
/// refuses, so ΔV points from answering toward refusing. Where it does not, the targets are
/// not refusal representations, and reaching them cannot teach refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Premise {
    /// Harmful questions asked under t̃.
    pub asked: usize,
    /// Replies `is_refusal` called refusals.
    pub refused: usize,
}

impl Premise {
    /// At least half of the replies were refusals.
    pub fn holds(&self) -> bool {
        self.asked > 0 && 2 * self.refused >= self.asked
    }
}

/// Ask the frozen model `harmful` under t̃ (greedy, `max_tokens` tokens) and count the replies
/// `is_refusal` calls refusals.
pub fn check_premise(
    prompter: &Prompter<'_>,
    harmful: &[Question],
    max_tokens: usize,
    is_refusal: &dyn Fn(&str) -> bool,
    progress: bool,
) -> Result<Premise> {
    let refusal = refusal_instruction();
    let none = earguard_model::InterventionPlan::new();
    let replies =
        crate::sft::own_replies(prompter, harmful, &refusal, &none, max_tokens, 8, progress)?;
    let mut refused = 0;
    for r in &replies {
        if is_refusal(&prompter.model.tokenizer.decode(&r.tokens, true)?) {
            refused += 1;
        }
    }
    Ok(Premise {
        asked: replies.len(),
        refused,
    })
}

/// The mask of kept features for `score` (`w_I ⊙ ΔV`).
fn feature_mask(score: &[f32], select: FeatureSelect) -> Result<Vec<f32>> {
    match select {
        FeatureSelect::Positive => Ok(score
            .iter()
            .map(|&s| if s > 0.0 { 1.0 } else { 0.0 })
            .collect()),
        FeatureSelect::TopPercent(m) => {
            if !(m > 0.0 && m <= 100.0) {
                return Err(TrainError::Invalid(format!(
                    "top-m % must be in (0, 100], got {m}"
                )));
            }
            let keep = ((score.len() as f64 * m / 100.0).round() as usize).max(1);
            let mut idx: Vec<usize> = (0..score.len()).collect();
            idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
            let mut mask = vec![0f32; score.len()];
            for &i in &idx[..keep] {
                mask[i] = 1.0;
            }
            Ok(mask)
        }
    }
}

/// Build the RRS objective from mirror pairs with the frozen `model` (no adapter attached).
/// With `frozen`, the objective runs from its memoised residual streams, and the prompts under
/// t are memoised here already (they are the training inputs under a fixed instruction).
pub fn build_rrs(
    prompter: &Prompter<'_>,
    pairs: &[(Question, Question)],
    select: FeatureSelect,
    frozen: Option<Arc<FrozenPrefix>>,
    progress: bool,
) -> Result<(RepresentationTargets, RrsSummary)> {
    let model = prompter.model;
    let dec = &model.decoder;
    let refusal = refusal_instruction();
    let mut harmful_t = Vec::with_capacity(pairs.len());
    let mut benign_t = Vec::with_capacity(pairs.len());
    let mut delta: Option<Tensor> = None;
    let bar = earguard_data::progress::bar(progress.then_some("ΔV"), "pairs", pairs.len() as u64);
    for (h, b) in pairs {
        let refused = last_hidden(dec, None, &prompter.prompt(h, &refusal)?)?;
        let vb = last_hidden(dec, frozen.as_deref(), &prompter.prompt(b, INSTRUCTION)?)?;
        let vh = last_hidden(dec, frozen.as_deref(), &prompter.prompt(h, INSTRUCTION)?)?;
        let d = (refused - &vb)?;
        delta = Some(match delta {
            None => d,
            Some(acc) => (acc + d)?,
        });
        harmful_t.push(vh);
        benign_t.push(vb);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let delta =
        (delta.ok_or_else(|| TrainError::Invalid("no mirror pairs".into()))? / pairs.len() as f64)?;
    let token = refusal_token(model)?;
    let w_i = dec
        .lm_head()
        .dense_weight()?
        .i(token as usize)?
        .to_device(delta.device())?;
    let score: Vec<f32> = (&w_i * &delta)?.to_dtype(DType::F32)?.to_vec1()?;
    let mask = feature_mask(&score, select)?;
    let kept = mask.iter().filter(|&&m| m > 0.0).count();
    let mask = Tensor::from_vec(mask, score.len(), delta.device())?;
    let delta_s = (&delta * mask)?;
    let gap = |h: &[Tensor], b: &[Tensor], shift: Option<&Tensor>| -> Result<f32> {
        let mh = Tensor::stack(h, 0)?.mean(0)?;
        let mb = Tensor::stack(b, 0)?.mean(0)?;
        let mut d = (mh - mb)?;
        if let Some(s) = shift {
            d = (d + (s * 2.0)?)?;
        }
        Ok(d.sqr()?
            .sum_all()?
            .sqrt()?
            .to_dtype(DType::F32)?
            .to_scalar()?)
    };
    let base_gap = gap(&harmful_t, &benign_t, None)?;
    let target_gap = gap(&harmful_t, &benign_t, Some(&delta_s))?;
    let summary = RrsSummary {
        pairs: pairs.len(),
        refusal_token: token,
        features_kept: kept,
        features: score.len(),
        delta_norm: delta.sqr()?.sum_all()?.sqrt()?.to_scalar()?,
        delta_s_norm: delta_s.sqr()?.sum_all()?.sqrt()?.to_scalar()?,
        refusal_logit_gain: (&w_i * &delta_s)?.sum_all()?.to_scalar()?,
        base_gap,
        target_gap,
    };
    let mut samples = Vec::with_capacity(2 * pairs.len());
    for ((h, b), (vh, vb)) in pairs.iter().zip(harmful_t.into_iter().zip(benign_t)) {
        samples.push(Sample {
            variants: prompter.variants(h)?,
            target: (vh + &delta_s)?,
        });
        samples.push(Sample {
            variants: prompter.variants(b)?,
            target: (vb - &delta_s)?,
        });
    }
    Ok((RepresentationTargets { samples, frozen }, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_positive_or_top_scores() {
        let score = [0.5, -1.0, 2.0, 0.0, 1.0];
        assert_eq!(
            feature_mask(&score, FeatureSelect::Positive).unwrap(),
            [1.0, 0.0, 1.0, 0.0, 1.0]
        );
        assert_eq!(
            feature_mask(&score, FeatureSelect::TopPercent(40.0)).unwrap(),
            [0.0, 0.0, 1.0, 0.0, 1.0]
        );
        assert!(feature_mask(&score, FeatureSelect::TopPercent(0.0)).is_err());
    }
}
