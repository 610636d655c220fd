//! One model input, token ids plus the encoded audio clips an audio-language model's prompt
//! holds, and the batched prefill every consumer shares (generation, scoring, activation
//! capture, condition probes).

use candle_core::{DType, Tensor};

use crate::decoder::{Decoder, ForwardOutput, KvCache, Logits};
use crate::error::{ModelError, Result};
use crate::hooks::InterventionPlan;
use crate::qwen2_audio::merge_audio;

/// Encoded audio clips that replace a prompt's `<|AUDIO|>` tokens, in order.
#[derive(Debug, Clone)]
pub struct AudioRows {
    /// Token id of `<|AUDIO|>`.
    pub token_id: u32,
    /// One `[n_i, hidden]` tensor per clip (shared with the run's
    /// [`AudioCache`](crate::audio::AudioCache), not copied); the prompt holds
    /// `sum n_i` `token_id` tokens.
    pub clips: Vec<Tensor>,
}

/// Token ids, plus the encoded clips of an audio-language model's spoken input, plus an
/// optional corruption of its embeddings (SafeCoDe's contrast input).
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub audio: Option<AudioRows>,
    pub noise: Option<EmbeddingNoise>,
}

/// Seeded Gaussian noise on the input embeddings of chosen positions (user content, not
/// template): position i's embedding e becomes `e + sigma·rms(e)·z`, z ~ N(0, I), so the noise
/// has about `sigma` times the embedding's norm, whatever the model's embedding scale. The ids
/// (and so the cache and positions) are unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingNoise {
    /// One flag per token of the prompt.
    pub mask: Vec<bool>,
    pub sigma: f32,
    pub seed: u64,
}

impl Prompt {
    /// A text prompt.
    pub fn text(ids: Vec<u32>) -> Self {
        Self {
            ids,
            audio: None,
            noise: None,
        }
    }

    /// This prompt with `noise` on its embeddings (its mask must cover every token).
    pub fn with_noise(mut self, noise: EmbeddingNoise) -> Result<Self> {
        if noise.mask.len() != self.ids.len() {
            return Err(ModelError::Shape(format!(
                "the noise mask has {} flags for a prompt of {} tokens",
                noise.mask.len(),
                self.ids.len()
            )));
        }
        if !(noise.sigma.is_finite() && noise.sigma >= 0.0) {
            return Err(ModelError::Invalid(format!(
                "embedding noise sigma must be finite and ≥ 0, got {}",
                noise.sigma
            )));
        }
        self.noise = Some(noise);
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Bytes that identify this input (ids and audio features), for cache keys.
    pub fn fingerprint(&self, sink: &mut impl FnMut(&[u8])) -> Result<()> {
        sink(&(self.ids.len() as u64).to_le_bytes());
        for t in &self.ids {
            sink(&t.to_le_bytes());
        }
        for clip in self.audio.iter().flat_map(|a| &a.clips) {
            let values: Vec<f32> = clip.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            sink(&(values.len() as u64).to_le_bytes());
            for v in values {
                sink(&v.to_le_bytes());
            }
        }
        if let Some(n) = &self.noise {
            sink(b"noise");
            sink(&n.sigma.to_le_bytes());
            sink(&n.seed.to_le_bytes());
            sink(&n.mask.iter().map(|&m| u8::from(m)).collect::<Vec<u8>>());
        }
        Ok(())
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Self::text(ids)
    }
}

impl AsRef<[u32]> for Prompt {
    fn as_ref(&self) -> &[u32] {
        &self.ids
    }
}

/// Left-pad `prompts` with `pad_token`, make a cache, and run the prefill (audio merged in).
pub fn prefill(
    decoder: &Decoder,
    prompts: &[Prompt],
    pad_token: u32,
    plan: &InterventionPlan,
    logits: Logits,
) -> Result<(ForwardOutput, KvCache)> {
    let _span = tracing::info_span!("prefill", rows = prompts.len()).entered();
    if let Some(i) = prompts.iter().position(Prompt::is_empty) {
        return Err(ModelError::Invalid(format!("prompt {i} has no tokens")));
    }
    let width = prompts.iter().map(Prompt::len).max().unwrap_or(0);
    if width == 0 {
        return Err(ModelError::Invalid("no prompts to run".into()));
    }
    let context = decoder.config().context_length;
    if width > context {
        return Err(ModelError::PromptTooLong {
            n_tokens: width,
            context,
        });
    }
    let b = prompts.len();
    let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let mut ids = Vec::with_capacity(b * width);
    for (p, &n_pad) in prompts.iter().zip(&pad) {
        ids.extend(std::iter::repeat_n(pad_token, n_pad));
        ids.extend_from_slice(&p.ids);
    }
    let ids = Tensor::from_vec(ids, (b, width), decoder.device())?;
    let mut cache = decoder.new_cache(pad.clone());
    let audio: Vec<&AudioRows> = prompts.iter().filter_map(|p| p.audio.as_ref()).collect();
    let noisy = prompts.iter().any(|p| p.noise.is_some());
    let out = match audio.first() {
        None if !noisy => decoder.forward(&ids, &mut cache, plan, logits)?,
        None => {
            let embeds = add_noise(decoder.embed(&ids)?, prompts, &pad)?;
            decoder.forward_embeds(embeds, &mut cache, plan, logits)?
        }
        Some(first) => {
            if audio.iter().any(|a| a.token_id != first.token_id) {
                return Err(ModelError::Invalid(
                    "prompts in one batch use different audio token ids".into(),
                ));
            }
            if pad_token == first.token_id {
                return Err(ModelError::Invalid(format!(
                    "the pad token is the audio token ({pad_token}); padding would take audio rows"
                )));
            }
            let rows: Vec<&Tensor> = audio.iter().flat_map(|a| &a.clips).collect();
            let rows = Tensor::cat(&rows, 0)?;
            let embeds = merge_audio(decoder, &ids, first.token_id, &rows)?;
            let embeds = if noisy {
                add_noise(embeds, prompts, &pad)?
            } else {
                embeds
            };
            decoder.forward_embeds(embeds, &mut cache, plan, logits)?
        }
    };
    Ok((out, cache))
}

/// Add each prompt's [`EmbeddingNoise`] to its rows of `embeds` `[batch, width, hidden]`
/// (left-padded by `pad`).
fn add_noise(embeds: Tensor, prompts: &[Prompt], pad: &[usize]) -> Result<Tensor> {
    let (b, width, hidden) = embeds.dims3()?;
    let dtype = embeds.dtype();
    let mut data: Vec<f32> = embeds.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for (row, (p, &n_pad)) in prompts.iter().zip(pad).enumerate() {
        let Some(noise) = &p.noise else { continue };
        for (i, _) in noise.mask.iter().enumerate().filter(|(_, &m)| m) {
            let at = (row * width + n_pad + i) * hidden;
            let e = &mut data[at..at + hidden];
            let rms = (e.iter().map(|x| x * x).sum::<f32>() / hidden as f32).sqrt();
            // One stream per (seed, position): a token's noise does not depend on the batch.
            let seed = noise.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let noisy = earguard_audio::noise::add_gaussian(e, noise.sigma * rms, seed);
            e.copy_from_slice(&noisy);
        }
    }
    Ok(Tensor::from_vec(data, (b, width, hidden), embeds.device())?.to_dtype(dtype)?)
}
