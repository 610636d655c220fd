//! Qwen2-Audio (HF `Qwen2AudioForConditionalGeneration`): Whisper encoder → stride-2 average
//! pool → final LayerNorm → linear projector → the Qwen2 decoder.
//!
//! How a prompt with audio is built (transformers' `Qwen2AudioProcessor` and model):
//!
//! 1. The chat template renders each audio part as `Audio {n}: <|audio_bos|><|AUDIO|><|audio_eos|>\n`.
//! 2. Each `<|AUDIO|>` is expanded to as many copies as the audio yields tokens:
//!    with `L` valid mel frames, `((L - 1) / 2 + 1 - 2) / 2 + 1` ([`n_audio_tokens`]; 308 for
//!    1234 frames, 750 for a full 30 s window) — done on token ids by `expand_audio_ids`.
//! 3. The audio (log-mel `[n_mels, 3000]`, padded to 30 s) is encoded: the Whisper blocks with
//!    padded keys masked, `avg_pool1d(2, 2)` over time, the tower's final `layer_norm`, the
//!    projector on every pooled row, and only the first `n_audio_tokens` rows are kept
//!    ([`AudioTower::encode`]).
//! 4. The k-th `<|AUDIO|>` position of the token embeddings is replaced by the k-th kept row
//!    ([`merge_audio`]); the decoder then runs on those embeddings as usual.
//!
//! `crate::audio` caches step 3 per clip; `crate::prompt` does steps 2 and 4 for a batch.
//!
//! Checkpoint names (the original Qwen2-Audio layout, which transformers also writes back):
//! `audio_tower.*`, `multi_modal_projector.linear.*`, `language_model.model.*`,
//! `language_model.lm_head.weight`.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::ChatTemplate;
use crate::config::{DecoderConfig, HfConfig};
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::weights::{Linear, WeightStore};
use crate::whisper::{conv_output_len, WhisperEncoder, WhisperEncoderConfig};

/// The placeholder the processor expands, one per audio token.
pub const AUDIO_TOKEN: &str = "<|AUDIO|>";
pub const AUDIO_BOS_TOKEN: &str = "<|audio_bos|>";
pub const AUDIO_EOS_TOKEN: &str = "<|audio_eos|>";

/// `audio_token_index` when the config does not say (transformers' default; the real models').
pub const DEFAULT_AUDIO_TOKEN_INDEX: u32 = 151646;

/// Weight-name prefixes in a Qwen2-Audio checkpoint.
pub const AUDIO_TOWER_PREFIX: &str = "audio_tower.";
pub const PROJECTOR: &str = "multi_modal_projector.linear";
pub const LANGUAGE_MODEL_PREFIX: &str = "language_model.";

/// Qwen2-Audio's chat template as transformers' `Qwen2AudioProcessor.default_chat_template`
/// defines it (used when a checkpoint directory ships no template that handles audio).
pub const DEFAULT_CHAT_TEMPLATE: &str = concat!(
    "{% set audio_count = namespace(value=0) %}",
    "{% for message in messages %}",
    "{% if loop.first and message['role'] != 'system' %}",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "{% endif %}",
    "<|im_start|>{{ message['role'] }}\n",
    "{% if message['content'] is string %}",
    "{{ message['content'] }}<|im_end|>\n",
    "{% else %}",
    "{% for content in message['content'] %}",
    "{% if 'audio' in content or 'audio_url' in content %}",
    "{% set audio_count.value = audio_count.value + 1 %}",
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
    "{% elif 'text' in content %}",
    "{{ content['text'] }}",
    "{% endif %}",
    "{% endfor %}",
    "<|im_end|>\n",
    "{% endif %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "<|im_start|>assistant\n",
    "{% endif %}",
);

/// A parsed Qwen2-Audio `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Qwen2AudioConfig {
    pub audio: WhisperEncoderConfig,
    pub text: DecoderConfig,
    pub audio_token_index: u32,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: String,
    #[serde(default)]
    audio_config: Option<Map<String, Value>>,
    #[serde(default)]
    text_config: Option<Map<String, Value>>,
    /// transformers maps `audio_token_id` onto `audio_token_index`.
    #[serde(default, alias = "audio_token_id")]
    audio_token_index: Option<u32>,
}

