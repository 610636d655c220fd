//! Tokenizers rebuilt from GGUF metadata against llama.cpp's own tokenizer test vectors
//! (`models/ggml-vocab-*.gguf{,.inp,.out}`; see tests/fixtures/llama-vocab/PROVENANCE.md).
//! The expected ids were produced by HF `AutoTokenizer.encode(text, add_special_tokens=False)`;
//! llama.cpp's test-tokenizer-0 checks them with `add_special = false, parse_special = false`,
//! which is our `encode_literal(text, false)`.
//!
//! More vocabularies from the same llama.cpp `models/` folder can be checked by pointing
//! `EARGUARD_LLAMA_VOCAB_DIR` at it.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use earguard_model::tokenizer::{TokenStream, Tokenizer};
use earguard_model::ModelError;

/// Committed fixtures.
const FIXTURES: &[&str] = &["qwen2", "starcoder", "gpt-2"];
/// Vocabularies with supported pre-tokenizers that `EARGUARD_LLAMA_VOCAB_DIR` may also hold.
const OPTIONAL: &[&str] = &[
    "qwen2",
    "qwen35",
    "llama-bpe",
    "starcoder",
    "gpt-2",
    "refact",
];

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-vocab")
}

fn read_gguf(path: &Path) -> Content {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (input, expected ids) in file order, split as llama.cpp's `read_tests` does.
fn read_cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let inp_path = PathBuf::from(format!("{}.inp", gguf.display()));
    let out_path = PathBuf::from(format!("{}.out", gguf.display()));
    let raw = std::fs::read_to_string(&inp_path).expect("read .inp");
    let out = std::fs::read_to_string(&out_path).expect("read .out");
    let mut inputs = Vec::new();
    let mut rest = raw.as_str();
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(i) => {
                inputs.push(rest[..i].to_owned());
                rest = &rest[i + SEPARATOR.len()..];
            }
            None => {
                inputs.push(rest.to_owned());
                rest = "";
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: .inp and .out disagree",
        gguf.display()
    );
    inputs.into_iter().zip(outputs).collect()
}

/// Runs every case of one vocabulary; returns the number of cases.
fn check_vocab(gguf: &Path) -> usize {
    let content = read_gguf(gguf);
    let tok = Tokenizer::from_gguf(&content, gguf).expect("build tokenizer");
    let cases = read_cases(gguf);
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let got = tok.encode_literal(text, false).expect("encode");
        if &got != expected {
            failures.push(format!(
                "{text:?}\n    expected {expected:?}\n    got      {got:?}"
            ));
            continue;
        }
        // Plain text holds no special tokens, so the default encoder must agree.
        assert_eq!(&tok.encode(text, false).unwrap(), expected, "{text:?}");
        // Byte-level BPE is lossless (these inputs are already NFC).
        assert_eq!(
            &tok.decode(&got, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{}: {} of {} cases fail:\n{}",
        gguf.display(),
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

#[test]
fn llama_cpp_vectors_committed() {
    let mut total = 0;
    for name in FIXTURES {
        let path = fixture_dir().join(format!("ggml-vocab-{name}.gguf"));
        let n = check_vocab(&path);
        println!("ggml-vocab-{name}: {n} cases pass");
        total += n;
    }
    println!("llama.cpp vocab vectors: {total} cases pass");
}

#[test]
fn llama_cpp_vectors_extra() {
    let Some(dir) = std::env::var_os("EARGUARD_LLAMA_VOCAB_DIR") else {
        println!(
            "note: EARGUARD_LLAMA_VOCAB_DIR not set; only the committed vocabularies were checked"
        );
        return;
    };
    let dir = PathBuf::from(dir);
    for name in OPTIONAL {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        if path.is_file() && PathBuf::from(format!("{}.inp", path.display())).is_file() {
            let n = check_vocab(&path);
            println!("ggml-vocab-{name}: {n} cases pass");
        } else {
            println!("note: {} absent, skipped", path.display());
        }
    }
}

#[test]
fn qwen2_vocab_specials_and_literal_mode() {
    let path = fixture_dir().join("ggml-vocab-qwen2.gguf");
    let tok = Tokenizer::from_gguf(&read_gguf(&path), &path).unwrap();
    assert_eq!(tok.vocab_size(), 151_936);
    let im_start = tok.token_to_id("<|im_start|>").expect("<|im_start|>");
    let im_end = tok.token_to_id("<|im_end|>").expect("<|im_end|>");
    let text = "<|im_start|>user\nhi<|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.first(), Some(&im_start));
    assert_eq!(ids.last(), Some(&im_end));
    assert_eq!(ids.len(), 5, "{ids:?}");
    // Literal mode spells control tokens out; the decoded text is unchanged either way.
    let literal = tok.encode_literal(text, false).unwrap();
    assert!(
        !literal.contains(&im_start) && !literal.contains(&im_end),
        "{literal:?}"
    );
    assert_eq!(tok.decode(&literal, false).unwrap(), text);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi");
    // No add_bos_token key and a qwen2 pre-tokenizer: no BOS.
    assert_eq!(
        tok.encode("hi", true).unwrap(),
        tok.encode("hi", false).unwrap()
    );
    assert_eq!(tok.stop_token_ids(), vec![151_643, 151_645]);
    assert!(tok.is_special(im_start));
    // Qwen2's HF tokenizer NFC-normalizes: a decomposed accent encodes like the composed one.
    assert_eq!(
        tok.encode("re\u{301}sume\u{301}", false).unwrap(),
        tok.encode("résumé", false).unwrap()
    );
}

#[test]
fn token_stream_never_splits_a_character() {
    let path = fixture_dir().join("ggml-vocab-qwen2.gguf");
    let tok = Tokenizer::from_gguf(&read_gguf(&path), &path).unwrap();
    // Emoji and Khmer take several byte-level tokens per character in this vocabulary.
    let text = "Hi 🦙 there! កាន់តែ 😶‍🌫️ ok<|im_end|>";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = TokenStream::new(&tok);
    let mut pieces = Vec::new();
    let mut held = 0;
    for &id in &ids {
        match stream.push(id).unwrap() {
            Some(p) => {
                assert!(
                    !p.contains(char::REPLACEMENT_CHARACTER),
                    "broken piece {p:?}"
                );
                pieces.push(p);
            }
            None => held += 1,
        }
    }
    if let Some(rest) = stream.finish().unwrap() {
        pieces.push(rest);
    }
    assert!(held > 0, "expected some multi-token characters");
    assert_eq!(pieces.concat(), "Hi 🦙 there! កាន់តែ 😶‍🌫️ ok");
}

// --- malformed metadata -------------------------------------------------------------------

fn tiny_vocab() -> Vec<(String, Value)> {
    let tokens = ["a", "b", "ab", "<|end|>"];
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::String((*t).into())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vec![
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(3),
            ]),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(3)),
    ]
}

