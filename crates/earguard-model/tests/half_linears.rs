//! Large f16/bf16 checkpoints keep their linear weights 16-bit (a 7B Qwen2-Audio widened to f32
//! would need ~33 GB). `EARGUARD_WEIGHTS=f16` forces that policy on the tiny fixture (this file
//! is its own test process, so setting the variable affects no other test); the logits must
//! stay close to the same checkpoint widened to f32 and to HF's f32 reference.

mod common;
use common::max_diff;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use earguard_model::weights::{safetensor_files, SafeTensorWeights, WeightStore};
use earguard_model::{Decoder, DecoderConfig, InterventionPlan, Logits};

fn logits(dir: &Path, ids: &Tensor) -> (String, Tensor) {
    let cfg_path = dir.join("config.json");
    let cfg = DecoderConfig::from_hf_json(&std::fs::read_to_string(&cfg_path).unwrap(), &cfg_path)
        .unwrap();
    let store =
        WeightStore::SafeTensors(SafeTensorWeights::open(safetensor_files(dir).unwrap()).unwrap());
    let dec = Decoder::load(cfg, &store, "").unwrap();
    let mut cache = dec.new_cache(vec![0]);
    let out = dec
        .forward(ids, &mut cache, &InterventionPlan::new(), Logits::All)
        .unwrap();
    (store.quantization(), out.logits.unwrap())
}

#[test]
fn half_linears_match_widened_weights() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/tiny-qwen2");
    let exp =
        candle_core::safetensors::load(src.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let dir = std::env::temp_dir().join(format!("earguard-half-linears-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let bf16: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    candle_core::safetensors::save(&bf16, dir.join("model.safetensors")).unwrap();

    // This test binary has one test: no other thread reads the environment.
    std::env::set_var("EARGUARD_WEIGHTS", "f32");
    let (q_wide, wide) = logits(&dir, &ids);
    std::env::set_var("EARGUARD_WEIGHTS", "f16");
    let (q_half, half) = logits(&dir, &ids);
    assert_eq!(q_wide, "bf16");
    assert_eq!(q_half, "bf16 (linear layers kept f16)");
    let d = max_diff(&half, &wide);
    let d_ref = max_diff(&half, &exp["logits"]);
    println!("f16 linears vs widened bf16: {d:.2e}; vs HF f32: {d_ref:.2e}");
    // f16 activations in the matmuls (11-bit mantissa) on top of bf16 weights.
    assert!(d < 5e-2, "f16 linears moved logits by {d}");
    assert!(d_ref < 0.5, "f16 linears vs HF: {d_ref}");
    std::fs::remove_dir_all(&dir).ok();
}
