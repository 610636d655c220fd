//! CAST, conditional activation steering (Lee et al. 2024): a condition direction decides, per
//! sequence, from the prompt's last-position activation at one layer, whether the behaviour
//! vector is applied. Sequences of one batch are steered or not independently (row scales).
//!
//! The artifact (`earguard fit cast`) holds the behaviour vectors as directions, the condition
//! direction as its `condition.{layer}` tensor and, in `meta.extra`, `threshold` (cosine
//! similarity above which a prompt counts as harmful) and `alpha`. Artifacts of earlier
//! versions kept the condition in `meta.extra.condition_direction`; they are refused with the
//! fix (re-fit: the fit reuses its cached activations).

use candle_core::Tensor;
use earguard_model::{HookPoint, Intervention, InterventionPlan, Model, Positions, Prompt};

use super::{Defense, DefensePart};
use crate::artifact::SteeringVector;
use crate::error::{Result, SteerError};

/// A cosine-similarity threshold lies in [-1, 1].
const COSINE: std::ops::RangeInclusive<f64> = -1.0..=1.0;

pub struct Cast {
    describe: String,
    condition_hook: HookPoint,
    condition: Tensor,
    threshold: f32,
    additions: Vec<(HookPoint, Tensor)>,
}

impl Cast {
    /// The defense a checked spec part names (options checked by [`super::DefenseSpec::check`]).
    pub(crate) fn from_part(part: &DefensePart, model: &Model, force: bool) -> Result<Self> {
        let threshold = part.option_f64_in("threshold", COSINE)?;
        let alpha = part.option_f64("alpha")?;
        let vector = SteeringVector::load(part.artifact()?)?;
        vector.check_compatible(&model.info, force)?;
        let extra = &vector.meta.extra;
        let missing = |k: &str| {
            SteerError::Artifact(format!(
                "cast vector has no extra.{k}: fit it with earguard fit cast"
            ))
        };
        let Some(condition) = &vector.condition else {
            let why = if extra.get("condition_direction").is_some() {
                "keeps its condition in meta.json, as earguard did before the condition tensor; \
                 re-fit it with earguard fit cast (the fit reuses its cached activations)"
            } else {
                "has no condition.<layer> tensor, so it is not a cast vector; fit one with \
                 earguard fit cast"
            };
            let dir = part.artifact()?.display();
            return Err(SteerError::Artifact(format!("{dir}: this vector {why}")));
        };
        let threshold = match threshold {
            Some(t) => t,
            None => crate::limits::check_in(
                "cast vector: extra.threshold",
                extra
                    .get("threshold")
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| missing("threshold"))?,
                COSINE,
            )?,
        } as f32;
        let alpha = match alpha {
            Some(a) => a,
            None => crate::limits::coefficient(
                "cast vector: extra.alpha",
                extra
                    .get("alpha")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(super::sarsteer::DEFAULT_ALPHA),
            )?,
        };
        let additions = vector
            .directions
            .iter()
            .map(|(&l, v)| Ok((vector.meta.hook_point(l), (v * alpha)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            describe: part.to_string(),
            condition_hook: vector.meta.hook_point(condition.layer),
            condition: super::sarsteer::unit(
                &condition.direction.to_device(model.decoder.device())?,
            )?,
            threshold,
            additions,
        })
    }

    /// Which prompts of the batch meet the condition (cosine similarity above the threshold).
    pub fn condition_met(&self, model: &Model, batch: &[Prompt]) -> Result<Vec<bool>> {
        let probe = InterventionPlan::new().capture(self.condition_hook, Positions::Last);
        let acts =
            crate::capture::forward_batch(model, batch, &probe, earguard_model::Logits::None)?;
        let h = acts
            .captures
            .get(self.condition_hook)
            .ok_or_else(|| SteerError::Invalid("probe captured nothing".into()))?;
        let norms = h.sqr()?.sum_keepdim(1)?.sqrt()?;
        let cos = h
            .matmul(&self.condition.unsqueeze(1)?)?
            .div(&norms)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(cos.into_iter().map(|c| c > self.threshold).collect())
    }
}

impl Defense for Cast {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn plan(&self, model: &Model, batch: &[Prompt]) -> Result<InterventionPlan> {
        let rows: Vec<f32> = self
            .condition_met(model, batch)?
            .into_iter()
            .map(|m| if m { 1.0 } else { 0.0 })
            .collect();
        let mut plan = InterventionPlan::new();
        if rows.iter().all(|&r| r == 0.0) {
            return Ok(plan);
        }
        for (hook, v) in &self.additions {
            plan.push(Intervention {
                point: *hook,
                positions: Positions::Last,
                edit: earguard_model::Edit::Add(v.clone()),
                row_scale: Some(rows.clone()),
            });
        }
        Ok(plan)
    }
}