/// Writes the metadata as a real GGUF file and reads it back, as a loader would.
fn gguf_roundtrip(meta: &[(String, Value)]) -> Content {
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &refs, &[]).expect("write gguf");
    buf.set_position(0);
    Content::read(&mut buf).expect("read gguf")
}

fn build(meta: Vec<(String, Value)>) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_gguf(&gguf_roundtrip(&meta), Path::new("tiny.gguf"))
}

fn with(mut meta: Vec<(String, Value)>, key: &str, value: Option<Value>) -> Vec<(String, Value)> {
    meta.retain(|(k, _)| k != key);
    if let Some(v) = value {
        meta.push((key.into(), v));
    }
    meta
}

fn expect_err(meta: Vec<(String, Value)>, needles: &[&str]) {
    let err = build(meta).expect_err("malformed metadata must be refused");
    let msg = err.to_string();
    assert!(matches!(err, ModelError::File { .. }), "{err:?}");
    assert!(msg.contains("tiny.gguf"), "error must name the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error should mention {n:?}: {msg}");
    }
}

#[test]
fn tiny_vocab_works() {
    let tok = build(tiny_vocab()).unwrap();
    assert_eq!(tok.encode("ab<|end|>", false).unwrap(), vec![2, 3]);
    assert_eq!(tok.decode(&[2, 3], true).unwrap(), "ab");
    assert_eq!(tok.eos_id(), Some(3));
    assert_eq!(tok.pad_id(), 3);
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.stop_token_ids(), vec![3]);
}

#[test]
fn missing_tokens_is_a_clear_error() {
    expect_err(
        with(tiny_vocab(), "tokenizer.ggml.tokens", None),
        &["tokenizer.ggml.tokens", "missing"],
    );
    // GGUF writers refuse mixed arrays, so build this Content by hand.
    let mut metadata: std::collections::HashMap<String, Value> = tiny_vocab().into_iter().collect();
    metadata.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(vec![Value::String("a".into()), Value::U32(7)]),
    );
    let content = Content {
        magic: gguf_file::VersionedMagic::GgufV3,
        metadata,
        tensor_infos: Default::default(),
        tensor_data_offset: 0,
    };
    let err = Tokenizer::from_gguf(&content, Path::new("tiny.gguf")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("tiny.gguf")
            && msg.contains("tokenizer.ggml.tokens")
            && msg.contains("entry 1"),
        "{msg}"
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.tokens",
            Some(Value::Array(vec![])),
        ),
        &["tokenizer.ggml.tokens"],
    );
}

