//! A run encodes each distinct audio clip once: an audio-text eval with three samples over
//! three prompts that name two distinct files (one under two names) runs the audio tower twice,
//! not once per (prompt, sample) plus once more in the pre-check; a resume with nothing left to
//! generate runs it not at all; and an audio-only run of the same prompts that shares the first
//! run's cache encodes nothing again. Model: the tiny random Qwen2-Audio fixture of
//! earguard-model.

use std::path::{Path, PathBuf};

use earguard_data::{Label, Mode, PromptItem};
use earguard_eval::judge;
use earguard_eval::runner::{self, Run, RunConfig, RunItem, RunOptions};
use earguard_model::{AudioCache, ContentSpecials};
use earguard_steer::defense::NoDefense;

fn model_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../earguard-model/tests/fixtures")
}

fn item(id: &str, label: Label, audio: &Path) -> RunItem {
    RunItem {
        set: "spoken".into(),
        item: PromptItem {
            id: id.into(),
            source: None,
            split: None,
            label,
            category: None,
            pair_id: None,
            text: format!("question {id}"),
            audio: Some(audio.to_path_buf()),
            voice: None,
        },
    }
}

#[test]
fn eval_encodes_each_distinct_clip_once() {
    let fixtures = model_fixtures();
    let model = earguard_model::load(fixtures.join("hf/tiny-qwen2-audio").to_str().unwrap())
        .expect("tiny Qwen2-Audio fixture");
    let dir = std::env::temp_dir().join(format!("earguard-audio-once-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let synthetic = fixtures.join("hf/tiny-qwen2-audio/synthetic.wav");
    let copy = dir.join("same-clip.wav");
    std::fs::copy(&synthetic, &copy).unwrap();
    let items = vec![
        item("a", Label::Harmful, &synthetic),
        item("b", Label::Benign, &fixtures.join("speech-16k.wav")),
        item("c", Label::Harmful, &copy),
    ];
    let config = RunConfig {
        model: model.info.name.clone(),
        model_identity: model.info.identity.clone(),
        data: vec![],
        defense: "none".into(),
        mode: Mode::AudioText,
        instruction: None,
        system: None,
        content_specials: ContentSpecials::Literal,
        samples: 3,
        temperature: 0.7,
        top_p: None,
        max_tokens: 2,
        seed: 1,
        judges: vec!["substring".into()],
        shard: None,
    };
    let judges = vec![judge::build("substring").unwrap()];
    let opts = RunOptions {
        batch_size: 2,
        progress: false,
        skip_bad_items: false,
    };
    let run = |config: &RunConfig, out: &Path, audio: &AudioCache| {
        runner::run(&Run {
            model: &model,
            defense: &NoDefense,
            judges: &judges,
            items: &items,
            config,
            dir: out,
            opts: &opts,
            audio,
        })
        .unwrap()
    };
    let shared = AudioCache::new();
    let first = run(&config, &dir.join("audio-text"), &shared);
    assert_eq!(first.rows.len(), 9);
    assert_eq!(first.audio_clips_encoded, 2, "clips encoded more than once");
    let resumed = run(&config, &dir.join("audio-text"), &AudioCache::new());
    assert_eq!(resumed.rows.len(), 9);
    assert_eq!(resumed.audio_clips_encoded, 0);
    // Another mode over the same clips: encoded by the first run already when the cache is
    // shared, twice again when it is not.
    let audio_only = RunConfig {
        mode: Mode::AudioOnly,
        ..config.clone()
    };
    let other_mode = run(&audio_only, &dir.join("audio-only"), &shared);
    assert_eq!(other_mode.rows.len(), 9);
    assert_eq!(
        other_mode.audio_clips_encoded, 0,
        "a shared cache encoded again"
    );
    let unshared = run(
        &audio_only,
        &dir.join("audio-only-fresh"),
        &AudioCache::new(),
    );
    assert_eq!(unshared.audio_clips_encoded, 2);
    // The shared cache gave each prompt its own clip's rows: the same responses as fresh ones.
    let responses = |rows: &[runner::ResultRow]| -> Vec<(String, usize, String)> {
        let mut v: Vec<_> = rows
            .iter()
            .map(|r| (r.id.clone(), r.sample, r.response.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(responses(&other_mode.rows), responses(&unshared.rows));
    std::fs::remove_dir_all(&dir).unwrap();
}
