//! End-to-end fits over prompt sets: render each prompt for the mode, capture activations
//! (cached and resumable under the work directory), fit, and package a [`SteeringVector`].
//!
//! - [`FitSetup::sarsteer`]: SPEC §1 — suffix contrast on harmful prompts, benign top-k
//!   subspace ablated with weight λ. On text-only inputs this is the `text-steer` baseline.
//! - [`FitSetup::refusal_direction`]: Arditi et al. — harmful-minus-benign mean difference per
//!   layer, with the layer selection of SPEC §2 recorded as `extra.selected_layer`.
//! - [`FitSetup::cast`]: CAST — behaviour vectors plus the condition that gates them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Tensor};
use earguard_data::PromptItem;
use earguard_model::decoder::log_softmax;
use earguard_model::score::{refusal_scores, refusal_start_tokens};
use earguard_model::{AudioCache, HookKind, InterventionPlan, Logits, Model, Prompt};
use serde_json::json;

use crate::artifact::{DatasetRef, SteeringVector, VectorMeta};
use crate::capture::{capture_last, forward_batch, CaptureOptions};
use crate::defense::{Ablate, Defense};
use crate::error::{Result, SteerError};
use crate::fit;
use crate::inputs::InputStyle;

pub struct FitSetup<'a> {
    pub model: &'a Model,
    pub style: InputStyle,
    pub hook: HookKind,
    pub batch_size: usize,
    /// Captures are kept here (one folder per set) so an interrupted fit resumes and a re-fit
    /// with other hyper-parameters needs no forward passes.
    pub work_dir: Option<PathBuf>,
    pub progress: bool,
    pub training_sets: Vec<DatasetRef>,
    /// The fit's encoded audio: each clip runs through the audio tower once, however many
    /// captures (plain, with the suffix, layer search) use it.
    pub audio: AudioCache,
}