#[test]
fn malformed_merges_are_clear_errors() {
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.merges",
            Some(Value::Array(vec![Value::String("ab".into())])),
        ),
        &["tokenizer.ggml.merges", "entry 0", "malformed"],
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.merges",
            Some(Value::Array(vec![Value::String("a x".into())])),
        ),
        &["tokenizer.ggml.merges", "x"],
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.merges",
            Some(Value::String("a b".into())),
        ),
        &["expected an array"],
    );
    expect_err(
        with(tiny_vocab(), "tokenizer.ggml.merges", None),
        &["tokenizer.ggml.merges"],
    );
}

#[test]
fn other_bad_metadata_is_refused() {
    expect_err(
        with(tiny_vocab(), "tokenizer.ggml.model", None),
        &["tokenizer.ggml.model"],
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.model",
            Some(Value::String("llama".into())),
        ),
        &["SentencePiece"],
    );
    expect_err(
        with(tiny_vocab(), "tokenizer.ggml.model", Some(Value::U32(2))),
        &["expected a string"],
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.pre",
            Some(Value::String("klingon".into())),
        ),
        &["klingon", "qwen2"],
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.token_type",
            Some(Value::Array(vec![Value::I32(1)])),
        ),
        &["token_type", "1 entries for 4 tokens"],
    );
    expect_err(
        with(
            tiny_vocab(),
            "tokenizer.ggml.eos_token_id",
            Some(Value::String("3".into())),
        ),
        &["eos_token_id", "integer"],
    );
    // Out-of-range special ids are ignored (as llama.cpp does), not fatal.
    let tok = build(with(
        tiny_vocab(),
        "tokenizer.ggml.eos_token_id",
        Some(Value::U32(99)),
    ))
    .unwrap();
    assert_eq!(tok.eos_id(), None);
    assert_eq!(tok.pad_id(), 0);
}

#[test]
fn add_bos_token_is_honoured() {
    let meta = with(
        tiny_vocab(),
        "tokenizer.ggml.bos_token_id",
        Some(Value::U32(0)),
    );
    let meta = with(
        meta,
        "tokenizer.ggml.add_bos_token",
        Some(Value::Bool(true)),
    );
    let tok = build(meta).unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), vec![0, 2]);
    assert_eq!(tok.encode("ab", false).unwrap(), vec![2]);
    // A BOS already in the text (from a template) is not doubled.
    assert_eq!(tok.encode("aab", true).unwrap(), vec![0, 2]);
}

#[test]
fn missing_tokenizer_file_names_the_file() {
    let err = Tokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("earguard-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("tokenizer.json");
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_file(&bad).unwrap_err();
    assert!(
        err.to_string().contains("tokenizer.json") && err.to_string().contains("not a valid"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A GGUF-built tokenizer saved as tokenizer.json loads through the HF path and agrees, with
/// BOS/EOS taken from tokenizer_config.json.
#[test]
fn hf_dir_roundtrip() {
    let path = fixture_dir().join("ggml-vocab-qwen2.gguf");
    let gguf_tok = Tokenizer::from_gguf(&read_gguf(&path), &path).unwrap();
    let dir = std::env::temp_dir().join(format!("earguard-hfdir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    gguf_tok
        .hf()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>", "bos_token": null}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [151645, 151643]}"#,
    )
    .unwrap();
    let hf_tok = Tokenizer::from_hf_dir(&dir).unwrap();
    for (text, _) in read_cases(&path) {
        assert_eq!(
            hf_tok.encode(&text, true).unwrap(),
            gguf_tok.encode(&text, true).unwrap(),
            "{text:?}"
        );
    }
    let chat = "<|im_start|>system\nx<|im_end|>\n";
    assert_eq!(
        hf_tok.encode(chat, true).unwrap(),
        gguf_tok.encode(chat, true).unwrap()
    );
    assert_eq!(hf_tok.eos_id(), Some(151_645));
    assert_eq!(hf_tok.pad_id(), 151_643);
    assert_eq!(hf_tok.bos_id(), None);
    assert_eq!(hf_tok.stop_token_ids(), vec![151_643, 151_645]);
    std::fs::remove_dir_all(&dir).ok();
}
