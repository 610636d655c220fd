//! Dense path against HF transformers (`Qwen2ForCausalLM`, `LlamaForCausalLM`) on tiny random
//! checkpoints: per-layer block outputs, final norm and logits, a left-padded batch, and
//! greedy decoding through the KV cache. Fixtures: scripts/make_fixtures.py (see
//! tests/fixtures/hf/README.md). Tolerance: 1e-4 absolute, f32.

mod common;
use common::{fixture, load_decoder as load, max_diff};

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use earguard_model::weights::{safetensor_files, SafeTensorWeights, WeightStore};
use earguard_model::{
    Decoder, DecoderConfig, HookKind, HookPoint, InterventionPlan, Logits, Positions,
};

const TOL: f32 = 1e-4;

fn all_positions_plan(n_layers: usize) -> InterventionPlan {
    let mut plan = InterventionPlan::new().capture(HookPoint::FinalNorm, Positions::All);
    for l in 0..n_layers {
        plan = plan.capture(HookKind::ResidPost.at(l), Positions::All);
    }
    plan
}

fn single_sequence(name: &str) {
    let (dec, exp) = load(name);
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let n_layers = dec.config().n_layers;
    let mut cache = dec.new_cache(vec![0]);
    let out = dec
        .forward(&ids, &mut cache, &all_positions_plan(n_layers), Logits::All)
        .unwrap();
    for l in 0..n_layers {
        let d = max_diff(
            out.captures.get(HookKind::ResidPost.at(l)).unwrap(),
            &exp[&format!("resid_post.{l}")],
        );
        assert!(d < TOL, "{name}: resid_post.{l} differs by {d}");
    }
    let d = max_diff(
        out.captures.get(HookPoint::FinalNorm).unwrap(),
        &exp["final_norm"],
    );
    assert!(d < TOL, "{name}: final_norm differs by {d}");
    let d = max_diff(out.logits.as_ref().unwrap(), &exp["logits"]);
    assert!(d < TOL, "{name}: logits differ by {d}");
}

/// Left-padded batch: compare only real positions of each row.
fn left_padded_batch(name: &str) {
    let (dec, exp) = load(name);
    let ids = exp["batch.input_ids"].to_dtype(DType::U32).unwrap();
    let mask: Vec<Vec<i64>> = exp["batch.attention_mask"].to_vec2().unwrap();
    let pad: Vec<usize> = mask
        .iter()
        .map(|r| r.iter().take_while(|&&m| m == 0).count())
        .collect();
    let n_layers = dec.config().n_layers;
    let mut cache = dec.new_cache(pad.clone());
    let out = dec
        .forward(&ids, &mut cache, &all_positions_plan(n_layers), Logits::All)
        .unwrap();
    let seq = ids.dim(1).unwrap();
    for (row, &p) in pad.iter().enumerate() {
        let real = |t: &Tensor| t.i((row, p..seq)).unwrap();
        for l in 0..n_layers {
            let got = out.captures.get(HookKind::ResidPost.at(l)).unwrap();
            let d = max_diff(&real(got), &real(&exp[&format!("batch.resid_post.{l}")]));
            assert!(d < TOL, "{name}: row {row} resid_post.{l} differs by {d}");
        }
        let d = max_diff(
            &real(out.logits.as_ref().unwrap()),
            &real(&exp["batch.logits"]),
        );
        assert!(d < TOL, "{name}: row {row} logits differ by {d}");
    }
}

/// Greedy decoding with the KV cache: the same 8 tokens and per-step logits as HF generate.
fn greedy_with_cache(name: &str) {
    let (dec, exp) = load(name);
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let want: Vec<u32> = exp["greedy_tokens"]
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let plan = InterventionPlan::new();
    let mut cache = dec.new_cache(vec![0]);
    let mut logits = dec
        .forward(&ids, &mut cache, &plan, Logits::Last)
        .unwrap()
        .logits
        .unwrap();
    let mut got = Vec::new();
    for step in 0..want.len() {
        let d = max_diff(
            &logits.squeeze(0).unwrap(),
            &exp["greedy_logits"].i((0, step)).unwrap(),
        );
        assert!(d < TOL, "{name}: step {step} logits differ by {d}");
        let next = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        got.push(next);
        let input = Tensor::new(&[[next]], &Device::Cpu).unwrap();
        logits = dec
            .forward(&input, &mut cache, &plan, Logits::Last)
            .unwrap()
            .logits
            .unwrap();
    }
    assert_eq!(got, want, "{name}: greedy tokens differ");
}

#[test]
fn qwen2_single_sequence_matches_hf() {
    single_sequence("tiny-qwen2");
}

#[test]
fn llama_single_sequence_matches_hf() {
    single_sequence("tiny-llama");
}

#[test]
fn qwen2_left_padded_batch_matches_hf() {
    left_padded_batch("tiny-qwen2");
}

#[test]
fn llama_left_padded_batch_matches_hf() {
    left_padded_batch("tiny-llama");
}

#[test]
fn qwen2_greedy_with_cache_matches_hf() {
    greedy_with_cache("tiny-qwen2");
}

#[test]
fn llama_greedy_with_cache_matches_hf() {
    greedy_with_cache("tiny-llama");
}

/// bf16 and f16 checkpoints load (widened to f32) and stay close to the f32 reference.
#[test]
fn half_precision_checkpoints_load() {
    let (_, exp) = load("tiny-qwen2");
    let src = fixture("tiny-qwen2");
    for dtype in [DType::BF16, DType::F16] {
        let dir =
            std::env::temp_dir().join(format!("earguard-half-{dtype:?}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let weights =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        let half: HashMap<String, Tensor> = weights
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&half, dir.join("model.safetensors")).unwrap();
        let cfg_path = dir.join("config.json");
        let cfg =
            DecoderConfig::from_hf_json(&std::fs::read_to_string(&cfg_path).unwrap(), &cfg_path)
                .unwrap();
        let store = WeightStore::SafeTensors(
            SafeTensorWeights::open(safetensor_files(&dir).unwrap()).unwrap(),
        );
        assert_eq!(store.quantization(), format!("{dtype:?}").to_lowercase());
        let dec = Decoder::load(cfg, &store, "").unwrap();
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mut cache = dec.new_cache(vec![0]);
        let out = dec
            .forward(&ids, &mut cache, &InterventionPlan::new(), Logits::All)
            .unwrap();
        let d = max_diff(out.logits.as_ref().unwrap(), &exp["logits"]);
        // Rounding the weights to 8 (bf16) or 11 (f16) mantissa bits moves logits a little.
        assert!(d < 0.5, "{dtype:?}: logits differ by {d}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
