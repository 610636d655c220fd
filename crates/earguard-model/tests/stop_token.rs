//! A reply that ends on a stop token says which one: its text leaves it out, and what the model
//! produced (a training target made of its own reply) keeps it.

use std::path::Path;

use earguard_model::generate::{generate_batch, FinishReason, GenerateRequest};
use earguard_model::{ChatMessage, ContentSpecials, InterventionPlan};

#[test]
fn a_stopped_reply_keeps_its_stop_token_apart() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/tiny-qwen2");
    let model = earguard_model::load(dir.to_str().unwrap()).unwrap();
    let prompt = model
        .encode_prompt(
            &[ChatMessage::user("Name three rivers.")],
            ContentSpecials::Literal,
            &Default::default(),
        )
        .unwrap();
    let run = |stop: &[u32]| {
        let request = GenerateRequest::greedy(6, stop, 0);
        let plan = InterventionPlan::new();
        generate_batch(
            &model.decoder,
            std::slice::from_ref(&prompt),
            &request,
            &plan,
            None,
            |_, _| {},
        )
        .unwrap()
        .remove(0)
    };
    let free = run(&[]);
    assert_eq!(free.finish, FinishReason::Length);
    assert_eq!((free.tokens.len(), free.stop_token), (6, None));
    assert_eq!(free.produced(), free.tokens);
    // Make the greedy reply's third token a stop token: the reply ends there.
    let third = free.tokens[2];
    let first = free.tokens.iter().position(|&t| t == third).unwrap();
    let stopped = run(&[third]);
    assert_eq!(stopped.finish, FinishReason::Stop);
    assert_eq!(stopped.tokens, free.tokens[..first]);
    assert_eq!(stopped.stop_token, Some(third));
    assert_eq!(stopped.produced(), free.tokens[..=first]);
}
