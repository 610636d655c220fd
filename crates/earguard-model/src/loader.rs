//! Resolve a model by short name or path and load decoder, tokenizer and chat template into a
//! [`Model`].
//!
//! Accepted forms: a `.gguf` file; a directory holding `model.gguf` (or exactly one `*.gguf`);
//! an HF directory (`config.json`, `model.safetensors` or `model.safetensors.index.json` with
//! shards, `tokenizer.json`, optional `tokenizer_config.json`); or a short name such as
//! `qwen2.5-coder-1.5b-instruct`, looked up in the models directory (`$EARGUARD_MODELS`, else
//! the nearest `models/` folder above the working directory); or a Hugging Face repository id
//! `ORG/NAME` (or `ORG/NAME/FILE.gguf`) found offline in the hub cache (see [`hub`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Device;
use earguard_data::hex;
use sha2::{Digest, Sha256};

use crate::audio::AudioFrontEnd;
use crate::chat::ChatTemplate;
use crate::config::DecoderConfig;
use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::hub;
use crate::model::{Model, ModelInfo};
use crate::qwen2_audio::{self, AudioTower, Qwen2AudioConfig};
use crate::speech::{
    Listener, ListenerInfo, ListenerKind, SpeechHead, SpeechInfo, SpeechModelConfig, SpeechTower,
    HEAD_WEIGHTS, PLACEHOLDERS, SPEECH_CONFIG,
};
use crate::tokenizer::Tokenizer;
use crate::weights::{safetensor_files, GgufWeights, SafeTensorWeights, WeightStore};
use crate::whisper::WhisperEncoder;
use crate::whisper_listener::WhisperListener;

/// Models `scripts/fetch-models.sh` knows how to install.
pub const KNOWN_MODELS: &[&str] = &[
    "qwen2.5-coder-1.5b-instruct",
    "smollm2-135m-instruct",
    "qwen2.5-0.5b-instruct",
    "speech-qwen2.5-coder-1.5b",
    "speech-whisper-qwen2.5-coder-1.5b",
];

/// Former short names, `(alias, name)`: an alias resolves to the model's files, and a model
/// installed under its alias's directory (as earlier versions did) is found by either name.
pub const ALIASES: &[(&str, &str)] = &[("qwen2.5-1.5b-instruct", "qwen2.5-coder-1.5b-instruct")];

/// The default model of the product on CPU machines.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-1.5b-instruct";

/// The short name `name` stands for: itself, or the model it is an alias of.
pub fn canonical_name(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical)
}

/// Every directory name a short name may be installed under: the model's name, then its aliases.
fn install_names(name: &str) -> Vec<&str> {
    let canonical = canonical_name(name);
    let aliases = ALIASES.iter().filter(|(_, c)| *c == canonical);
    std::iter::once(canonical)
        .chain(aliases.map(|(a, _)| *a))
        .collect()
}

/// The models directory: `$EARGUARD_MODELS`, else the first `models/` found walking up from
/// the working directory.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EARGUARD_MODELS") {
        return PathBuf::from(dir);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .map(|a| a.join("models"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| cwd.join("models"))
}

/// Turn a user's model argument into a path that exists.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let direct = PathBuf::from(spec);
    if direct.exists() {
        return Ok(direct);
    }
    let dir = models_dir();
    if let Some(named) = install_names(spec)
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
    {
        return Ok(named);
    }
    if let Some(repo) = hub::RepoRef::parse(spec) {
        return hub::resolve(&repo).map_err(|e| {
            ModelError::file(
                &direct,
                format!(
                    "no such model file or directory (looked in {} and, as a Hugging \
                     Face repository, in its cache): {e}",
                    dir.display()
                ),
            )
        });
    }
    let hint = if KNOWN_MODELS.contains(&canonical_name(spec)) {
        format!(
            "run scripts/fetch-models.sh {} to install it",
            canonical_name(spec)
        )
    } else {
        format!("known short names: {}", KNOWN_MODELS.join(", "))
    };
    Err(ModelError::file(
        &direct,
        format!(
            "no such model file or directory (looked in {}; {hint}; a Hugging Face repository \
             is named ORG/NAME)",
            dir.display()
        ),
    ))
}

/// Load a model named by path or short name, on the CPU.
pub fn load(spec: &str) -> Result<Model> {
    load_on(spec, &Device::Cpu)
}

/// Load a model named by path or short name, its weights on `device` (see
/// [`crate::device::parse`]).
pub fn load_on(spec: &str, device: &Device) -> Result<Model> {
    let _span = tracing::info_span!("load", model = spec, ?device).entered();
    let path = resolve(spec)?;
    let name = hub::repo_name(&path)
        .or_else(|| model_name(&path).map(|n| canonical_name(&n).to_string()))
        .unwrap_or_else(|| spec.to_string());
    if path.is_dir() {
        if path.join(SPEECH_CONFIG).is_file() {
            return load_speech_dir(&path, name, device);
        }
        if path.join("config.json").is_file() {
            return load_hf_dir(&path, name, device);
        }
        return load_gguf(&find_gguf(&path)?, name, device);
    }
    load_gguf(&path, name, device)
}

