//! Bad input gets a clear error naming the file and the problem, never a panic: missing,
//! truncated or corrupt GGUF / safetensors, malformed config.json, unknown architecture,
//! prompts longer than the context, edits of the wrong shape.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use earguard_model::{HookKind, InterventionPlan, Logits, ModelError, Positions};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("earguard-bad-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load_err(path: &Path) -> String {
    match earguard_model::load(path.to_str().unwrap()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

fn tiny_qwen2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/tiny-qwen2")
}

#[test]
fn missing_model_names_the_path_and_the_fix() {
    let err = load_err(Path::new("/nonexistent/model.gguf"));
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("no such model"),
        "{err}"
    );
}

#[test]
fn non_gguf_bytes_are_refused() {
    let dir = tmp("notgguf");
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"this is not a gguf file at all").unwrap();
    let err = load_err(&path);
    assert!(
        err.contains("model.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );
    std::fs::write(&path, b"GG").unwrap();
    assert!(load_err(&path).contains("too short"));
}

#[test]
fn truncated_gguf_is_refused_with_the_tensor_named() {
    let src = earguard_model::loader::models_dir().join("smollm2-135m-instruct/model.gguf");
    if !src.is_file() {
        eprintln!("skipping: {} not found", src.display());
        return;
    }
    let bytes = std::fs::read(&src).unwrap();
    let dir = tmp("trunc");
    let path = dir.join("model.gguf");
    // Cut inside the tensor data, and inside the header.
    for cut in [bytes.len() / 2, 2000] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(&path);
        assert!(err.contains("model.gguf"), "{err}");
        assert!(
            err.contains("truncated") || err.contains("corrupt GGUF header"),
            "{err}"
        );
    }
}

#[test]
fn corrupt_or_missing_safetensors_and_config_are_refused() {
    let dir = tmp("hf");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny_qwen2().join(f), dir.join(f)).unwrap();
    }
    let err = load_err(&dir);
    assert!(err.contains("has no model.safetensors"), "{err}");

    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");

    let good = std::fs::read(tiny_qwen2().join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &good[..good.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model.safetensors"), "{err}");

    std::fs::write(dir.join("model.safetensors"), &good).unwrap();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"qwen2\", ").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("malformed"),
        "{err}"
    );

    let cfg = std::fs::read_to_string(tiny_qwen2().join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"qwen2\"", "\"mamba\""),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("unsupported architecture 'mamba'"), "{err}");

    // Hidden size that disagrees with the weights.
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"hidden_size\": 64", "\"hidden_size\": 32"),
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn over_long_prompts_and_wrong_shaped_edits_are_refused() {
    let model = earguard_model::load(tiny_qwen2().to_str().unwrap()).unwrap();
    let context = model.decoder.config().context_length;
    let long = "hello ".repeat(context * 2);
    let err = model.encode_chat(None, &long).unwrap_err();
    assert!(matches!(err, ModelError::PromptTooLong { .. }), "{err}");

    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let wrong = Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap();
    let plan = InterventionPlan::new().add(HookKind::ResidPost.at(0), Positions::Last, wrong);
    let mut cache = model.decoder.new_cache(vec![0]);
    let err = model
        .decoder
        .forward(&ids, &mut cache, &plan, Logits::Last)
        .unwrap_err();
    assert!(err.to_string().contains("hidden size is 64"), "{err}");

    let bad_id = Tensor::new(&[[100_000u32]], &Device::Cpu).unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    let err = model
        .decoder
        .forward(&bad_id, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

/// An edit that overflows the activations is an error naming the cause, in every logits mode
/// and in generation, never NaN logits turned into (empty) text.
#[test]
fn non_finite_activations_are_an_error() {
    let model = earguard_model::load(tiny_qwen2().to_str().unwrap()).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    // 1e30 is finite, but RMSNorm's sum of squares overflows and would silently give zeros.
    for value in [1e30f32, f32::NAN] {
        let bad = Tensor::full(value, 64, &Device::Cpu).unwrap();
        let plan = InterventionPlan::new().add(HookKind::ResidPost.at(0), Positions::All, bad);
        for logits in [Logits::Last, Logits::All, Logits::None] {
            let mut cache = model.decoder.new_cache(vec![0]);
            let err = model
                .decoder
                .forward(&ids, &mut cache, &plan, logits)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ModelError::NonFinite {
                        row: 0,
                        edits: 1,
                        ..
                    }
                ),
                "{value}: {err}"
            );
            assert!(err.to_string().contains("activation edits"), "{err}");
        }
    }
    let huge = Tensor::full(1e30f32, 64, &Device::Cpu).unwrap();
    let plan = InterventionPlan::new().add(HookKind::ResidPost.at(0), Positions::All, huge);
    let prompt = earguard_model::Prompt::text(model.encode_chat(None, "Hello").unwrap());
    let request = earguard_model::generate::GenerateRequest {
        max_tokens: 4,
        sampling: Default::default(),
        stop_tokens: &[],
        pad_token: 0,
    };
    let err = earguard_model::generate::generate_batch(
        &model.decoder,
        std::slice::from_ref(&prompt),
        &request,
        &plan,
        None,
        |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, ModelError::NonFinite { .. }), "{err}");
    // The same forward without the edit is fine.
    let mut cache = model.decoder.new_cache(vec![0]);
    model
        .decoder
        .forward(&ids, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap();
}

/// A FIFO (or device) named as the model is refused at once instead of blocking on a read.
#[cfg(unix)]
#[test]
fn a_fifo_as_model_is_refused_without_reading() {
    let dir = tmp("fifo");
    let fifo = dir.join("model.gguf");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipping: mkfifo unavailable");
        return;
    }
    for path in [fifo.as_path(), Path::new("/dev/zero")] {
        let err = load_err(path);
        assert!(err.contains("not a regular file"), "{err}");
    }
    // A directory whose model.gguf is a FIFO.
    let err = load_err(&dir);
    assert!(err.contains("not a regular file"), "{err}");
}
