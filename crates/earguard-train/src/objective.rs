//! The two per-sample losses the methods share: move a representation to a frozen target
//! (RRS) and predict response tokens (the SFT baselines). Each sample carries its prompt in
//! several variants (one per instruction of the pool); the sample's rng picks one per epoch.

use candle_core::{DType, IndexOp, Tensor, D};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use earguard_model::{
    prefill, Decoder, ForwardOutput, HookKind, HookPoint, InterventionPlan, Logits, Positions,
    Prompt,
};
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Result, TrainError};
use crate::trainer::Objective;

/// One prompt's forward pass (text or with audio rows), no padding: through the whole model,
/// or from a [`FrozenPrefix`]'s memoised residual stream.
fn forward_one(
    dec: &Decoder,
    frozen: Option<&FrozenPrefix>,
    prompt: &Prompt,
    plan: &InterventionPlan,
    logits: Logits,
) -> Result<ForwardOutput> {
    match frozen {
        Some(f) => f.forward(dec, prompt, plan, logits),
        None => whole_model(dec, prompt, plan, logits),
    }
}

fn whole_model(
    dec: &Decoder,
    prompt: &Prompt,
    plan: &InterventionPlan,
    logits: Logits,
) -> Result<ForwardOutput> {
    // A single prompt has no padding column: the pad token is never used (prefill only checks
    // it is not the audio token, which a prompt's first token never is).
    let pad = prompt.ids.first().copied().unwrap_or(0);
    Ok(prefill(dec, std::slice::from_ref(prompt), pad, plan, logits)?.0)
}

/// When no layer below `layer` carries an adapter, the residual stream a prompt brings to
/// `layer` is the frozen model's whatever the adapters hold. It is computed once per distinct
/// input by the base model's first `layer` layers (memoised by a digest of its ids and audio
/// rows), and every forward of the objective then runs only layers `layer..` of the adapted
/// model: the same computation (dropout acts inside the adapters only), up to kernel rounding
/// (the lower layers keep the base's fused ops; about 1e-6). Memory: one `[seq, hidden]`
/// tensor per distinct input (each instruction variant counts).
#[derive(Debug)]
pub struct FrozenPrefix {
    lower: Decoder,
    states: Mutex<HashMap<[u8; 32], Tensor>>,
}

impl FrozenPrefix {
    /// Memoise the residual stream entering `layer` (the lowest adapted layer, ≥ 1) of
    /// `base`, the model without adapters.
    pub fn below(base: &Decoder, layer: usize) -> Result<Self> {
        Ok(Self {
            lower: base.first_layers(layer)?,
            states: Mutex::new(HashMap::new()),
        })
    }

    /// The first layer each forward runs.
    pub fn layer(&self) -> usize {
        self.lower.config().n_layers
    }

    /// How many inputs are memoised.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Tensor>> {
        // A panic elsewhere cannot leave the map half-written: inserts are single calls.
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forward(
        &self,
        dec: &Decoder,
        prompt: &Prompt,
        plan: &InterventionPlan,
        logits: Logits,
    ) -> Result<ForwardOutput> {
        let layer = self.layer();
        let key = digest(prompt)?;
        let known = self.lock().get(&key).cloned();
        let state = match known {
            Some(s) => s,
            None => {
                let point = HookKind::ResidPost.at(layer - 1);
                let capture = InterventionPlan::new().capture(point, Positions::All);
                let out = whole_model(&self.lower, prompt, &capture, Logits::None)?;
                let s = out
                    .captures
                    .get(point)
                    .ok_or_else(|| TrainError::Invalid(format!("the {point} capture is missing")))?
                    .detach();
                self.lock().insert(key, s.clone());
                s
            }
        };
        let mut cache = dec.new_cache(vec![0]);
        Ok(dec.forward_from(layer, state, &mut cache, plan, logits)?)
    }
}

/// sha256 of what a forward reads from a prompt: its ids, audio rows and embedding noise.
fn digest(prompt: &Prompt) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((prompt.ids.len() as u64).to_le_bytes());
    for id in &prompt.ids {
        h.update(id.to_le_bytes());
    }
    if let Some(a) = &prompt.audio {
        h.update(a.token_id.to_le_bytes());
        for clip in &a.clips {
            h.update((clip.elem_count() as u64).to_le_bytes());
            for v in clip.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
                h.update(v.to_le_bytes());
            }
        }
    }
    if let Some(n) = &prompt.noise {
        h.update(n.sigma.to_le_bytes());
        h.update(n.seed.to_le_bytes());
        h.update(n.mask.iter().map(|&m| m as u8).collect::<Vec<_>>());
    }
    Ok(h.finalize().into())
}

/// The representation RRS reshapes: the final-layer hidden state (after the final norm, HF's
/// `hidden_states[-1]`) at the last prompt position, `[hidden]`.
pub fn last_hidden(
    dec: &Decoder,
    frozen: Option<&FrozenPrefix>,
    prompt: &Prompt,
) -> Result<Tensor> {
    let plan = InterventionPlan::new().capture(HookPoint::FinalNorm, Positions::Last);
    let out = forward_one(dec, frozen, prompt, &plan, Logits::None)?;
    let h = out
        .captures
        .get(HookPoint::FinalNorm)
        .ok_or_else(|| TrainError::Invalid("the final-norm capture is missing".into()))?;
    Ok(h.squeeze(0)?)
}