/// Defaults of transformers' `Qwen2AudioEncoderConfig` for fields a config may omit.
fn audio_defaults() -> Value {
    serde_json::json!({
        "num_mel_bins": 128,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "d_model": 1280,
        "activation_function": "gelu",
        "scale_embedding": false,
        "max_source_positions": 1500,
    })
}

/// Defaults of transformers' `Qwen2Config` for fields `text_config` may omit (the published
/// Qwen2-Audio-7B configs list only a few: vocab_size, intermediate_size, rms_norm_eps, …).
fn text_defaults() -> Value {
    serde_json::json!({
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 22016,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": false,
    })
}

/// `given` with every key of `defaults` it lacks filled in.
fn with_defaults(given: Option<Map<String, Value>>, defaults: Value) -> Map<String, Value> {
    let mut out = given.unwrap_or_default();
    if let Value::Object(d) = defaults {
        for (k, v) in d {
            out.entry(k).or_insert(v);
        }
    }
    out
}

impl Qwen2AudioConfig {
    /// Does this `config.json` text describe a Qwen2-Audio model? (Cheap check; malformed JSON
    /// answers false and is reported by whichever parser runs next.)
    pub fn is_qwen2_audio(config_json: &str) -> bool {
        #[derive(Deserialize)]
        struct Probe {
            model_type: Option<String>,
        }
        serde_json::from_str::<Probe>(config_json)
            .ok()
            .and_then(|p| p.model_type)
            .is_some_and(|t| t == "qwen2_audio")
    }

    /// Parse a Qwen2-Audio `config.json`; errors name `path`.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::file(path, format!("malformed config.json: {e}")))?;
        Self::from_raw(raw).map_err(|e| match e {
            ModelError::File { .. } => e,
            other => ModelError::file(path, other.to_string()),
        })
    }

    fn from_raw(raw: RawConfig) -> Result<Self> {
        if raw.model_type != "qwen2_audio" {
            return Err(ModelError::Invalid(format!(
                "model_type is '{}', not 'qwen2_audio'",
                raw.model_type
            )));
        }
        let audio = Value::Object(with_defaults(raw.audio_config, audio_defaults()));
        let audio: WhisperEncoderConfig = serde_json::from_value(audio)
            .map_err(|e| ModelError::Invalid(format!("audio_config: {e}")))?;
        audio.validate()?;
        let mut text = with_defaults(raw.text_config, text_defaults());
        // Qwen2Config: an explicit null means "as many KV heads as attention heads".
        if text.get("num_key_value_heads").is_some_and(Value::is_null) {
            let heads = text
                .get("num_attention_heads")
                .cloned()
                .unwrap_or(Value::Null);
            text.insert("num_key_value_heads".into(), heads);
        }
        let text: HfConfig = serde_json::from_value(Value::Object(text))
            .map_err(|e| ModelError::Invalid(format!("text_config: {e}")))?;
        let text = text.into_config()?;
        let audio_token_index = raw.audio_token_index.unwrap_or(DEFAULT_AUDIO_TOKEN_INDEX);
        if audio_token_index as usize >= text.vocab_size {
            return Err(ModelError::Invalid(format!(
                "audio_token_index {audio_token_index} is outside the vocabulary of {} tokens",
                text.vocab_size
            )));
        }
        Ok(Self {
            audio,
            text,
            audio_token_index,
        })
    }
}

/// Number of `<|AUDIO|>` tokens (and kept audio feature rows) for `valid_frames` mel frames:
/// `((L - 1) / 2 + 1 - 2) / 2 + 1`, with Python's floor division (0 for L <= 2).
pub fn n_audio_tokens(valid_frames: usize) -> usize {
    let feat_len = conv_output_len(valid_frames);
    if feat_len < 2 {
        0
    } else {
        (feat_len - 2) / 2 + 1
    }
}

/// What `inspect` shows about an audio tower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudioTowerInfo {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_mels: usize,
}

