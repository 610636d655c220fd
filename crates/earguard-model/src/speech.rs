//! The speech head of a speech-language model built from parts (LegoSLM, Ma et al. 2025,
//! arXiv 2505.11352): frozen Whisper encoder frames in, CTC posteriors over a text LLM's
//! vocabulary out.
//!
//! The head sees the encoder's output frames (`[batch, T, d_in]`, 50 per second for Whisper)
//! and is small: a strided 1-D convolution (T → T/2, 25 frames per second, so the LLM reads
//! fewer rows), `layers` residual convolutions with GELU for local context (the encoder already
//! attends over the whole clip), and two linear read-outs:
//! - **tokens**: class 0 is CTC's blank, class i ≥ 1 the LLM token `tokens[i - 1]` (the
//!   tokens that occur in the training transcripts);
//! - **chars**: a character CTC branch (class 0 blank, then `alphabet`), trained beside the
//!   token branch as an auxiliary task: characters are what the audio spells out, and they
//!   give the shared layers a signal for tokens seen only a few times.
//!
//! On disk a head is a directory: `head.safetensors` (the weights) and `head.json`
//! ([`SpeechHeadConfig`]).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

pub const HEAD_CONFIG: &str = "head.json";
pub const HEAD_WEIGHTS: &str = "head.safetensors";

/// Everything that shapes a head, and what its classes mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechHeadConfig {
    /// Width of the encoder frames it reads (512 for Whisper-base).
    pub d_in: usize,
    /// Width of its hidden layers.
    pub d_model: usize,
    /// Kernel size of every convolution (odd).
    pub kernel: usize,
    /// Residual convolutions after the strided one.
    pub layers: usize,
    /// LLM token id of token class i + 1 (class 0 is blank).
    pub tokens: Vec<u32>,
    /// Character of char class i + 1 (class 0 is blank).
    pub alphabet: String,
}

impl SpeechHeadConfig {
    pub fn n_token_classes(&self) -> usize {
        self.tokens.len() + 1
    }

    pub fn n_char_classes(&self) -> usize {
        self.alphabet.chars().count() + 1
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(format!("speech head config: {m}")));
        if self.d_in == 0 || self.d_model == 0 {
            return bad("d_in and d_model must be positive".into());
        }
        if self.kernel == 0 || self.kernel.is_multiple_of(2) || self.kernel > 31 {
            return bad(format!("kernel {} must be odd, 1 to 31", self.kernel));
        }
        if self.layers > 16 {
            return bad(format!("{} layers is more than 16", self.layers));
        }
        if self.tokens.is_empty() {
            return bad("no token classes".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(t) = self.tokens.iter().find(|t| !seen.insert(**t)) {
            return bad(format!("token {t} is listed twice"));
        }
        let mut chars = std::collections::HashSet::new();
        if let Some(c) = self.alphabet.chars().find(|c| !chars.insert(*c)) {
            return bad(format!("character {c:?} is listed twice"));
        }
        Ok(())
    }

    /// Head frames for `t` encoder frames (the strided convolution's output length).
    pub fn out_frames(&self, t: usize) -> usize {
        if t == 0 {
            0
        } else {
            (t - 1) / 2 + 1
        }
    }

    /// Char classes of a text (lower-cased; characters outside the alphabet dropped, runs of
    /// spaces merged).
    pub fn char_targets(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut last_space = true;
        for c in text.to_lowercase().chars() {
            let c = if c.is_whitespace() { ' ' } else { c };
            if c == ' ' && last_space {
                continue;
            }
            if let Some(i) = self.alphabet.chars().position(|a| a == c) {
                out.push(i as u32 + 1);
                last_space = c == ' ';
            }
        }
        if out.last()
            == self
                .alphabet
                .chars()
                .position(|a| a == ' ')
                .map(|i| i as u32 + 1)
                .as_ref()
        {
            out.pop();
        }
        out
    }

    /// The text of char classes.
    pub fn chars_text(&self, classes: &[u32]) -> String {
        let alphabet: Vec<char> = self.alphabet.chars().collect();
        classes
            .iter()
            .filter_map(|&k| alphabet.get((k as usize).checked_sub(1)?))
            .collect()
    }
}

/// The trainable head: see the module docs.
#[derive(Debug, Clone)]
pub struct SpeechHead {
    cfg: SpeechHeadConfig,
    stem: Conv1d,
    blocks: Vec<Conv1d>,
    tokens: Linear,
    chars: Linear,
}

impl SpeechHead {
    /// Build from `vb` (a `VarMap` for training, a safetensors file for inference).
    pub fn new(cfg: SpeechHeadConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let pad = cfg.kernel / 2;
        let stem = candle_nn::conv1d(
            cfg.d_in,
            cfg.d_model,
            cfg.kernel,
            Conv1dConfig {
                padding: pad,
                stride: 2,
                ..Default::default()
            },
            vb.pp("stem"),
        )?;
        let blocks = (0..cfg.layers)
            .map(|i| {
                candle_nn::conv1d(
                    cfg.d_model,
                    cfg.d_model,
                    cfg.kernel,
                    Conv1dConfig {
                        padding: pad,
                        ..Default::default()
                    },
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tokens = candle_nn::linear(cfg.d_model, cfg.n_token_classes(), vb.pp("tokens"))?;
        let chars = candle_nn::linear(cfg.d_model, cfg.n_char_classes(), vb.pp("chars"))?;
        Ok(Self {
            cfg,
            stem,
            blocks,
            tokens,
            chars,
        })
    }

    /// Load a head directory (`head.json` + `head.safetensors`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(HEAD_CONFIG);
        let text =
            std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::file(&cfg_path, e))?;
        let cfg: SpeechHeadConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::file(&cfg_path, e))?;
        let weights = dir.join(HEAD_WEIGHTS);
        if !weights.is_file() {
            return Err(ModelError::file(
                &weights,
                "missing: not a trained speech head",
            ));
        }
        // SAFETY: the file is mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        Self::new(cfg, vb).map_err(|e| ModelError::file(&weights, e))
    }