impl FitSetup<'_> {
    /// Each prompt in this setup's mode, with an optional suffix.
    pub fn encode(&self, items: &[PromptItem], suffix: Option<&str>) -> Result<Vec<Prompt>> {
        items
            .iter()
            .map(|item| {
                let messages = self.style.messages(item, suffix)?;
                self.model
                    .encode_prompt(&messages, self.style.specials, &self.audio)
                    .map_err(|e| SteerError::Invalid(format!("prompt {}: {e}", item.id)))
            })
            .collect()
    }

    /// `[n, layers, hidden]` last-position activations of `items` (named `name` on disk).
    pub fn capture(
        &self,
        name: &str,
        items: &[PromptItem],
        suffix: Option<&str>,
    ) -> Result<Tensor> {
        if items.is_empty() {
            return Err(SteerError::Invalid(format!("the {name} set is empty")));
        }
        let inputs = self.encode(items, suffix)?;
        let opts = CaptureOptions {
            hook: self.hook,
            batch_size: self.batch_size,
            dir: self.work_dir.as_ref().map(|d| d.join(name)),
            progress: self.progress.then(|| name.to_string()),
        };
        capture_last(self.model, &inputs, &opts)
    }

    fn meta(&self, method: &str, hyper: serde_json::Value) -> VectorMeta {
        let mut meta = VectorMeta::for_model(method, &self.model.info, self.hook);
        meta.hyper_parameters = hyper;
        meta.training_sets = self.training_sets.clone();
        meta
    }

    fn package(&self, meta: VectorMeta, directions: &Tensor) -> Result<SteeringVector> {
        package(meta, directions)
    }

    /// SARSteer (SPEC §1).
    pub fn sarsteer(
        &self,
        harmful: &[PromptItem],
        benign: &[PromptItem],
        suffix: &str,
        k: usize,
        lambda: f64,
    ) -> Result<SteeringVector> {
        check_sets(harmful, benign)?;
        crate::limits::coefficient("lambda", lambda)?;
        if k > benign.len() {
            return Err(SteerError::Invalid(format!(
                "k = {k} is larger than the benign set ({} prompts)",
                benign.len()
            )));
        }
        let plain = self.capture("harmful", harmful, None)?;
        let with_suffix = self.capture("harmful+suffix", harmful, Some(suffix))?;
        let benign_acts = self.capture("benign", benign, None)?;
        let v = fit::sarsteer(&with_suffix, &plain, &benign_acts, k, lambda)?;
        let method = if self.style.mode == earguard_data::Mode::TextOnly {
            "text-steer"
        } else {
            "sarsteer"
        };
        let meta = self.meta(
            method,
            json!({"k": k, "lambda": lambda, "suffix": suffix, "mode": self.style.mode,
                   "instruction": self.style.instruction, "alpha_default": crate::defense::SARSTEER_DEFAULT_ALPHA}),
        );
        self.package(meta, &v)
    }

    /// Refusal direction (Arditi et al.) with layer selection when `select` is set.
    pub fn refusal_direction(
        &self,
        harmful: &[PromptItem],
        benign: &[PromptItem],
        select: Option<&LayerSelection>,
    ) -> Result<SteeringVector> {
        check_sets(harmful, benign)?;
        let h = self.capture("harmful", harmful, None)?;
        let b = self.capture("benign", benign, None)?;
        let directions = fit::mean_difference(&h, &b)?;
        let mut meta = self.meta("refusal-direction", json!({"mode": self.style.mode}));
        if let Some(sel) = select {
            let picked = self.select_layer(&directions, sel)?;
            meta.extra = json!({"selected_layer": picked.layer, "layer_search": picked.table});
        }
        self.package(meta, &directions)
    }

    /// CAST: behaviour = harmful-minus-benign mean difference per layer; condition fitted on
    /// the same sets (its direction is the vector's condition tensor, its threshold in
    /// `extra`).
    pub fn cast(
        &self,
        harmful: &[PromptItem],
        benign: &[PromptItem],
        alpha: f64,
    ) -> Result<SteeringVector> {
        check_sets(harmful, benign)?;
        crate::limits::coefficient("alpha", alpha)?;
        let h = self.capture("harmful", harmful, None)?;
        let b = self.capture("benign", benign, None)?;
        let behaviour = fit::mean_difference(&h, &b)?;
        let cond = fit::fit_condition(&h, &b)?;
        let mut meta = self.meta("cast", json!({"mode": self.style.mode, "alpha": alpha}));
        meta.extra = json!({
            "threshold": cond.threshold,
            "train_accuracy": cond.accuracy,
            "alpha": alpha,
        });
        self.package(meta, &behaviour)?
            .with_condition(cond.layer, &cond.direction)
    }

    /// SPEC §2 layer selection: among layers below `max_fraction`·L, the direction whose
    /// ablation lowers the harmful refusal score most while the KL divergence of the next-token
    /// distribution on harmless prompts stays below `max_kl`.
    fn select_layer(&self, directions: &Tensor, sel: &LayerSelection) -> Result<LayerPick> {
        let harm = self.encode(&sel.harmful, None)?;
        let safe = self.encode(&sel.harmless, None)?;
        let refusal = refusal_start_tokens(&self.model.tokenizer)?;
        let base_logits = self.logits(&safe, &InterventionPlan::new())?;
        let n_layers = directions.dim(0)?;
        let last = ((n_layers as f64) * sel.max_fraction).floor() as usize;
        let bar = earguard_data::progress::bar(
            self.progress.then_some("layer search"),
            "layers",
            last as u64,
        );
        let mut table = Vec::new();
        for l in 0..last {
            // The attack's plan, one per layer.
            let plan = Ablate::new(self.model, &directions.get(l)?, 1.0)?.plan()?;
            let score = mean(&refusal_scores(&self.logits(&harm, &plan)?, &refusal)?);
            let kl = mean_kl(&base_logits, &self.logits(&safe, &plan)?)?;
            table.push(json!({"layer": l, "harmful_refusal_score": score, "harmless_kl": kl}));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let score_of = |row: &serde_json::Value, k: &str| row[k].as_f64().unwrap_or(f64::INFINITY);
        let best = table
            .iter()
            .filter(|r| score_of(r, "harmless_kl") < sel.max_kl)
            .min_by(|a, b| {
                score_of(a, "harmful_refusal_score")
                    .total_cmp(&score_of(b, "harmful_refusal_score"))
            })
            .or_else(|| {
                table.iter().min_by(|a, b| {
                    score_of(a, "harmless_kl").total_cmp(&score_of(b, "harmless_kl"))
                })
            })
            .ok_or_else(|| SteerError::Invalid("no candidate layers to search".into()))?;
        let layer = best["layer"].as_u64().unwrap_or(0) as usize;
        Ok(LayerPick {
            layer,
            table: serde_json::Value::Array(table),
        })
    }

    fn logits(&self, batch: &[Prompt], plan: &InterventionPlan) -> Result<Tensor> {
        let mut rows = Vec::new();
        for chunk in batch.chunks(self.batch_size.max(1)) {
            let out = forward_batch(self.model, chunk, plan, Logits::Last)?;
            rows.push(
                out.logits
                    .ok_or_else(|| SteerError::Invalid("no logits".into()))?,
            );
        }
        Ok(Tensor::cat(&rows, 0)?.to_dtype(DType::F32)?)
    }
}

/// `[layers, hidden]` directions as a vector artifact.
fn package(meta: VectorMeta, directions: &Tensor) -> Result<SteeringVector> {
    let mut map = BTreeMap::new();
    for l in 0..directions.dim(0)? {
        map.insert(l, directions.get(l)?);
    }
    SteeringVector::new(meta, map)
}

