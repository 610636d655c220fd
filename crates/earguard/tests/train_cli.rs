//! `earguard train` end to end on the tiny random Qwen2 fixture: RRS writes a PEFT adapter that
//! `generate --adapter` applies; a run killed with SIGKILL mid-training and started again ends
//! with the same adapter bytes as an uninterrupted run; bad arguments fail cleanly.

mod common;
use common::{fails, ok, root, run, scratch, tiny_text_model};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_earguard"))
}

/// A JSON file a run wrote.
fn read_json(path: impl AsRef<Path>) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mirror_set() -> PathBuf {
    root().join("crates/earguard-train/tests/fixtures/mirror.jsonl")
}

fn train_cmd(method: &str, out: &Path, epochs: usize) -> Command {
    let mut cmd = bin();
    cmd.args([
        "-q",
        "train",
        method,
        "--model",
        &tiny_text_model(),
        "--data",
    ])
    .arg(mirror_set())
    .args(["-o"])
    .arg(out)
    .args([
        "--epochs",
        &epochs.to_string(),
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
        "--rank",
        "4",
        "--checkpoint-every",
        "1",
        "--seed",
        "3",
    ]);
    cmd
}

fn generate(adapter: Option<&Path>) -> String {
    let mut cmd = bin();
    cmd.args([
        "-q",
        "generate",
        "--json",
        "--max-tokens",
        "6",
        "--model",
        &tiny_text_model(),
        "--prompt",
        "How do I bake bread?",
    ]);
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rrs_and_shallow_mirror_write_adapters_generate_applies() {
    for method in ["rrs", "shallow-mirror"] {
        let out = scratch(&format!("train-{method}"));
        let o = run(&mut train_cmd(method, &out, 4));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for f in [
            "adapter_config.json",
            "adapter_model.safetensors",
            "config.json",
            "train.json",
        ] {
            assert!(out.join(f).is_file(), "{method}: missing {f}");
        }
        let report: serde_json::Value = read_json(out.join("train.json"));
        let losses: Vec<f64> = report["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(
            losses.len(),
            16,
            "{method}: 8 samples in batches of 2, 4 epochs"
        );
        assert!(
            losses[12..].iter().sum::<f64>() < losses[..4].iter().sum::<f64>(),
            "{method}: the loss should fall: {losses:?}"
        );
        // The report: loss curve, a PCA per epoch (0 = the base model) and the separation
        // table (RRS's effect on it: the test below).
        for f in [
            "report.md",
            "loss.png",
            "pca_epoch_0.png",
            "pca_epoch_4.png",
        ] {
            assert!(out.join(f).is_file(), "{method}: missing {f}");
        }
        let gaps: Vec<f64> = separation_table(&out).iter().map(|r| r.1).collect();
        assert_eq!(gaps.len(), 5, "{gaps:?}");
        if method == "rrs" {
            let rrs = &report["targets"];
            let base = rrs["base_gap"].as_f64().unwrap();
            let target = rrs["target_gap"].as_f64().unwrap();
            assert!(
                (gaps[0] - base).abs() < 1e-2,
                "epoch 0 is the base: {gaps:?} vs {base}"
            );
            assert!(target > base, "targets lie 2ΔVˢ apart: {target} vs {base}");
            assert_eq!(rrs["pairs"], 4);
            let kept = rrs["features_kept"].as_u64().unwrap();
            assert!(kept > 0 && kept < 64, "kept {kept} of 64 features");
            assert!(rrs["refusal_logit_gain"].as_f64().unwrap() > 0.0);
        }
        let config: serde_json::Value = read_json(out.join("config.json"));
        assert_eq!(config["lora"]["rank"], 4);
        assert_eq!(config["train"]["epochs"], 4);
        // The adapter loads and moves the model.
        let adapted = generate(Some(&out));
        assert!(adapted.contains("\"text\""), "{adapted}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn kill_dash_nine_then_resume_gives_the_uninterrupted_adapter() {
    let epochs = 60; // 240 steps: long enough to be killed part-way
    let whole = scratch("train-whole");
    let o = run(&mut train_cmd("rrs", &whole, epochs));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = scratch("train-killed");
    let mut child = train_cmd("rrs", &killed, epochs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed.join("checkpoint.safetensors");
    while !ckpt.is_file() {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !killed.join("adapter_model.safetensors").exists(),
        "the run finished before it could be killed; raise `epochs`"
    );
    let o = run(&mut train_cmd("rrs", &killed, epochs));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = read_json(killed.join("train.json"));
    assert!(report["resumed_from"].as_u64().is_some(), "{report}");
    let a = std::fs::read(whole.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed adapter differs from the uninterrupted one");
    for d in [whole, killed] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_training_arguments_fail_cleanly() {
    let out = scratch("train-bad");
    let err = fails(train_cmd("rrs", &out, 1).args(["--targets", "qkv"]));
    assert!(err.contains("unknown target module 'qkv'"), "{err}");
    let err = fails(train_cmd("rrs", &out, 1).args(["--layers", "0-5"]));
    assert!(err.contains("does not exist"), "{err}");
    // A finished run's directory refuses a different configuration.
    assert!(run(&mut train_cmd("rrs", &out, 1)).status.success());
    let err = fails(&mut train_cmd("rrs", &out, 2));
    assert!(err.contains("different training run"), "{err}");
    let err = fails(
        bin()
            .args(["generate", "--model", &tiny_text_model(), "--prompt", "hi"])
            .args(["--adapter", "/nonexistent"]),
    );
    assert!(err.contains("adapter"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn shallow_parallel_draws_unpaired_benign_and_self_generated_baselines_fail_cleanly() {
    let out = scratch("train-parallel");
    // shallow-parallel needs its unpaired benign questions, and they must not be the rewrites.
    let e = fails(&mut train_cmd("shallow-parallel", &out, 2));
    assert!(e.contains("--benign"), "{e}");
    let e = fails(
        train_cmd("shallow-parallel", &out, 2)
            .arg("--benign")
            .arg(mirror_set()),
    );
    assert!(e.contains("benign questions not in the mirror set"), "{e}");
    let harmless = root().join("../shared/data/harmless_train.jsonl");
    let o = run(train_cmd("shallow-parallel", &out, 2)
        .arg("--benign")
        .arg(&harmless));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value = read_json(out.join("config.json"));
    assert_eq!(config["method"], "shallow-parallel");
    let report: serde_json::Value = read_json(out.join("train.json"));
    assert_eq!(report["targets"]["benign_samples"], 4);
    assert!(out.join("adapter_model.safetensors").is_file());
    // The run recorded its targets; started again on other targets, it refuses to go on.
    let recorded = out.join("targets.json");
    let mut t: serde_json::Value = read_json(&recorded);
    assert_eq!(t["samples"], 8);
    t["sha256"] = "0".repeat(64).into();
    std::fs::write(&recorded, t.to_string()).unwrap();
    let e = fails(
        train_cmd("shallow-parallel", &out, 2)
            .arg("--benign")
            .arg(&harmless),
    );
    assert!(e.contains("training targets differ"), "{e}");
    let _ = std::fs::remove_dir_all(&out);

    // The random model never refuses, so full SFT has no refusal to learn from: it says so
    // instead of training on non-refusals; deep says it needs an attack.
    let out = scratch("train-sft");
    let e = fails(&mut train_cmd("sft", &out, 1));
    assert!(e.contains("no harmful sample"), "{e}");
    let e = fails(&mut train_cmd("deep", &out, 1));
    assert!(e.contains("--attack"), "{e}");
    let e = fails(train_cmd("rrs", &out, 1).args(["--attack", "none"]));
    assert!(e.contains("--attack"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn merge_adapter_writes_a_model_and_runs_record_the_adapter() {
    let adapter = root().join("crates/earguard-train/tests/fixtures/peft-tiny-qwen2");
    let dir = scratch("merge-adapter");
    let merged = dir.join("merged");
    let o = run(bin()
        .args([
            "-q",
            "merge-adapter",
            "--model",
            &tiny_text_model(),
            "--adapter",
        ])
        .arg(&adapter)
        .arg("-o")
        .arg(&merged));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The merged checkpoint is a model: it generates what the base + adapter generates.
    let gen = |model: &str, adapter: Option<&Path>| {
        let mut c = bin();
        c.args([
            "-q",
            "generate",
            "--json",
            "--max-tokens",
            "6",
            "--model",
            model,
        ])
        .args(["--prompt", "How do I bake bread?"]);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["text"].as_str().unwrap().to_string()
    };
    assert_eq!(
        gen(merged.to_str().unwrap(), None),
        gen(&tiny_text_model(), Some(&adapter))
    );
    // Not over an existing directory.
    let e = fails(
        bin()
            .args(["merge-adapter", "--model", &tiny_text_model(), "--adapter"])
            .arg(&adapter)
            .arg("-o")
            .arg(&merged),
    );
    assert!(e.contains("exists"), "{e}");

    // An eval run's identity covers the adapter, so a run directory is not resumed with
    // another adapter (or none).
    let set = dir.join("set.jsonl");
    std::fs::write(
        &set,
        "{\"id\": \"a\", \"label\": \"benign\", \"text\": \"Name a river.\"}\n",
    )
    .unwrap();
    let eval = |out: &Path, adapter: Option<&Path>| {
        let mut c = bin();
        c.args([
            "-q",
            "eval",
            "--model",
            &tiny_text_model(),
            "--max-tokens",
            "2",
            "--data",
        ])
        .arg(&set)
        .arg("-o")
        .arg(out);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        c
    };
    let with = dir.join("with");
    let o = run(&mut eval(&with, Some(&adapter)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value = read_json(with.join("config.json"));
    let identity = config["model_identity"].as_str().unwrap();
    assert!(identity.contains("+lora:"), "{identity}");
    fails(&mut eval(&with, None));

    // A steering vector fitted on the checkpoint stacks on the checkpoint + adapter; one
    // fitted with the adapter on is refused on the bare checkpoint (without --force).
    let fit = |out: &Path, adapter: Option<&Path>| {
        let mut c = bin();
        c.args([
            "-q",
            "fit",
            "refusal-direction",
            "--model",
            &tiny_text_model(),
            "--data",
        ])
        .arg(mirror_set())
        .arg("-o")
        .arg(out);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        c
    };
    let generate_with = |vec: &Path, adapter: Option<&Path>| {
        let mut c = bin();
        c.args([
            "-q",
            "generate",
            "--max-tokens",
            "2",
            "--model",
            &tiny_text_model(),
        ])
        .args(["--prompt", "Hi"])
        .arg("--defense")
        .arg(format!("actadd={}", vec.display()));
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        c
    };
    let (plain, adapted) = (dir.join("rd"), dir.join("rd-lora"));
    ok(&mut fit(&plain, None));
    ok(&mut fit(&adapted, Some(&adapter)));
    ok(&mut generate_with(&plain, Some(&adapter)));
    ok(&mut generate_with(&adapted, Some(&adapter)));
    let e = fails(&mut generate_with(&adapted, None));
    assert!(e.contains("different checkpoint"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The report's table as (separation, gap) per epoch.
fn separation_table(out: &Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| epoch"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f[2].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect()
}

#[test]
fn rrs_draws_harmful_and_benign_apart_to_its_targets() {
    // Long enough on the tiny model (no penalty, no dropout) for the representations to reach
    // their targets: the gap between the groups' means goes from the frozen model's to the
    // targets' (2ΔVˢ further apart), and the groups separate.
    let out = scratch("train-rrs-apart");
    let o = run(bin()
        .args([
            "-q",
            "train",
            "rrs",
            "--model",
            &tiny_text_model(),
            "--data",
        ])
        .arg(mirror_set())
        .arg("-o")
        .arg(&out)
        .args([
            "--epochs",
            "40",
            "--batch-size",
            "2",
            "--lr",
            "1e-2",
            "--rank",
            "8",
        ])
        .args([
            "--penalty",
            "0",
            "--dropout",
            "0",
            "--checkpoint-every",
            "100",
        ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = read_json(out.join("train.json"));
    let target = report["targets"]["target_gap"].as_f64().unwrap();
    let table = separation_table(&out);
    assert_eq!(table.len(), 41);
    let (first, last) = (table[0], table[40]);
    assert!(
        (last.1 - target).abs() < 0.1 * target,
        "gap {} → {} (targets {target})",
        first.1,
        last.1
    );
    assert!(
        last.0 > 3.0 * first.0,
        "separation {} → {}",
        first.0,
        last.0
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn audio_text_training_runs_on_an_audio_model_and_refuses_what_it_cannot_do() {
    // Two mirror pairs asked aloud: the paper's setting (the spoken question, then the pool's
    // text instruction), on the tiny random Qwen2-Audio with its audio encoder frozen.
    let dir = scratch("train-audio");
    let clips = [
        common::model_fixtures().join("speech-16k.wav"),
        common::model_fixtures().join("hf/tiny-qwen2-audio/synthetic.wav"),
    ];
    let manifest = dir.join("spoken.jsonl");
    let mut lines = String::new();
    for p in 0..2 {
        for (label, clip) in [("harmful", &clips[0]), ("benign", &clips[1])] {
            lines.push_str(&format!(
                "{}\n",
                serde_json::json!({"id": format!("{p}{label}"), "label": label,
                    "pair_id": format!("p{p}"), "text": format!("question {p}"),
                    "audio": clip})
            ));
        }
    }
    std::fs::write(&manifest, lines).unwrap();
    let train = |model: &str, mode: &str, data: &Path, out: &Path| {
        let mut c = bin();
        c.args([
            "-q", "train", "rrs", "--model", model, "--mode", mode, "--data",
        ])
        .arg(data)
        .arg("-o")
        .arg(out)
        .args([
            "--epochs",
            "3",
            "--batch-size",
            "2",
            "--lr",
            "1e-2",
            "--rank",
            "4",
        ]);
        c
    };
    let out = dir.join("rrs");
    let o = run(&mut train(
        &common::tiny_audio_model(),
        "audio-text",
        &manifest,
        &out,
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value = read_json(out.join("config.json"));
    assert_eq!(config["mode"], "audio-text");
    assert!(out.join("adapter_model.safetensors").is_file());
    // Harmful and benign share their texts but are spoken by different clips, so their
    // representations differ only if the probe heard the audio.
    let table = separation_table(&out);
    assert_eq!(table.len(), 4);
    assert!(table[0].1 > 0.0, "{table:?}");

    // What cannot be done is said: a text prompt set, audio-only, a text model.
    let e = fails(&mut train(
        &common::tiny_audio_model(),
        "audio-text",
        &mirror_set(),
        &dir.join("x"),
    ));
    assert!(e.contains("has no audio"), "{e}");
    let e = fails(&mut train(
        &common::tiny_audio_model(),
        "audio-only",
        &manifest,
        &dir.join("y"),
    ));
    assert!(e.contains("audio-text"), "{e}");
    let e = fails(&mut train(
        &tiny_text_model(),
        "audio-text",
        &manifest,
        &dir.join("z"),
    ));
    assert!(e.contains("audio"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
