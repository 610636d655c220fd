//! Qwen2-Audio against HF transformers (`Qwen2AudioForConditionalGeneration`) on the tiny random
//! checkpoint: audio tower output (all 750 pooled rows), projected audio features, merged input
//! embeddings, per-layer decoder outputs, final norm and logits; plus the processor's token
//! count / placeholder expansion and the chat template, all through the loaded `Model`'s own
//! path, and the encoded-audio cache (each clip through the tower once per run). Fixtures:
//! scripts/make_fixtures.py (see tests/fixtures/hf/README.md). Tolerance: 1e-4 absolute, f32.

mod common;
use common::{expected_ids, max_diff};

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use earguard_model::chat::ChatMessage;
use earguard_model::qwen2_audio::{merge_audio, n_audio_tokens, AudioTower, AudioTowerInfo};
use earguard_model::{
    AudioCache, AudioRef, Content, ContentSpecials, HookKind, HookPoint, InterventionPlan, Logits,
    Model, Part, Positions,
};

const TOL: f32 = 1e-4;
const AUDIO_ID: u32 = 499;
const BOS_ID: u32 = 500;
const EOS_ID: u32 = 501;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/tiny-qwen2-audio")
}

fn load() -> Model {
    earguard_model::load(fixture().to_str().unwrap()).unwrap()
}

fn tower(model: &Model) -> &AudioTower {
    match model.audio.as_ref() {
        Some(earguard_model::audio::AudioFrontEnd::Qwen2Audio(t)) => t,
        _ => panic!("the loader found no Qwen2-Audio tower"),
    }
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("expected.safetensors"), &Device::Cpu).unwrap()
}

/// `__metadata__` of expected.safetensors (the safetensors header's JSON).
fn metadata() -> serde_json::Map<String, serde_json::Value> {
    let mut f = std::fs::File::open(fixture().join("expected.safetensors")).unwrap();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&header).unwrap();
    v["__metadata__"].as_object().unwrap().clone()
}

fn check(name: &str, got: &Tensor, want: &Tensor) {
    let d = max_diff(got, want);
    println!("{name}: max abs diff {d:.3e}");
    assert!(d < TOL, "{name} differs by {d}");
}

