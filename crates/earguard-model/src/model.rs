//! A loaded model and its input stage: render a conversation with the chat template, tokenize
//! it, and attach its audio clips' encodings (from the run's [`AudioCache`]).
//!
//! Dependency order inside this crate, one way: content (message content, spans) → tokenizer →
//! chat (templates); weights / config → decoder, whisper → qwen2_audio → audio (encoded-audio
//! cache) → prompt (ids + encoded audio, prefill) → model (this file) → loader (resolves paths,
//! builds a `Model`); score (from prefill logits) and generate (sampling) sit on prompt.

use std::path::PathBuf;

use serde::Serialize;

use crate::audio::{AudioCache, AudioFrontEnd};
use crate::chat::{ChatMessage, ChatTemplate, ContentSpecials};
use crate::content::{spans_text, AudioRef, Content, Part, Span};
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::prompt::{AudioRows, Prompt};
use crate::qwen2_audio::{
    expand_audio_ids, AudioTokenIds, AudioTowerInfo, AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN,
};
use crate::speech::SpeechInfo;
use crate::tokenizer::Tokenizer;

/// What `earguard inspect` reports, and what artifacts record to tie themselves to a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub format: &'static str,
    pub architecture: &'static str,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub tie_embeddings: bool,
    pub quantization: String,
    pub chat_template: bool,
    /// sha256 over the checkpoint's headers (GGUF header / config + safetensors headers):
    /// cheap to compute, and changes whenever the weights' layout or metadata does.
    pub identity: String,
    /// The audio encoder of an audio-language model (Qwen2-Audio); absent for text models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_tower: Option<AudioTowerInfo>,
    /// What a speech model (a text LLM with a speech head) is built from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speech: Option<SpeechInfo>,
    /// The sha256 of a LoRA adapter applied on top of the checkpoint (`--adapter`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
}

impl ModelInfo {
    /// What a run's outputs depend on: the checkpoint's identity, plus the adapter's when one
    /// is applied. Runs, captures and calibrations record this; a steering vector fitted on
    /// the checkpoint alone still fits it with an adapter on top.
    pub fn run_identity(&self) -> String {
        match &self.adapter {
            None => self.identity.clone(),
            Some(sha) => format!("{}{ADAPTER_TAG}{sha}", self.identity),
        }
    }

    /// The checkpoint's part of a [`run_identity`](Self::run_identity) (the adapter's, if any,
    /// left off), and whether an adapter was on it.
    pub fn split_run_identity(run_identity: &str) -> (&str, bool) {
        match run_identity.split_once(ADAPTER_TAG) {
            Some((checkpoint, _)) => (checkpoint, true),
            None => (run_identity, false),
        }
    }
}

/// What joins a checkpoint's identity and its adapter's in a run identity (and, in a model's
/// display name, its name and the adapter's directory).
pub const ADAPTER_TAG: &str = "+lora:";

pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub info: ModelInfo,
    /// The audio front end of an audio-language model (Qwen2-Audio's tower, or a speech head
    /// on a text LLM); `decoder` is its language model, usable on text alone.
    pub audio: Option<AudioFrontEnd>,
}

