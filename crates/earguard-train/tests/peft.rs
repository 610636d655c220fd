//! PEFT-format adapters: fixtures written by Python PEFT (scripts/make_lora_fixture.py) on the
//! tiny random Qwen2 give the same logits here within 1e-4 (f32); adapters earguard writes read
//! back identically; unsupported PEFT features are refused with a clear error.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use earguard_model::weights::{safetensor_files, SafeTensorWeights, WeightStore};
use earguard_model::{Decoder, DecoderConfig, InterventionPlan, Logits, Proj};
use earguard_train::{apply_adapter, Adapter};

fn here(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn tiny() -> Decoder {
    let dir = here("../earguard-model/tests/fixtures/hf/tiny-qwen2");
    let p = dir.join("config.json");
    let cfg = DecoderConfig::from_hf_json(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
    let store =
        WeightStore::SafeTensors(SafeTensorWeights::open(safetensor_files(&dir).unwrap()).unwrap());
    Decoder::load(cfg, &store, "").unwrap()
}

fn logits(dec: &Decoder, ids: &Tensor) -> Tensor {
    let mut cache = dec.new_cache(vec![0]);
    dec.forward(ids, &mut cache, &InterventionPlan::new(), Logits::All)
        .unwrap()
        .logits
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn peft_adapters_give_pefts_logits() {
    for (name, rank, alpha, rslora, items) in [
        ("peft-tiny-qwen2", 4, 8.0, false, 14),
        ("peft-tiny-qwen2-rslora", 2, 3.0, true, 2),
    ] {
        let dir = here("tests/fixtures").join(name);
        let exp =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mut dec = tiny();
        let plain = logits(&dec, &ids);
        let cfg = apply_adapter(&mut dec, &dir).unwrap();
        assert_eq!(
            (cfg.rank, cfg.alpha, cfg.rslora),
            (rank, alpha, rslora),
            "{name}"
        );
        let adapter = Adapter::load_peft(&dir, &Device::Cpu).unwrap();
        assert_eq!(adapter.items.len(), items, "{name}");
        let got = logits(&dec, &ids);
        let d = max_diff(&got, &exp["logits"]);
        eprintln!(
            "{name}: max |earguard - PEFT| = {d:.2e}, adapter effect {:.3}",
            max_diff(&plain, &exp["logits"])
        );
        assert!(d < 1e-4, "{name}: logits differ from PEFT's by {d}");
        assert!(
            max_diff(&plain, &exp["logits"]) > 0.1,
            "{name}: the adapter should matter"
        );
    }
    // Only layer 1's q/v carry the rslora adapter.
    let mut dec = tiny();
    apply_adapter(&mut dec, &here("tests/fixtures/peft-tiny-qwen2-rslora")).unwrap();
    assert!(dec.linear(1, Proj::Q).unwrap().lora().is_some());
    assert!(dec.linear(0, Proj::Q).unwrap().lora().is_none());
    assert!(dec.linear(1, Proj::K).unwrap().lora().is_none());
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("earguard-peft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Save what was read and read it again: same tensors, same logits. Writes
/// `expected.safetensors` too, so `scripts/make_lora_fixture.py --check DIR` can load the
/// earguard-written adapter with PEFT (set EARGUARD_KEEP_ADAPTER=DIR to keep a copy there).
#[test]
fn written_adapters_read_back() {
    let src = here("tests/fixtures/peft-tiny-qwen2");
    let exp =
        candle_core::safetensors::load(src.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let adapter = Adapter::load_peft(&src, &Device::Cpu).unwrap();
    let out = std::env::var_os("EARGUARD_KEEP_ADAPTER")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch("roundtrip"));
    adapter.save_peft(&out, "tiny-qwen2").unwrap();
    let mut dec = tiny();
    apply_adapter(&mut dec, &out).unwrap();
    let got = logits(&dec, &ids);
    let mut tensors = std::collections::HashMap::new();
    tensors.insert("input_ids".to_string(), exp["input_ids"].clone());
    tensors.insert("logits".to_string(), got.clone());
    candle_core::safetensors::save(&tensors, out.join("expected.safetensors")).unwrap();
    assert!(max_diff(&got, &exp["logits"]) < 1e-4);
    let again = Adapter::load_peft(&out, &Device::Cpu).unwrap();
    assert_eq!(again.config.rank, 4);
    for (k, t) in adapter.tensors() {
        assert_eq!(max_diff(&t, &again.tensors()[&k]), 0.0, "{k}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["r"], 4);
    if std::env::var_os("EARGUARD_KEEP_ADAPTER").is_none() {
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn unsupported_or_broken_adapters_are_refused() {
    let src = here("tests/fixtures/peft-tiny-qwen2");
    type Edit = dyn Fn(&mut serde_json::Value);
    let cases: [(&str, &Edit); 4] = [
        ("use_dora", &|v| v["use_dora"] = true.into()),
        ("only LORA", &|v| v["peft_type"] = "IA3".into()),
        ("rank_pattern", &|v| {
            v["rank_pattern"] = serde_json::json!({"q_proj": 8})
        }),
        ("do not have rank", &|v| v["r"] = 8.into()),
    ];
    for (want, edit) in cases {
        let dir = scratch("bad");
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        edit(&mut cfg);
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        let err = Adapter::load_peft(&dir, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "expected '{want}' in: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let err = Adapter::load_peft(Path::new("/nonexistent-adapter"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn a_merged_checkpoint_gives_the_adapted_logits() {
    let base = here("../earguard-model/tests/fixtures/hf/tiny-qwen2");
    let adapter = here("tests/fixtures/peft-tiny-qwen2");
    let out = std::env::temp_dir().join(format!("earguard-merge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let s = earguard_train::merge(&base, &adapter, &out).unwrap();
    assert_eq!(s.merged, 14, "every adapted linear of the fixture");
    assert!(s.copied.iter().any(|f| f == "config.json"));
    assert!(s.copied.iter().any(|f| f == "tokenizer.json"));

    let exp =
        candle_core::safetensors::load(adapter.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let mut adapted = tiny();
    apply_adapter(&mut adapted, &adapter).unwrap();
    let p = out.join("config.json");
    let cfg = DecoderConfig::from_hf_json(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
    let store =
        WeightStore::SafeTensors(SafeTensorWeights::open(safetensor_files(&out).unwrap()).unwrap());
    let merged = Decoder::load(cfg, &store, "").unwrap();
    let (a, m, plain) = (
        logits(&adapted, &ids),
        logits(&merged, &ids),
        logits(&tiny(), &ids),
    );
    // f32 throughout: W + s·BA folded once vs W x + s·B(A x) per call.
    let d = max_diff(&a, &m);
    assert!(d < 1e-5, "merged vs adapter on the fly: {d}");
    assert!(max_diff(&plain, &m) > 1e-3, "the merge changed nothing");

    // An adapter for other layers than the base has is refused, and nothing half-written is
    // taken for a model: the error names the unmatched weight.
    let wrong = std::env::temp_dir().join(format!("earguard-merge-wrong-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&wrong);
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(
        adapter.join("adapter_config.json"),
        wrong.join("adapter_config.json"),
    )
    .unwrap();
    let mut t =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let renamed: std::collections::HashMap<String, Tensor> = t
        .drain()
        .map(|(k, v)| (k.replace("layers.1.", "layers.9."), v))
        .collect();
    candle_core::safetensors::save(&renamed, wrong.join("adapter_model.safetensors")).unwrap();
    let dest = std::env::temp_dir().join(format!("earguard-merge-bad-{}", std::process::id()));
    let err = earguard_train::merge(&base, &wrong, &dest).unwrap_err();
    assert!(err.to_string().contains("layers.9."), "{err}");
    assert!(!dest.exists(), "a failed merge leaves no directory");
    let parent = dest.parent().unwrap();
    let stray = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("earguard-merge-bad")
        });
    assert!(!stray, "nor a partial one");
    for d in [out, wrong, dest] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn merging_into_qwen2_audio_changes_its_language_model_only() {
    // Qwen2-Audio's audio tower has layers with q/k/v/o projections too (`audio_tower.layers.…`):
    // an adapter of the decoder must land on `language_model.model.layers.…` alone.
    let base = here("../earguard-model/tests/fixtures/hf/tiny-qwen2-audio");
    let model = earguard_model::load(base.to_str().unwrap()).unwrap();
    let cfg = earguard_train::LoraConfig {
        rank: 2,
        alpha: 2.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
        layers: None,
        rslora: false,
    };
    let adapter = Adapter::init(&model.decoder, cfg, 1).unwrap();
    for it in &adapter.items {
        let b = Tensor::randn(0f32, 0.5, it.b.dims(), &Device::Cpu).unwrap();
        it.b.set(&b).unwrap();
    }
    let tmp = std::env::temp_dir().join(format!("earguard-merge-audio-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let adir = tmp.join("adapter");
    adapter.save_peft(&adir, "tiny-qwen2-audio").unwrap();
    let out = tmp.join("merged");
    let s = earguard_train::merge(&base, &adir, &out).unwrap();
    assert_eq!(s.merged, adapter.items.len());
    let before =
        candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    let after =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut changed = 0;
    for (k, t) in &before {
        let d = max_diff(
            &t.to_dtype(DType::F32).unwrap(),
            &after[k].to_dtype(DType::F32).unwrap(),
        );
        if k.starts_with("audio_tower.") {
            assert_eq!(d, 0.0, "{k} changed");
        } else if d > 0.0 {
            assert!(k.starts_with("language_model.model.layers."), "{k} changed");
            changed += 1;
        }
    }
    assert_eq!(changed, adapter.items.len());
    let _ = std::fs::remove_dir_all(&tmp);
}
