//! CAST, conditional activation steering (Lee et al. 2024): a condition direction decides, per
//! sequence, from the prompt's last-position activation at one layer, whether the behaviour
//! vector is applied. The condition is a [`Gate`](earguard_model::hooks::Gate): the prompt's
//! own forward pass decides it when it reaches the condition layer, as in the reference
//! implementation, so generation prefills once; sequences of one batch are steered or not
//! independently. Behaviour additions below the condition layer therefore steer the generated
//! tokens but not the prompt's last position (the decision does not exist yet there).
//!
//! The artifact (`earguard fit cast`) holds the behaviour vectors as directions, the condition
//! direction as its `condition.{layer}` tensor and, in `meta.extra`, `threshold` (cosine
//! similarity above which a prompt counts as harmful) and `alpha`. Artifacts of earlier
//! versions kept the condition in `meta.extra.condition_direction`; they are refused with the
//! fix (re-fit: the fit reuses its cached activations).

use candle_core::Tensor;
use earguard_model::{HookPoint, Intervention, InterventionPlan, Model, Positions};

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
            condition: condition.direction.to_device(model.decoder.device())?,
            threshold,
            additions,
        })
    }
}

impl Defense for Cast {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// The condition is a gate the forward pass decides on the prompt; the behaviour
    /// additions are gated by it.
    fn plan(&self) -> Result<InterventionPlan> {
        let mut plan =
            InterventionPlan::new().gate(self.condition_hook, &self.condition, self.threshold)?;
        for (hook, v) in &self.additions {
            plan.push(Intervention {
                point: *hook,
                positions: Positions::Last,
                edit: earguard_model::Edit::Add(v.clone()),
                gated: true,
            });
        }
        Ok(plan)
    }
}