/// The audio half of Qwen2-Audio: encoder, pooling and projector.
#[derive(Debug, Clone)]
pub struct AudioTower {
    pub encoder: WhisperEncoder,
    pub projector: Linear,
    /// Token id of `<|AUDIO|>`.
    pub audio_token_id: u32,
    hidden_size: usize,
}

impl AudioTower {
    /// Load `audio_tower.*` and `multi_modal_projector.linear.*`.
    pub fn load(cfg: &Qwen2AudioConfig, store: &WeightStore) -> Result<Self> {
        let encoder = WhisperEncoder::load(cfg.audio.clone(), store, AUDIO_TOWER_PREFIX)?;
        let projector = store.linear(PROJECTOR, cfg.text.hidden_size, cfg.audio.d_model, true)?;
        Ok(Self {
            encoder,
            projector,
            audio_token_id: cfg.audio_token_index,
            hidden_size: cfg.text.hidden_size,
        })
    }

    pub fn info(&self) -> AudioTowerInfo {
        let c = self.encoder.config();
        AudioTowerInfo {
            n_layers: c.encoder_layers,
            d_model: c.d_model,
            n_mels: c.num_mel_bins,
        }
    }

    /// Mel bins the encoder expects (128 for Qwen2-Audio).
    pub fn n_mels(&self) -> usize {
        self.encoder.config().num_mel_bins
    }

    /// Mel frames of one input window (3000).
    pub fn n_frames(&self) -> usize {
        self.encoder.config().n_frames()
    }

    /// The tower's output `[batch, T/2, d_model]` (HF `audio_tower(...).last_hidden_state`):
    /// encoder blocks with padded keys masked, stride-2 average pool, final layer norm.
    /// `features` is `[batch, n_mels, 3000]` (or `[n_mels, 3000]` for one clip) and
    /// `valid_frames` has one count per clip.
    pub fn encode_pooled(&self, features: &Tensor, valid_frames: &[usize]) -> Result<Tensor> {
        let _span = tracing::info_span!("encode_audio", clips = valid_frames.len()).entered();
        let features = match features.rank() {
            2 => features.unsqueeze(0)?,
            _ => features.clone(),
        };
        let want = self.n_frames();
        if features.rank() == 3 && features.dim(2)? != want {
            return Err(ModelError::Shape(format!(
                "Qwen2-Audio expects log-mel features padded to {want} frames (30 s), got {}",
                features.dim(2)?
            )));
        }
        if let Some(&bad) = valid_frames.iter().find(|&&v| v > want) {
            return Err(ModelError::Invalid(format!(
                "{bad} valid mel frames is more than one {want}-frame (30 s) window; split the audio"
            )));
        }
        let h = self.encoder.forward_hidden(&features, Some(valid_frames))?;
        let (b, t, d) = h.dims3()?;
        let pooled = h
            .narrow(1, 0, t / 2 * 2)?
            .reshape((b, t / 2, 2, d))?
            .mean(2)?;
        self.encoder.final_norm(&pooled)
    }

    /// Projected audio features `[sum of n_audio_tokens, hidden]` for a batch of clips, rows in
    /// clip order: exactly the rows that replace the `<|AUDIO|>` tokens, in order.
    pub fn encode_batch(&self, features: &Tensor, valid_frames: &[usize]) -> Result<Tensor> {
        let pooled = self.encode_pooled(features, valid_frames)?;
        let projected = self.projector.forward(&pooled)?;
        let mut rows = Vec::with_capacity(valid_frames.len());
        for (i, &v) in valid_frames.iter().enumerate() {
            let n = n_audio_tokens(v);
            if n > 0 {
                rows.push(projected.get(i)?.narrow(0, 0, n)?);
            }
        }
        if rows.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.hidden_size),
                DType::F32,
                projected.device(),
            )?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Projected features `[n_audio_tokens(valid_frames), hidden]` of one clip, log-mel
    /// `[1, n_mels, 3000]` or `[n_mels, 3000]`.
    pub fn encode(&self, features: &Tensor, valid_frames: usize) -> Result<Tensor> {
        if features.rank() == 3 && features.dim(0)? != 1 {
            return Err(ModelError::Shape(format!(
                "encode takes one clip, got a batch of {}; use encode_batch",
                features.dim(0)?
            )));
        }
        self.encode_batch(features, &[valid_frames])
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

/// Token ids of the audio placeholder and, for Qwen2-Audio, the markers around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioTokenIds {
    pub audio: u32,
    /// `<|audio_bos|>`, `<|audio_eos|>` (None: a placeholder is expanded unwrapped).
    pub wrap: Option<(u32, u32)>,
}