/// Next-token logits `[vocab]` after the prompt.
pub fn last_logits(
    dec: &Decoder,
    frozen: Option<&FrozenPrefix>,
    prompt: &Prompt,
) -> Result<Tensor> {
    let out = forward_one(dec, frozen, prompt, &InterventionPlan::new(), Logits::Last)?;
    let logits = out
        .logits
        .ok_or_else(|| TrainError::Invalid("no logits returned".into()))?;
    Ok(logits.squeeze(0)?)
}

fn pick<'a>(variants: &'a [Prompt], rng: &mut StdRng) -> Result<&'a Prompt> {
    if variants.is_empty() {
        return Err(TrainError::Invalid("a sample has no prompt".into()));
    }
    Ok(&variants[rng.random_range(0..variants.len())])
}

/// One sample: its prompt variants and what it should produce.
#[derive(Debug, Clone)]
pub struct Sample<T> {
    pub variants: Vec<Prompt>,
    pub target: T,
}

/// Mean squared error between [`last_hidden`] and a frozen target vector (PyTorch's
/// `MSELoss`, mean over the hidden dimensions).
#[derive(Debug, Clone)]
pub struct RepresentationTargets {
    pub samples: Vec<Sample<Tensor>>,
    /// Run from memoised residual streams when the lowest layers are frozen.
    pub frozen: Option<Arc<FrozenPrefix>>,
}

impl Objective for RepresentationTargets {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn loss(&self, dec: &Decoder, index: usize, rng: &mut StdRng) -> Result<Tensor> {
        let s = &self.samples[index];
        let h = last_hidden(dec, self.frozen.as_deref(), pick(&s.variants, rng)?)?;
        let target = s.target.to_dtype(h.dtype())?.to_device(h.device())?;
        Ok((h - target)?.sqr()?.mean_all()?)
    }
}

/// What a response-token sample learns: `response` after the prompt, read after the first k
/// tokens of `prefill` (k drawn per epoch from `0..=min(max_prefill, prefill.len())`; the
/// prefill is read, not learned: SFT-deep's harmful-answer prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prefill: Vec<u32>,
    pub max_prefill: usize,
    pub response: Vec<u32>,
}

impl Completion {
    /// Just these response tokens after the prompt.
    pub fn tokens(response: Vec<u32>) -> Self {
        Self {
            prefill: Vec::new(),
            max_prefill: 0,
            response,
        }
    }
}

/// Mean cross-entropy of the response tokens (teacher forcing): one forward pass over prompt,
/// prefill and response, the LM head applied only where a response token is predicted.
#[derive(Debug, Clone)]
pub struct ResponseTokens {
    pub samples: Vec<Sample<Completion>>,
    /// Run from memoised residual streams when the lowest layers are frozen.
    pub frozen: Option<Arc<FrozenPrefix>>,
}

impl ResponseTokens {
    /// sha256 (hex) of every sample's prompt ids and target tokens, in order: the same for the
    /// same training set, so a resumed run can check it trains on what it started on (the
    /// targets are generated anew at each start).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut put = |ids: &[u32]| {
            h.update((ids.len() as u64).to_le_bytes());
            for id in ids {
                h.update(id.to_le_bytes());
            }
        };
        for s in &self.samples {
            put(&[s.variants.len() as u32, s.target.max_prefill as u32]);
            for v in &s.variants {
                put(&v.ids);
            }
            put(&s.target.prefill);
            put(&s.target.response);
        }
        earguard_data::hex(&h.finalize())
    }
}

impl Objective for ResponseTokens {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn loss(&self, dec: &Decoder, index: usize, rng: &mut StdRng) -> Result<Tensor> {
        let s = &self.samples[index];
        let c = &s.target;
        let prompt = pick(&s.variants, rng)?;
        if prompt.ids.is_empty() || c.response.is_empty() {
            return Err(TrainError::Invalid(format!(
                "sample {index} has an empty prompt or response"
            )));
        }
        let reach = c.max_prefill.min(c.prefill.len());
        // No draw when there is nothing to draw: a sample without prefill uses the rng as
        // before (resumed runs stay identical).
        let k = if reach == 0 {
            0
        } else {
            rng.random_range(0..=reach)
        };
        // The prompt's audio rows stay with its placeholders; the answer tokens follow.
        let mut input = prompt.clone();
        input.ids.extend_from_slice(&c.prefill[..k]);
        // The logits at position `first` predict response[0]; the last response token is a
        // target only, never an input.
        let first = input.ids.len() - 1;
        input
            .ids
            .extend_from_slice(&c.response[..c.response.len() - 1]);
        let n = c.response.len();
        let logits = if n == 1 {
            last_logits(dec, self.frozen.as_deref(), &input)?.unsqueeze(0)?
        } else {
            let plan = InterventionPlan::new().capture(HookPoint::FinalNorm, Positions::All);
            let out = forward_one(dec, self.frozen.as_deref(), &input, &plan, Logits::None)?;
            let h = out
                .captures
                .get(HookPoint::FinalNorm)
                .ok_or_else(|| TrainError::Invalid("the final-norm capture is missing".into()))?
                .i((0, first..first + n))?
                .contiguous()?;
            dec.lm_head().forward(&h)?
        };
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        let targets = Tensor::new(c.response.as_slice(), logp.device())?.unsqueeze(1)?;
        Ok(logp.gather(&targets, 1)?.mean_all()?.neg()?)
    }
}
