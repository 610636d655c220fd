//! Whisper's own decoder as a speech model's listener: the other way to give a text LLM ears
//! ([`crate::speech`] has the trained CTC head).
//!
//! The clip's log-mel (the standard padded 30 s window, what Whisper's decoder was trained to
//! read) goes through the frozen encoder; Whisper's decoder (candle-transformers' stock
//! implementation, weights renamed from CTranslate2 by [`crate::ct2::whisper_decoder_tensors`]
//! or read from an HF checkpoint) transcribes it greedily in English without timestamps
//! (`<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`, the model's suppressed tokens
//! and every special token but end-of-text kept out, as Whisper's decoding does). Each emitted
//! token then becomes one row for the LLM, as the CTC head's kept frames do (LegoSLM's
//! posterior-weighted embeddings, arXiv 2505.11352 §2):
//!
//! - Whisper and Qwen2 / SmolLM2 are byte-level BPE tokenizers over the same byte alphabet, so a
//!   Whisper token usually *is* an LLM token (the same byte string). When the emitted token is
//!   one, its row is the posterior-weighted sum of the LLM's input embeddings of the step's
//!   [`TOP_K`] most likely Whisper tokens that are LLM tokens, their logits divided by the
//!   temperature and softmaxed among themselves (the rest of Whisper's 51,865-way posterior is
//!   negligible mass, and each row stays a cheap `[K] × [K, hidden]` product).
//! - A run of emitted tokens that are not LLM tokens is decoded to text and tokenized by the LLM
//!   as literal text (never markup): one hard row per LLM token.
//!
//! The posteriors of every step come from one teacher-forced pass over the transcript, so a
//! corrupted copy of the clip ([`WhisperListener::rows`] given its encoder states) is read
//! along the clean clip's transcript: the same rows, each saying what the noised audio makes
//! of that step (SafeCoDe's contrast).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::whisper::{self as cw, model::TextDecoder};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// Candidates mixed into a soft row.
pub const TOP_K: usize = 16;

/// The longest transcript, in Whisper tokens (Whisper's own `sample_len`, half its 448
/// positions).
const MAX_TOKENS: usize = 224;

/// Whisper's decoder and what it takes to turn its transcripts into LLM rows.
#[derive(Debug, Clone)]
pub struct WhisperListener {
    decoder: TextDecoder,
    whisper_tokenizer: Tokenizer,
    llm_tokenizer: Tokenizer,
    /// `<|startoftranscript|>` (then `<|en|><|transcribe|>` for multilingual models) and
    /// `<|notimestamps|>`.
    prompt: Vec<u32>,
    eot: u32,
    /// 0 or -inf per Whisper token: never emitted / also not first.
    suppress: Vec<f32>,
    suppress_first: Vec<f32>,
    /// For each Whisper token, the LLM token with the same bytes.
    to_llm: Vec<Option<u32>>,
}

