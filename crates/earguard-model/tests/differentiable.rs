//! The differentiable forward mode ([`Ops::Differentiable`]) against the fused kernels and
//! against HF transformers' logits, on the tiny random fixtures (single sequence, left-padded
//! batch, and a step through the KV cache); and the LoRA delta on `Linear` (zero `B` is a no-op,
//! merging equals the adapter's forward). Tolerances: fused vs composed 1e-5 absolute (same
//! arithmetic, different rounding order), against HF 1e-4 as in hf_parity.rs.

mod common;
use common::{fixture, load_decoder as load, max_diff};

use candle_core::{DType, Device, IndexOp, Tensor};
use earguard_model::weights::{safetensor_files, SafeTensorWeights, WeightStore};
use earguard_model::{Decoder, DecoderConfig, InterventionPlan, Logits, Lora, Ops, Proj};

fn logits(dec: &Decoder, ids: &Tensor, pad: Vec<usize>) -> Tensor {
    let mut cache = dec.new_cache(pad);
    dec.forward(ids, &mut cache, &InterventionPlan::new(), Logits::All)
        .unwrap()
        .logits
        .unwrap()
}

fn with_ops(dec: &Decoder, ops: Ops) -> Decoder {
    let mut d = dec.clone();
    d.set_ops(ops);
    d
}

#[test]
fn composed_ops_match_fused_and_hf() {
    for name in ["tiny-qwen2", "tiny-llama"] {
        let (dec, exp) = load(name);
        let fused = with_ops(&dec, Ops::Fused);
        let diff = with_ops(&dec, Ops::Differentiable);
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let (a, b) = (logits(&fused, &ids, vec![0]), logits(&diff, &ids, vec![0]));
        let d = max_diff(&a, &b);
        assert!(d < 1e-5, "{name}: composed vs fused logits differ by {d}");
        let d = max_diff(&b, &exp["logits"]);
        assert!(d < 1e-4, "{name}: composed logits vs HF differ by {d}");

        // Left-padded batch: per-row RoPE tables and the padding mask.
        let ids = exp["batch.input_ids"].to_dtype(DType::U32).unwrap();
        let mask: Vec<Vec<i64>> = exp["batch.attention_mask"].to_vec2().unwrap();
        let pad: Vec<usize> = mask
            .iter()
            .map(|r| r.iter().take_while(|&&m| m == 0).count())
            .collect();
        let seq = ids.dim(1).unwrap();
        let (a, b) = (
            logits(&fused, &ids, pad.clone()),
            logits(&diff, &ids, pad.clone()),
        );
        for (row, &p) in pad.iter().enumerate() {
            let real = |t: &Tensor| t.i((row, p..seq)).unwrap();
            let d = max_diff(&real(&a), &real(&b));
            assert!(
                d < 1e-5,
                "{name}: row {row}: composed vs fused differ by {d}"
            );
            let d = max_diff(&real(&b), &real(&exp["batch.logits"]));
            assert!(d < 1e-4, "{name}: row {row}: composed vs HF differ by {d}");
        }
    }
}

#[test]
fn composed_rope_handles_the_interleaved_layout() {
    // GGUF Llama checkpoints use interleaved pairs; flip the flag on the fixture (the numbers
    // then differ from HF, but fused and composed must still agree).
    let dir = fixture("tiny-llama");
    let cfg_path = dir.join("config.json");
    let mut cfg =
        DecoderConfig::from_hf_json(&std::fs::read_to_string(&cfg_path).unwrap(), &cfg_path)
            .unwrap();
    cfg.rope_interleaved = true;
    let store =
        WeightStore::SafeTensors(SafeTensorWeights::open(safetensor_files(&dir).unwrap()).unwrap());
    let dec = Decoder::load(cfg, &store, "").unwrap();
    let ids = Tensor::new(&[[3u32, 17, 99, 4, 250, 8]], &Device::Cpu).unwrap();
    let a = logits(&with_ops(&dec, Ops::Fused), &ids, vec![0]);
    let b = logits(&with_ops(&dec, Ops::Differentiable), &ids, vec![0]);
    let d = max_diff(&a, &b);
    assert!(d < 1e-5, "interleaved: composed vs fused differ by {d}");
}

fn random_lora(dec: &Decoder, layer: usize, proj: Proj, b_std: f32) -> Lora {
    let lin = dec.linear(layer, proj).unwrap();
    let r = 4;
    let a = Tensor::randn(0f32, 0.2, (r, lin.in_features()), &Device::Cpu).unwrap();
    let b = if b_std == 0.0 {
        Tensor::zeros((lin.out_features(), r), DType::F32, &Device::Cpu).unwrap()
    } else {
        Tensor::randn(0f32, b_std, (lin.out_features(), r), &Device::Cpu).unwrap()
    };
    Lora::new(a, b, 2.0).unwrap()
}

#[test]
fn lora_with_zero_b_changes_nothing_and_merging_matches() {
    let (dec, exp) = load("tiny-qwen2");
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let base = logits(&dec, &ids, vec![0]);

    let mut zero = dec.clone();
    for proj in Proj::ALL {
        let l = random_lora(&dec, 1, proj, 0.0);
        zero.linear_mut(1, proj).unwrap().set_lora(Some(l)).unwrap();
    }
    assert_eq!(max_diff(&base, &logits(&zero, &ids, vec![0])), 0.0);

    let mut adapted = dec.clone();
    for layer in 0..2 {
        for proj in Proj::ALL {
            let l = random_lora(&dec, layer, proj, 0.2);
            adapted
                .linear_mut(layer, proj)
                .unwrap()
                .set_lora(Some(l))
                .unwrap();
        }
    }
    let with = logits(&adapted, &ids, vec![0]);
    assert!(
        max_diff(&base, &with) > 1e-2,
        "the adapter should move the logits"
    );
    let mut merged = adapted.clone();
    for layer in 0..2 {
        for proj in Proj::ALL {
            let m = adapted.linear(layer, proj).unwrap().merged().unwrap();
            *merged.linear_mut(layer, proj).unwrap() = m;
        }
    }
    let d = max_diff(&with, &logits(&merged, &ids, vec![0]));
    assert!(d < 1e-4, "merged vs adapter forward differ by {d}");
}

#[test]
fn lora_of_the_wrong_shape_is_refused() {
    let (mut dec, _) = load("tiny-qwen2");
    let l = random_lora(&dec, 0, Proj::Q, 0.1);
    let err = dec
        .linear_mut(0, Proj::Gate)
        .unwrap()
        .set_lora(Some(l))
        .unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
    assert!(dec.linear(5, Proj::Q).is_none());
}
