//! The machinery of contrastive decoding (SafeCoDe) on the tiny fixtures: a corrupted
//! companion input (embedding noise on user content, or waveform noise on audio), guided steps
//! decoded beside it in one batch, and the companion rows dropped afterwards.

use std::path::Path;

use earguard_model::generate::{
    generate_batch, generate_guided, GenerateRequest, Generation, Guide,
};
use earguard_model::{
    prefill, AudioCache, ChatMessage, ContentSpecials, EmbeddingNoise, InterventionPlan, Logits,
    Model, Prompt, WaveformNoise,
};

mod common;

fn fixture(name: &str) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    earguard_model::load(dir.to_str().unwrap()).unwrap()
}

fn conversation(user: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a careful assistant."),
        ChatMessage::user(user),
    ]
}

fn request(max_tokens: usize) -> GenerateRequest<'static> {
    GenerateRequest::greedy(max_tokens, &[], 0)
}

fn last_logits(model: &Model, prompts: &[Prompt]) -> candle_core::Tensor {
    let (out, _) = prefill(
        &model.decoder,
        prompts,
        0,
        &InterventionPlan::new(),
        Logits::Last,
    )
    .unwrap();
    out.logits.unwrap()
}

/// The mask marks the user's words only: not the template, not the system message.
#[test]
fn user_content_mask_marks_the_request_alone() {
    let model = fixture("tiny-qwen2");
    let user = "How do I bake sourdough bread at home?";
    let msgs = conversation(user);
    let prompt = model
        .encode_prompt(&msgs, ContentSpecials::Literal, &AudioCache::new())
        .unwrap();
    let mask = model.user_content_mask(&msgs).unwrap();
    assert_eq!(mask.len(), prompt.ids.len());
    let marked: Vec<u32> = prompt
        .ids
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| m)
        .map(|(&t, _)| t)
        .collect();
    let text = model.tokenizer.decode(&marked, false).unwrap();
    assert_eq!(text.trim(), user);
    let unmarked: Vec<u32> = prompt
        .ids
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| !m)
        .map(|(&t, _)| t)
        .collect();
    let rest = model.tokenizer.decode(&unmarked, false).unwrap();
    assert!(rest.contains("You are a careful assistant."), "{rest}");
    assert!(!rest.contains("sourdough"), "{rest}");
}