/// Check that `path` is a regular file (or a link to one). A FIFO, socket or device would block a
/// read or never end, so it is refused before anything is read.
fn regular_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ModelError::file(
            path,
            "not a regular file (a pipe, socket or device?): name a .gguf file or a model \
             directory",
        )),
        Err(e) => Err(ModelError::file(path, e)),
    }
}

/// A directory's name, or a file's stem unless it is the generic `model.gguf`.
fn model_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    if path.is_file() && stem == "model" {
        return Some(path.parent()?.file_name()?.to_string_lossy().into_owned());
    }
    if path.is_dir() {
        return Some(path.file_name()?.to_string_lossy().into_owned());
    }
    Some(stem)
}

fn find_gguf(dir: &Path) -> Result<PathBuf> {
    let preferred = dir.join("model.gguf");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::file(dir, e))?;
    let ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ModelError::file(
            dir,
            "holds neither config.json nor a .gguf file",
        )),
        _ => Err(ModelError::file(
            dir,
            "holds several .gguf files: name one of them",
        )),
    }
}

fn load_gguf(path: &Path, name: String, device: &Device) -> Result<Model> {
    regular_file(path)?;
    let weights = GgufWeights::open(path)?;
    let cfg = DecoderConfig::from_gguf(&weights.content, path)?;
    let tokenizer = Tokenizer::from_gguf(&weights.content, path)?;
    let chat_template = ChatTemplate::from_gguf(&weights.content)?;
    let identity = hash_prefix(path, weights.content.tensor_data_offset)?;
    let store = WeightStore::Gguf(weights).on(device);
    let decoder = Decoder::load(cfg, &store, "")?;
    let info = model_info(
        name,
        path,
        "gguf",
        &decoder,
        &store,
        chat_template.is_some(),
        identity,
    );
    Ok(Model {
        decoder,
        tokenizer,
        chat_template,
        info,
        audio: None,
    })
}

fn load_hf_dir(dir: &Path, name: String, device: &Device) -> Result<Model> {
    let config_path = dir.join("config.json");
    let text = earguard_data::read_small_text(&config_path)
        .map_err(|e| ModelError::file(&config_path, format!("cannot read: {e}")))?;
    // Qwen2-Audio: decoder under `language_model.`, plus audio tower and projector.
    let audio_cfg = if Qwen2AudioConfig::is_qwen2_audio(&text) {
        Some(Qwen2AudioConfig::from_json(&text, &config_path)?)
    } else {
        None
    };
    let (cfg, prefix) = match &audio_cfg {
        Some(a) => (a.text.clone(), qwen2_audio::LANGUAGE_MODEL_PREFIX),
        None => (DecoderConfig::from_hf_json(&text, &config_path)?, ""),
    };
    let shards = safetensor_files(dir)?;
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    for s in &shards {
        hasher.update(safetensors_header(s)?);
    }
    let identity = hex(&hasher.finalize());
    let store = WeightStore::SafeTensors(SafeTensorWeights::open(shards)?).on(device);
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let chat_template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
    let chat_template = match &audio_cfg {
        Some(_) => Some(qwen2_audio::chat_template(dir, chat_template)?),
        None => chat_template,
    };
    let decoder = Decoder::load(cfg, &store, prefix)?;
    let audio = audio_cfg
        .as_ref()
        .map(|a| AudioTower::load(a, &store))
        .transpose()?;
    let mut info = model_info(
        name,
        dir,
        "safetensors",
        &decoder,
        &store,
        chat_template.is_some(),
        identity,
    );
    info.audio_tower = audio.as_ref().map(AudioTower::info);
    Ok(Model {
        decoder,
        tokenizer,
        chat_template,
        info,
        audio: audio.map(AudioFrontEnd::Qwen2Audio),
    })
}

