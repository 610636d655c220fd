//! SafeCoDe's verdict threshold, calibrated on labelled training prompts (`earguard fit
//! safecode`): the verdict score `logit(unsafe) − logit(safe)` of every harmful and benign
//! prompt, and the threshold that best separates them by balanced accuracy (the mean of recall
//! on harmful and on benign prompts, so a set with more of one kind does not tilt it).
//!
//! On disk, a directory holding `calibration.json` ([`Calibration`]); `safecode:calibration=DIR`
//! takes its threshold, refusing one made for another model unless forced.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::artifact::DatasetRef;
use crate::error::{Result, SteerError};

pub const CALIBRATION_FILE: &str = "calibration.json";

/// How well a threshold on the verdict score separates harmful from benign prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Separation {
    pub threshold: f32,
    pub balanced_accuracy: f64,
    /// Of the prompts called unsafe, the share that is harmful.
    pub precision: f64,
    /// Of the harmful prompts, the share called unsafe.
    pub recall: f64,
    /// Of the benign prompts, the share called safe.
    pub specificity: f64,
    /// Area under the ROC curve of the score (ties count half).
    pub auc: f64,
    pub n_harmful: usize,
    pub n_benign: usize,
}

/// A fitted threshold and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub model: String,
    pub model_identity: String,
    /// The SafeCoDe spec whose verdicts were scored (its judge decides the scores).
    pub spec: String,
    pub mode: String,
    pub training_sets: Vec<DatasetRef>,
    pub fitted: Separation,
    /// The separation the default threshold (0) gives on the same prompts, for comparison.
    pub at_zero: Separation,
    /// Every prompt's id, label and score.
    pub scores: Vec<(String, String, f32)>,
}

impl Calibration {
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| SteerError::io(dir, e))?;
        let path = dir.join(CALIBRATION_FILE);
        let text = serde_json::to_string_pretty(self).expect("calibration serialises");
        earguard_data::atomic::write(&path, text.as_bytes()).map_err(|e| SteerError::io(&path, e))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CALIBRATION_FILE);
        let text = earguard_data::read_small_text(&path).map_err(|e| SteerError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| SteerError::io(&path, format!("not a SafeCoDe calibration: {e}")))
    }
}

/// How `threshold` separates the scores (unsafe: score > threshold).
pub fn separation(harmful: &[f32], benign: &[f32], threshold: f32) -> Separation {
    let tp = harmful.iter().filter(|&&s| s > threshold).count();
    let fp = benign.iter().filter(|&&s| s > threshold).count();
    let recall = tp as f64 / harmful.len().max(1) as f64;
    let specificity = 1.0 - fp as f64 / benign.len().max(1) as f64;
    let mut wins = 0.0;
    for &h in harmful {
        for &b in benign {
            wins += if h > b {
                1.0
            } else if h == b {
                0.5
            } else {
                0.0
            };
        }
    }
    Separation {
        threshold,
        balanced_accuracy: (recall + specificity) / 2.0,
        precision: if tp + fp == 0 {
            0.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
        recall,
        specificity,
        auc: wins / (harmful.len() * benign.len()).max(1) as f64,
        n_harmful: harmful.len(),
        n_benign: benign.len(),
    }
}

/// The threshold with the best balanced accuracy: every midpoint between neighbouring scores
/// is tried (and one below all); among equals the lowest wins.
pub fn fit_threshold(harmful: &[f32], benign: &[f32]) -> Result<Separation> {
    if harmful.is_empty() || benign.is_empty() {
        return Err(SteerError::Invalid(
            "calibrating a threshold needs harmful and benign prompts".into(),
        ));
    }
    if harmful.iter().chain(benign).any(|s| !s.is_finite()) {
        return Err(SteerError::Invalid("a verdict score is not finite".into()));
    }
    let mut all: Vec<f32> = harmful.iter().chain(benign).copied().collect();
    all.sort_by(f32::total_cmp);
    all.dedup();
    let mut candidates = vec![all[0] - 1.0];
    candidates.extend(all.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    let mut best = separation(harmful, benign, candidates[0]);
    for &t in &candidates[1..] {
        let s = separation(harmful, benign, t);
        if s.balanced_accuracy > best.balanced_accuracy {
            best = s;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_separates_what_it_can() {
        // Harmful scores 2..5, benign 0.5..2.8 (overlapping, as the 1.5B model's self-verdict).
        let h = [2.0, 3.0, 4.0, 5.0];
        let b = [0.5, 1.0, 1.5, 2.8];
        let s = fit_threshold(&h, &b).unwrap();
        // Between 2.8 and 3.0 every benign is safe and 3 of 4 harmful unsafe; between 1.5 and
        // 2.0 every harmful is unsafe and 3 of 4 benign safe: both 0.875, the lower wins.
        assert_eq!(s.balanced_accuracy, 0.875);
        assert!((s.threshold - 1.75).abs() < 1e-6, "{s:?}");
        assert_eq!((s.recall, s.specificity), (1.0, 0.75));
        assert!((s.precision - 0.8).abs() < 1e-12);
        assert!((s.auc - 15.0 / 16.0).abs() < 1e-12);
        // At 0 everything is unsafe.
        let z = separation(&h, &b, 0.0);
        assert_eq!((z.recall, z.specificity, z.precision), (1.0, 0.0, 0.5));
        assert!(fit_threshold(&[], &b).is_err());
        assert!(fit_threshold(&[f32::NAN], &b).is_err());
    }
}