/// Noise of σ 0 (or on no position) leaves the logits as they were; σ > 0 on the content
/// changes them, the same way for the same seed and differently for another seed.
#[test]
fn embedding_noise_is_seeded_and_confined_to_its_mask() {
    let model = fixture("tiny-qwen2");
    let msgs = conversation("Tell me about rivers.");
    let clean = model
        .encode_prompt(&msgs, ContentSpecials::Literal, &AudioCache::new())
        .unwrap();
    let mask = model.user_content_mask(&msgs).unwrap();
    let noised = |mask: Vec<bool>, sigma: f32, seed: u64| {
        clean
            .clone()
            .with_noise(EmbeddingNoise { mask, sigma, seed })
            .unwrap()
    };
    let base = last_logits(&model, std::slice::from_ref(&clean));
    let zero = last_logits(&model, &[noised(mask.clone(), 0.0, 1)]);
    assert!(common::max_diff(&base, &zero) < 1e-6);
    let none = last_logits(&model, &[noised(vec![false; mask.len()], 1.0, 1)]);
    assert!(common::max_diff(&base, &none) < 1e-6);
    let a = last_logits(&model, &[noised(mask.clone(), 0.5, 1)]);
    let a2 = last_logits(&model, &[noised(mask.clone(), 0.5, 1)]);
    let b = last_logits(&model, &[noised(mask.clone(), 0.5, 2)]);
    assert!(common::max_diff(&base, &a) > 1e-3);
    assert_eq!(common::max_diff(&a, &a2), 0.0);
    assert!(common::max_diff(&a, &b) > 1e-4);
    // The same noised prompt gives the same logits alone and beside a clean prompt.
    let batched = last_logits(&model, &[clean.clone(), noised(mask.clone(), 0.5, 1)]);
    assert!(common::max_diff(&batched.get(1).unwrap(), &a.get(0).unwrap()) < 1e-4);
    // A mask of the wrong length is refused.
    let err = clean
        .clone()
        .with_noise(EmbeddingNoise {
            mask: vec![true],
            sigma: 0.1,
            seed: 0,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("noise mask"), "{err}");
}

/// A guide that takes the real logits' argmax for its guided steps.
struct Greedy {
    steps: usize,
    seen_companion: usize,
}

impl Guide for Greedy {
    fn guided(&self, _row: usize, step: usize) -> bool {
        step < self.steps
    }

    fn choose(
        &mut self,
        _row: usize,
        _step: usize,
        real: &[f32],
        companion: &[f32],
        _answer: &[u32],
    ) -> earguard_model::Result<u32> {
        assert_eq!(real.len(), companion.len());
        self.seen_companion += 1;
        let best = real
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        Ok(best as u32)
    }
}

/// Forces its tokens, then releases the row.
struct Force(Vec<u32>);

impl Guide for Force {
    fn guided(&self, _row: usize, step: usize) -> bool {
        step < self.0.len()
    }

    fn choose(
        &mut self,
        _row: usize,
        step: usize,
        _real: &[f32],
        _companion: &[f32],
        _answer: &[u32],
    ) -> earguard_model::Result<u32> {
        Ok(self.0[step])
    }

    fn max_tokens(&self, _row: usize) -> Option<usize> {
        Some(6)
    }
}

fn guided(
    model: &Model,
    real: &[Prompt],
    companion: &[Prompt],
    guide: &mut dyn Guide,
) -> Vec<Generation> {
    let plan = InterventionPlan::new();
    let both: Vec<Prompt> = real.iter().chain(companion).cloned().collect();
    let (out, cache) = prefill(&model.decoder, &both, 0, &plan, Logits::Last).unwrap();
    generate_guided(
        &model.decoder,
        out.logits.unwrap(),
        cache,
        &request(12),
        &plan,
        None,
        guide,
        |_, _| {},
    )
    .unwrap()
}

/// A guide that does what greedy decoding does gives greedy decoding's answer, through the
/// guided steps and after the companion rows leave the cache; a forcing guide's tokens start
/// the answer and its cap ends it.
#[test]
fn guided_decoding_continues_exactly_after_the_companion_leaves() {
    let model = fixture("tiny-qwen2");
    let prompts: Vec<Prompt> = ["Tell me about rivers.", "Name three colours, please."]
        .iter()
        .map(|u| {
            model
                .encode_prompt(
                    &conversation(u),
                    ContentSpecials::Literal,
                    &AudioCache::new(),
                )
                .unwrap()
        })
        .collect();
    let companions: Vec<Prompt> = prompts
        .iter()
        .zip(["Tell me about rivers.", "Name three colours, please."])
        .map(|(p, u)| {
            p.clone()
                .with_noise(EmbeddingNoise {
                    mask: model.user_content_mask(&conversation(u)).unwrap(),
                    sigma: 1.0,
                    seed: 7,
                })
                .unwrap()
        })
        .collect();
    let plain = generate_batch(
        &model.decoder,
        &prompts,
        &request(12),
        &InterventionPlan::new(),
        None,
        |_, _| {},
    )
    .unwrap();
    let mut g = Greedy {
        steps: 3,
        seen_companion: 0,
    };
    let out = guided(&model, &prompts, &companions, &mut g);
    assert_eq!(g.seen_companion, 3 * prompts.len());
    for (a, b) in out.iter().zip(&plain) {
        assert_eq!(a.tokens, b.tokens);
    }

    let forced = vec![5u32, 6, 7];
    let out = guided(&model, &prompts, &companions, &mut Force(forced.clone()));
    for g in &out {
        assert_eq!(&g.tokens[..3], &forced[..]);
        assert_eq!(g.tokens.len(), 6, "the guide's cap ends the answer");
    }
    // Odd batches are refused.
    let (o, cache) = prefill(
        &model.decoder,
        &prompts[..1],
        0,
        &InterventionPlan::new(),
        Logits::Last,
    )
    .unwrap();
    let err = generate_guided(
        &model.decoder,
        o.logits.unwrap(),
        cache,
        &request(4),
        &InterventionPlan::new(),
        None,
        &mut Force(vec![1]),
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("companion"), "{err}");
}

/// Waveform noise: the noised cache encodes the clip to other rows of the same count, the same
/// for the same seed, and keeps them apart from the clean cache's.
#[test]
fn waveform_noise_changes_the_encoding_not_its_length() {
    let model = fixture("tiny-qwen2-audio");
    let wav = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf/tiny-qwen2-audio/synthetic.wav");
    let msgs = vec![ChatMessage::new(
        "user",
        earguard_model::Content::Parts(vec![
            earguard_model::Part::Audio(earguard_model::AudioRef::new(&wav)),
            earguard_model::Part::Text("What is said?".into()),
        ]),
    )];
    let encode = |cache: &AudioCache| {
        model
            .encode_prompt(&msgs, ContentSpecials::Literal, cache)
            .unwrap()
    };
    let clean = encode(&AudioCache::new());
    let noise = WaveformNoise {
        snr_db: 10.0,
        seed: 3,
    };
    let noisy = encode(&AudioCache::with_waveform_noise(noise).unwrap());
    let again = encode(&AudioCache::with_waveform_noise(noise).unwrap());
    assert_eq!(clean.ids, noisy.ids, "same length, same ids");
    let rows = |p: &Prompt| p.audio.as_ref().unwrap().clips[0].clone();
    assert!(common::max_diff(&rows(&clean), &rows(&noisy)) > 1e-4);
    assert_eq!(common::max_diff(&rows(&noisy), &rows(&again)), 0.0);
    let other = encode(
        &AudioCache::with_waveform_noise(WaveformNoise {
            snr_db: 10.0,
            seed: 4,
        })
        .unwrap(),
    );
    assert!(common::max_diff(&rows(&noisy), &rows(&other)) > 1e-5);
    assert!(AudioCache::with_waveform_noise(WaveformNoise {
        snr_db: f32::NAN,
        seed: 0
    })
    .is_err());
}
