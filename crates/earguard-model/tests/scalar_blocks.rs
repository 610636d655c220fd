//! GGUF block types that candle multiplies on its scalar fallback on CPU (Q4_1, Q5_0, Q5_1,
//! Q8_1) are widened to f32 at load. On the real SmolLM2-135M (Q4_1 mix): the widened model
//! and the quantized one (`EARGUARD_WEIGHTS=quantized`) both agree with candle-transformers'
//! stock `quantized_llama` on the same file — the quantized one within 1e-3 (the same
//! arithmetic), the widened one within 1.0 of logits spanning ~40, with the same greedy choice
//! (the block product rounds activations to 8 bits per block, the widened one does not: the
//! measured gap is 0.70) — and, made fully dense, the two models give the same logits (1e-5).
//! This file is its own test process with one test, so setting the variable affects no other.

use candle_core::{Device, Tensor};
use earguard_model::{InterventionPlan, Logits, Model};

fn last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    let out = model
        .decoder
        .forward(&input, &mut cache, &InterventionPlan::new(), Logits::Last)
        .unwrap();
    out.logits
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn argmax(a: &[f32]) -> usize {
    (0..a.len()).fold(0, |b, i| if a[i] > a[b] { i } else { b })
}

#[test]
fn scalar_block_weights_are_widened_and_agree_with_stock() {
    let name = "smollm2-135m-instruct";
    let Ok(path) = earguard_model::loader::resolve(name) else {
        assert!(
            std::env::var("EARGUARD_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{name} is missing and EARGUARD_REQUIRE_MODELS=1"
        );
        println!("note: {name} absent; test skipped");
        return;
    };
    let spec = path.to_str().unwrap();
    let widened = earguard_model::load(spec).unwrap();
    assert!(
        widened.info.quantization.contains("widened to f32"),
        "{}",
        widened.info.quantization
    );
    std::env::set_var("EARGUARD_WEIGHTS", "quantized");
    let quantized = earguard_model::load(spec).unwrap();
    std::env::remove_var("EARGUARD_WEIGHTS");
    assert!(!quantized.info.quantization.contains("widened"));

    let ids = widened
        .encode_chat(None, "Explain what a hash map is in two sentences.")
        .unwrap();
    let gguf = widened.info.path.clone();
    let mut f = std::fs::File::open(&gguf).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut stock = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        ct,
        &mut f,
        &Device::Cpu,
    )
    .unwrap();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let theirs: Vec<f32> = stock
        .forward(&input, 0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (w, q) = (last_logits(&widened, &ids), last_logits(&quantized, &ids));
    let (dw, dq) = (max_diff(&w, &theirs), max_diff(&q, &theirs));
    let span = theirs.iter().copied().fold(f32::MIN, f32::max)
        - theirs.iter().copied().fold(f32::MAX, f32::min);
    println!("vs stock: widened {dw:.3e}, quantized {dq:.3e}; logit span {span:.1}");
    assert!(dq < 1e-3, "quantized path vs stock: {dq}");
    assert!(dw < 1.0, "widened path vs stock: {dw}");
    assert_eq!(argmax(&w), argmax(&theirs));
    // Fully dense, the two are one model: the widened weights are the blocks' own values.
    let (mut a, mut b) = (widened, quantized);
    a.decoder = a.decoder.dequantized().unwrap();
    b.decoder = b.decoder.dequantized().unwrap();
    let dd = max_diff(&last_logits(&a, &ids), &last_logits(&b, &ids));
    assert!(dd < 1e-5, "widened at load, then dense, vs dense: {dd}");
}
