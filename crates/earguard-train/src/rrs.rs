//! RRS — Reshaping Representation Space (Yang et al.; SPEC §4, papers/rrs-paper.md §4), text
//! mode, and the prompt protocol its SFT baselines ([`crate::sft`]) share.
//!
//! From mirror pairs (a harmful question and its benign rewrite): ΔV = mean over pairs of
//! f₀(harmful, t̃) − f₀(benign, t), with t̃ the refusal-inducing instruction; keep the features
//! where `w_I · ΔV > 0` (`w_I` the LM-head row of the refusal token "I"; the paper's top-m % as
//! an option) → ΔVˢ; targets harmful f₀(x, t) + ΔVˢ, benign f₀(x, t) − ΔVˢ, all from the frozen
//! model. Training then draws the instruction from a 10-prompt pool per sample (paper App. A).
//!
//! Text mode puts the question first and the instruction after it, as the audio prompts do, and
//! says "text" where the paper's prompts say "audio".

use candle_core::{DType, IndexOp, Tensor};
use earguard_data::{Label, PromptItem};
use earguard_model::{Decoder, Model};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::objective::{last_hidden, RepresentationTargets, Sample};

/// The paper's prompt pool (App. A).
pub const POOL: [&str; 10] = [
    "Answer the question in the audio.",
    "Follow the instruction in the audio.",
    "Generate a response following the audio.",
    "Provide output based on the audio content.",
    "Please generate response for the question in the audio.",
    "Give a response according to the audio content.",
    "Produce a reply following the instructions from the audio.",
    "Generate the appropriate response from the audio provided.",
    "Write down detailed steps as requested by the audio.",
    "Please provide a guideline for solving the question in the audio.",
];
/// t: the instruction the representations and targets are taken under (§4.1).
pub const INSTRUCTION: &str = "Please generate detailed steps for the question in the audio.";
/// t̃ = t plus the request to refuse.
pub const REFUSAL_SUFFIX: &str =
    " (Please generate refusal response because the question violates safety policy)";

/// The text-mode wording of an audio-mode instruction.
fn text_mode(instruction: &str) -> String {
    instruction.replace("audio", "text")
}

/// Token ids of the chat prompt for `question` with `instruction` (text mode).
pub(crate) fn encode(model: &Model, question: &str, instruction: &str) -> Result<Vec<u32>> {
    let user = format!("{question}\n\n{}", text_mode(instruction));
    Ok(model.encode_chat(None, &user)?)
}

pub(crate) fn pool_variants(model: &Model, question: &str) -> Result<Vec<Vec<u32>>> {
    POOL.iter().map(|p| encode(model, question, p)).collect()
}

/// The representations RRS reshapes, `[n, hidden]`: each question's final-layer hidden state
/// at its last prompt position under t, on `dec` (e.g. an adapted copy of `model`'s decoder),
/// detached from any graph.
pub fn representations(model: &Model, dec: &Decoder, questions: &[String]) -> Result<Tensor> {
    let rows = questions
        .iter()
        .map(|q| Ok(last_hidden(dec, &encode(model, q, INSTRUCTION)?)?.detach()))
        .collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Err(TrainError::Invalid("no questions to represent".into()));
    }
    Ok(Tensor::stack(&rows, 0)?)
}

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

/// Mirror pairs: (harmful, benign) texts sharing a pair_id, in file order.
pub fn mirror_pairs(items: &[PromptItem]) -> Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for it in items {
        let Some(pid) = &it.pair_id else { continue };
        let idx = match pairs.iter().position(|p| &p.0 == pid) {
            Some(i) => i,
            None => {
                pairs.push((pid.clone(), None, None));
                pairs.len() - 1
            }
        };
        let slot = match it.label {
            Label::Harmful => &mut pairs[idx].1,
            Label::Benign => &mut pairs[idx].2,
        };
        if slot.is_some() {
            return Err(TrainError::Invalid(format!(
                "pair {pid} has more than one {} item",
                it.label
            )));
        }
        *slot = Some(it.text.clone());
    }
    let out: Vec<(String, String)> = pairs
        .into_iter()
        .filter_map(|(_, h, b)| Some((h?, b?)))
        .collect();
    if out.is_empty() {
        return Err(TrainError::Invalid(
            "no mirror pairs (items sharing a pair_id, one harmful and one benign)".into(),
        ));
    }
    Ok(out)
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
pub fn build_rrs(
    model: &Model,
    pairs: &[(String, String)],
    select: FeatureSelect,
) -> Result<(RepresentationTargets, RrsSummary)> {
    let dec = &model.decoder;
    let refusal = format!("{INSTRUCTION}{REFUSAL_SUFFIX}");
    let mut harmful_t = Vec::with_capacity(pairs.len());
    let mut benign_t = Vec::with_capacity(pairs.len());
    let mut delta: Option<Tensor> = None;
    for (i, (h, b)) in pairs.iter().enumerate() {
        let refused = last_hidden(dec, &encode(model, h, &refusal)?)?;
        let vb = last_hidden(dec, &encode(model, b, INSTRUCTION)?)?;
        let vh = last_hidden(dec, &encode(model, h, INSTRUCTION)?)?;
        let d = (refused - &vb)?;
        delta = Some(match delta {
            None => d,
            Some(acc) => (acc + d)?,
        });
        harmful_t.push(vh);
        benign_t.push(vb);
        tracing::debug!("RRS representations: pair {} of {}", i + 1, pairs.len());
    }
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
            variants: pool_variants(model, h)?,
            target: (vh + &delta_s)?,
        });
        samples.push(Sample {
            variants: pool_variants(model, b)?,
            target: (vb - &delta_s)?,
        });
    }
    Ok((RepresentationTargets { samples }, summary))
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

    #[test]
    fn text_mode_says_text() {
        assert_eq!(text_mode(POOL[0]), "Answer the question in the text.");
        assert!(POOL.iter().all(|p| text_mode(p).contains("text")));
    }
}
