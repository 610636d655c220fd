//! Helpers shared by the `earguard` binary's test files: fixture paths, scratch directories,
//! and running the binary with a check that it never panics.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn model_fixtures() -> PathBuf {
    root().join("crates/earguard-model/tests/fixtures")
}

fn fixture_model(name: &str) -> String {
    model_fixtures()
        .join("hf")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The tiny random Qwen2 checkpoint (text).
pub fn tiny_text_model() -> String {
    fixture_model("tiny-qwen2")
}

/// The tiny random Qwen2-Audio checkpoint.
pub fn tiny_audio_model() -> String {
    fixture_model("tiny-qwen2-audio")
}

/// A fresh, empty directory for one test (`tag` names it).
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("earguard-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run the command; whatever its status, it must not have panicked.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run earguard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "earguard panicked: {stderr}");
    out
}

/// Succeeds (else the test fails with its stderr); returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "earguard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with exit status 1 and an error message (never a panic); returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure: {stderr}"
    );
    assert!(stderr.contains("error: "), "{stderr}");
    stderr
}
