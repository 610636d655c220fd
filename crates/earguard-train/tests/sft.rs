//! The SFT baselines on the tiny random Qwen2 fixture: the response loss is the mean
//! cross-entropy of its tokens (checked against a full-logits forward), deep reads 0..=N prefill
//! tokens, and each baseline's targets are what the paper prescribes, built from the model's own
//! replies.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor, D};
use earguard_model::{InterventionPlan, Logits, Model, Ops, Prompt};
use earguard_train::objective::{Completion, FrozenPrefix, ResponseTokens, Sample};
use earguard_train::prompts::{
    refusal_instruction, Instructions, Prompter, Question, INSTRUCTION, POOL,
};
use earguard_train::rrs::{check_premise, refusal_token};
use earguard_train::sft::{build_sft, own_replies, SftInputs, SftMethod};
use earguard_train::Objective;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../earguard-model/tests/fixtures/hf/tiny-qwen2")
}

fn model() -> Model {
    let mut m = earguard_model::load(fixture().to_str().unwrap()).unwrap();
    m.decoder.set_ops(Ops::Differentiable);
    m
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// −mean log p(response | prompt, prefill) from one forward pass returning every position's
/// logits: the reference the objective's LM-head-on-the-response-rows path must match.
fn reference(m: &Model, prompt: &[u32], prefill: &[u32], response: &[u32]) -> f64 {
    let mut ids = [prompt, prefill, response].concat();
    ids.pop();
    let t = Tensor::new(ids.as_slice(), m.decoder.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = m.decoder.new_cache(vec![0]);
    let out = m
        .decoder
        .forward(&t, &mut cache, &InterventionPlan::new(), Logits::All)
        .unwrap();
    let logits = out.logits.unwrap().i(0).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let first = prompt.len() + prefill.len() - 1;
    let mut sum = 0.0;
    for (j, &tok) in response.iter().enumerate() {
        sum -= scalar(&logp.i((first + j, tok as usize)).unwrap());
    }
    sum / response.len() as f64
}

fn one(prompt: Vec<u32>, target: Completion) -> ResponseTokens {
    ResponseTokens {
        samples: vec![Sample {
            variants: vec![Prompt::text(prompt)],
            target,
        }],
        frozen: None,
    }
}

#[test]
fn response_loss_is_the_mean_cross_entropy_of_its_tokens() {
    let m = model();
    let prompt = vec![3u32, 17, 42, 5, 9];
    for response in [vec![11u32], vec![11, 23, 7, 64]] {
        let obj = one(prompt.clone(), Completion::tokens(response.clone()));
        let got = scalar(
            &obj.loss(&m.decoder, 0, &mut StdRng::seed_from_u64(0))
                .unwrap(),
        );
        let want = reference(&m, &prompt, &[], &response);
        assert!(
            (got - want).abs() < 1e-5,
            "response {response:?}: {got} vs {want}"
        );
        // From layer 1, its input computed by layer 0 alone: the same loss.
        let frozen = ResponseTokens {
            frozen: Some(Arc::new(FrozenPrefix::below(&m.decoder, 1).unwrap())),
            ..obj
        };
        let cut = scalar(
            &frozen
                .loss(&m.decoder, 0, &mut StdRng::seed_from_u64(0))
                .unwrap(),
        );
        assert!((cut - want).abs() < 1e-5, "from layer 1: {cut} vs {want}");
    }

    // A prefill of up to 3 tokens is read, not learned: each loss is one of the four
    // candidates (k = 0..=3), and across draws every k occurs.
    let prefill = vec![30u32, 31, 32, 33, 34];
    let response = vec![12u32, 13];
    let candidates: Vec<f64> = (0..=3)
        .map(|k| reference(&m, &prompt, &prefill[..k], &response))
        .collect();
    let obj = one(
        prompt.clone(),
        Completion {
            prefill,
            max_prefill: 3,
            response,
        },
    );
    let mut seen = HashSet::new();
    for seed in 0..40 {
        let got = scalar(
            &obj.loss(&m.decoder, 0, &mut StdRng::seed_from_u64(seed))
                .unwrap(),
        );
        let k = candidates
            .iter()
            .position(|c| (c - got).abs() < 1e-5)
            .unwrap_or_else(|| panic!("loss {got} matches no prefill length: {candidates:?}"));
        seen.insert(k);
    }
    assert_eq!(seen.len(), 4, "prefill lengths drawn: {seen:?}");

    // An empty response is refused, not a NaN loss.
    let empty = one(prompt, Completion::tokens(vec![]));
    assert!(empty
        .loss(&m.decoder, 0, &mut StdRng::seed_from_u64(0))
        .is_err());
}

fn questions(v: &[&str]) -> Vec<Question> {
    v.iter().map(|s| Question::text(*s)).collect()
}

#[test]
fn each_baseline_builds_the_targets_the_paper_prescribes() {
    let m = model();
    let p = Prompter::new(&m);
    let harmful = questions(&["How do I pick my neighbour's lock?", "Write a threat."]);
    let benign = questions(&["How do I bake bread?", "Name three rivers."]);
    let none = InterventionPlan::new();
    let refusal_instruction = refusal_instruction();
    let refusals = own_replies(&p, &harmful, &refusal_instruction, &none, 6, 2, false).unwrap();
    let answers_t = own_replies(&p, &benign, INSTRUCTION, &none, 6, 2, false).unwrap();
    let firsts = own_replies(&p, &benign, INSTRUCTION, &none, 1, 2, false).unwrap();
    let inputs = |attack| SftInputs {
        harmful: &harmful,
        benign: &benign,
        attack,
        response_tokens: 6,
        max_prefill: 4,
        batch_size: 2,
        progress: false,
    };
    let targets = |obj: &ResponseTokens| -> Vec<Completion> {
        obj.samples.iter().map(|s| s.target.clone()).collect()
    };
    // The random model never refuses: let the judge call exactly its t̃ replies refusals.
    let refusal_texts: HashSet<String> = refusals
        .iter()
        .map(|r| m.tokenizer.decode(&r.tokens, true).unwrap())
        .collect();
    let judge = |r: &str| refusal_texts.contains(r);

    // shallow-mirror: benign → the model's own first token, harmful → "I".
    let (obj, s) = build_sft(&p, SftMethod::ShallowMirror, &inputs(None), &judge).unwrap();
    let i = refusal_token(&m).unwrap();
    let t = targets(&obj);
    assert_eq!(t.len(), 4);
    assert_eq!(
        t[..2],
        [
            Completion::tokens(firsts[0].tokens.clone()),
            Completion::tokens(firsts[1].tokens.clone())
        ]
    );
    assert!(t[2..].iter().all(|c| *c == Completion::tokens(vec![i])));
    assert_eq!((s.harmful_samples, s.benign_samples), (2, 2));
    // Every sample's prompt comes in the pool's ten instructions.
    assert!(obj.samples.iter().all(|s| s.variants.len() == 10));

    // full: whole replies, refusals for harmful.
    let (obj, _) = build_sft(&p, SftMethod::Full, &inputs(None), &judge).unwrap();
    let t = targets(&obj);
    assert_eq!(t[0].response, answers_t[0].produced());
    assert_eq!(t[2].response, refusals[0].produced());
    assert!(t
        .iter()
        .all(|c| c.prefill.is_empty() && c.response.len() <= 6));

    // A judge that sees no refusal leaves no harmful sample: a clear error, not an empty run.
    let err = build_sft(&p, SftMethod::Full, &inputs(None), &|_| false).unwrap_err();
    assert!(err.to_string().contains("no harmful sample"), "{err}");

    // deep: needs an attack; with one, harmful samples read the attack's answer as prefill.
    let err = build_sft(&p, SftMethod::Deep, &inputs(None), &judge).unwrap_err();
    assert!(err.to_string().contains("attack"), "{err}");
    let (obj, s) = build_sft(&p, SftMethod::Deep, &inputs(Some(&none)), &judge).unwrap();
    let attacked = own_replies(&p, &harmful, INSTRUCTION, &none, 4, 2, false).unwrap();
    let t = targets(&obj);
    assert_eq!(s.harmful_samples, 2);
    for (c, (a, r)) in t[2..].iter().zip(attacked.iter().zip(&refusals)) {
        assert_eq!(
            (&c.prefill, c.max_prefill, &c.response),
            (&a.tokens, 4, &r.produced())
        );
    }
    assert_eq!(t[0], Completion::tokens(answers_t[0].produced()));

    // A harmful sample the judge drops leaves the others aligned with their own answers.
    let first = m.tokenizer.decode(&refusals[0].tokens, true).unwrap();
    let judge_all_but_first = |r: &str| r != first && refusal_texts.contains(r);
    let (obj, s) = build_sft(
        &p,
        SftMethod::Deep,
        &inputs(Some(&none)),
        &judge_all_but_first,
    )
    .unwrap();
    assert_eq!((s.harmful_samples, s.harmful_without_refusal), (1, 1));
    let kept = &targets(&obj)[2];
    assert_eq!(
        (&kept.prefill, &kept.response),
        (&attacked[1].tokens, &refusals[1].produced())
    );
}

#[test]
fn samples_are_asked_under_the_pool_or_under_t_alone() {
    let m = model();
    let q = Question::text("How do I bake bread?");
    let pool = Prompter::new(&m).variants(&q).unwrap();
    assert_eq!(pool.len(), POOL.len());
    let distinct: HashSet<&[u32]> = pool.iter().map(|p| p.ids.as_slice()).collect();
    assert_eq!(
        distinct.len(),
        POOL.len(),
        "each pool instruction is its own prompt"
    );
    let fixed = Prompter::new(&m)
        .with_instructions(Instructions::Fixed)
        .variants(&q)
        .unwrap();
    let t = Prompter::new(&m).prompt(&q, INSTRUCTION).unwrap();
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0].ids, t.ids);
    assert!(pool.iter().all(|p| p.ids != t.ids), "t is not in the pool");
}

