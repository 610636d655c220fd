//! CAST, conditional activation steering (Lee et al. 2024): a condition direction decides, per
//! sequence, from the prompt's last-position activation at one layer, whether the behaviour
//! vector is applied. Sequences of one batch are steered or not independently (row scales).
//!
//! The artifact (`earguard fit cast`) holds the behaviour vectors as directions and, in
//! `meta.extra`: `condition_layer`, `condition_direction` (list of floats), `threshold` (cosine
//! similarity above which a prompt counts as harmful) and `alpha`.

use candle_core::Tensor;
use earguard_model::{HookPoint, Intervention, InterventionPlan, Model, Positions, Prompt};

use super::{hook_of, Defense, DefensePart};
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
    pub fn from_part(part: &DefensePart, model: &Model, force: bool) -> Result<Self> {
        part.only_options(&["alpha", "threshold"])?;
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
        let layer = extra
            .get("condition_layer")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| missing("condition_layer"))? as usize;
        let direction: Vec<f32> = extra
            .get("condition_direction")
            .and_then(|v| v.as_array())
            .ok_or_else(|| missing("condition_direction"))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| {
                SteerError::Artifact("condition_direction must be a list of numbers".into())
            })?;
        let hidden = model.decoder.config().hidden_size;
        if direction.len() != hidden || direction.iter().any(|x| !x.is_finite()) {
            return Err(SteerError::Artifact(format!(
                "condition_direction must hold {hidden} finite numbers, it has {}",
                direction.len()
            )));
        }
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
        let hook = hook_of(&vector)?;
        let condition = super::sarsteer::unit(&Tensor::from_vec(
            direction,
            hidden,
            model.decoder.device(),
        )?)?;
        let additions = vector
            .directions
            .iter()
            .map(|(&l, v)| Ok((hook.at_layer(l), (v * alpha)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            describe: part.to_string(),
            condition_hook: hook.at_layer(layer),
            condition,
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
