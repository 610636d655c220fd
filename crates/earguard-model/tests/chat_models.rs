//! Chat template + tokenizer of the real GGUF models: the prompt text must be exactly the
//! ChatML the models were tuned on, and its turn markers must become single ids.
//!
//! The models come from `$EARGUARD_MODELS` (default `<workspace>/models`); without them these
//! tests print a note and pass, unless `EARGUARD_REQUIRE_MODELS=1`.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use earguard_model::chat::{ChatMessage, ChatTemplate};
use earguard_model::tokenizer::Tokenizer;

fn model_file(name: &str) -> Option<PathBuf> {
    // Where the loader finds the short name (under either of its names).
    let path = earguard_model::loader::resolve(name)
        .unwrap_or_else(|_| earguard_model::loader::models_dir().join(name))
        .join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("EARGUARD_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!(
            "{} is missing and EARGUARD_REQUIRE_MODELS=1",
            path.display()
        );
    }
    println!(
        "note: {} absent (scripts/fetch-models.sh); test skipped",
        path.display()
    );
    None
}

fn load(name: &str) -> Option<(Tokenizer, ChatTemplate)> {
    let path = model_file(name)?;
    let mut f = std::fs::File::open(&path).expect("open gguf");
    let content = Content::read(&mut f).expect("read gguf metadata");
    let tok = Tokenizer::from_gguf(&content, &path).expect("tokenizer");
    let template = ChatTemplate::from_gguf(&content)
        .expect("template")
        .expect("model has a chat template");
    Some((tok, template))
}

fn count(ids: &[u32], id: u32) -> usize {
    ids.iter().filter(|&&x| x == id).count()
}

/// Checks shared by both ChatML models.
fn check_chatml(tok: &Tokenizer, template: &ChatTemplate, default_system: &str) {
    let msgs = [
        ChatMessage::system("You are a careful assistant."),
        ChatMessage::user("Tell me a joke. 🙂"),
    ];
    let text = template.render(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n\
         <|im_start|>user\nTell me a joke. 🙂<|im_end|>\n<|im_start|>assistant\n"
    );
    // Without a system turn, the template supplies the model's default one.
    let text_no_sys = template.render(&msgs[1..], true).unwrap();
    assert_eq!(
        text_no_sys,
        format!(
            "<|im_start|>system\n{default_system}<|im_end|>\n\
             <|im_start|>user\nTell me a joke. 🙂<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    // A finished conversation without the generation prompt.
    let done = [
        msgs[0].clone(),
        msgs[1].clone(),
        ChatMessage::assistant("No."),
    ];
    assert!(template
        .render(&done, false)
        .unwrap()
        .ends_with("<|im_start|>assistant\nNo.<|im_end|>\n"));

    let im_start = tok.token_to_id("<|im_start|>").expect("<|im_start|>");
    let im_end = tok.token_to_id("<|im_end|>").expect("<|im_end|>");
    let ids = tok.encode(&text, true).unwrap();
    assert_eq!(count(&ids, im_start), 3, "{ids:?}");
    assert_eq!(count(&ids, im_end), 2, "{ids:?}");
    assert_eq!(ids[0], im_start);
    let mut tail = vec![im_start];
    tail.extend(tok.encode("assistant\n", false).unwrap());
    assert!(
        ids.ends_with(&tail),
        "generation prompt must end with <|im_start|>assistant\\n: {ids:?}"
    );
    // Neither model asks for BOS.
    assert_eq!(ids, tok.encode(&text, false).unwrap());
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert_eq!(
        tok.decode(&ids, true).unwrap(),
        "system\nYou are a careful assistant.\nuser\nTell me a joke. 🙂\nassistant\n"
    );
    // The same markers typed by a user stay text in literal mode.
    let literal = tok.encode_literal(&text, false).unwrap();
    assert_eq!(count(&literal, im_start) + count(&literal, im_end), 0);
    assert_eq!(tok.decode(&literal, false).unwrap(), text);

    assert!(tok.stop_token_ids().contains(&im_end));
    assert_eq!(tok.eos_id(), Some(im_end));
}

#[test]
fn qwen25_chat_template_and_tokens() {
    let Some((tok, template)) = load("qwen2.5-coder-1.5b-instruct") else {
        return;
    };
    check_chatml(
        &tok,
        &template,
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    );
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.stop_token_ids(), vec![151_643, 151_645]);
    assert_eq!(tok.pad_id(), 151_643);
    // Same ids as llama.cpp's qwen2 vector for this text.
    assert_eq!(tok.encode("Hello world", false).unwrap(), vec![9707, 1879]);
    // The tool branch renders with Python-style JSON.
    let mut extra = serde_json::Map::new();
    extra.insert(
        "tools".into(),
        serde_json::json!([{"type": "function", "function": {"name": "f"}}]),
    );
    let with_tools = template
        .render_with(&[ChatMessage::user("hi")], true, &extra)
        .unwrap();
    assert!(
        with_tools.contains(
            "<tools>\n{\"function\": {\"name\": \"f\"}, \"type\": \"function\"}\n</tools>"
        ),
        "{with_tools}"
    );
}

#[test]
fn smollm2_chat_template_and_tokens() {
    let Some((tok, template)) = load("smollm2-135m-instruct") else {
        return;
    };
    check_chatml(
        &tok,
        &template,
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    );
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.stop_token_ids(), vec![0, 2]);
    assert_eq!(tok.bos_id(), Some(1));
    // SmolLM splits digits one by one.
    let ids = tok.encode("2025", false).unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
}
