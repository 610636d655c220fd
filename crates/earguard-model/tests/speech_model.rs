//! A speech model put together from real parts: the Whisper-base encoder, SmolLM2-135M as the
//! LLM, and a speech head (seeded random weights here: this tests the composition, not what a
//! trained head hears). Skipped with a note when the models are absent, unless
//! `EARGUARD_REQUIRE_MODELS=1` / `EARGUARD_REQUIRE_WHISPER=1`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use earguard_model::audio::{AudioCache, AudioFrontEnd, WaveformNoise};
use earguard_model::chat::ChatMessage;
use earguard_model::content::{AudioRef, Content, Part};
use earguard_model::generate::{generate_batch, GenerateRequest};
use earguard_model::speech::{
    HeadShape, ListenerInfo, ListenerKind, SpeechHead, SpeechHeadConfig, SpeechModelConfig,
    Transcript, HEAD_CONFIG,
};
use earguard_model::ContentSpecials;
use sha2::Digest;

mod common;

fn models_dir() -> PathBuf {
    match std::env::var_os("EARGUARD_MODELS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

fn require(path: &Path, var: &str) -> bool {
    if path.exists() {
        return true;
    }
    let note = format!("{} is absent: run scripts/fetch-models.sh", path.display());
    if std::env::var(var).as_deref() == Ok("1") {
        panic!("{var}=1 but {note}");
    }
    eprintln!("SKIPPED: {note}");
    false
}

const CLIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/speech-16k.wav");

/// A speech model directory over SmolLM2 with a random head emitting `words`' tokens.
fn build(dir: &Path, temperature: f32) -> Option<earguard_model::Model> {
    let whisper = models_dir().join("whisper-base");
    let llm = models_dir().join("smollm2-135m-instruct");
    if !require(&whisper.join("model.bin"), "EARGUARD_REQUIRE_WHISPER")
        || !require(&llm, "EARGUARD_REQUIRE_MODELS")
    {
        return None;
    }
    let text = earguard_model::load(llm.to_str().unwrap()).unwrap();
    let tokens = text
        .tokenizer
        .encode(" hello world how are you today", false)
        .unwrap();
    let cfg = SpeechHeadConfig {
        shape: HeadShape {
            d_model: 32,
            kernel: 3,
            layers: 1,
            stride: 2,
            input_norm: false,
            block_norm: false,
            attention_layers: 0,
        },
        d_in: 512,
        tokens,
        alphabet: "abc ".into(),
    };
    let head_dir = dir.join("head");
    std::fs::create_dir_all(&head_dir).unwrap();
    let map = VarMap::new();
    SpeechHead::new(
        cfg.clone(),
        VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
    )
    .unwrap();
    seed_weights(&map);
    map.save(head_dir.join("head.safetensors")).unwrap();
    std::fs::write(
        head_dir.join(HEAD_CONFIG),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    let encoder = dir.join("encoder");
    if !encoder.join("model.safetensors").exists() {
        earguard_model::ct2::convert_ct2_whisper(&whisper, &encoder).unwrap();
    }
    let spec = SpeechModelConfig {
        llm: llm.to_string_lossy().into_owned(),
        whisper: "encoder".into(),
        listener: ListenerKind::CtcHead,
        head: Some("head".into()),
        temperature,
    };
    std::fs::write(
        dir.join("speech.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    Some(earguard_model::load(dir.to_str().unwrap()).unwrap())
}

/// Fixed weights in ±0.3 (candle's initialisers are unseeded): every run and every machine
/// tests the same head, so a near-tie between two tokens cannot come and go between runs.
fn seed_weights(map: &VarMap) {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut vars = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<Vec<_>>();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, var) in vars {
        let data: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
            })
            .collect();
        var.set(&Tensor::from_vec(data, var.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn audio_only() -> Vec<ChatMessage> {
    vec![ChatMessage::new(
        "user",
        Content::Parts(vec![Part::Audio(AudioRef::new(CLIP))]),
    )]
}

#[test]
fn a_speech_model_composes_its_parts() {
    let dir = std::env::temp_dir().join(format!("earguard-speech-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(model) = build(&dir, 1e-5) else {
        return;
    };
    let info = model
        .info
        .speech
        .clone()
        .expect("inspect says what it is built from");
    assert_eq!(info.llm, "smollm2-135m-instruct");
    assert_eq!(info.encoder_layers, 6);
    let Some(AudioFrontEnd::Speech(tower)) = &model.audio else {
        panic!("no speech front end")
    };
    let placeholder = tower.placeholder.0;

    // One row per token of the greedy transcript; at a very low temperature each row is that
    // token's own input embedding (fixed weights: no near-tie between tokens).
    let cache = AudioCache::new();
    let prompt = model
        .encode_prompt(&audio_only(), ContentSpecials::Literal, &cache)
        .unwrap();
    let rows = &prompt.audio.as_ref().unwrap().clips[0];
    let (features, valid) = clip_mel(None);
    let Transcript::LlmTokens(transcript) = tower.transcript(&features, valid).unwrap() else {
        panic!("a CTC head transcribes in LLM tokens")
    };
    assert!(!transcript.is_empty());
    assert_eq!(rows.dim(0).unwrap(), transcript.len());
    let ids = Tensor::new(transcript.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let embedded = model.decoder.embed(&ids).unwrap().squeeze(0).unwrap();
    let diff = common::max_diff(rows, &embedded);
    assert!(
        diff < 1e-3,
        "rows differ from the transcript's embeddings by {diff}"
    );
    // The prompt holds exactly that many placeholders, and prompt_ids agrees without
    // encoding again.
    let n = prompt.ids.iter().filter(|&&t| t == placeholder).count();
    assert_eq!(n, transcript.len());
    assert_eq!(
        model
            .prompt_ids(&audio_only(), ContentSpecials::Literal, &cache)
            .unwrap(),
        prompt.ids
    );
    assert_eq!(cache.encoded(), 1);

    // Audio-text: the instruction follows the clip; a typed placeholder stays text.
    let typed = format!("What is said? {}", tower.placeholder.1);
    let msgs = vec![ChatMessage::new(
        "user",
        Content::Parts(vec![
            Part::Audio(AudioRef::new(CLIP)),
            Part::Text(typed.clone()),
        ]),
    )];
    let both = model
        .encode_prompt(&msgs, ContentSpecials::Literal, &cache)
        .unwrap();
    assert_eq!(
        both.ids.iter().filter(|&&t| t == placeholder).count(),
        transcript.len()
    );
    let text = model.tokenizer.decode(&both.ids, false).unwrap();
    assert!(text.contains(&typed), "{text}");
    assert_eq!(cache.encoded(), 1, "the clip is encoded once per run");

    // And the LLM runs on it.
    let request = GenerateRequest::greedy(3, &[], 0);
    let out = generate_batch(
        &model.decoder,
        &[prompt, both],
        &request,
        &Default::default(),
        None,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|g| g.tokens.len() == 3));

    // Its identity is not the LLM's (vectors fitted on one are checked against the other).
    let llm =
        earguard_model::load(models_dir().join("smollm2-135m-instruct").to_str().unwrap()).unwrap();
    assert_ne!(llm.info.identity, model.info.identity);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SafeCoDe's corrupted audio on a speech model: how many rows a clip gives depends on what the
/// head hears, so noise alone would change the prompt's length. The noised cache pools the
/// noised posteriors over the clean clip's segments: the same ids, other rows, seeded.
#[test]
fn a_noised_clip_keeps_the_clean_segments() {
    let dir = std::env::temp_dir().join(format!("earguard-speech-noise-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(model) = build(&dir, 1.0) else {
        return;
    };
    let Some(AudioFrontEnd::Speech(tower)) = &model.audio else {
        panic!("no speech front end")
    };
    let noise = WaveformNoise {
        snr_db: -5.0,
        seed: 7,
    };
    let encode = |cache: &AudioCache| {
        model
            .encode_prompt(&audio_only(), ContentSpecials::Literal, cache)
            .unwrap()
    };
    let clean = encode(&AudioCache::new());
    let noisy = encode(&AudioCache::with_waveform_noise(noise).unwrap());
    let again = encode(&AudioCache::with_waveform_noise(noise).unwrap());
    assert_eq!(clean.ids, noisy.ids, "same length, same ids");
    let rows = |p: &earguard_model::Prompt| p.audio.as_ref().unwrap().clips[0].clone();
    assert!(common::max_diff(&rows(&clean), &rows(&noisy)) > 1e-4);
    assert_eq!(common::max_diff(&rows(&noisy), &rows(&again)), 0.0);

    // What the test guards against: heard on its own, the noised clip segments differently.
    let audio = earguard_audio::load_audio(Path::new(CLIP), &Default::default()).unwrap();
    let (clean_mel, valid) = clip_mel(None);
    let seed = {
        let sha: [u8; 32] = sha2::Sha256::digest(std::fs::read(CLIP).unwrap()).into();
        noise.seed ^ u64::from_le_bytes(sha[..8].try_into().unwrap())
    };
    let (noised_mel, _) = clip_mel(Some(earguard_audio::add_noise_snr(
        &audio.samples,
        noise.snr_db,
        seed,
    )));
    let alone = tower.encode(&noised_mel, valid).unwrap();
    assert_ne!(alone.dim(0).unwrap(), rows(&clean).dim(0).unwrap());
    let companion = tower
        .encode_on_segments_of(&clean_mel, &noised_mel, valid)
        .unwrap();
    assert!(common::max_diff(&companion, &rows(&noisy)) < 1e-5);
    // On the clean clip itself, pooling over its own segments is the ordinary encoding.
    let same = tower
        .encode_on_segments_of(&clean_mel, &clean_mel, valid)
        .unwrap();
    assert!(common::max_diff(&same, &rows(&clean)) < 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A head trained for another LLM (tokens outside its vocabulary) is refused with the reason.
#[test]
fn a_head_for_another_vocabulary_is_refused() {
    let dir = std::env::temp_dir().join(format!("earguard-speech-vocab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if build(&dir, 1.0).is_none() {
        return;
    }
    let path = dir.join("head").join(HEAD_CONFIG);
    let mut cfg: SpeechHeadConfig =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg.tokens[0] = 150_000;
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = earguard_model::load(dir.to_str().unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("outside the LLM's vocabulary"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A speech model whose listener is Whisper's own decoder, over SmolLM2.
fn build_whisper_decoder(dir: &Path, temperature: f32) -> Option<earguard_model::Model> {
    let whisper = models_dir().join("whisper-base");
    let llm = models_dir().join("smollm2-135m-instruct");
    if !require(&whisper.join("model.bin"), "EARGUARD_REQUIRE_WHISPER")
        || !require(&llm, "EARGUARD_REQUIRE_MODELS")
    {
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let spec = SpeechModelConfig {
        llm: llm.to_string_lossy().into_owned(),
        whisper: whisper.to_string_lossy().into_owned(),
        listener: ListenerKind::WhisperDecoder,
        head: None,
        temperature,
    };
    std::fs::write(
        dir.join("speech.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    Some(earguard_model::load(dir.to_str().unwrap()).unwrap())
}

fn clip_mel(samples: Option<Vec<f32>>) -> (Tensor, usize) {
    let audio = earguard_audio::load_audio(Path::new(CLIP), &Default::default()).unwrap();
    let a = earguard_audio::Audio {
        samples: samples.unwrap_or_else(|| audio.samples.clone()),
        ..audio
    };
    let m = earguard_audio::MelExtractor::new(80)
        .unwrap()
        .extract(&a)
        .unwrap();
    (
        Tensor::from_vec(m.data, (80, 3000), &Device::Cpu).unwrap(),
        m.valid_frames,
    )
}

/// Whisper's decoder (weights renamed from CTranslate2, run by candle-transformers' stock
/// decoder) hears the real espeak-ng clip: its greedy transcript is the sentence that was
/// spoken. At a very low temperature each row is the input embedding of the LLM token that
/// spells the same bytes, so the rows are the LLM's embeddings of the transcript.
#[test]
fn the_whisper_decoder_listener_transcribes_and_embeds() {
    let dir = std::env::temp_dir().join(format!("earguard-speech-wd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(model) = build_whisper_decoder(&dir, 1e-5) else {
        return;
    };
    let info = model.info.speech.clone().unwrap();
    let ListenerInfo::WhisperDecoder {
        shared_vocabulary, ..
    } = info.listener
    else {
        panic!("{:?}", info.listener)
    };
    // GPT-2's byte-level BPE is the base of both vocabularies.
    assert!(shared_vocabulary > 0.5, "{shared_vocabulary}");
    let Some(AudioFrontEnd::Speech(tower)) = &model.audio else {
        panic!("no speech front end")
    };
    let (features, valid) = clip_mel(None);
    let Transcript::Text(text) = tower.transcript(&features, valid).unwrap() else {
        panic!("Whisper's decoder transcribes in text")
    };
    // Whisper-base mishears "you hear" here: CTranslate2's own greedy (and beam-5) decoding
    // of this clip gives "Please tell me what you care in this recording." (faster-whisper
    // 1.x, ctranslate2 4.8.5, float32), ours "… what you're here …". The other 7 words must
    // be right, in order.
    let said = "Please tell me what you hear in this recording.";
    let errors = earguard_data::wer::word_edits(
        &earguard_data::wer::normalise(said),
        &earguard_data::wer::normalise(&text),
    );
    assert!(errors <= 2, "{text}: {errors} word errors");
    let rows = tower.encode(&features, valid).unwrap();
    let ids = model.tokenizer.encode_literal(&text, false).unwrap();
    assert_eq!(rows.dim(0).unwrap(), ids.len(), "{text}");
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let embedded = model.decoder.embed(&ids).unwrap().squeeze(0).unwrap();
    let diff = common::max_diff(&rows, &embedded);
    assert!(
        diff < 1e-3,
        "rows differ from the transcript's embeddings by {diff}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SafeCoDe's corrupted audio through Whisper's decoder: the noised clip is read along the
/// clean clip's transcript, so the row count (and the prompt's ids) stay, what the rows say
/// changes, and the clean clip read along its own transcript is its ordinary encoding.
#[test]
fn a_noised_clip_keeps_the_clean_transcript() {
    let dir = std::env::temp_dir().join(format!("earguard-speech-wd-noise-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(model) = build_whisper_decoder(&dir, 1.0) else {
        return;
    };
    let Some(AudioFrontEnd::Speech(tower)) = &model.audio else {
        panic!("no speech front end")
    };
    let (clean, valid) = clip_mel(None);
    let audio = earguard_audio::load_audio(Path::new(CLIP), &Default::default()).unwrap();
    let (noised, _) = clip_mel(Some(earguard_audio::add_noise_snr(&audio.samples, 0.0, 3)));
    let rows = tower.encode(&clean, valid).unwrap();
    let companion = tower.encode_on_segments_of(&clean, &noised, valid).unwrap();
    assert_eq!(companion.dims(), rows.dims());
    assert!(common::max_diff(&companion, &rows) > 1e-4);
    let same = tower.encode_on_segments_of(&clean, &clean, valid).unwrap();
    assert!(common::max_diff(&same, &rows) < 1e-4);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// speech.json names a head exactly when its listener is a CTC head.
#[test]
fn a_listener_and_its_head_must_agree() {
    let dir = std::env::temp_dir().join(format!("earguard-speech-listener-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (json, want) in [
        (
            r#"{"llm": "x", "whisper": "w", "listener": "whisper-decoder", "head": "h"}"#,
            "has no head",
        ),
        (r#"{"llm": "x", "whisper": "w"}"#, "needs \"head\""),
        (
            r#"{"llm": "x", "whisper": "w", "listener": "ears"}"#,
            "unknown variant",
        ),
    ] {
        std::fs::write(dir.join("speech.json"), json).unwrap();
        let e = SpeechModelConfig::read(&dir).unwrap_err().to_string();
        assert!(e.contains(want), "{json}: {e}");
    }
    std::fs::write(
        dir.join("speech.json"),
        r#"{"llm": "x", "whisper": "w", "head": "h"}"#,
    )
    .unwrap();
    let cfg = SpeechModelConfig::read(&dir).unwrap();
    assert_eq!(
        cfg.listener,
        ListenerKind::CtcHead,
        "a head alone means a CTC head"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
