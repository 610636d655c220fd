//! The two per-sample losses the methods share: move a representation to a frozen target
//! (RRS) and predict one token (the shallow SFT baselines). Each sample carries its prompt in
//! several variants (one per instruction of the pool); the sample's rng picks one per epoch.

use candle_core::{DType, Tensor};
use earguard_model::{Decoder, HookPoint, InterventionPlan, Logits, Positions};
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Result, TrainError};
use crate::trainer::Objective;

/// The representation RRS reshapes: the final-layer hidden state (after the final norm, HF's
/// `hidden_states[-1]`) at the last prompt position, `[hidden]`.
pub fn last_hidden(dec: &Decoder, ids: &[u32]) -> Result<Tensor> {
    let t = Tensor::new(ids, dec.device())?.unsqueeze(0)?;
    let plan = InterventionPlan::new().capture(HookPoint::FinalNorm, Positions::Last);
    let mut cache = dec.new_cache(vec![0]);
    let out = dec.forward(&t, &mut cache, &plan, Logits::None)?;
    let h = out
        .captures
        .get(HookPoint::FinalNorm)
        .ok_or_else(|| TrainError::Invalid("the final-norm capture is missing".into()))?;
    Ok(h.squeeze(0)?)
}

/// Next-token logits `[vocab]` after the prompt.
pub fn last_logits(dec: &Decoder, ids: &[u32]) -> Result<Tensor> {
    let t = Tensor::new(ids, dec.device())?.unsqueeze(0)?;
    let mut cache = dec.new_cache(vec![0]);
    let out = dec.forward(&t, &mut cache, &InterventionPlan::new(), Logits::Last)?;
    let logits = out
        .logits
        .ok_or_else(|| TrainError::Invalid("no logits returned".into()))?;
    Ok(logits.squeeze(0)?)
}

fn pick<'a>(variants: &'a [Vec<u32>], rng: &mut StdRng) -> Result<&'a [u32]> {
    if variants.is_empty() {
        return Err(TrainError::Invalid("a sample has no prompt".into()));
    }
    Ok(&variants[rng.random_range(0..variants.len())])
}

/// One sample: its prompt variants and what it should produce.
#[derive(Debug, Clone)]
pub struct Sample<T> {
    pub variants: Vec<Vec<u32>>,
    pub target: T,
}

/// Mean squared error between [`last_hidden`] and a frozen target vector (PyTorch's
/// `MSELoss`, mean over the hidden dimensions).
#[derive(Debug, Clone)]
pub struct RepresentationTargets {
    pub samples: Vec<Sample<Tensor>>,
}

impl Objective for RepresentationTargets {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn loss(&self, dec: &Decoder, index: usize, rng: &mut StdRng) -> Result<Tensor> {
        let s = &self.samples[index];
        let h = last_hidden(dec, pick(&s.variants, rng)?)?;
        let target = s.target.to_dtype(h.dtype())?.to_device(h.device())?;
        Ok((h - target)?.sqr()?.mean_all()?)
    }
}

/// Cross-entropy of the first response token after the prompt.
#[derive(Debug, Clone)]
pub struct FirstToken {
    pub samples: Vec<Sample<u32>>,
}

impl Objective for FirstToken {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn loss(&self, dec: &Decoder, index: usize, rng: &mut StdRng) -> Result<Tensor> {
        let s = &self.samples[index];
        let logits = last_logits(dec, pick(&s.variants, rng)?)?.to_dtype(DType::F32)?;
        let logp = candle_nn::ops::log_softmax(&logits, 0)?;
        Ok(logp.get(s.target as usize)?.neg()?)
    }
}
