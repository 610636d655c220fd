//! Tokenizers for the models earguard runs: HF `tokenizer.json` files, and byte-level BPE
//! vocabularies rebuilt from GGUF metadata so a single `.gguf` file is a complete model.
//!
//! The GGUF path follows llama.cpp's reading of the metadata (token types, pre-tokenizer
//! names, special ids) and reproduces HF's pre-tokenization for each supported vocabulary, so
//! the ids match what the model saw in training; `tests/tokenizer_vocab.rs` checks this against
//! llama.cpp's own test vectors.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, OffsetReferential, OffsetType, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::content::Span;
use crate::error::{ModelError, Result};

/// Special-token names that end a turn or a document in the chat models we run; generation
/// stops on whichever of them the vocabulary has.
const STOP_TOKEN_NAMES: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
mod token_type {
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// A text tokenizer with the special ids generation needs.
///
/// Encoding always splits out the vocabulary's added tokens (`<|im_start|>` and friends), as
/// chat templates expect; [`Tokenizer::encode_literal`] treats control tokens as plain text,
/// for text that must not be able to open or close a turn, and [`Tokenizer::encode_spans`]
/// does both in one prompt: markup parsed, message content literal.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Same pipeline with special-token matching off; built on first use of `encode_literal`.
    literal: OnceLock<tokenizers::Tokenizer>,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    pad: Option<u32>,
    /// Whether `encode(.., true)` must make sure the sequence starts with BOS. GGUF vocabularies
    /// say so in metadata; HF files usually do it in their post-processor instead.
    ensure_bos: bool,
    /// Ids of added (control and user-defined) tokens.
    special_ids: HashSet<u32>,
    /// Further stop ids named by the model (HF `generation_config.json`).
    extra_stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("pad", &self.pad)
            .field("ensure_bos", &self.ensure_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Load an HF `tokenizer.json`. A `tokenizer_config.json` next to it, if present, supplies
    /// the BOS/EOS/PAD token strings and `add_bos_token`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::file(path, "tokenizer file not found"));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::file(path, format!("not a valid HF tokenizer.json: {e}")))?;
        let config = match path.parent().map(|d| d.join("tokenizer_config.json")) {
            Some(p) if p.is_file() => Some(read_json(&p)?),
            _ => None,
        };
        Ok(Self::from_hf_parts(inner, config.as_ref()))
    }

