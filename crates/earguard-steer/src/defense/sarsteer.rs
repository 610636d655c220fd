//! SARSteer (SPEC §1): add `α·β_l·v_l` to block l's output at the last position of every
//! forward call — the last prompt token at prefill, then each generated token — for every
//! layer with a direction. `text-steer` is the same application of a fit made on text-only
//! inputs (the "LLM steering" baseline).

use candle_core::Tensor;
use earguard_model::{HookKind, HookPoint, InterventionPlan, Model, Positions};

use super::{parse_layers, Defense, DefensePart};
use crate::artifact::SteeringVector;
use crate::error::{Result, SteerError};

pub const DEFAULT_ALPHA: f64 = 0.1;

pub struct SarSteer {
    name: &'static str,
    describe: String,
    /// (hook, α·β_l·v_l) for every steered layer, ready to add.
    additions: Vec<(HookPoint, Tensor)>,
    positions: Positions,
}

impl SarSteer {
    /// The defense a checked spec part names (options checked by [`super::DefenseSpec::check`]).
    pub(crate) fn from_part(part: &DefensePart, model: &Model, force: bool) -> Result<Self> {
        // Options first: a bad one is reported before any file is read.
        let n_layers = model.decoder.config().n_layers;
        let alpha = part.option_f64("alpha")?.unwrap_or(DEFAULT_ALPHA);
        let layers = part
            .option("layers")
            .map(|s| parse_layers(s, n_layers))
            .transpose()?;
        let beta = part.option_f64_list("beta")?;
        let positions: Positions = part.option("positions").unwrap_or("last").parse()?;
        let normalize = part.option_bool("normalize")?.unwrap_or(false);
        let vector = SteeringVector::load(part.artifact()?)?;
        vector.check_compatible(&model.info, force)?;
        let layers = layers.unwrap_or_else(|| vector.directions.keys().copied().collect());
        let betas: Vec<f64> = match beta {
            None => vec![1.0; layers.len()],
            Some(b) => match b.len() {
                1 => vec![b[0]; layers.len()],
                n if n == layers.len() => b,
                n => {
                    return Err(SteerError::Invalid(format!(
                        "beta has {n} values for {} steered layers",
                        layers.len()
                    )))
                }
            },
        };
        let mut additions = Vec::with_capacity(layers.len());
        for (&l, &beta) in layers.iter().zip(&betas) {
            let v = vector.directions.get(&l).ok_or_else(|| {
                SteerError::Invalid(format!("the vector has no direction for layer {l}"))
            })?;
            let v = if normalize { unit(v)? } else { v.clone() };
            additions.push((vector.meta.hook_point(l), (v * (alpha * beta))?));
        }
        Ok(Self {
            name: part.kind.name(),
            describe: part.to_string(),
            additions,
            positions,
        })
    }

    /// Steering directly from vectors (for tests and sweeps): `α·v_l` at `hook` of each layer.
    pub fn from_vectors(hook: HookKind, vectors: &[(usize, Tensor)], alpha: f64) -> Result<Self> {
        let additions = vectors
            .iter()
            .map(|(l, v)| Ok((hook.at(*l), (v * alpha)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: "sarsteer",
            describe: format!("sarsteer:alpha={alpha}"),
            additions,
            positions: Positions::Last,
        })
    }

    pub fn name(&self) -> &str {
        self.name
    }
}

pub(crate) fn unit(v: &Tensor) -> Result<Tensor> {
    let norm = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if !(norm.is_finite() && norm > 0.0) {
        return Err(SteerError::Invalid(format!(
            "cannot normalise a direction of norm {norm}"
        )));
    }
    Ok((v / f64::from(norm))?)
}

impl Defense for SarSteer {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn plan(&self) -> Result<InterventionPlan> {
        let mut plan = InterventionPlan::new();
        for (hook, v) in &self.additions {
            plan = plan.add(*hook, self.positions, v.clone());
        }
        Ok(plan)
    }
}