/// A speech model directory (`speech.json`, see [`crate::speech`]): the text LLM it names,
/// loaded as usual, with a Whisper encoder and a trained head as its audio front end. Its
/// identity covers all three parts.
fn load_speech_dir(dir: &Path, name: String, device: &Device) -> Result<Model> {
    let cfg = SpeechModelConfig::read(dir)?;
    let llm_path = SpeechModelConfig::path(dir, &cfg.llm);
    let llm_spec = if llm_path.exists() {
        llm_path.to_string_lossy().into_owned()
    } else {
        cfg.llm.clone()
    };
    let mut model = load_on(&llm_spec, device)?;
    if model.audio.is_some() {
        return Err(ModelError::file(
            dir.join(SPEECH_CONFIG),
            format!(
                "{} already has an audio front end; a speech model's llm is a text model",
                cfg.llm
            ),
        ));
    }
    let whisper_dir = SpeechModelConfig::path(dir, &cfg.whisper);
    let encoder = WhisperEncoder::load_dir(&whisper_dir, device)?;
    let wtext = serde_json::to_string(encoder.config()).expect("config serialises");
    let placeholder = PLACEHOLDERS
        .iter()
        .find_map(|p| {
            let id = model.tokenizer.token_to_id(p)?;
            let template_writes_it = model
                .render_chat(&[crate::chat::ChatMessage::user("x")])
                .is_ok_and(|r| r.contains(p));
            (!template_writes_it).then(|| (id, p.to_string()))
        })
        .ok_or_else(|| {
            ModelError::Invalid(format!(
                "{}: the LLM's vocabulary has none of the placeholder tokens {}",
                cfg.llm,
                PLACEHOLDERS.join(" ")
            ))
        })?;
    // What identifies the listener: the head's bytes, or Whisper's decoder by name (its
    // weights are the encoder's file's).
    let (listener, listener_info, listener_id) = match (cfg.listener, &cfg.head) {
        (ListenerKind::CtcHead, Some(head)) => {
            let head_dir = SpeechModelConfig::path(dir, head);
            let head = SpeechHead::load(&head_dir, device)?;
            let head_bytes = std::fs::read(head_dir.join(HEAD_WEIGHTS))
                .map_err(|e| ModelError::file(head_dir.join(HEAD_WEIGHTS), e))?;
            let sha256 = hex(&Sha256::digest(&head_bytes));
            let shape = &head.config().shape;
            let info = ListenerInfo::CtcHead {
                head: head_dir.clone(),
                sha256: sha256.clone(),
                d_model: shape.d_model,
                conv_layers: shape.layers,
                attention_layers: shape.attention_layers,
                tokens: head.config().tokens.len(),
            };
            (
                Listener::ctc_head(head, &encoder, &model.decoder)?,
                info,
                sha256,
            )
        }
        (ListenerKind::WhisperDecoder, None) => {
            let w = WhisperListener::load(&whisper_dir, &model.tokenizer, device)?;
            let info = ListenerInfo::WhisperDecoder {
                shared_vocabulary: w.shared_vocabulary(),
                top_k: crate::whisper_listener::TOP_K,
            };
            let id = format!("whisper-decoder top-{}", crate::whisper_listener::TOP_K);
            (Listener::whisper_decoder(w, &model.decoder)?, info, id)
        }
        _ => {
            return Err(ModelError::file(
                dir.join(SPEECH_CONFIG),
                "a ctc-head listener needs a head and a whisper-decoder one has none",
            ))
        }
    };
    let info = SpeechInfo {
        llm: model.info.name.clone(),
        whisper: whisper_dir.clone(),
        encoder_layers: encoder.config().encoder_layers,
        listener: listener_info,
        temperature: cfg.temperature,
        placeholder: placeholder.1.clone(),
    };
    let tower = SpeechTower::new(
        encoder,
        listener,
        cfg.temperature,
        placeholder,
        info.clone(),
    );
    let mut hasher = Sha256::new();
    for part in [
        model.info.identity.as_bytes(),
        wtext.as_bytes(),
        listener_id.as_bytes(),
        &cfg.temperature.to_le_bytes(),
    ] {
        hasher.update(part);
    }
    model.info.identity = hex(&hasher.finalize());
    model.info.name = name;
    model.info.path = dir.to_path_buf();
    model.info.speech = Some(info);
    model.audio = Some(AudioFrontEnd::Speech(tower));
    Ok(model)
}

/// The 8-byte length plus JSON header of a safetensors file.
fn safetensors_header(path: &Path) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::file(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| ModelError::file(path, "too short to be safetensors"))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| ModelError::file(path, e))?.len();
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(ModelError::file(
            path,
            format!("corrupt safetensors header length {n}"),
        ));
    }
    let mut header = len.to_vec();
    header.resize(8 + n as usize, 0);
    f.read_exact(&mut header[8..])
        .map_err(|e| ModelError::file(path, e))?;
    Ok(header)
}

fn hash_prefix(path: &Path, n: u64) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| ModelError::file(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f.take(n), &mut hasher).map_err(|e| ModelError::file(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn model_info(
    name: String,
    path: &Path,
    format: &'static str,
    decoder: &Decoder,
    store: &WeightStore,
    chat_template: bool,
    identity: String,
) -> ModelInfo {
    let c = decoder.config();
    ModelInfo {
        name,
        path: path.to_path_buf(),
        format,
        architecture: c.architecture.as_str(),
        n_layers: c.n_layers,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        context_length: c.context_length,
        tie_embeddings: c.tie_embeddings,
        quantization: store.quantization(),
        chat_template,
        identity,
        audio_tower: None,
        speech: None,
        adapter: None,
    }
}
