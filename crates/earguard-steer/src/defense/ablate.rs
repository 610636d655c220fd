//! Directional ablation (Arditi et al. 2024, SPEC §2): remove the refusal direction r̂ from
//! everything the model writes into the residual stream — the token embeddings and every
//! attention and MLP output, at every position. The stream is the sum of those writes, so for
//! the model alone this equals projecting r̂ out of the stream at every layer (Arditi's weight
//! orthogonalisation), while an inference-time defense's own additions are not erased: the
//! attack is on the model's weights, the defense must survive it.

use candle_core::Tensor;
use earguard_model::{HookPoint, InterventionPlan, Model, Positions, Prompt};

use super::{selected_layer, Defense, DefensePart};
use crate::artifact::SteeringVector;
use crate::error::{Result, SteerError};

pub struct Ablate {
    describe: String,
    direction: Tensor,
}

impl Ablate {
    pub fn from_part(part: &DefensePart, model: &Model, force: bool) -> Result<Self> {
        part.only_options(&["layer"])?;
        let vector = SteeringVector::load(part.artifact()?)?;
        vector.check_compatible(&model.info, force)?;
        let layer = selected_layer(&vector, part)?;
        let r = vector.directions.get(&layer).ok_or_else(|| {
            SteerError::Invalid(format!("the vector has no direction for layer {layer}"))
        })?;
        Ok(Self {
            describe: part.to_string(),
            direction: r.clone(),
        })
    }

    pub fn from_direction(direction: Tensor) -> Self {
        Self {
            describe: "ablate".into(),
            direction,
        }
    }
}

impl Defense for Ablate {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn plan(&self, model: &Model, _batch: &[Prompt]) -> Result<InterventionPlan> {
        let mut plan = InterventionPlan::new();
        for l in 0..model.decoder.config().n_layers {
            for hook in [
                HookPoint::ResidPre(l),
                HookPoint::AttnOut(l),
                HookPoint::MlpOut(l),
            ] {
                plan = plan.project_out(hook, Positions::All, &self.direction)?;
            }
        }
        Ok(plan)
    }
}