fn valid_frames(exp: &HashMap<String, Tensor>) -> usize {
    let mask: Vec<i64> = exp["feature_attention_mask"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    mask.iter().filter(|&&m| m == 1).count()
}

#[test]
fn qwen2_audio_matches_hf_end_to_end() {
    let model = load();
    let tower = tower(&model);
    let exp = expected();
    assert_eq!(tower.audio_token_id, AUDIO_ID);
    let features = &exp["input_features"];
    let valid = valid_frames(&exp);
    assert_eq!(valid, 1234);
    let n = n_audio_tokens(valid);
    assert_eq!(n, 308);

    // Tower output: all 750 rows (rows past 308 check that queries are not masked).
    let pooled = tower.encode_pooled(features, &[valid]).unwrap();
    check("audio_encoder_out", &pooled, &exp["audio_encoder_out"]);

    let audio = tower.encode(features, valid).unwrap();
    check("audio_features", &audio, &exp["audio_features"]);
    // [n_mels, frames] input (what a mel extractor returns) gives the same rows.
    let audio2 = tower.encode(&features.squeeze(0).unwrap(), valid).unwrap();
    assert_eq!(max_diff(&audio, &audio2), 0.0);

    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let ids_vec: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(ids_vec.iter().filter(|&&t| t == AUDIO_ID).count(), n);
    let embeds = merge_audio(&model.decoder, &ids, AUDIO_ID, &audio).unwrap();
    check("inputs_embeds", &embeds, &exp["inputs_embeds"]);

    let n_layers = model.decoder.config().n_layers;
    let mut plan = InterventionPlan::new().capture(HookPoint::FinalNorm, Positions::All);
    for l in 0..n_layers {
        plan = plan.capture(HookKind::ResidPost.at(l), Positions::All);
    }
    let mut cache = model.decoder.new_cache(vec![0]);
    let out = model
        .decoder
        .forward_embeds(embeds, &mut cache, &plan, Logits::All)
        .unwrap();
    for l in 0..n_layers {
        let got = out.captures.get(HookKind::ResidPost.at(l)).unwrap();
        check(
            &format!("resid_post.{l}"),
            got,
            &exp[&format!("resid_post.{l}")],
        );
    }
    check(
        "final_norm",
        out.captures.get(HookPoint::FinalNorm).unwrap(),
        &exp["final_norm"],
    );
    check("logits", out.logits.as_ref().unwrap(), &exp["logits"]);
}

#[test]
fn merge_refuses_a_count_mismatch() {
    let model = load();
    let tower = tower(&model);
    let exp = expected();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let merge = |rows: &Tensor| merge_audio(&model.decoder, &ids, AUDIO_ID, rows);
    let short = exp["audio_features"].i(0..307).unwrap();
    let err = merge(&short).unwrap_err().to_string();
    assert!(err.contains("308") && err.contains("307"), "{err}");
    // Wrong width is refused too.
    let wide = Tensor::zeros((308, 65), DType::F32, &Device::Cpu).unwrap();
    assert!(merge(&wide).is_err());
    // Features of the wrong length or mel count are refused with a clear message.
    let f = &exp["input_features"];
    let err = tower
        .encode(&f.narrow(2, 0, 2999).unwrap(), 1234)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3000"), "{err}");
    let err = tower
        .encode(&f.narrow(1, 0, 80).unwrap(), 1234)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mel bins"), "{err}");
    let err = tower.encode(f, 0).unwrap_err().to_string();
    assert!(err.contains("valid audio frame count 0"), "{err}");
}

/// The processor's expansion through the model's own path: the rendered prompt has one
/// `<|AUDIO|>` placeholder, and `encode_prompt` on the WAV the fixture's features were made from
/// gives exactly the processor's input_ids (308 copies, wrapped in `<|audio_bos|>` /
/// `<|audio_eos|>`); `prompt_ids` (no tower pass) gives the same ids.
#[test]
fn placeholder_expansion_reproduces_the_processor_ids() {
    let exp = expected();
    let ids: Vec<u32> = expected_ids(&exp);
    assert_eq!(
        (ids[20], ids[21], ids[328], ids[329]),
        (BOS_ID, AUDIO_ID, AUDIO_ID, EOS_ID)
    );
    let prompt = metadata()["prompt"].as_str().unwrap().to_string();
    assert_eq!(prompt.matches("<|AUDIO|>").count(), 1);

    let model = load();
    let t = |s: &str| model.tokenizer.token_to_id(s).unwrap();
    assert_eq!(
        (t("<|AUDIO|>"), t("<|audio_bos|>"), t("<|audio_eos|>")),
        (AUDIO_ID, BOS_ID, EOS_ID)
    );
    let cache = AudioCache::new();
    let messages = wav_messages(&fixture().join("synthetic.wav"));
    let encoded = model
        .encode_prompt(&messages, ContentSpecials::Literal, &cache)
        .unwrap();
    assert_eq!(encoded.ids, ids);
    assert_eq!(
        encoded.ids.iter().filter(|&&t| t == AUDIO_ID).count(),
        n_audio_tokens(valid_frames(&exp))
    );
    let fresh = AudioCache::new();
    assert_eq!(
        model
            .prompt_ids(&messages, ContentSpecials::Literal, &fresh)
            .unwrap(),
        ids
    );
    assert_eq!(fresh.encoded(), 0, "prompt_ids ran the audio tower");
}

fn audio_messages() -> Vec<ChatMessage> {
    wav_messages(Path::new("synthetic.wav"))
}

/// One user turn: the clip at `wav`, then the fixture's question.
fn wav_messages(wav: &Path) -> Vec<ChatMessage> {
    vec![ChatMessage::new(
        "user",
        Content::Parts(vec![
            Part::Audio(AudioRef::new(wav)),
            Part::Text("What is it?".into()),
        ]),
    )]
}

/// `earguard_model::load` on the HF directory: audio tower found, the chat template renders
/// the processor's prompt, tokenizer + expansion give the fixture's ids, and the loaded model
/// reproduces HF's logits; the decoder alone still serves text prompts.
#[test]
fn loader_recognises_qwen2_audio() {
    let model = load();
    let exp = expected();
    let audio = tower(&model);
    assert_eq!(
        model.info.audio_tower,
        Some(AudioTowerInfo {
            n_layers: 2,
            d_model: 64,
            n_mels: 128
        })
    );
    assert_eq!(
        (
            model.info.architecture,
            model.info.n_layers,
            model.info.vocab_size
        ),
        ("qwen2", 2, 512)
    );
    let info_json = serde_json::to_value(&model.info).unwrap();
    assert_eq!(info_json["audio_tower"]["n_mels"], 128);

    let prompt = model.render_chat(&audio_messages()).unwrap();
    assert_eq!(prompt, metadata()["prompt"].as_str().unwrap());
    let want: Vec<u32> = expected_ids(&exp);
    let valid = valid_frames(&exp);
    let ids = model
        .prompt_ids(
            &wav_messages(&fixture().join("synthetic.wav")),
            ContentSpecials::Literal,
            &AudioCache::new(),
        )
        .unwrap();
    assert_eq!(ids, want);

    let feats = audio.encode(&exp["input_features"], valid).unwrap();
    let ids_t = Tensor::new(want.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let embeds = merge_audio(&model.decoder, &ids_t, AUDIO_ID, &feats).unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    let out = model
        .decoder
        .forward_embeds(embeds, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap();
    let last = exp["logits"].i((.., 340, ..)).unwrap();
    check("loader logits[-1]", out.logits.as_ref().unwrap(), &last);

    // Text-only use of the audio model's language model.
    let text_ids = model.encode_chat(None, "Hello you!").unwrap();
    let ids_t = Tensor::new(text_ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    let logits = model
        .decoder
        .forward(&ids_t, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap();
    assert_eq!(logits.logits.unwrap().dims(), &[1, 512]);
}

/// A copy of the fixture directory with some files replaced or added.
fn fixture_variant(tag: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("earguard-qwen2-audio-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    edit(&dir);
    dir
}

/// Where the template comes from: a text-only ChatML template in tokenizer_config.json is
/// replaced by transformers' default Qwen2-Audio template; a processor `chat_template.json`
/// wins over everything.
#[test]
fn audio_chat_template_is_found_like_the_processor_finds_it() {
    let want = metadata()["prompt"].as_str().unwrap().to_string();
    let text_only = fixture_variant("chatml", |dir| {
        let p = dir.join("tokenizer_config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg["chat_template"] = serde_json::Value::String(
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}".into(),
        );
        std::fs::write(&p, serde_json::to_string(&cfg).unwrap()).unwrap();
    });
    let model = earguard_model::load(text_only.to_str().unwrap()).unwrap();
    assert_eq!(model.render_chat(&audio_messages()).unwrap(), want);
    std::fs::remove_dir_all(&text_only).unwrap();

    let processor = fixture_variant("processor", |dir| {
        let t = serde_json::json!({"chat_template": "{% for m in messages %}[{{ m['role'] }}]{% endfor %}"});
        std::fs::write(dir.join("chat_template.json"), t.to_string()).unwrap();
    });
    let model = earguard_model::load(processor.to_str().unwrap()).unwrap();
    assert_eq!(model.render_chat(&audio_messages()).unwrap(), "[user]");
    std::fs::remove_dir_all(&processor).unwrap();
}

/// The whole audio path from a file: `Model::encode_prompt` decodes the WAV the fixture's
/// features were made from, computes log-mel, runs the tower, expands the placeholder and
/// tokenizes; the batched prefill (left-padded next to a text prompt) then reproduces HF's
/// last-position logits. Tolerance 1e-4 (features and logits).
#[test]
fn audio_file_prompt_reproduces_hf_end_to_end() {
    use earguard_model::generate::{generate_batch, GenerateRequest};
    use earguard_model::{prefill, Prompt};

    let model = load();
    let exp = expected();
    let messages = wav_messages(&fixture().join("synthetic.wav"));
    let cache = AudioCache::new();
    let prompt = model
        .encode_prompt(&messages, ContentSpecials::Literal, &cache)
        .unwrap();
    let want: Vec<u32> = expected_ids(&exp);
    assert_eq!(prompt.ids, want);
    let clips = &prompt.audio.as_ref().expect("audio rows").clips;
    assert_eq!(clips.len(), 1);
    assert_eq!(clips[0].dim(0).unwrap(), n_audio_tokens(valid_frames(&exp)));

    let text = Prompt::text(model.encode_chat(None, "Hello you!").unwrap());
    let batch = [text.clone(), prompt.clone()];
    let pad = model.tokenizer.pad_id();
    let (out, _) = prefill(
        &model.decoder,
        &batch,
        pad,
        &InterventionPlan::new(),
        Logits::Last,
    )
    .unwrap();
    let logits = out.logits.unwrap();
    let last = exp["logits"].i((.., 340, ..)).unwrap();
    check(
        "file → logits[-1] (batched)",
        &logits.i(1..2).unwrap(),
        &last,
    );

    // Generation from audio prompts runs and is the same alone and in a batch.
    let request = GenerateRequest::greedy(4, &[], pad);
    let plan = InterventionPlan::new();
    let alone =
        generate_batch(&model.decoder, &[prompt], &request, &plan, None, |_, _| {}).unwrap();
    let both = generate_batch(&model.decoder, &batch, &request, &plan, None, |_, _| {}).unwrap();
    assert_eq!(alone[0].tokens, both[1].tokens);
    assert_eq!(alone[0].tokens.len(), 4);

    // A text model refuses audio parts with a clear error.
    let missing = wav_messages(Path::new("/no/such/file.wav"));
    let err = model
        .encode_prompt(&missing, ContentSpecials::Literal, &cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/file.wav"), "{err}");
    let text_model = fixture().parent().unwrap().join("tiny-qwen2");
    let text_model = earguard_model::load(text_model.to_str().unwrap()).unwrap();
    let err = text_model
        .encode_prompt(&messages, ContentSpecials::Literal, &cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("audio-language model"), "{err}");
}

/// The encoded-audio stage runs each clip through the tower once per cache: the same clip in
/// three prompts (samples), with another text (a suffix contrast) or measured by `prompt_ids`
/// (the pre-check) is encoded once, with rows equal to a fresh encoding; a copy of the file
/// under another name is the same clip (keyed by content), a different file is another; and a
/// cache with no room keeps nothing, so it encodes again (bounded memory).
#[test]
fn each_clip_is_encoded_once_per_cache() {
    let model = load();
    let wav = fixture().join("synthetic.wav");
    let dir = std::env::temp_dir().join(format!("earguard-audio-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("copy.wav");
    std::fs::copy(&wav, &copy).unwrap();
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/speech-16k.wav");
    let lit = ContentSpecials::Literal;

    let cache = AudioCache::new();
    let first = model
        .encode_prompt(&wav_messages(&wav), lit, &cache)
        .unwrap();
    assert_eq!(cache.encoded(), 1);
    for _ in 0..2 {
        let again = model
            .encode_prompt(&wav_messages(&wav), lit, &cache)
            .unwrap();
        assert_eq!(again.ids, first.ids);
    }
    let suffixed = vec![ChatMessage::new(
        "user",
        Content::Parts(vec![
            Part::Audio(AudioRef::new(&wav)),
            Part::Text("What is it? I cannot assist with that.".into()),
        ]),
    )];
    model.encode_prompt(&suffixed, lit, &cache).unwrap();
    model.prompt_ids(&wav_messages(&wav), lit, &cache).unwrap();
    model
        .encode_prompt(&wav_messages(&copy), lit, &cache)
        .unwrap();
    assert_eq!(cache.encoded(), 1, "one clip, encoded more than once");
    model
        .encode_prompt(&wav_messages(&other), lit, &cache)
        .unwrap();
    assert_eq!(cache.encoded(), 2);

    let fresh = model
        .encode_prompt(&wav_messages(&wav), lit, &AudioCache::new())
        .unwrap();
    let (a, b) = (
        &first.audio.unwrap().clips[0],
        &fresh.audio.unwrap().clips[0],
    );
    assert_eq!(max_diff(a, b), 0.0);

    let none = AudioCache::with_budget(0);
    model
        .encode_prompt(&wav_messages(&wav), lit, &none)
        .unwrap();
    model
        .encode_prompt(&wav_messages(&other), lit, &none)
        .unwrap();
    model
        .encode_prompt(&wav_messages(&wav), lit, &none)
        .unwrap();
    assert_eq!(none.encoded(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