impl WhisperListener {
    /// Whisper's decoder from a CTranslate2 (`model.bin`) or HF (`model.safetensors`) Whisper
    /// directory with its `tokenizer.json`, for an LLM with tokenizer `llm`.
    pub fn load(dir: &Path, llm: &Tokenizer, device: &Device) -> Result<Self> {
        let (tensors, sizes, suppress_ids, suppress_begin) = read_weights(dir)?;
        let get = |k: &str| -> Result<usize> {
            sizes[k].as_u64().map(|v| v as usize).ok_or_else(|| {
                ModelError::file(dir.join("config.json"), format!("no {k} in the config"))
            })
        };
        let cfg = cw::Config {
            num_mel_bins: get("num_mel_bins")?,
            max_source_positions: get("max_source_positions")?,
            d_model: get("d_model")?,
            encoder_attention_heads: get("encoder_attention_heads")?,
            encoder_layers: get("encoder_layers")?,
            vocab_size: get("vocab_size")?,
            max_target_positions: get("max_target_positions")?,
            decoder_attention_heads: get("decoder_attention_heads")?,
            decoder_layers: get("decoder_layers")?,
            suppress_tokens: suppress_ids.clone(),
        };
        let vocab = cfg.vocab_size;
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<_>>()?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device);
        // The stock loader builds the encoder too; ours ([`crate::whisper::WhisperEncoder`])
        // is the one that runs, so only the decoder is kept.
        let decoder = cw::model::Whisper::load(&vb, cfg)
            .map_err(|e| ModelError::file(dir, format!("Whisper's decoder: {e}")))?
            .decoder;
        let whisper_tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let id = |t: &str| whisper_tokenizer.token_to_id(t);
        let need = |t: &str| {
            id(t).ok_or_else(|| {
                ModelError::file(dir.join("tokenizer.json"), format!("has no {t} token"))
            })
        };
        let eot = need(cw::EOT_TOKEN)?;
        let mut prompt = vec![need(cw::SOT_TOKEN)?];
        // English-only checkpoints have neither a language nor a task token.
        if let (Some(en), Some(task)) = (id("<|en|>"), id(cw::TRANSCRIBE_TOKEN)) {
            prompt.extend([en, task]);
        }
        prompt.push(need(cw::NO_TIMESTAMPS_TOKEN)?);
        let mut suppress = vec![0f32; vocab];
        for &t in &suppress_ids {
            if let Some(s) = suppress.get_mut(t as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        // Specials and timestamps (every id after end-of-text) are never transcript text.
        for s in suppress.iter_mut().skip(eot as usize + 1) {
            *s = f32::NEG_INFINITY;
        }
        let mut suppress_first = suppress.clone();
        for t in suppress_begin.iter().copied().chain([eot]) {
            if let Some(s) = suppress_first.get_mut(t as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        let to_llm = (0..vocab as u32)
            .map(|w| {
                if w >= eot {
                    return None;
                }
                whisper_tokenizer
                    .id_to_token(w)
                    .and_then(|s| llm.token_to_id(&s))
                    .filter(|&l| !llm.is_special(l))
            })
            .collect();
        Ok(Self {
            decoder,
            whisper_tokenizer,
            llm_tokenizer: llm.clone(),
            prompt,
            eot,
            suppress,
            suppress_first,
            to_llm,
        })
    }

    /// Share of Whisper's text tokens that are LLM tokens (what `inspect` reports).
    pub fn shared_vocabulary(&self) -> f32 {
        let text = self.eot as usize;
        self.to_llm[..text].iter().filter(|t| t.is_some()).count() as f32 / text.max(1) as f32
    }

    /// The greedy transcript, in Whisper tokens (no prompt, no end-of-text), of encoder states
    /// `[1, frames, d]`.
    pub fn transcribe(&self, xa: &Tensor) -> Result<Vec<u32>> {
        let mut decoder = self.decoder.clone();
        decoder.reset_kv_cache();
        let mut ids = self.prompt.clone();
        let mut out = Vec::new();
        while out.len() < MAX_TOKENS {
            let x = Tensor::new(ids.as_slice(), xa.device())?.unsqueeze(0)?;
            let h = decoder.forward(&x, xa, out.is_empty())?;
            let last = h.i((.., ids.len() - 1..ids.len(), ..))?;
            let logits: Vec<f32> = decoder.final_linear(&last)?.flatten_all()?.to_vec1()?;
            let mask = if out.is_empty() {
                &self.suppress_first
            } else {
                &self.suppress
            };
            let best = argmax(logits.iter().zip(mask).map(|(l, m)| l + m));
            if best == self.eot {
                break;
            }
            out.push(best);
            ids.push(best);
        }
        Ok(out)
    }

    /// Masked logits `[n, vocab]` of each token of `tokens` given the tokens before it and
    /// encoder states `xa` (one teacher-forced pass).
    fn forced_logits(&self, xa: &Tensor, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut decoder = self.decoder.clone();
        decoder.reset_kv_cache();
        let ids: Vec<u32> = self.prompt.iter().chain(tokens).copied().collect();
        let x = Tensor::new(ids.as_slice(), xa.device())?.unsqueeze(0)?;
        let h = decoder.forward(&x, xa, true)?;
        let p = self.prompt.len();
        let h = h.i((.., p - 1..p - 1 + tokens.len(), ..))?;
        let logits: Vec<Vec<f32>> = decoder.final_linear(&h)?.squeeze(0)?.to_vec2()?;
        Ok(logits
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                let mask = if i == 0 {
                    &self.suppress_first
                } else {
                    &self.suppress
                };
                row.iter().zip(mask).map(|(l, m)| l + m).collect()
            })
            .collect())
    }

    /// The LLM rows `[n, hidden]` of `tokens` (a transcript from [`Self::transcribe`]) read
    /// from encoder states `xa` (the clip's, or a corrupted copy's) at `temperature`, with the
    /// LLM's input embedding table `embeddings` (any dtype; the rows are f32; see the module
    /// docs).
    pub fn rows(
        &self,
        xa: &Tensor,
        tokens: &[u32],
        temperature: f32,
        embeddings: &Tensor,
    ) -> Result<Tensor> {
        let logits = self.forced_logits(xa, tokens)?;
        let device = embeddings.device();
        let mut rows = Vec::with_capacity(tokens.len());
        let mut pending: Vec<u32> = Vec::new();
        for (i, &w) in tokens.iter().enumerate() {
            if self.to_llm.get(w as usize).copied().flatten().is_none() {
                pending.push(w);
                continue;
            }
            self.flush(&mut pending, embeddings, &mut rows)?;
            let (ids, weights) = mixture(&logits[i], &self.to_llm, TOP_K, temperature);
            let e = embeddings
                .index_select(&Tensor::new(ids.as_slice(), device)?, 0)?
                .to_dtype(DType::F32)?;
            let w = Tensor::from_vec(weights, (1, ids.len()), device)?;
            rows.push(w.matmul(&e)?);
        }
        self.flush(&mut pending, embeddings, &mut rows)?;
        if rows.is_empty() {
            return Ok(Tensor::zeros((0, embeddings.dim(1)?), DType::F32, device)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Hard rows for a run of Whisper tokens that are not LLM tokens: their text, tokenized by
    /// the LLM as literal text.
    fn flush(
        &self,
        pending: &mut Vec<u32>,
        embeddings: &Tensor,
        rows: &mut Vec<Tensor>,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let text = self.whisper_tokenizer.decode(pending, true)?;
        pending.clear();
        let ids = self.llm_tokenizer.encode_literal(&text, false)?;
        if !ids.is_empty() {
            rows.push(
                embeddings
                    .index_select(&Tensor::new(ids.as_slice(), embeddings.device())?, 0)?
                    .to_dtype(DType::F32)?,
            );
        }
        Ok(())
    }

    /// A transcript's text.
    pub fn text(&self, tokens: &[u32]) -> Result<String> {
        self.whisper_tokenizer.decode(tokens, true)
    }
}

/// The LLM ids and weights of one step's soft row: the `k` most likely Whisper tokens that are
/// LLM tokens (`to_llm`), softmaxed among themselves at `temperature`.
fn mixture(
    logits: &[f32],
    to_llm: &[Option<u32>],
    k: usize,
    temperature: f32,
) -> (Vec<u32>, Vec<f32>) {
    let mut cand: Vec<(f32, u32)> = logits
        .iter()
        .zip(to_llm)
        .filter_map(|(&l, t)| Some((l, (*t)?)))
        .filter(|(l, _)| l.is_finite())
        .collect();
    if k < cand.len() {
        cand.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
        cand.truncate(k);
    }
    let top = cand.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = cand
        .iter()
        .map(|c| ((c.0 - top) / temperature).exp())
        .collect();
    let z: f32 = e.iter().sum();
    (
        cand.iter().map(|c| c.1).collect(),
        e.iter().map(|v| v / z).collect(),
    )
}

fn argmax(values: impl Iterator<Item = f32>) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (i, v) in values.enumerate() {
        if v > best.0 {
            best = (v, i as u32);
        }
    }
    best.1
}

/// HF-named tensors (encoder and decoder), the model's sizes, and its suppressed tokens (always,
/// and at the first step) of a Whisper directory.
#[allow(clippy::type_complexity)]
fn read_weights(
    dir: &Path,
) -> Result<(
    std::collections::HashMap<String, Tensor>,
    serde_json::Value,
    Vec<u32>,
    Vec<u32>,
)> {
    let config_path = dir.join("config.json");
    let config: serde_json::Value = match earguard_data::read_small_text(&config_path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| ModelError::file(&config_path, e))?,
        Err(_) => serde_json::Value::Null,
    };
    let ids = |keys: &[&str]| -> Vec<u32> {
        keys.iter()
            .find_map(|k| config.get(*k)?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect()
    };
    // CTranslate2's config names them suppress_ids / suppress_ids_begin, HF's
    // suppress_tokens / begin_suppress_tokens.
    let suppress = ids(&["suppress_ids", "suppress_tokens"]);
    let begin = ids(&["suppress_ids_begin", "begin_suppress_tokens"]);
    let bin = dir.join("model.bin");
    if bin.is_file() && !dir.join("model.safetensors").is_file() {
        let model = crate::ct2::read_whisper(&bin)?;
        let (mut tensors, sizes) = crate::ct2::whisper_encoder_tensors(&model)?;
        tensors.extend(crate::ct2::whisper_decoder_tensors(&model)?);
        return Ok((tensors, sizes, suppress, begin));
    }
    let st = dir.join("model.safetensors");
    let tensors =
        candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| ModelError::file(&st, e))?;
    if !tensors.contains_key("model.decoder.embed_tokens.weight") {
        return Err(ModelError::file(
            &st,
            "has no Whisper decoder (model.decoder.*): a whisper-decoder listener needs the \
             whole model (`convert ct2-whisper` writes the encoder only; point at the \
             CTranslate2 directory instead)",
        ));
    }
    Ok((tensors, config, suppress, begin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_row_mixes_the_likeliest_llm_tokens() {
        // Whisper tokens 0..6; 1 and 4 are not LLM tokens, 5 is suppressed.
        let to_llm = [Some(10), None, Some(12), Some(13), None, Some(15)];
        let logits = [1.0, 9.0, 3.0, 2.0, 8.0, f32::NEG_INFINITY];
        let (ids, w) = mixture(&logits, &to_llm, 2, 1.0);
        let mut pairs: Vec<(u32, f32)> = ids.into_iter().zip(w).collect();
        pairs.sort_by_key(|p| p.0);
        assert_eq!(pairs.iter().map(|p| p.0).collect::<Vec<_>>(), [12, 13]);
        let e = 1f32.exp();
        assert!((pairs[0].1 - e / (e + 1.0)).abs() < 1e-6, "{pairs:?}");
        assert!((pairs[0].1 + pairs[1].1 - 1.0).abs() < 1e-6);
        // A cold temperature is the best LLM token alone; a hot one flattens the mix.
        let (ids, w) = mixture(&logits, &to_llm, 16, 1e-4);
        let best = ids[w.iter().position(|&v| v > 0.99).unwrap()];
        assert_eq!(best, 12);
        let (_, w) = mixture(&logits, &to_llm, 16, 1e4);
        assert_eq!(w.len(), 3, "the suppressed token never enters");
        assert!(w.iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-3), "{w:?}");
    }
}