    /// Load the tokenizer of an HF model directory: `tokenizer.json`, plus
    /// `tokenizer_config.json` and `generation_config.json` (extra EOS ids) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let mut tok = Self::from_file(&dir.join("tokenizer.json"))?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = read_json(&gen_path)?;
            let ids: Vec<u32> = match gen.get("eos_token_id") {
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(json_u32).collect(),
                Some(v) => json_u32(v).into_iter().collect(),
                None => Vec::new(),
            };
            if tok.eos.is_none() {
                tok.eos = ids.first().copied();
            }
            tok.extra_stop_ids = ids;
        }
        Ok(tok)
    }

    fn from_hf_parts(inner: tokenizers::Tokenizer, config: Option<&serde_json::Value>) -> Self {
        let token_field = |key: &str| -> Option<u32> {
            let v = config?.get(key)?;
            // Either a plain string or a serialized AddedToken {"content": ...}.
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos = token_field("bos_token");
        let eos = token_field("eos_token");
        let pad = token_field("pad_token");
        let ensure_bos = bos.is_some()
            && config
                .and_then(|c| c.get("add_bos_token"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
        let added = inner.get_added_tokens_decoder();
        let special_ids = added.keys().copied().collect();
        // One past the largest id, so every id below it is in range even if the file skips some.
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        Tokenizer {
            inner,
            literal: OnceLock::new(),
            vocab_size,
            bos,
            eos,
            eot: None,
            pad,
            ensure_bos,
            special_ids,
            extra_stop_ids: Vec::new(),
        }
    }

    /// Build the tokenizer stored in a GGUF file's metadata (`path` only names the file in
    /// errors). Only byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) are
    /// supported; SentencePiece (`"llama"`) vocabularies are refused with a clear error.
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = Meta { content, path };
        let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
            meta.err("tokenizer.ggml.model", "missing: the file has no tokenizer")
        })?;
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(meta.err(
                    "tokenizer.ggml.model",
                    "SentencePiece ('llama') vocabularies are not supported; load the model from \
                     an HF directory with tokenizer.json instead",
                ))
            }
            other => {
                return Err(meta.err(
                    "tokenizer.ggml.model",
                    format!("unsupported tokenizer model '{other}' (supported: gpt2)"),
                ))
            }
        }

        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(meta.err("tokenizer.ggml.tokens", "missing or empty"));
        }
        let n_tokens = tokens.len();
        let types = meta.ints("tokenizer.ggml.token_type")?;
        if !types.is_empty() && types.len() != n_tokens {
            return Err(meta.err(
                "tokenizer.ggml.token_type",
                format!("has {} entries for {n_tokens} tokens", types.len()),
            ));
        }
        let merges = meta.strings("tokenizer.ggml.merges")?;
        if merges.is_empty() {
            return Err(meta.err("tokenizer.ggml.merges", "missing or empty"));
        }
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| split_merge(m).ok_or(i))
            .collect::<std::result::Result<Vec<_>, usize>>()
            .map_err(|i| {
                meta.err(
                    "tokenizer.ggml.merges",
                    format!(
                        "entry {i} ({:?}) is malformed: expected two tokens separated by a space",
                        merges[i]
                    ),
                )
            })?;

        let pre_name = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre = PreTokenizerKind::from_gguf_name(pre_name).ok_or_else(|| {
            meta.err(
                "tokenizer.ggml.pre",
                format!(
                    "unsupported pre-tokenizer '{pre_name}' (supported: {})",
                    PreTokenizerKind::SUPPORTED
                ),
            )
        })?;

        // Text -> id. A text listed twice keeps its first id, as HF does; the later id then
        // has no text and decodes to nothing.
        let mut vocab = Vocab::default();
        let mut duplicates = 0usize;
        for (id, text) in tokens.iter().enumerate() {
            if vocab.contains_key(*text) {
                duplicates += 1;
            } else {
                vocab.insert((*text).to_owned(), id as u32);
            }
        }
        if duplicates > 0 {
            tracing::warn!(
                "{}: {duplicates} duplicate token texts in tokenizer.ggml.tokens",
                path.display()
            );
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges())
            .build()
            .map_err(|e| meta.err("tokenizer.ggml.merges", format!("invalid BPE table: {e}")))?;

        let id = |key: &str| -> Result<Option<u32>> {
            match meta.int(key)? {
                None => Ok(None),
                Some(v) if v >= 0 && (v as u64) < n_tokens as u64 => Ok(Some(v as u32)),
                // llama.cpp ignores such ids too: several published files carry them.
                Some(v) => {
                    tracing::warn!(
                        "{}: ignoring {key} = {v} (vocabulary has {n_tokens} tokens)",
                        path.display()
                    );
                    Ok(None)
                }
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let pad = id("tokenizer.ggml.padding_token_id")?;
        let add_bos = meta
            .bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(pre.adds_bos_by_default());

        // Control/unknown tokens become special added tokens and user-defined ones plain added
        // tokens, both matched verbatim on the raw text (llama.cpp's special-token partition).
        let mut special_ids: HashSet<u32> = HashSet::new();
        let mut added = Vec::new();
        for (i, text) in tokens.iter().enumerate() {
            let ty = types.get(i).copied();
            let is_named_special = [bos, eos, eot, pad].contains(&Some(i as u32));
            let special = match ty {
                Some(token_type::CONTROL | token_type::UNKNOWN) => true,
                Some(token_type::USER_DEFINED) => false,
                // Without types, at least the special ids must still be recognised.
                None if is_named_special => true,
                _ => continue,
            };
            if text.is_empty() || vocab_id_of(&bpe, text) != Some(i as u32) {
                continue;
            }
            special_ids.insert(i as u32);
            added.push(AddedToken::from(*text, special).normalized(false));
        }

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let failed = |what: &str, e: tokenizers::Error| {
            ModelError::Tokenizer(format!("cannot build the GGUF tokenizer ({what}): {e}"))
        };
        if pre.nfc() {
            inner
                .with_normalizer(Some(NFC))
                .map_err(|e| failed("normalizer", e))?;
        }
        inner.with_pre_tokenizer(Some(pre.build().map_err(|e| {
            meta.err(
                "tokenizer.ggml.pre",
                format!("cannot build pre-tokenizer '{pre_name}': {e}"),
            )
        })?));
        inner.with_decoder(Some(ByteLevel::default()));
        let (special, user): (Vec<AddedToken>, Vec<AddedToken>) =
            added.into_iter().partition(|t| t.special);
        inner
            .add_special_tokens(special)
            .map_err(|e| failed("special tokens", e))?;
        inner
            .add_tokens(user)
            .map_err(|e| failed("added tokens", e))?;

        Ok(Tokenizer {
            inner,
            literal: OnceLock::new(),
            vocab_size: n_tokens,
            bos,
            eos,
            eot,
            pad,
            ensure_bos: add_bos && bos.is_some(),
            special_ids,
            extra_stop_ids: Vec::new(),
        })
    }

    /// Token ids of `text`. Added tokens written in the text (`<|im_start|>`) become their
    /// single ids. With `add_special_tokens`, BOS is added only where the model asks for it; a
    /// BOS the text already starts with (from a chat template) is not doubled.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.encode_with(&self.inner, text, add_special_tokens)
    }

    /// Like [`encode`](Self::encode), but control tokens in `text` are tokenized as ordinary
    /// text (llama.cpp's `parse_special = false`), so untrusted text cannot inject turn
    /// markers. User-defined added tokens are still matched.
    pub fn encode_literal(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.encode_with(self.literal(), text, add_special_tokens)
    }

    fn literal(&self) -> &tokenizers::Tokenizer {
        self.literal.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// Token ids of a rendered prompt: special tokens are split out of the [`Span::Markup`]
    /// pieces only; [`Span::Content`] is text, as [`encode_literal`](Self::encode_literal)
    /// makes it. Where no content holds a special-token string, the ids equal those of
    /// [`encode`](Self::encode) on the whole text: the text between two markup special tokens
    /// is tokenized as one piece either way, and post-processing (BOS) runs once on the whole.
    pub fn encode_spans(&self, spans: &[Span], add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .encode_spans_marked(spans, add_special_tokens, |_| false)?
            .0)
    }

    /// [`encode_spans`](Self::encode_spans), and for every token whether it carries text of a
    /// [`Span::Content`] for which `marked(text)` holds (e.g. the user's messages, not the
    /// system's). A token that straddles marked content and other text (a merge across the
    /// boundary) counts as marked; tokens the post-processor adds (BOS) do not.
    pub fn encode_spans_marked(
        &self,
        spans: &[Span],
        add_special_tokens: bool,
        marked: impl Fn(&str) -> bool,
    ) -> Result<(Vec<u32>, Vec<bool>)> {
        let err = |e: tokenizers::Error| ModelError::Tokenizer(format!("cannot encode text: {e}"));
        let mut pieces = Vec::new();
        let mut marks: Vec<bool> = Vec::new();
        let mut text = String::new();
        // Byte ranges of `text` that came from content spans.
        let mut content: Vec<std::ops::Range<usize>> = Vec::new();
        let flush = |text: &mut String,
                     content: &mut Vec<std::ops::Range<usize>>,
                     pieces: &mut Vec<tokenizers::Encoding>,
                     marks: &mut Vec<bool>|
         -> Result<()> {
            if !text.is_empty() {
                // `encode` (not `encode_fast`) for the byte offsets; the ids are the same.
                let enc = self.literal().encode(text.as_str(), false).map_err(err)?;
                marks.extend(
                    enc.get_offsets()
                        .iter()
                        .map(|&(a, b)| content.iter().any(|r| a < r.end && r.start < b)),
                );
                pieces.push(enc);
                text.clear();
                content.clear();
            }
            Ok(())
        };
        for span in spans {
            let markup = match span {
                Span::Content(t) => {
                    let start = text.len();
                    text.push_str(t);
                    if marked(t) {
                        content.push(start..text.len());
                    }
                    continue;
                }
                Span::Markup(t) => t,
            };
            let added = self.inner.get_added_vocabulary();
            let split = added.extract_and_normalize(self.inner.get_normalizer(), markup);
            for (_, (start, end), tokens) in
                split.get_splits(OffsetReferential::Original, OffsetType::Byte)
            {
                let piece = &markup[start..end];
                // By id: a match's text includes the spaces an lstrip/rstrip token takes.
                let special = tokens.iter().flatten().any(|t| {
                    added
                        .get_added_tokens_decoder()
                        .get(&t.id)
                        .is_some_and(|a| a.special)
                });
                if special {
                    flush(&mut text, &mut content, &mut pieces, &mut marks)?;
                    let enc = self.inner.encode_fast(piece, false).map_err(err)?;
                    marks.extend(std::iter::repeat_n(false, enc.len()));
                    pieces.push(enc);
                } else {
                    text.push_str(piece);
                }
            }
        }
        flush(&mut text, &mut content, &mut pieces, &mut marks)?;
        let merged = tokenizers::Encoding::merge(pieces, false);
        let body = merged.get_ids().to_vec();
        let enc = self
            .inner
            .post_process(merged, None, add_special_tokens)
            .map_err(err)?;
        let processed = enc.get_ids();
        // The post-processor only adds tokens around the sequence: find where it sits.
        let at = (0..=processed.len().saturating_sub(body.len()))
            .find(|&k| processed[k..].starts_with(&body))
            .ok_or_else(|| {
                ModelError::Tokenizer("the post-processor rewrote the prompt's tokens".into())
            })?;
        let mut mask = vec![false; at];
        mask.extend(marks);
        mask.resize(processed.len(), false);
        let ids = self.fix_bos(processed.to_vec(), add_special_tokens);
        match ids.len() as isize - mask.len() as isize {
            1 => mask.insert(0, false),
            -1 => {
                mask.remove(0);
            }
            _ => {}
        }
        Ok((ids, mask))
    }

    fn encode_with(
        &self,
        tok: &tokenizers::Tokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>> {
        let enc = tok
            .encode_fast(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(self.fix_bos(enc.get_ids().to_vec(), add_special_tokens))
    }

    /// BOS where the model asks for it and the post-processor did not add it; never twice.
    fn fix_bos(&self, mut ids: Vec<u32>, add_special_tokens: bool) -> Vec<u32> {
        if add_special_tokens {
            if let Some(bos) = self.bos {
                if self.ensure_bos && ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
                if ids.len() >= 2 && ids[0] == bos && ids[1] == bos {
                    ids.remove(0);
                }
            }
        }
        ids
    }

    /// Text of `ids`; unknown ids (e.g. padding rows of the embedding) decode to nothing.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode {} ids: {e}", ids.len())))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id`, in the vocabulary's own spelling (byte-level BPE writes a
    /// leading space as `Ġ`); use [`decode`](Self::decode) for text.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of token ids the tokenizer knows. The model's embedding may have more rows.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn id where the model names one apart from EOS (GGUF `eot_token_id`).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Id fed into padding positions: PAD, else EOS, else 0. Padding is masked out, so any
    /// valid id does.
    pub fn pad_id(&self) -> u32 {
        self.pad.or(self.eos).unwrap_or(0)
    }

    /// Whether `id` is an added (control or user-defined) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// Ids that end a generation: EOS, EOT, ids from `generation_config.json`, and whichever
    /// end-of-turn/end-of-text special tokens the vocabulary has. Sorted, no duplicates.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids: BTreeSet<u32> = self.eos.into_iter().chain(self.eot).collect();
        ids.extend(self.extra_stop_ids.iter().copied());
        for name in STOP_TOKEN_NAMES {
            if let Some(id) = self
                .token_to_id(name)
                .filter(|id| self.special_ids.contains(id))
            {
                ids.insert(id);
            }
        }
        ids.into_iter().collect()
    }

    /// The underlying HF tokenizer, e.g. to save it as `tokenizer.json`.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Turns generated ids into text as they arrive. A character whose UTF-8 bytes span several
/// byte-level tokens is held back until it is complete, so every piece is valid text.
///
/// Why not `tokenizers`' own `Tokenizer::decode_stream` (0.22): on the llama.cpp vocabulary
/// fixtures (qwen2, gpt-2, starcoder; every `.inp` case, whole and cut one id short) both give
/// the same pieces, except where a generation stops in the middle of a character (e.g. a
/// Khmer or CJK character cut by the token limit): `DecodeStream` has no flush and silently
/// drops the held bytes, while [`TokenStream::finish`] emits them as U+FFFD, so the streamed
/// text ends as the full decode does. `DecodeStream` also errors (`InvalidPrefix`) where a
/// decoder rewrites earlier text; this stream waits for more ids instead.
#[derive(Debug)]
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window re-decoded for context (decoders may treat a leading token
    /// differently, e.g. strip its space).
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
    skip_special: bool,
}

impl<'a> TokenStream<'a> {
    /// A stream that leaves special tokens out of the text.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self::with_special(tokenizer, true)
    }

    pub fn with_special(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        TokenStream {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// Add one id; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prev = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if full.len() <= prev.len() || full.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        // `prev` is a prefix of `full` unless the decoder rewrote it; then wait for more.
        let Some(piece) = full.strip_prefix(prev.as_str()) else {
            return Ok(None);
        };
        let piece = piece.to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(Some(piece))
    }

    /// Flush what is still held back (an incomplete character shows as U+FFFD).
    pub fn finish(self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let prev = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        let piece = match full.strip_prefix(prev.as_str()) {
            Some(p) => p.to_owned(),
            None => full,
        };
        Ok((!piece.is_empty()).then_some(piece))
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// Pre-tokenizer families, by llama.cpp's `tokenizer.ggml.pre` names. The regexes are the ones
/// in the models' HF `tokenizer.json` files (HF runs them with Oniguruma, as we do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizerKind {
    /// Qwen2/2.5: single digits, words with one leading non-letter, NFC-normalized input.
    Qwen2,
    /// Qwen3.5: like Qwen2, with combining marks kept on their letters.
    Qwen35,
    /// Llama 3: digits in groups of up to three; whole words in the vocabulary skip merging.
    Llama3,
    /// GPT-2's regex alone.
    Gpt2,
    /// StarCoder and SmolLM: single digits, then GPT-2's regex.
    StarCoder,
    /// llama.cpp's fallback for files without a pre-tokenizer name.
    Default,
}

/// GPT-2's split: contractions, words and numbers with one optional leading space,
/// punctuation runs, whitespace (the last space of a run goes with the next word).
const RE_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const RE_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const RE_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizerKind {
    const SUPPORTED: &'static str = "qwen2, deepseek-r1-qwen, stablelm2, megrez, qwen35, llama3, \
        llama-v3, llama-bpe, falcon3, smaug-bpe, dbrx, gpt-2, phi-2, mpt, olmo, jais, starcoder, \
        smollm, refact, codeshell, default";

    fn from_gguf_name(name: &str) -> Option<Self> {
        Some(match name {
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => Self::Qwen2,
            "qwen35" => Self::Qwen35,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Self::Llama3,
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => Self::Gpt2,
            "starcoder" | "smollm" | "refact" | "codeshell" => Self::StarCoder,
            "default" => Self::Default,
            _ => return None,
        })
    }

    /// Regexes applied one after the other; each splits the pieces of the previous one, and
    /// both matches and the text between them become pieces.
    fn regexes(self) -> &'static [&'static str] {
        match self {
            Self::Qwen2 => &[RE_QWEN2],
            Self::Qwen35 => &[RE_QWEN35],
            Self::Llama3 => &[RE_LLAMA3],
            Self::Gpt2 => &[RE_GPT2],
            Self::StarCoder => &[r"\p{N}", RE_GPT2],
            Self::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                RE_GPT2,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
        }
    }

    /// Qwen2's HF tokenizer NFC-normalizes its input (llama.cpp does not; we follow HF, the
    /// tokenizer the model was trained with). Qwen3.5's does not: its test vectors keep
    /// combining accents apart.
    fn nfc(self) -> bool {
        self == Self::Qwen2
    }

    /// HF's `ignore_merges`: a piece that is itself a vocabulary entry is not merged.
    fn ignore_merges(self) -> bool {
        self == Self::Llama3
    }

    /// BOS default when the file has no `add_bos_token` (as llama.cpp decides).
    fn adds_bos_by_default(self) -> bool {
        self == Self::Llama3
    }

    fn build(self) -> tokenizers::Result<Sequence> {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for re in self.regexes() {
            let split = Split::new(
                SplitPattern::Regex((*re).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )?;
            steps.push(split.into());
        }
        // Map bytes to the printable characters byte-level vocabularies are written in.
        steps.push(
            ByteLevel::default()
                .add_prefix_space(false)
                .use_regex(false)
                .into(),
        );
        Ok(Sequence::new(steps))
    }
}

/// `"a b"` -> `("a", "b")`. The separator is the first space after the first character (a
/// byte-level token never holds a raw space, but be lenient as llama.cpp is).
fn split_merge(merge: &str) -> Option<(String, String)> {
    let first_len = merge.chars().next()?.len_utf8();
    let sep = merge[first_len..].find(' ')? + first_len;
    let (a, b) = (&merge[..sep], &merge[sep + 1..]);
    if b.is_empty() {
        return None;
    }
    Some((a.to_owned(), b.to_owned()))
}

fn vocab_id_of(bpe: &BPE, text: &str) -> Option<u32> {
    use tokenizers::Model;
    bpe.token_to_id(text)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = earguard_data::read_small_text(path)
        .map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ModelError::file(path, format!("invalid JSON: {e}")))
}

fn json_u32(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// Typed access to GGUF metadata; wrong types are errors that name the key and the file.
struct Meta<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> ModelError {
        ModelError::file(self.path, format!("GGUF metadata {key}: {message}"))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(
                key,
                format!("expected a string, found {:?}", v.value_type()),
            )),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => int_value(v).map(Some).ok_or_else(|| {
                self.err(
                    key,
                    format!("expected an integer, found {:?}", v.value_type()),
                )
            }),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, format!("expected a bool, found {:?}", v.value_type()))),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(self.err(
                key,
                format!("expected an array, found {:?}", v.value_type()),
            )),
        }
    }

    /// A string array; missing -> empty.
    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.err(
                    key,
                    format!("entry {i} is {:?}, not a string", v.value_type()),
                )),
            })
            .collect()
    }

    /// An integer array; missing -> empty.
    fn ints(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                int_value(v).ok_or_else(|| {
                    self.err(
                        key,
                        format!("entry {i} is {:?}, not an integer", v.value_type()),
                    )
                })
            })
            .collect()
    }
}

fn int_value(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// The text of the token whose id GGUF metadata `id_key` names (e.g. the BOS string a chat
/// template prints); None if either is missing or malformed.
pub(crate) fn gguf_token_text(content: &Content, id_key: &str) -> Option<String> {
    let id = int_value(content.metadata.get(id_key)?)?;
    let tokens = match content.metadata.get("tokenizer.ggml.tokens")? {
        Value::Array(a) => a,
        _ => return None,
    };
    match tokens.get(usize::try_from(id).ok()?)? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_split_on_the_separator() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("ĠĠ ĠĠ"), Some(("ĠĠ".into(), "ĠĠ".into())));
        assert_eq!(split_merge("nospace"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
    }

    #[test]
    fn every_pre_tokenizer_compiles() {
        for name in PreTokenizerKind::SUPPORTED.split(", ") {
            let kind = PreTokenizerKind::from_gguf_name(name.trim()).expect(name);
            kind.build().expect(name);
        }
        assert_eq!(PreTokenizerKind::from_gguf_name("nope"), None);
    }
}