    pub fn config(&self) -> &SpeechHeadConfig {
        &self.cfg
    }

    /// Token and char logits, `[batch, out_frames(T), classes]` each, for encoder frames
    /// `[batch, T, d_in]`. Differentiable (for training) as it stands.
    pub fn forward(&self, frames: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, d) = frames.dims3()?;
        if d != self.cfg.d_in {
            return Err(ModelError::Shape(format!(
                "the speech head reads {}-wide frames, got {d}",
                self.cfg.d_in
            )));
        }
        let x = frames.transpose(1, 2)?.contiguous()?;
        let mut x = self.stem.forward(&x)?.gelu_erf()?;
        for b in &self.blocks {
            x = (&x + b.forward(&x)?.gelu_erf()?)?;
        }
        let x = x.transpose(1, 2)?.contiguous()?;
        Ok((self.tokens.forward(&x)?, self.chars.forward(&x)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn cfg() -> SpeechHeadConfig {
        SpeechHeadConfig {
            d_in: 8,
            d_model: 6,
            kernel: 3,
            layers: 2,
            tokens: vec![101, 7, 55],
            alphabet: "abc ".into(),
        }
    }

    #[test]
    fn shapes_and_lengths() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let head = SpeechHead::new(cfg(), vb).unwrap();
        for t in [1, 2, 7, 10] {
            let x = Tensor::zeros((2, t, 8), DType::F32, &Device::Cpu).unwrap();
            let (tok, ch) = head.forward(&x).unwrap();
            assert_eq!(tok.dims(), [2, cfg().out_frames(t), 4]);
            assert_eq!(ch.dims(), [2, cfg().out_frames(t), 5]);
        }
        let x = Tensor::zeros((1, 4, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(head.forward(&x).unwrap_err().to_string().contains("8-wide"));
    }

    #[test]
    fn char_targets_normalise_text() {
        let c = cfg();
        assert_eq!(c.chars_text(&c.char_targets("  A b,  C!  ")), "a b c");
        assert_eq!(c.char_targets("cab"), [3, 1, 2]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = cfg();
        c.kernel = 4;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.tokens = vec![1, 1];
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }
}
