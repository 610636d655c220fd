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

/// Token ids, plus the encoded clips of an audio-language model's spoken input.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub audio: Option<AudioRows>,
}

impl Prompt {
    /// A text prompt.
    pub fn text(ids: Vec<u32>) -> Self {
        Self { ids, audio: None }
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
    let mut cache = decoder.new_cache(pad);
    let audio: Vec<&AudioRows> = prompts.iter().filter_map(|p| p.audio.as_ref()).collect();
    let out = match audio.first() {
        None => decoder.forward(&ids, &mut cache, plan, logits)?,
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
            decoder.forward_embeds(embeds, &mut cache, plan, logits)?
        }
    };
    Ok((out, cache))
}
