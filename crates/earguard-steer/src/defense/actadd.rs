//! ActAdd (Arditi et al. 2024, SPEC §2): `x ← x + c·r` at one layer's input, every position;
//! with c = +1 it induces refusal.

use candle_core::Tensor;
use earguard_model::{HookKind, InterventionPlan, Model, Positions};

use super::{selected_layer, Defense, DefensePart};
use crate::artifact::SteeringVector;
use crate::error::{Result, SteerError};

pub struct ActAdd {
    describe: String,
    layer: usize,
    vector: Tensor,
}

impl ActAdd {
    /// The defense a checked spec part names (options checked by [`super::DefenseSpec::check`]).
    pub(crate) fn from_part(part: &DefensePart, model: &Model, force: bool) -> Result<Self> {
        let coeff = part.option_f64("coeff")?.unwrap_or(1.0);
        let vector = SteeringVector::load(part.artifact()?)?;
        vector.check_compatible(&model.info, force)?;
        let layer = selected_layer(&vector, part)?;
        let r = vector.directions.get(&layer).ok_or_else(|| {
            SteerError::Invalid(format!("the vector has no direction for layer {layer}"))
        })?;
        Ok(Self {
            describe: part.to_string(),
            layer,
            vector: (r * coeff)?,
        })
    }
}

impl Defense for ActAdd {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn plan(&self) -> Result<InterventionPlan> {
        Ok(InterventionPlan::new().add(
            HookKind::ResidPre.at(self.layer),
            Positions::All,
            self.vector.clone(),
        ))
    }
}
