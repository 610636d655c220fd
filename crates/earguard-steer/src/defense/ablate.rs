//! Directional ablation (Arditi et al. 2024, SPEC §2): remove the refusal direction r̂ from
//! everything the model writes into the residual stream — the token embeddings (the input of
//! block 0) and every attention and MLP output, at every position. The stream is the sum of
//! those writes, so for the model alone this equals projecting r̂ out of the stream at every
//! layer (Arditi's weight orthogonalisation; tested against stream ablation at `resid_pre`,
//! `resid_mid` and `resid_post` of every block). The stream itself is never projected after
//! the embeddings, so an inference-time defense's own additions (at `resid_post`, say) are not
//! erased: the attack is on the model's weights, the defense must survive it.
//!
//! `strength=s` removes the fraction s of each write's r̂ component (s = 1, the default, is
//! the full attack; s = 0.5 halves the model's own refusal component): a weakened refusal, the
//! setting the seed papers study (speech input lowers refusal, it does not erase it).

use candle_core::Tensor;
use earguard_model::{HookKind, InterventionPlan, Model, Positions};

use super::{selected_layer, Defense, DefensePart};
use crate::artifact::SteeringVector;
use crate::error::{Result, SteerError};

pub struct Ablate {
    describe: String,
    /// Built once: the attack does not depend on the batch.
    plan: InterventionPlan,
}

impl Ablate {
    /// The defense a checked spec part names (options checked by [`super::DefenseSpec::check`]).
    pub(crate) fn from_part(part: &DefensePart, model: &Model, force: bool) -> Result<Self> {
        // The fraction of the refusal component removed (1 = full ablation).
        let strength = part.option_f64_in("strength", 0.0..=1.0)?.unwrap_or(1.0);
        let vector = SteeringVector::load(part.artifact()?)?;
        vector.check_compatible(&model.info, force)?;
        let layer = selected_layer(&vector, part)?;
        let r = vector.directions.get(&layer).ok_or_else(|| {
            SteerError::Invalid(format!("the vector has no direction for layer {layer}"))
        })?;
        let mut ablate = Self::new(model, r, strength)?;
        ablate.describe = part.to_string();
        Ok(ablate)
    }

    /// The attack with direction `direction` (any norm) at `strength` in [0, 1].
    pub fn new(model: &Model, direction: &Tensor, strength: f64) -> Result<Self> {
        let n_layers = model.decoder.config().n_layers;
        let writes = std::iter::once(HookKind::ResidPre.at(0))
            .chain((0..n_layers).flat_map(|l| [HookKind::AttnOut.at(l), HookKind::MlpOut.at(l)]));
        let mut plan = InterventionPlan::new();
        for hook in writes {
            plan = plan.project_out_fraction(hook, Positions::All, direction, strength)?;
        }
        Ok(Self {
            describe: "ablate".into(),
            plan,
        })
    }
}

impl Defense for Ablate {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn plan(&self) -> Result<InterventionPlan> {
        Ok(self.plan.clone())
    }
}
