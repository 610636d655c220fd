//! Helpers shared by the integration tests (each test file includes this with `mod common;`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use earguard_model::weights::{safetensor_files, SafeTensorWeights, WeightStore};
use earguard_model::{Decoder, DecoderConfig};

/// Largest absolute element-wise difference, in f32, of two same-shaped tensors.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The `input_ids` of an HF fixture's expected.safetensors, flattened.
pub fn expected_ids(exp: &HashMap<String, Tensor>) -> Vec<u32> {
    exp["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A tiny HF fixture's directory (tests/fixtures/hf/NAME).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// A tiny HF fixture's decoder (loaded directly from its safetensors) and its
/// expected.safetensors (HF's outputs).
pub fn load_decoder(name: &str) -> (Decoder, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let cfg_path = dir.join("config.json");
    let cfg = DecoderConfig::from_hf_json(&std::fs::read_to_string(&cfg_path).unwrap(), &cfg_path)
        .unwrap();
    let store =
        WeightStore::SafeTensors(SafeTensorWeights::open(safetensor_files(&dir).unwrap()).unwrap());
    let dec = Decoder::load(cfg, &store, "").unwrap();
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    (dec, expected)
}
