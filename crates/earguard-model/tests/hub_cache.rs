//! `ORG/NAME` resolves offline from a Hugging Face hub cache laid out as the hub client leaves
//! it (`models--ORG--NAME/{blobs,refs/main,snapshots/<rev>/}`, snapshot files linked into
//! `blobs/`), for HF directories and GGUF files; a missing model is an error naming where it
//! looked. The cache is built in a temp dir from the committed tiny fixture and (when
//! installed) the real SmolLM2 GGUF, and loaded by the real loader.
//!
//! One test function: it sets process-wide environment variables (HF_HUB_CACHE,
//! EARGUARD_MODELS) that the loader reads.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use earguard_model::{InterventionPlan, Logits, Model};

const REV: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// Put `files` (name, source) into `cache` as repository `org/name` at revision REV: each file
/// a blob named by its index, linked from the snapshot, as the hub client does.
fn cache_repo(cache: &Path, repo: &str, files: &[(&str, PathBuf)]) -> PathBuf {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = dir.join("snapshots").join(REV);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(dir.join("refs/main"), REV).unwrap();
    for (i, (name, src)) in files.iter().enumerate() {
        let blob = dir.join("blobs").join(format!("blob{i}"));
        if !blob.exists() {
            // A link to the source rather than a copy where the source is large.
            if std::fs::metadata(src).unwrap().len() > 16 << 20 {
                std::os::unix::fs::symlink(src, &blob).unwrap();
            } else {
                std::fs::copy(src, &blob).unwrap();
            }
        }
        let link = snapshot.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), &link).unwrap();
        }
    }
    snapshot
}

fn logits(model: &Model) -> Tensor {
    let ids = Tensor::new(&[[497u32, 292, 198, 473, 301]], &Device::Cpu).unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    let out = model
        .decoder
        .forward(&ids, &mut cache, &InterventionPlan::new(), Logits::All)
        .unwrap();
    out.logits.unwrap()
}

fn load_err(spec: &str) -> String {
    match earguard_model::load(spec) {
        Ok(_) => panic!("'{spec}' loaded but should not"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn repository_ids_resolve_from_the_hub_cache_offline() {
    let smollm = earguard_model::loader::models_dir().join("smollm2-135m-instruct/model.gguf");
    let root = std::env::temp_dir().join(format!("earguard-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cache = root.join("hub");
    let models = root.join("models");
    std::fs::create_dir_all(&models).unwrap();
    // Nothing from the real environment: an empty models dir and our cache.
    std::env::set_var("EARGUARD_MODELS", &models);
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::remove_var("HF_HOME");

    // An HF directory (config.json + safetensors + tokenizer), through blob links.
    let src = fixture("tiny-qwen2");
    let files: Vec<(&str, PathBuf)> = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ]
    .iter()
    .map(|f| (*f, src.join(f)))
    .collect();
    let snapshot = cache_repo(&cache, "fixture-org/tiny-qwen2", &files);
    let cached = earguard_model::load("fixture-org/tiny-qwen2").unwrap();
    let direct = earguard_model::load(src.to_str().unwrap()).unwrap();
    assert_eq!(cached.info.name, "fixture-org/tiny-qwen2");
    assert_eq!(cached.info.path, snapshot);
    assert_eq!(cached.info.format, "safetensors");
    assert_eq!(cached.info.identity, direct.info.identity);
    assert!(cached.chat_template.is_some());
    // Same weights: the logits of a few tokens agree exactly.
    let diff = (logits(&cached) - logits(&direct))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);

    // HF_HOME/hub is the cache when HF_HUB_CACHE is unset.
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", &root);
    assert_eq!(
        earguard_model::loader::resolve("fixture-org/tiny-qwen2").unwrap(),
        snapshot
    );

    // Missing repository: the error names the cache folder it looked for, and says nothing is
    // downloaded.
    let err = load_err("fixture-org/absent");
    assert!(
        err.contains(
            &cache
                .join("models--fixture-org--absent")
                .display()
                .to_string()
        ) && err.contains("not in the Hugging Face cache")
            && err.contains("nothing is downloaded"),
        "{err}"
    );
    // A missing file in a present snapshot, and a dangling refs/main.
    let err = load_err("fixture-org/tiny-qwen2/model.gguf");
    assert!(
        err.contains(&snapshot.join("model.gguf").display().to_string()),
        "{err}"
    );
    let repo_dir = cache.join("models--fixture-org--tiny-qwen2");
    std::fs::write(repo_dir.join("refs/main"), "ffffffff").unwrap();
    let err = load_err("fixture-org/tiny-qwen2");
    assert!(
        err.contains("ffffffff") && err.contains("snapshot is missing"),
        "{err}"
    );
    std::fs::remove_file(repo_dir.join("refs/main")).unwrap();
    let err = load_err("fixture-org/tiny-qwen2");
    assert!(
        err.contains("refs/main") && err.contains(REV),
        "names the snapshots present: {err}"
    );
    std::fs::write(repo_dir.join("refs/main"), REV).unwrap();

    // A models/ entry of the same name wins over the cache (paths and short names first).
    let local = models.join("fixture-org/tiny-qwen2");
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&src, &local).unwrap();
    assert_eq!(
        earguard_model::loader::resolve("fixture-org/tiny-qwen2").unwrap(),
        local
    );

    // A GGUF repository holding several files: ORG/NAME/FILE names one of them.
    if !smollm.is_file() {
        assert!(
            std::env::var_os("EARGUARD_REQUIRE_MODELS").is_none(),
            "{} is required",
            smollm.display()
        );
        eprintln!("skipping the GGUF part: {} not found", smollm.display());
    } else {
        let snapshot = cache_repo(
            &cache,
            "fixture-org/SmolLM2-135M-Instruct-GGUF",
            &[
                ("smollm2-135m-instruct-q4_1.gguf", smollm.clone()),
                ("README.md", fixture("README.md")),
            ],
        );
        let model = earguard_model::load(
            "fixture-org/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_1.gguf",
        )
        .unwrap();
        assert_eq!(model.info.name, "fixture-org/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(model.info.format, "gguf");
        assert_eq!(
            model.info.path,
            snapshot.join("smollm2-135m-instruct-q4_1.gguf")
        );
        assert_eq!(model.info.n_layers, 30);
        // The bare repository id works too: the snapshot's only .gguf is the model.
        let model = earguard_model::load("fixture-org/SmolLM2-135M-Instruct-GGUF").unwrap();
        assert_eq!(model.info.format, "gguf");
    }
    let _ = std::fs::remove_dir_all(&root);
}