/// Expand each `<|AUDIO|>` id of a tokenized prompt to `counts[i]` copies, as
/// `Qwen2AudioProcessor` does on the rendered text: a placeholder that has neither
/// `<|audio_bos|>` right before it nor `<|audio_eos|>` right after it is also wrapped in them.
/// `counts` has one entry per placeholder, in order (see [`n_audio_tokens`]).
pub(crate) fn expand_audio_ids(
    ids: &[u32],
    tokens: AudioTokenIds,
    counts: &[usize],
) -> Result<Vec<u32>> {
    let found = ids.iter().filter(|&&t| t == tokens.audio).count();
    if found != counts.len() {
        return Err(ModelError::Invalid(format!(
            "the prompt has {found} {AUDIO_TOKEN} placeholders but {} audio clips were given",
            counts.len()
        )));
    }
    let mut out = Vec::with_capacity(ids.len() + counts.iter().sum::<usize>());
    let mut next = counts.iter();
    for (i, &t) in ids.iter().enumerate() {
        if t != tokens.audio {
            out.push(t);
            continue;
        }
        let count = next.next().copied().unwrap_or(0);
        let wrap = tokens.wrap.filter(|&(bos, eos)| {
            let has_bos = i > 0 && ids[i - 1] == bos;
            let has_eos = ids.get(i + 1) == Some(&eos);
            !has_bos && !has_eos
        });
        if let Some((bos, _)) = wrap {
            out.push(bos);
        }
        out.extend(std::iter::repeat_n(tokens.audio, count));
        if let Some((_, eos)) = wrap {
            out.push(eos);
        }
    }
    Ok(out)
}