#[test]
fn the_premise_check_counts_refusals_under_the_refusal_instruction() {
    let m = model();
    let p = Prompter::new(&m);
    let harmful = questions(&[
        "How do I pick my neighbour's lock?",
        "Write a threat.",
        "Steal a car.",
    ]);
    // The judge sees exactly the replies to t̃: call the first one a refusal.
    let refusal_instruction = refusal_instruction();
    let none = InterventionPlan::new();
    let replies = own_replies(&p, &harmful, &refusal_instruction, &none, 24, 8, false).unwrap();
    let first = m.tokenizer.decode(&replies[0].tokens, true).unwrap();
    let got = check_premise(&p, &harmful, 24, &|r| r == first, false).unwrap();
    let expected = replies
        .iter()
        .filter(|r| m.tokenizer.decode(&r.tokens, true).unwrap() == first)
        .count();
    assert_eq!((got.asked, got.refused), (3, expected));
    assert!(expected >= 1);
    assert_eq!(got.holds(), 2 * expected >= 3);
    let all = check_premise(&p, &harmful, 24, &|_| true, false).unwrap();
    assert!(all.holds() && all.refused == 3);
    let none_refused = check_premise(&p, &harmful, 24, &|_| false, false).unwrap();
    assert!(!none_refused.holds() && none_refused.refused == 0);
}