/// Where a fit that writes its vector to `out` caches activations by default: `OUT.captures`
/// beside it (not inside: saving a vector replaces its directory whole).
pub fn default_captures_dir(out: &std::path::Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".captures");
    out.with_file_name(name)
}

/// A SARSteer fit redone with another benign-subspace size `k` and ablation strength `lambda`
/// from the activations its first fit cached in `captures` (the `harmful`, `harmful+suffix`
/// and `benign` captures of [`FitSetup::sarsteer`]): no model and no forward passes.
pub fn refit_sarsteer(
    fitted: &SteeringVector,
    captures: &std::path::Path,
    k: usize,
    lambda: f64,
) -> Result<SteeringVector> {
    let read = |name: &str| {
        crate::capture::read_finished(&captures.join(name)).map_err(|e| {
            SteerError::Invalid(format!(
                "{}: no finished {name} capture to refit from ({e}); run the fit again",
                captures.display()
            ))
        })
    };
    let plain = read("harmful")?;
    let with_suffix = read("harmful+suffix")?;
    let benign = read("benign")?;
    if k > benign.dim(0)? {
        return Err(SteerError::Invalid(format!(
            "k = {k} is larger than the benign set ({} prompts)",
            benign.dim(0)?
        )));
    }
    let v = fit::sarsteer(&with_suffix, &plain, &benign, k, lambda)?;
    let mut meta = fitted.meta.clone();
    if let Some(h) = meta.hyper_parameters.as_object_mut() {
        h.insert("k".into(), json!(k));
        h.insert("lambda".into(), json!(lambda));
    }
    package(meta, &v)
}

/// Prompts held out for the layer search, and its limits.
pub struct LayerSelection {
    pub harmful: Vec<PromptItem>,
    pub harmless: Vec<PromptItem>,
    pub max_fraction: f64,
    pub max_kl: f64,
}

struct LayerPick {
    layer: usize,
    table: serde_json::Value,
}

fn check_sets(harmful: &[PromptItem], benign: &[PromptItem]) -> Result<()> {
    if harmful.is_empty() {
        return Err(SteerError::Invalid(
            "the training data has no harmful prompts".into(),
        ));
    }
    if benign.is_empty() {
        return Err(SteerError::Invalid(
            "the training data has no benign prompts".into(),
        ));
    }
    Ok(())
}

fn mean(xs: &[f32]) -> f64 {
    xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len().max(1) as f64
}

/// Mean over rows of KL(p ‖ q) between next-token distributions given as logits.
fn mean_kl(p_logits: &Tensor, q_logits: &Tensor) -> Result<f64> {
    let lp = log_softmax(p_logits)?;
    let lq = log_softmax(q_logits)?;
    let kl = (lp.exp()? * (&lp - &lq)?)?.sum(1)?;
    Ok(mean(&kl.to_vec1::<f32>()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A refit from cached captures equals a fresh fit on the same activations, records its
    /// k and λ, and refuses an impossible k or a missing capture.
    #[test]
    fn refit_from_captures_matches_a_direct_fit() {
        let dir = std::env::temp_dir().join(format!("earguard-refit-{}", std::process::id()));
        let acts = |n: usize, seed: f64| {
            Tensor::randn(seed, 1.0f64, (n, 3, 16), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let (plain, with_suffix, benign) = (acts(6, 0.0), acts(6, 0.5), acts(5, -0.2));
        for (name, t) in [
            ("harmful", &plain),
            ("harmful+suffix", &with_suffix),
            ("benign", &benign),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            crate::capture::write_tensors(
                &dir.join(name).join("activations.safetensors"),
                &[("acts", t)],
            )
            .unwrap();
        }
        let mut meta = VectorMeta::new("sarsteer", "m", "qwen2", "id", 16, 3, HookKind::ResidPost);
        meta.hyper_parameters = json!({"k": 10, "lambda": 1.0, "suffix": "I cannot."});
        let fitted = package(
            meta,
            &fit::sarsteer(&with_suffix, &plain, &benign, 4, 1.0).unwrap(),
        )
        .unwrap();

        let refit = refit_sarsteer(&fitted, &dir, 2, 0.5).unwrap();
        let want = fit::sarsteer(&with_suffix, &plain, &benign, 2, 0.5).unwrap();
        for l in 0..3 {
            let d = (&refit.directions[&l] - want.get(l).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0);
        }
        assert_eq!(refit.meta.hyper_parameters["k"], 2);
        assert_eq!(refit.meta.hyper_parameters["lambda"], 0.5);
        assert_eq!(refit.meta.hyper_parameters["suffix"], "I cannot.");

        let err = refit_sarsteer(&fitted, &dir, 6, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than the benign set"), "{err}");
        std::fs::remove_dir_all(dir.join("benign")).unwrap();
        let err = refit_sarsteer(&fitted, &dir, 2, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no finished benign capture"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
