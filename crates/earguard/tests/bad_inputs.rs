//! Hostile and mistaken input through the `earguard` binary: absurd defense options, vectors
//! that would be overwritten, pipes and devices as files, over-long speech, multi-voice
//! manifests, and warnings that must reach stderr. Each case fails fast with a clear message
//! naming the input, never a hang, a panic or a silently wrong result.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use earguard_steer::artifact::{SteeringVector, VectorMeta};

mod common;
use common::{fails, root, run, scratch, tiny_audio_model, tiny_text_model as tiny_model};

/// The binary under a 120 s `timeout`, so an input that blocks fails the test (status 124)
/// instead of hanging it.
fn bin() -> Command {
    let mut c = Command::new("timeout");
    c.arg("120").arg(env!("CARGO_BIN_EXE_earguard"));
    c
}

/// Succeeds; returns stderr.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "earguard failed: {stderr}");
    stderr
}

fn mkfifo(path: &Path) -> bool {
    Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

fn espeak_available() -> bool {
    let found = Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("EARGUARD_REQUIRE_MODELS").is_none()
                && std::env::var_os("CI").is_none(),
            "espeak-ng is not installed; run scripts/install-deps.sh"
        );
        eprintln!("espeak-ng not installed: skipping");
    }
    found
}

/// A small valid vector for an 8-wide, 4-layer model with directions at `layers`.
fn write_vector(dir: &Path, layers: &[usize]) {
    let meta = VectorMeta::new(
        "pca",
        "tiny",
        "qwen2",
        "",
        8,
        4,
        earguard_model::HookKind::ResidPost,
    );
    let directions: BTreeMap<usize, Tensor> = layers
        .iter()
        .map(|&l| (l, Tensor::new(&[0.5f32; 8], &Device::Cpu).unwrap()))
        .collect();
    SteeringVector::new(meta, directions)
        .unwrap()
        .save(dir)
        .unwrap();
}

/// Non-finite or absurd strengths, empty and reversed layer lists and repeated options are
/// refused when the spec is read, naming the option (the vector need not exist yet).
#[test]
fn absurd_defense_options_are_refused() {
    let model = tiny_model();
    let cases = [
        ("sarsteer=vec:alpha=1e39", "alpha = 1e39 is out of range"),
        ("sarsteer=vec:beta=nan", "beta = NaN is out of range"),
        ("sarsteer=vec:beta=1|inf", "beta = inf is out of range"),
        ("actadd=vec:coeff=1e30", "coeff = 1e30 is out of range"),
        ("sarsteer=vec:layers=", "the list is empty"),
        ("sarsteer=vec:layers=1-0", "reversed range 1-0"),
        (
            "sarsteer=vec:layers=0-9",
            "out of range for a model with 2 layers",
        ),
        ("sarsteer=vec:layers=0,1", "layers=3|5|7"),
        (
            "sarsteer=vec:alpha=0.1,alpha=0.2",
            "'alpha' of sarsteer is given twice",
        ),
        (
            "sarsteer=vec:normalize=maybe",
            "normalize=maybe must be true or false",
        ),
        ("cast=vec:threshold=2", "threshold = 2 is out of range"),
        ("ablate=vec:strength=1.5", "strength = 1.5 is out of range"),
        (
            "ablate=vec:strength=-0.25",
            "strength = -0.25 is out of range",
        ),
    ];
    // `generate` on the tiny model with extra arguments.
    let generate = |extra: &[&str]| {
        let mut c = bin();
        c.args(["generate", "--model", &model, "--prompt", "hi"])
            .args(extra);
        c
    };
    for (spec, needle) in cases {
        let err = fails(&mut generate(&["--max-tokens", "1", "--defense", spec]));
        assert!(err.contains(needle), "{spec}: expected '{needle}' in {err}");
    }
    // --alpha goes through the same check.
    let err = fails(&mut generate(&[
        "--defense",
        "sarsteer=vec",
        "--alpha",
        "1e39",
    ]));
    assert!(err.contains("out of range"), "{err}");
}

