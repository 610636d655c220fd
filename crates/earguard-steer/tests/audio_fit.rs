//! A SARSteer fit over audio-text encodes each harmful clip once, although it captures every
//! harmful prompt twice (plain and with the refusal suffix), and a benign prompt's clip not at
//! all when a harmful one already named the same bytes. Model:
//! the tiny random Qwen2-Audio fixture of earguard-model.

use std::path::{Path, PathBuf};

use earguard_data::{Label, Mode, PromptItem};
use earguard_model::{AudioCache, HookKind};
use earguard_steer::inputs::{InputStyle, DEFAULT_REFUSAL_SUFFIX};
use earguard_steer::pipeline::FitSetup;

fn model_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../earguard-model/tests/fixtures")
}

fn item(id: &str, label: Label, audio: &Path) -> PromptItem {
    PromptItem {
        id: id.into(),
        source: None,
        split: None,
        label,
        category: None,
        pair_id: None,
        text: format!("question {id}"),
        audio: Some(audio.to_path_buf()),
        voice: None,
    }
}

#[test]
fn sarsteer_fit_encodes_each_clip_once() {
    let fixtures = model_fixtures();
    let model = earguard_model::load(fixtures.join("hf/tiny-qwen2-audio").to_str().unwrap())
        .expect("tiny Qwen2-Audio fixture");
    let dir = std::env::temp_dir().join(format!("earguard-audio-once-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let synthetic = fixtures.join("hf/tiny-qwen2-audio/synthetic.wav");
    let speech = fixtures.join("speech-16k.wav");
    // The first clip again under another name: the same clip (keyed by its bytes).
    let copy = dir.join("copy.wav");
    std::fs::copy(&synthetic, &copy).unwrap();

    let harmful = vec![
        item("h1", Label::Harmful, &synthetic),
        item("h2", Label::Harmful, &speech),
    ];
    let benign = vec![
        item("b1", Label::Benign, &copy),
        item("b2", Label::Benign, &speech),
    ];
    let setup = FitSetup {
        model: &model,
        style: InputStyle::new(Mode::AudioText),
        hook: HookKind::ResidPost,
        batch_size: 2,
        work_dir: None,
        progress: false,
        training_sets: vec![],
        audio: AudioCache::new(),
    };
    let vector = setup
        .sarsteer(&harmful, &benign, DEFAULT_REFUSAL_SUFFIX, 1, 1.0)
        .unwrap();
    assert_eq!(vector.directions.len(), 2);
    assert_eq!(setup.audio.encoded(), 2, "clips encoded more than once");
    std::fs::remove_dir_all(&dir).unwrap();
}