impl Model {
    /// Render a conversation with the model's chat template, ending in the assistant prompt.
    /// Models without a template get the bare user text (with a system line if given).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, true),
            None => Ok(spans_text(&self.render_spans(messages)?)),
        }
    }

    /// [`render_chat`](Self::render_chat), split into the template's markup and the
    /// messages' content (see [`ChatTemplate::render_spans`]).
    pub fn render_spans(&self, messages: &[ChatMessage]) -> Result<Vec<Span>> {
        match &self.chat_template {
            Some(t) => t.render_spans(messages, true),
            None => {
                let mut spans = Vec::new();
                for text in messages.iter().filter_map(|m| m.content.as_text()) {
                    if !spans.is_empty() {
                        spans.push(Span::Markup("\n".into()));
                    }
                    spans.push(Span::Content(text.to_owned()));
                }
                Ok(spans)
            }
        }
    }

    /// Token ids of a chat prompt (system optional, then one user turn), content literal.
    pub fn encode_chat(&self, system: Option<&str>, user: &str) -> Result<Vec<u32>> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(user));
        self.prompt_ids(&messages, ContentSpecials::Literal, &AudioCache::new())
    }

    /// Token ids of a rendered conversation, special tokens in content as `specials` says.
    fn encode_spans(&self, spans: &[Span], specials: ContentSpecials) -> Result<Vec<u32>> {
        match specials {
            ContentSpecials::Literal => self.tokenizer.encode_spans(spans, true),
            ContentSpecials::Raw => self.tokenizer.encode(&spans_text(spans), true),
        }
    }

    /// Refuse a prompt longer than the model's context.
    fn check_length(&self, ids: &[u32]) -> Result<()> {
        let context = self.decoder.config().context_length;
        if ids.len() > context {
            return Err(ModelError::PromptTooLong {
                n_tokens: ids.len(),
                context,
            });
        }
        Ok(())
    }

    /// The model input for a conversation: rendered with the chat template and tokenized,
    /// special-token strings in message content as `specials` says (literal text unless
    /// [`ContentSpecials::Raw`]); each audio part's clip encoded through `audio` (once per run:
    /// see [`AudioCache`]) and its placeholder expanded to as many `<|AUDIO|>` tokens as the
    /// clip has rows. Refused if longer than the model's context.
    pub fn encode_prompt(
        &self,
        messages: &[ChatMessage],
        specials: ContentSpecials,
        audio: &AudioCache,
    ) -> Result<Prompt> {
        let clips = clips(messages);
        let tower = self.tower_for(&clips)?;
        let ids = self.encode_spans(&self.prompt_spans(messages, tower)?, specials)?;
        let Some(tower) = tower else {
            self.check_length(&ids)?;
            return Ok(Prompt::text(ids));
        };
        let encoded = clips
            .iter()
            .map(|c| audio.rows(&self.info.identity, tower, self.decoder.device(), c))
            .collect::<Result<Vec<_>>>()?;
        let counts = encoded
            .iter()
            .map(|t| t.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tokens = self.audio_token_ids(tower)?;
        let ids = expand_audio_ids(&ids, tokens, &counts)?;
        self.check_length(&ids)?;
        Ok(Prompt {
            ids,
            audio: Some(AudioRows {
                token_id: tokens.audio,
                clips: encoded,
            }),
            noise: None,
        })
    }

    /// For a text conversation, one flag per token of its [`encode_prompt`](Self::encode_prompt)
    /// ids (literal content): whether the token carries text of a user message (not the
    /// template, not a system or assistant message). What a corruption of the request alone
    /// (SafeCoDe's text-mode contrast) perturbs.
    pub fn user_content_mask(&self, messages: &[ChatMessage]) -> Result<Vec<bool>> {
        if !clips(messages).is_empty() {
            return Err(ModelError::Invalid(
                "a user-content mask is for text prompts; audio prompts are corrupted on the \
                 waveform"
                    .into(),
            ));
        }
        let mut user: Vec<String> = Vec::new();
        for m in messages.iter().filter(|m| m.role == "user") {
            let mut content = m.content.clone();
            user.extend(content.texts_mut().into_iter().map(|t| t.clone()));
        }
        let spans = self.render_spans(messages)?;
        let (_, mask) = self
            .tokenizer
            .encode_spans_marked(&spans, true, |t| user.iter().any(|u| u == t))?;
        Ok(mask)
    }

    /// The token ids [`encode_prompt`](Self::encode_prompt) would give, checked the same way
    /// (template, audio files readable and short enough, context length), without running the
    /// audio tower: what a run checks up front.
    pub fn prompt_ids(
        &self,
        messages: &[ChatMessage],
        specials: ContentSpecials,
        audio: &AudioCache,
    ) -> Result<Vec<u32>> {
        let clips = clips(messages);
        let tower = self.tower_for(&clips)?;
        let ids = self.encode_spans(&self.prompt_spans(messages, tower)?, specials)?;
        let ids = match tower {
            None => ids,
            Some(tower) => {
                let device = self.decoder.device();
                let counts = clips
                    .iter()
                    .map(|c| audio.n_tokens(&self.info.identity, tower, device, c))
                    .collect::<Result<Vec<_>>>()?;
                expand_audio_ids(&ids, self.audio_token_ids(tower)?, &counts)?
            }
        };
        self.check_length(&ids)?;
        Ok(ids)
    }

    /// The audio tower that encodes `clips` (None when there are none); a text model refuses
    /// audio (before its template could stumble on audio parts).
    fn tower_for(&self, clips: &[&AudioRef]) -> Result<Option<&AudioFrontEnd>> {
        match (&self.audio, clips.is_empty()) {
            (_, true) => Ok(None),
            (Some(tower), false) => Ok(Some(tower)),
            (None, false) => Err(ModelError::Invalid(format!(
                "{} is a text model: audio inputs need an audio-language model (Qwen2-Audio, \
                 or a speech model made by `earguard speech build`); use text-only mode",
                self.info.name
            ))),
        }
    }

    fn audio_token_ids(&self, tower: &AudioFrontEnd) -> Result<AudioTokenIds> {
        let token = |text: &str| {
            self.tokenizer
                .token_to_id(text)
                .ok_or_else(|| ModelError::Invalid(format!("the vocabulary has no {text} token")))
        };
        Ok(match tower {
            AudioFrontEnd::Qwen2Audio(t) => AudioTokenIds {
                audio: t.audio_token_id,
                wrap: Some((token(AUDIO_BOS_TOKEN)?, token(AUDIO_EOS_TOKEN)?)),
            },
            AudioFrontEnd::Speech(t) => AudioTokenIds {
                audio: t.placeholder.0,
                wrap: None,
            },
        })
    }

    /// The rendered prompt's spans. A Qwen2-Audio template renders audio parts itself; for a
    /// speech model (a text LLM's template, which knows no audio parts) each message's parts
    /// are joined into one text, one line each, with every clip at its place as the
    /// placeholder token (markup, so it is the special token and no content can forge it).
    fn prompt_spans(
        &self,
        messages: &[ChatMessage],
        tower: Option<&AudioFrontEnd>,
    ) -> Result<Vec<Span>> {
        let Some(AudioFrontEnd::Speech(speech)) = tower else {
            return self.render_spans(messages);
        };
        // A private-use character no message contains marks where each clip goes.
        let texts: Vec<&str> = messages
            .iter()
            .flat_map(|m| match &m.content {
                Content::Text(t) => vec![t.as_str()],
                Content::Parts(parts) => parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) => Some(t.as_str()),
                        Part::Audio(_) => None,
                    })
                    .collect(),
            })
            .collect();
        let mark = ('\u{E000}'..='\u{F8FF}')
            .find(|c| texts.iter().all(|t| !t.contains(*c)))
            .ok_or_else(|| {
                ModelError::Invalid("the messages use every private-use character".into())
            })?;
        let flat: Vec<ChatMessage> = messages
            .iter()
            .map(|m| match &m.content {
                Content::Text(_) => m.clone(),
                Content::Parts(parts) => {
                    let lines: Vec<String> = parts
                        .iter()
                        .map(|p| match p {
                            Part::Text(t) => t.clone(),
                            Part::Audio(_) => format!("{mark}{mark}"),
                        })
                        .collect();
                    ChatMessage::new(&m.role, Content::Text(lines.join("\n")))
                }
            })
            .collect();
        let mut out = Vec::new();
        for span in self.render_spans(&flat)? {
            let Span::Content(text) = span else {
                out.push(span);
                continue;
            };
            for (i, piece) in text.split(&format!("{mark}{mark}")).enumerate() {
                if i > 0 {
                    out.push(Span::Markup(speech.placeholder.1.clone()));
                }
                if !piece.is_empty() {
                    out.push(Span::Content(piece.to_owned()));
                }
            }
        }
        Ok(out)
    }
}

/// The audio clips of a conversation, in order.
fn clips(messages: &[ChatMessage]) -> Vec<&AudioRef> {
    messages.iter().flat_map(|m| m.content.audio()).collect()
}