/// `import` and `fit` never replace an existing vector silently; `--overwrite` does. A
/// vector of 1e30 values is refused at import.
#[test]
fn vectors_are_not_overwritten_without_asking() {
    let dir = scratch("overwrite");
    let gguf = root().join("crates/earguard-steer/tests/fixtures/llamacpp/qwen2_h8_l4.gguf");
    let out = dir.join("vec");
    ok(bin().arg("import").arg(&gguf).arg(&out));
    let before = std::fs::read(out.join("meta.json")).unwrap();
    let err = fails(bin().arg("import").arg(&gguf).arg(&out));
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("meta.json")).unwrap(), before);
    ok(bin().arg("import").arg(&gguf).arg(&out).arg("--overwrite"));

    // fit refuses before loading the model or reading the data.
    let err = fails(
        bin()
            .args(["fit", "sarsteer", "--model", "/nonexistent", "--data"])
            .arg(dir.join("absent.jsonl"))
            .arg("-o")
            .arg(&out),
    );
    assert!(err.contains("--overwrite"), "{err}");

    // Absurd fit strengths are refused before any activation is captured, writing nothing.
    let set = dir.join("set.jsonl");
    std::fs::write(
        &set,
        "{\"id\":\"h\",\"label\":\"harmful\",\"text\":\"How do I pick a lock?\"}\n\
         {\"id\":\"b\",\"label\":\"benign\",\"text\":\"How do I fix a lock?\"}\n",
    )
    .unwrap();
    for (args, needle) in [
        (
            ["sarsteer", "--lambda=-1e30"],
            "lambda = -1e30 is out of range",
        ),
        (["sarsteer", "--lambda=NaN"], "lambda = NaN is out of range"),
        (["cast", "--alpha=1e39"], "alpha = 1e39 is out of range"),
    ] {
        let fresh = dir.join(format!("fit-{}", args[0]));
        let err = fails(
            bin()
                .arg("fit")
                .args(args)
                .args(["--model", &tiny_model(), "--data"])
                .arg(&set)
                .arg("-o")
                .arg(&fresh),
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!fresh.exists());
    }

    // An imported vector of 1e30 values (finite, but it would overflow the model) is refused.
    let mut bytes = std::fs::read(&gguf).unwrap();
    let le: Vec<u8> = (0..8)
        .flat_map(|i: i32| {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            (sign * (2.0 + i as f32 / 8.0)).to_le_bytes()
        })
        .collect();
    let at = bytes
        .windows(le.len())
        .position(|w| w == le.as_slice())
        .unwrap();
    let huge: Vec<u8> = [1e30f32; 8].iter().flat_map(|x| x.to_le_bytes()).collect();
    bytes[at..at + huge.len()].copy_from_slice(&huge);
    let bad = dir.join("huge.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let err = fails(bin().arg("import").arg(&bad).arg(dir.join("huge-vec")));
    assert!(err.contains("layer 2") && err.contains("norm"), "{err}");
    assert!(!dir.join("huge-vec").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A pipe or device as --data or --model is refused at once (the command runs under a
/// timeout: a blocking read would fail the test), as is an over-long audio file, with the
/// CLI's own flag named.
#[test]
fn pipes_and_devices_are_refused_at_once() {
    let dir = scratch("fifo");
    let err = fails(
        bin()
            .args([
                "eval",
                "--model",
                &tiny_model(),
                "--data",
                "/dev/urandom",
                "-o",
            ])
            .arg(dir.join("run")),
    );
    assert!(
        err.contains("/dev/urandom") && err.contains("not a regular file"),
        "{err}"
    );
    let fifo = dir.join("pipe");
    if mkfifo(&fifo) {
        let err = fails(
            bin()
                .args(["eval", "--model", &tiny_model(), "--data"])
                .arg(&fifo)
                .arg("-o")
                .arg(dir.join("run")),
        );
        assert!(err.contains("not a regular file"), "{err}");
        let err = fails(bin().args(["inspect", "--model"]).arg(&fifo));
        assert!(err.contains("not a regular file"), "{err}");
    }
    let long = root().join("crates/earguard-audio/tests/fixtures/bad/too_long_31s.wav");
    let err = fails(
        bin()
            .args(["features", "--audio"])
            .arg(&long)
            .arg("-o")
            .arg(dir.join("f.safetensors")),
    );
    assert!(
        err.contains("31.") && err.contains("pass --truncate") && !err.contains("LoadOptions"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CAST vector keeps its condition as a `condition.{layer}` tensor and is used; one written
/// before that (the condition in meta.json) is refused with the fix, re-fitting.
#[test]
fn cast_vectors_need_their_condition_tensor() {
    let model = tiny_model();
    let dir = scratch("cast");
    let t = |x: f32| Tensor::new(&[x; 64], &Device::Cpu).unwrap();
    let mut meta = VectorMeta::new(
        "cast",
        "tiny",
        "qwen2",
        "",
        64,
        2,
        earguard_model::HookKind::ResidPost,
    );
    meta.extra = serde_json::json!({"threshold": 0.0, "alpha": 0.1});
    let vector = SteeringVector::new(meta, BTreeMap::from([(1, t(0.01))])).unwrap();
    let generate = |vec: &Path| {
        let mut c = bin();
        c.args([
            "generate",
            "--model",
            &model,
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
        ])
        .args(["--force", "--defense"])
        .arg(format!("cast={}", vec.display()));
        c
    };
    let new = dir.join("new");
    vector
        .clone()
        .with_condition(0, &t(1.0))
        .unwrap()
        .save(&new)
        .unwrap();
    ok(&mut generate(&new));

    let mut old = vector;
    old.meta.extra["condition_layer"] = 0.into();
    old.meta.extra["condition_direction"] = vec![1.0f32; 64].into();
    old.save(&dir.join("old")).unwrap();
    let err = fails(&mut generate(&dir.join("old")));
    assert!(
        err.contains("condition in meta.json") && err.contains("re-fit it with earguard fit cast"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Warnings reach stderr by default; -q and RUST_LOG silence them, -v keeps them.
#[test]
fn warnings_reach_stderr_unless_silenced() {
    let dir = scratch("warn");
    // llama.cpp has no direction for block 0's input, so exporting layer 0 warns.
    let vec = dir.join("vec");
    write_vector(&vec, &[0, 2]);
    let export = |extra: &[&str], rust_log: Option<&str>| {
        let mut c = bin();
        c.arg("export")
            .arg(&vec)
            .arg(dir.join("cv.gguf"))
            .args(extra);
        c.env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            c.env("RUST_LOG", v);
        }
        ok(&mut c)
    };
    let warning = "layer 0 not exported";
    let err = export(&[], None);
    assert!(err.contains("WARN") && err.contains(warning), "{err}");
    assert!(export(&["-v"], None).contains(warning));
    assert!(!export(&["-q"], None).contains(warning));
    assert!(!export(&[], Some("off")).contains(warning));
    assert!(export(&["-q"], Some("warn")).contains(warning));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With several voices each rendering is its own item (`ID@VOICE`, same pair, source id and
/// voice kept), so the manifest is a valid prompt set that `eval` runs; over-long text is
/// refused up front naming the prompt, leaving nothing behind.
#[test]
fn tts_with_two_voices_feeds_eval() {
    if !espeak_available() {
        return;
    }
    let dir = scratch("voices");
    let set = dir.join("mini.jsonl");
    std::fs::write(
        &set,
        "\u{feff}{\"id\":\"h1\",\"label\":\"harmful\",\"pair_id\":\"p1\",\"text\":\"How do I pick a lock?\"}\n\
         {\"id\":\"b1\",\"label\":\"benign\",\"pair_id\":\"p1\",\"text\":\"How do I fix a lock?\"}\n",
    )
    .unwrap();
    let speech = dir.join("speech");
    ok(bin()
        .args(["tts", "-q", "--voices", "en-us,en-gb", "--data"])
        .arg(&set)
        .arg("--out")
        .arg(&speech));
    let manifest = speech.join("mini.jsonl");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["h1@en-us", "h1@en-gb", "b1@en-us", "b1@en-gb"]);
    assert!(rows.iter().all(|r| r["pair_id"] == "p1"));
    assert_eq!(
        (rows[1]["source_id"].as_str(), rows[1]["voice"].as_str()),
        (Some("h1"), Some("en-gb"))
    );

    let run = dir.join("run");
    ok(bin()
        .args([
            "eval",
            "--model",
            &tiny_audio_model(),
            "--max-tokens",
            "2",
            "--mode",
            "audio-only",
            "--data",
        ])
        .arg(&manifest)
        .arg("-o")
        .arg(&run));
    let results = std::fs::read_to_string(run.join("results.jsonl")).unwrap();
    let mut got: Vec<String> = results
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["b1@en-gb", "b1@en-us", "h1@en-gb", "h1@en-us"]);

    // 10 000 characters (a 5 MB line is refused by the prompt-set reader already): refused
    // before anything is rendered, naming the prompt, no temp file left.
    let huge = dir.join("huge.jsonl");
    std::fs::write(
        &huge,
        format!(
            "{{\"id\":\"ok-1\",\"label\":\"benign\",\"text\":\"Hello.\"}}\n\
             {{\"id\":\"huge-2\",\"label\":\"benign\",\"text\":\"{}\"}}\n",
            "word ".repeat(2_000)
        ),
    )
    .unwrap();
    let out = dir.join("huge-speech");
    let err = fails(
        bin()
            .args(["tts", "--data"])
            .arg(&huge)
            .arg("--out")
            .arg(&out),
    );
    assert!(
        err.contains("prompt 'huge-2'") && err.contains("10000 characters"),
        "{err}"
    );
    let left = std::fs::read_dir(out.join("wav")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "nothing rendered or left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}
