//! One model input, text or text + audio, and the batched prefill every consumer shares
//! (generation, activation capture, condition probes).

use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::chat::{ChatMessage, ContentSpecials};
use crate::decoder::{Decoder, ForwardOutput, KvCache, Logits};
use crate::error::{ModelError, Result};
use crate::hooks::InterventionPlan;
use crate::loader::Model;
use crate::qwen2_audio::{
    expand_audio_ids, n_audio_tokens, AudioTokenIds, AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, AUDIO_TOKEN,
};

/// Projected audio features that replace a prompt's `<|AUDIO|>` tokens, in order.
#[derive(Debug, Clone)]
pub struct AudioRows {
    /// Token id of `<|AUDIO|>`.
    pub token_id: u32,
    /// `[n, hidden]`, n = the number of `token_id` tokens in the prompt.
    pub rows: Tensor,
}

/// Token ids, plus audio rows for an audio-language model's spoken input.
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
        if let Some(a) = &self.audio {
            let values: Vec<f32> = a.rows.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
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

/// Decoder input embeddings `[batch, seq, hidden]` for ids `[batch, seq]`, with the k-th
/// `token_id` position (row-major) replaced by row k of `audio` `[n, hidden]`.
pub fn merge_audio(
    decoder: &Decoder,
    ids: &Tensor,
    token_id: u32,
    audio: &Tensor,
) -> Result<Tensor> {
    let (b, s) = ids.dims2().map_err(|_| {
        ModelError::Shape(format!(
            "token ids must be [batch, seq], got {:?}",
            ids.dims()
        ))
    })?;
    let (n, h) = audio.dims2().map_err(|_| {
        ModelError::Shape(format!(
            "audio features must be [n, hidden], got {:?}",
            audio.dims()
        ))
    })?;
    let hidden = decoder.config().hidden_size;
    if h != hidden {
        return Err(ModelError::Shape(format!(
            "audio features have width {h}, the decoder's hidden size is {hidden}"
        )));
    }
    let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let n_slots = flat.iter().filter(|&&t| t == token_id).count();
    if n_slots != n {
        return Err(ModelError::Shape(format!(
            "the prompt has {n_slots} {AUDIO_TOKEN} tokens (id {token_id}) but the audio gave {n} \
             feature rows; expand each placeholder to n_audio_tokens(valid_frames) copies"
        )));
    }
    let embeds = decoder.embed(ids)?;
    if n == 0 {
        return Ok(embeds);
    }
    // One gather over [text rows; audio rows].
    let total = b * s;
    let mut next_audio = total as u32;
    let index: Vec<u32> = flat
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == token_id {
                next_audio += 1;
                next_audio - 1
            } else {
                i as u32
            }
        })
        .collect();
    let table = Tensor::cat(
        &[
            &embeds.reshape((total, hidden))?,
            &audio.to_dtype(embeds.dtype())?,
        ],
        0,
    )?;
    let index = Tensor::from_vec(index, total, table.device())?;
    Ok(table.index_select(&index, 0)?.reshape((b, s, hidden))?)
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
            let rows: Vec<&Tensor> = audio.iter().map(|a| &a.rows).collect();
            let rows = Tensor::cat(&rows, 0)?;
            let embeds = merge_audio(decoder, &ids, first.token_id, &rows)?;
            decoder.forward_embeds(embeds, &mut cache, plan, logits)?
        }
    };
    Ok((out, cache))
}

/// The audio files named by a conversation's audio content parts, in order
/// (`{"type": "audio", "audio_url": PATH}`, or `"audio"` as the key, as HF processors accept).
pub fn audio_parts(messages: &[ChatMessage]) -> Vec<String> {
    let mut out = vec![];
    for m in messages {
        let Value::Array(parts) = &m.content else {
            continue;
        };
        for part in parts {
            if part.get("type").and_then(Value::as_str) != Some("audio") {
                continue;
            }
            if let Some(path) = ["audio_url", "audio", "path"]
                .iter()
                .find_map(|k| part.get(*k).and_then(Value::as_str))
            {
                out.push(path.to_string());
            }
        }
    }
    out
}

impl Model {
    /// The model input for a conversation: rendered with the chat template and tokenized,
    /// special-token strings in message content as `specials` says (literal text unless
    /// [`ContentSpecials::Raw`]); for audio content parts, each file decoded (16 kHz mono, at
    /// most one 30 s window), featurised (Whisper log-mel), encoded by the audio tower, and
    /// its placeholder expanded to as many `<|AUDIO|>` tokens as the tower gives rows.
    /// Refused if longer than the model's context.
    pub fn encode_prompt(
        &self,
        messages: &[ChatMessage],
        specials: ContentSpecials,
    ) -> Result<Prompt> {
        let files = audio_parts(messages);
        let tower = match (&self.audio, files.is_empty()) {
            (_, true) => None,
            (Some(tower), false) => Some(tower),
            (None, false) => {
                return Err(ModelError::Invalid(format!(
                    "{} is a text model: audio inputs need an audio-language model \
                     (Qwen2-Audio); use text-only mode",
                    self.info.name
                )))
            }
        };
        let ids = self.encode_spans(&self.render_spans(messages)?, specials)?;
        let Some(tower) = tower else {
            self.check_length(&ids)?;
            return Ok(Prompt::text(ids));
        };
        let mel = earguard_audio::MelExtractor::new(tower.n_mels())?;
        let mut counts = Vec::with_capacity(files.len());
        let mut rows = Vec::with_capacity(files.len());
        for file in &files {
            let audio = earguard_audio::load_audio(Path::new(file), &Default::default())?;
            let features = mel.extract(&audio)?;
            let tensor = Tensor::from_vec(
                features.data,
                (features.n_mels, features.n_frames),
                self.decoder.device(),
            )?;
            let encoded = tower.encode(&tensor, features.valid_frames)?;
            counts.push(n_audio_tokens(features.valid_frames));
            rows.push(encoded);
        }
        let token = |text: &str| {
            self.tokenizer
                .token_to_id(text)
                .ok_or_else(|| ModelError::Invalid(format!("the vocabulary has no {text} token")))
        };
        let tokens = AudioTokenIds {
            audio: tower.audio_token_id,
            bos: token(AUDIO_BOS_TOKEN)?,
            eos: token(AUDIO_EOS_TOKEN)?,
        };
        let ids = expand_audio_ids(&ids, tokens, &counts)?;
        self.check_length(&ids)?;
        Ok(Prompt {
            ids,
            audio: Some(AudioRows {
                token_id: tower.audio_token_id,
                rows: Tensor::cat(&rows, 0)?,
            }),
        })
    }
}