/// The chat template of a Qwen2-Audio directory, found the way `Qwen2AudioProcessor` finds
/// its own: the processor's template file (`chat_template.json` with a `chat_template` key, as
/// transformers 4.x saves it, or `chat_template.jinja`), else the tokenizer's template
/// (`tokenizer_template`, from tokenizer_config.json) when it renders audio parts (mentions
/// `<|AUDIO|>`), else transformers' default ([`DEFAULT_CHAT_TEMPLATE`]). A text-only ChatML
/// template in tokenizer_config.json is therefore not used for the audio model.
pub fn chat_template(dir: &Path, tokenizer_template: Option<ChatTemplate>) -> Result<ChatTemplate> {
    let (bos, eos) = tokenizer_template
        .as_ref()
        .map(|t| (t.bos_token().to_string(), t.eos_token().to_string()))
        .unwrap_or_default();
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let text = earguard_data::read_small_text(&json)
            .map_err(|e| ModelError::file(&json, format!("cannot read: {e}")))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(&json, format!("invalid JSON: {e}")))?;
        let source = v
            .get("chat_template")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::file(&json, "has no chat_template string"))?;
        return ChatTemplate::new(source, &bos, &eos).map_err(|e| ModelError::file(&json, e));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let source = earguard_data::read_small_text(&jinja)
            .map_err(|e| ModelError::file(&jinja, format!("cannot read: {e}")))?;
        return ChatTemplate::new(&source, &bos, &eos).map_err(|e| ModelError::file(&jinja, e));
    }
    match tokenizer_template {
        Some(t) if t.source().contains(AUDIO_TOKEN) => Ok(t),
        _ => ChatTemplate::new(DEFAULT_CHAT_TEMPLATE, &bos, &eos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of Qwen2-Audio-7B-Instruct's published config.json, with its structure (the
    /// text_config lists only what differs from Qwen2Config's defaults).
    const REAL_CONFIG: &str = r#"{
      "architectures": ["Qwen2AudioForConditionalGeneration"],
      "audio_config": {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": 128,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "d_model": 1280,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_function": "gelu",
        "activation_dropout": 0.0,
        "scale_embedding": false,
        "initializer_range": 0.02,
        "max_source_positions": 1500
      },
      "audio_token_index": 151646,
      "ignore_index": -100,
      "model_type": "qwen2_audio",
      "text_config": {
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "intermediate_size": 11008,
        "max_position_embeddings": 8192,
        "model_type": "qwen2",
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000,
        "sliding_window": 32768,
        "torch_dtype": "bfloat16",
        "use_mrope": false,
        "vocab_size": 156032
      },
      "torch_dtype": "bfloat16",
      "transformers_version": "4.45.0.dev0",
      "vocab_size": 156032
    }"#;

    #[test]
    fn real_qwen2_audio_7b_config_parses_with_hf_defaults() {
        assert!(Qwen2AudioConfig::is_qwen2_audio(REAL_CONFIG));
        let cfg = Qwen2AudioConfig::from_json(REAL_CONFIG, Path::new("config.json")).unwrap();
        assert_eq!(cfg.audio_token_index, 151646);
        let a = &cfg.audio;
        assert_eq!(
            (
                a.d_model,
                a.encoder_layers,
                a.encoder_attention_heads,
                a.encoder_ffn_dim
            ),
            (1280, 32, 20, 5120)
        );
        assert_eq!(
            (a.num_mel_bins, a.max_source_positions, a.n_frames()),
            (128, 1500, 3000)
        );
        assert_eq!(a.activation_function, "gelu");
        let t = &cfg.text;
        assert_eq!(t.architecture, crate::config::Architecture::Qwen2);
        assert_eq!(t.vocab_size, 156032);
        assert_eq!((t.hidden_size, t.intermediate_size), (4096, 11008));
        assert_eq!(
            (t.n_layers, t.n_heads, t.n_kv_heads, t.head_dim),
            (32, 32, 32, 128)
        );
        assert_eq!(t.rope_theta, 10000.0);
        assert_eq!(t.rms_norm_eps, 1e-5);
        assert_eq!(t.context_length, 8192);
        assert!(!t.tie_embeddings);
    }

    #[test]
    fn audio_config_defaults_and_aliases() {
        let json = r#"{"model_type":"qwen2_audio","audio_token_id":5,
            "text_config":{"vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":null}}"#;
        let cfg = Qwen2AudioConfig::from_json(json, Path::new("c.json")).unwrap();
        assert_eq!(cfg.audio_token_index, 5);
        assert_eq!(cfg.audio.d_model, 1280);
        assert_eq!(cfg.text.n_kv_heads, 2);
        let bad = json.replace("\"audio_token_id\":5", "\"audio_token_id\":50");
        let err = Qwen2AudioConfig::from_json(&bad, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.json") && err.contains("outside the vocabulary"),
            "{err}"
        );
        let err = Qwen2AudioConfig::from_json("{", Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.json") && err.contains("malformed"), "{err}");
        assert!(!Qwen2AudioConfig::is_qwen2_audio(
            r#"{"model_type":"qwen2"}"#
        ));
    }

    #[test]
    fn token_counts_match_the_processor() {
        assert_eq!(n_audio_tokens(1234), 308);
        assert_eq!(n_audio_tokens(3000), 750);
        assert_eq!(n_audio_tokens(4), 1);
        assert_eq!(n_audio_tokens(3), 1);
        assert_eq!(n_audio_tokens(2), 0);
        assert_eq!(n_audio_tokens(0), 0);
    }

    #[test]
    fn placeholders_expand_like_the_processor() {
        let ids = AudioTokenIds {
            audio: 9,
            wrap: Some((7, 8)),
        };
        let e = expand_audio_ids(&[1, 7, 9, 8, 2, 9], ids, &[3, 1]).unwrap();
        assert_eq!(e, vec![1, 7, 9, 9, 9, 8, 2, 7, 9, 8]);
        assert!(expand_audio_ids(&[1, 2], ids, &[3]).is_err());
    }
}
