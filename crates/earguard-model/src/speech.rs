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
//!
//! [`SpeechTower`] puts the parts together for a text LLM: log-mel → encoder → head → for
//! each kept frame, the posterior-weighted sum of the LLM's own input embeddings of the head's
//! tokens ("pseudo-audio embeddings", LegoSLM §2), which take the place of the clip's
//! placeholder tokens in the prompt. Frames whose most likely class is blank are dropped
//! (they carry no token: LegoSLM drops them too), and runs of frames with the same most
//! likely token are merged into one row (their posteriors averaged): CTC spreads one token
//! over several frames, and repeating its embedding would read to the LLM as a repeated word.
//! Blank's mass is removed and the rest renormalised before the sum; `temperature` divides
//! the logits first (below 1 sharper, towards the hard transcript's embeddings; above 1
//! flatter).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv1d, Conv1dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::whisper::WhisperEncoder;
use crate::whisper_listener::WhisperListener;

pub const HEAD_CONFIG: &str = "head.json";
pub const HEAD_WEIGHTS: &str = "head.safetensors";

/// Heads of the head's self-attention layers.
pub const ATTENTION_HEADS: usize = 4;

/// The layers of a head: what a training run chooses and a head directory records (flattened
/// into both `head.json` and a training run's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadShape {
    /// Width of its hidden layers.
    pub d_model: usize,
    /// Kernel size of every convolution (odd).
    pub kernel: usize,
    /// Residual convolutions after the strided one.
    pub layers: usize,
    /// Stride of the first convolution: 2 reads Whisper's 50 frames per second as 25.
    #[serde(default = "default_stride")]
    pub stride: usize,
    /// Layer-normalise the encoder frames first (learned scale and shift). Whisper's outputs
    /// have a few dimensions far larger than the rest.
    #[serde(default)]
    pub input_norm: bool,
    /// Pre-norm residual blocks: each block reads its input layer-normalised
    /// (`x + gelu(conv(norm(x)))`), and training starts each block's convolution at zero, so a
    /// deep head starts as the shallow one. Without it, blocks are `x + gelu(conv(x))`.
    #[serde(default)]
    pub block_norm: bool,
    /// Self-attention layers after the convolutions (pre-norm, 4 heads, sinusoidal positions
    /// added once before the first): context across the whole clip, where a convolution sees
    /// `kernel` frames. Training starts each layer's output projection at zero.
    #[serde(default)]
    pub attention_layers: usize,
}

/// Everything that shapes a head, and what its classes mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechHeadConfig {
    /// Width of the encoder frames it reads (512 for Whisper-base).
    pub d_in: usize,
    /// Its layers (stored flat beside the other fields).
    #[serde(flatten)]
    pub shape: HeadShape,
    /// LLM token id of token class i + 1 (class 0 is blank).
    pub tokens: Vec<u32>,
    /// Character of char class i + 1 (class 0 is blank).
    pub alphabet: String,
}

fn default_stride() -> usize {
    2
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
        if self.d_in == 0 || self.shape.d_model == 0 {
            return bad("d_in and d_model must be positive".into());
        }
        if self.shape.kernel == 0 || self.shape.kernel.is_multiple_of(2) || self.shape.kernel > 31 {
            return bad(format!("kernel {} must be odd, 1 to 31", self.shape.kernel));
        }
        if !(1..=4).contains(&self.shape.stride) {
            return bad(format!("stride {} must be 1 to 4", self.shape.stride));
        }
        if self.shape.layers > 16 || self.shape.attention_layers > 16 {
            return bad(format!(
                "{} convolution and {} attention layers: at most 16 each",
                self.shape.layers, self.shape.attention_layers
            ));
        }
        if self.shape.attention_layers > 0
            && !self.shape.d_model.is_multiple_of(2 * ATTENTION_HEADS)
        {
            return bad(format!(
                "d_model {} must be a multiple of {} for {ATTENTION_HEADS}-head attention",
                self.shape.d_model,
                2 * ATTENTION_HEADS
            ));
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

    /// Head frames for `t` encoder frames (the strided convolution's output length, with
    /// padding `kernel / 2`).
    pub fn out_frames(&self, t: usize) -> usize {
        if t == 0 {
            0
        } else {
            (t - 1) / self.shape.stride + 1
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
    /// Scale and shift of the input layer norm, when the config asks for one.
    norm: Option<(Tensor, Tensor)>,
    stem: Conv1d,
    /// Each residual block: its input norm (scale, shift) when `block_norm`, its convolution.
    blocks: Vec<(Option<(Tensor, Tensor)>, Conv1d)>,
    attention: Vec<Attention>,
    tokens: Linear,
    chars: Linear,
}

impl SpeechHead {
    /// Build from `vb` (a `VarMap` for training, a safetensors file for inference).
    pub fn new(cfg: SpeechHeadConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let norm = if cfg.shape.input_norm {
            let n = vb.pp("norm");
            Some((
                n.get_with_hints(cfg.d_in, "weight", candle_nn::Init::Const(1.0))?,
                n.get_with_hints(cfg.d_in, "bias", candle_nn::Init::Const(0.0))?,
            ))
        } else {
            None
        };
        let pad = cfg.shape.kernel / 2;
        let stem = candle_nn::conv1d(
            cfg.d_in,
            cfg.shape.d_model,
            cfg.shape.kernel,
            Conv1dConfig {
                padding: pad,
                stride: cfg.shape.stride,
                ..Default::default()
            },
            vb.pp("stem"),
        )?;
        let blocks = (0..cfg.shape.layers)
            .map(|i| {
                let conv = |vb: VarBuilder| {
                    candle_nn::conv1d(
                        cfg.shape.d_model,
                        cfg.shape.d_model,
                        cfg.shape.kernel,
                        Conv1dConfig {
                            padding: pad,
                            ..Default::default()
                        },
                        vb,
                    )
                };
                let b = vb.pp(format!("blocks.{i}"));
                if cfg.shape.block_norm {
                    let n = b.pp("norm");
                    let norm = (
                        n.get_with_hints(cfg.shape.d_model, "weight", candle_nn::Init::Const(1.0))?,
                        n.get_with_hints(cfg.shape.d_model, "bias", candle_nn::Init::Const(0.0))?,
                    );
                    Ok((Some(norm), conv(b.pp("conv"))?))
                } else {
                    Ok((None, conv(b)?))
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let attention = (0..cfg.shape.attention_layers)
            .map(|i| Attention::new(cfg.shape.d_model, vb.pp(format!("attn.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tokens = candle_nn::linear(cfg.shape.d_model, cfg.n_token_classes(), vb.pp("tokens"))?;
        let chars = candle_nn::linear(cfg.shape.d_model, cfg.n_char_classes(), vb.pp("chars"))?;
        Ok(Self {
            cfg,
            norm,
            stem,
            blocks,
            attention,
            tokens,
            chars,
        })
    }

    /// Load a head directory (`head.json` + `head.safetensors`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(HEAD_CONFIG);
        let text = earguard_data::read_small_text(&cfg_path)
            .map_err(|e| ModelError::file(&cfg_path, e))?;
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
    /// `[batch, T, d_in]` all of length T. Differentiable (for training) as it stands.
    pub fn forward(&self, frames: &Tensor) -> Result<(Tensor, Tensor)> {
        self.forward_padded(frames, None)
    }

    /// [`Self::forward`] for a batch padded to its longest clip: `lengths` (encoder frames of
    /// each row) keep attention off the padding, so a clip's logits do not depend on its batch.
    pub fn forward_padded(
        &self,
        frames: &Tensor,
        lengths: Option<&[usize]>,
    ) -> Result<(Tensor, Tensor)> {
        let (_, _, d) = frames.dims3()?;
        if d != self.cfg.d_in {
            return Err(ModelError::Shape(format!(
                "the speech head reads {}-wide frames, got {d}",
                self.cfg.d_in
            )));
        }
        let (b, t_in, _) = frames.dims3()?;
        if let Some(lens) = lengths {
            if lens.len() != b {
                return Err(ModelError::Shape(format!(
                    "{} lengths for a batch of {b} clips",
                    lens.len()
                )));
            }
        }
        // 1 on a clip's own frames, 0 on its padding, `[batch, T, 1]`: padding is zeroed after
        // every layer, as a lone clip's convolutions see zeros past its end.
        let keep = |t: usize, len: &dyn Fn(usize) -> usize| -> Result<Option<Tensor>> {
            let Some(lens) = lengths else { return Ok(None) };
            let mut m = vec![0f32; b * t];
            for (row, &l) in lens.iter().enumerate() {
                m[row * t..row * t + len(l).min(t)].fill(1.0);
            }
            Ok(Some(Tensor::from_vec(m, (b, t, 1), frames.device())?))
        };
        let zero_padding = |x: Tensor, keep: &Option<Tensor>| -> Result<Tensor> {
            Ok(match keep {
                Some(k) => x.broadcast_mul(k)?,
                None => x,
            })
        };
        let keep_in = keep(t_in, &|l| l)?;
        let frames = match &self.norm {
            None => frames.clone(),
            Some((w, b)) => zero_padding(layer_norm(frames, w, b)?, &keep_in)?,
        };
        let x = frames.transpose(1, 2)?.contiguous()?;
        let x = self.stem.forward(&x)?.gelu_erf()?;
        // Residual blocks run frames-last ([batch, T, d]) between convolutions.
        let x = x.transpose(1, 2)?.contiguous()?;
        let keep_out = keep(x.dim(1)?, &|l| self.cfg.out_frames(l))?;
        let mut x = zero_padding(x, &keep_out)?;
        for (norm, conv) in &self.blocks {
            let input = match norm {
                None => x.clone(),
                Some((w, b)) => layer_norm(&x, w, b)?,
            };
            let y = conv
                .forward(&input.transpose(1, 2)?.contiguous()?)?
                .gelu_erf()?
                .transpose(1, 2)?;
            x = zero_padding((&x + y)?.contiguous()?, &keep_out)?;
        }
        if !self.attention.is_empty() {
            let (_, t, d) = x.dims3()?;
            x = x.broadcast_add(&crate::whisper::sinusoids(t, d)?.to_device(x.device())?)?;
            // Padding keys get a large negative score (finite: no NaN in the backward pass).
            let mask = match &keep_out {
                None => None,
                Some(k) => Some(((k.squeeze(2)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?),
            };
            for a in &self.attention {
                x = a.forward(&x, mask.as_ref())?;
            }
        }
        Ok((self.tokens.forward(&x)?, self.chars.forward(&x)?))
    }
}

/// A pre-norm self-attention layer with a residual: `x + out(attend(norm(x)))`, its softmax
/// composed from differentiable ops (candle's fused softmax has no backward).
#[derive(Debug, Clone)]
struct Attention {
    norm: (Tensor, Tensor),
    qkv: Linear,
    out: Linear,
}

impl Attention {
    fn new(d: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let n = vb.pp("norm");
        Ok(Self {
            norm: (
                n.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
                n.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
            ),
            qkv: candle_nn::linear(d, 3 * d, vb.pp("qkv"))?,
            out: candle_nn::linear(d, d, vb.pp("out"))?,
        })
    }

    /// `x` `[batch, T, d]`; `mask` `[batch, 1, 1, T]` added to the scores (padding keys).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let (h, hd) = (ATTENTION_HEADS, d / ATTENTION_HEADS);
        let qkv = self
            .qkv
            .forward(&layer_norm(x, &self.norm.0, &self.norm.1)?)?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * d, d)?
                .reshape((b, t, h, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? / (hd as f64).sqrt())?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let e = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1)?)?
            .exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let o = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        Ok((x + self.out.forward(&o)?)?)
    }
}

/// Layer norm over the last dimension with scale `w` and shift `b`, composed from
/// differentiable ops (candle's fused layer norm has no backward).
fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred
        .broadcast_div(&(var + 1e-5)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)?)
}

/// Whisper log-mel of a clip at its real length, `[1, n_mels, frames]` (frames even, at least
/// 2): the valid columns of the standard padded 30 s window's features (`[n_mels, 3000]` or
/// `[1, n_mels, 3000]`), so the normalisation is Whisper's. What the head is trained on and
/// what it reads at inference.
pub fn real_length(features: &Tensor, valid_frames: usize) -> Result<Tensor> {
    let f = match features.rank() {
        2 => features.unsqueeze(0)?,
        _ => features.clone(),
    };
    let total = f.dim(2)?;
    let n = (valid_frames + valid_frames % 2).clamp(2, total);
    Ok(f.narrow(2, 0, n)?.contiguous()?)
}

/// How a speech model hears: what turns Whisper's encoder states into LLM rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    /// A trained CTC head over the LLM's tokens ([`SpeechHead`]; LegoSLM).
    #[default]
    CtcHead,
    /// Whisper's own decoder, its posteriors mapped onto the LLM's tokens
    /// ([`crate::whisper_listener`]).
    WhisperDecoder,
}

/// `speech.json`, what a speech model directory is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechModelConfig {
    /// The text LLM: a short name, or a path (relative paths from this directory).
    pub llm: String,
    /// The Whisper model (its encoder, and for a whisper-decoder listener its decoder): a
    /// CTranslate2 or HF directory (relative paths from this directory).
    pub whisper: String,
    /// What turns the encoder's states into LLM rows (default: ctc-head).
    #[serde(default)]
    pub listener: ListenerKind,
    /// The head directory of a ctc-head listener (relative paths from this directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Posterior temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

fn default_temperature() -> f32 {
    1.0
}

pub const SPEECH_CONFIG: &str = "speech.json";

impl SpeechModelConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SPEECH_CONFIG);
        let text = earguard_data::read_small_text(&path).map_err(|e| ModelError::file(&path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| ModelError::file(&path, e))?;
        if !(cfg.temperature.is_finite() && cfg.temperature > 0.0) {
            return Err(ModelError::file(
                &path,
                format!("temperature {} must be a positive number", cfg.temperature),
            ));
        }
        match (cfg.listener, &cfg.head) {
            (ListenerKind::CtcHead, None) => Err(ModelError::file(
                &path,
                "a ctc-head listener needs \"head\": the head directory",
            )),
            (ListenerKind::WhisperDecoder, Some(_)) => Err(ModelError::file(
                &path,
                "a whisper-decoder listener has no head: remove \"head\" (or say \"listener\": \"ctc-head\")",
            )),
            _ => Ok(cfg),
        }
    }

    /// Write `dir/speech.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SPEECH_CONFIG);
        let text = serde_json::to_string_pretty(self).map_err(|e| ModelError::file(&path, e))?;
        earguard_data::atomic::write(&path, (text + "\n").as_bytes())
            .map_err(|e| ModelError::file(&path, e))
    }

    /// `p` relative to `dir` unless absolute.
    pub fn path(dir: &Path, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    }
}

/// Placeholder tokens for audio rows, in order of preference: a special token of the LLM's
/// vocabulary that its chat template does not write itself. Literal content never yields a
/// special token, so a placeholder marks audio rows and nothing else.
pub const PLACEHOLDERS: &[&str] = &[
    "<|AUDIO|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|fim_pad|>",
    "<file_sep>",
    "<filename>",
];

/// What `inspect` says a speech model is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeechInfo {
    pub llm: String,
    pub whisper: PathBuf,
    pub encoder_layers: usize,
    pub listener: ListenerInfo,
    pub temperature: f32,
    pub placeholder: String,
}

/// What `inspect` says a speech model's listener is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ListenerInfo {
    CtcHead {
        head: PathBuf,
        sha256: String,
        d_model: usize,
        /// Residual convolutions and self-attention layers after the strided convolution.
        conv_layers: usize,
        attention_layers: usize,
        tokens: usize,
    },
    WhisperDecoder {
        /// Share of Whisper's text tokens that are LLM tokens.
        shared_vocabulary: f32,
        top_k: usize,
    },
}

impl std::fmt::Display for ListenerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenerInfo::CtcHead {
                head,
                sha256,
                d_model,
                conv_layers,
                attention_layers,
                tokens,
            } => write!(
                f,
                "the CTC head {} (d {d_model}, {conv_layers} residual convolutions, {attention_layers} self-attention layers, {tokens} token classes + blank, sha256 {}…)",
                head.display(),
                sha256.get(..12).unwrap_or(sha256)
            ),
            ListenerInfo::WhisperDecoder {
                shared_vocabulary,
                top_k,
            } => write!(
                f,
                "Whisper's own decoder (greedy; each token a mix of its {top_k} likeliest that are LLM tokens; {:.1} % of Whisper's tokens are)",
                100.0 * shared_vocabulary
            ),
        }
    }
}

/// What turns a clip's encoder states into LLM rows.
// A tower holds one listener, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Listener {
    /// A trained CTC head and the LLM's input embeddings of its token classes `[tokens, hidden]`.
    CtcHead {
        head: SpeechHead,
        embeddings: Tensor,
    },
    /// Whisper's decoder and the LLM's whole input embedding table `[vocab, hidden]`.
    WhisperDecoder {
        listener: WhisperListener,
        embeddings: Tensor,
    },
}

impl Listener {
    /// A ctc-head listener for the LLM `decoder`: refused when the head does not fit the
    /// encoder's width or emits tokens outside the LLM's vocabulary.
    pub fn ctc_head(head: SpeechHead, encoder: &WhisperEncoder, decoder: &Decoder) -> Result<Self> {
        let cfg = head.config();
        if cfg.d_in != encoder.config().d_model {
            return Err(ModelError::Invalid(format!(
                "the speech head reads {}-wide frames but the encoder writes {}",
                cfg.d_in,
                encoder.config().d_model
            )));
        }
        let vocab = decoder.config().vocab_size;
        if let Some(t) = cfg.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Invalid(format!(
                "the speech head emits token {t}, outside the LLM's vocabulary of {vocab}: it was trained for another LLM"
            )));
        }
        let ids = Tensor::new(cfg.tokens.as_slice(), decoder.device())?.unsqueeze(0)?;
        let embeddings = decoder.embed(&ids)?.squeeze(0)?.to_dtype(DType::F32)?;
        Ok(Listener::CtcHead { head, embeddings })
    }

    /// A whisper-decoder listener for the LLM `decoder`.
    pub fn whisper_decoder(listener: WhisperListener, decoder: &Decoder) -> Result<Self> {
        Ok(Listener::WhisperDecoder {
            listener,
            // Shared with the LLM (no copy); rows are gathered and widened as they are made.
            embeddings: decoder.embedding_table().clone(),
        })
    }
}

/// A text LLM's ears: frozen Whisper encoder + a listener → pseudo-audio embeddings.
#[derive(Debug, Clone)]
pub struct SpeechTower {
    pub encoder: WhisperEncoder,
    listener: Listener,
    pub temperature: f32,
    /// The placeholder token's id and text.
    pub placeholder: (u32, String),
    pub info: SpeechInfo,
}

impl SpeechTower {
    pub fn new(
        encoder: WhisperEncoder,
        listener: Listener,
        temperature: f32,
        placeholder: (u32, String),
        info: SpeechInfo,
    ) -> Self {
        Self {
            encoder,
            listener,
            temperature,
            placeholder,
            info,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.encoder.config().num_mel_bins
    }

    /// Token-class logits `[out_frames, classes]` of one clip's padded log-mel (a ctc-head
    /// listener's).
    fn head_logits(
        &self,
        head: &SpeechHead,
        features: &Tensor,
        valid_frames: usize,
    ) -> Result<Tensor> {
        let _span = tracing::info_span!("encode_speech", valid_frames).entered();
        let x = real_length(features, valid_frames)?;
        let frames = self.encoder.forward(&x, None)?;
        let (tokens, _) = head.forward(&frames)?;
        Ok(tokens.squeeze(0)?)
    }

    /// Encoder states of the padded 30 s window, what Whisper's decoder reads.
    fn window_states(&self, features: &Tensor) -> Result<Tensor> {
        let _span = tracing::info_span!("encode_speech_window").entered();
        let x = match features.rank() {
            2 => features.unsqueeze(0)?,
            _ => features.clone(),
        };
        self.encoder.forward(&x, None)
    }

    /// Pseudo-audio embeddings `[n, hidden]` of one clip's padded log-mel (see the module
    /// docs; n is 0 for a clip where nothing is heard).
    pub fn encode(&self, features: &Tensor, valid_frames: usize) -> Result<Tensor> {
        match &self.listener {
            Listener::CtcHead { head, embeddings } => {
                let probs = self.posteriors(head, features, valid_frames)?;
                pool(embeddings, &probs, &segments(&probs)?)
            }
            Listener::WhisperDecoder {
                listener,
                embeddings,
            } => {
                let xa = self.window_states(features)?;
                let tokens = listener.transcribe(&xa)?;
                listener.rows(&xa, &tokens, self.temperature, embeddings)
            }
        }
    }

    /// Pseudo-audio embeddings of a corrupted copy of a clip (`noised`, the same length as
    /// `clean`) with as many rows as [`Self::encode`] gives for `clean`: a CTC head's noised
    /// posteriors are pooled over the *clean* clip's segments, Whisper's decoder reads the
    /// noised audio along the clean clip's transcript. A contrast between the two (SafeCoDe)
    /// then shares its token ids, and the noise acts on what each row says, not on how many
    /// rows there are.
    pub fn encode_on_segments_of(
        &self,
        clean: &Tensor,
        noised: &Tensor,
        valid_frames: usize,
    ) -> Result<Tensor> {
        match &self.listener {
            Listener::CtcHead { head, embeddings } => {
                let runs = segments(&self.posteriors(head, clean, valid_frames)?)?;
                pool(
                    embeddings,
                    &self.posteriors(head, noised, valid_frames)?,
                    &runs,
                )
            }
            Listener::WhisperDecoder {
                listener,
                embeddings,
            } => {
                let tokens = listener.transcribe(&self.window_states(clean)?)?;
                listener.rows(
                    &self.window_states(noised)?,
                    &tokens,
                    self.temperature,
                    embeddings,
                )
            }
        }
    }

    /// Token-class posteriors `[out_frames, classes]` at the tower's temperature.
    fn posteriors(
        &self,
        head: &SpeechHead,
        features: &Tensor,
        valid_frames: usize,
    ) -> Result<Tensor> {
        let logits = self.head_logits(head, features, valid_frames)?;
        Ok(candle_nn::ops::softmax_last_dim(
            &(logits / f64::from(self.temperature))?,
        )?)
    }

    /// The greedy transcript of one clip, as text.
    pub fn transcript(&self, features: &Tensor, valid_frames: usize) -> Result<Transcript> {
        match &self.listener {
            Listener::CtcHead { head, .. } => {
                let best: Vec<u32> = self
                    .head_logits(head, features, valid_frames)?
                    .argmax(D::Minus1)?
                    .to_vec1()?;
                let tokens = &head.config().tokens;
                Ok(Transcript::LlmTokens(
                    ctc_collapse(&best)
                        .into_iter()
                        .map(|k| tokens[k as usize - 1])
                        .collect(),
                ))
            }
            Listener::WhisperDecoder { listener, .. } => {
                let tokens = listener.transcribe(&self.window_states(features)?)?;
                Ok(Transcript::Text(listener.text(&tokens)?))
            }
        }
    }
}

/// A greedy transcript: a CTC head's LLM token ids (the LLM's tokenizer spells them), or
/// Whisper's decoded text.
#[derive(Debug, Clone, PartialEq)]
pub enum Transcript {
    LlmTokens(Vec<u32>),
    Text(String),
}

/// One row per segment: the segment's mean posteriors without blank, renormalised, times
/// the LLM's embeddings of the head's tokens.
fn pool(embeddings: &Tensor, probs: &Tensor, runs: &[(usize, usize)]) -> Result<Tensor> {
    let hidden = embeddings.dim(1)?;
    if runs.is_empty() {
        return Ok(Tensor::zeros((0, hidden), DType::F32, probs.device())?);
    }
    let n_tok = embeddings.dim(0)?;
    let rows = runs
        .iter()
        .map(|&(start, len)| probs.narrow(0, start, len)?.mean(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let q = Tensor::stack(&rows, 0)?.narrow(1, 1, n_tok)?;
    // A noised clip pooled over the clean segments may put (nearly) all of a segment's
    // mass on blank: keep the division finite.
    let q = q.broadcast_div(&q.sum_keepdim(1)?.clamp(1e-30f32, f32::MAX)?)?;
    Ok(q.matmul(embeddings)?)
}

/// The segments `(first frame, frames)` a clip's rows come from: runs of frames with one
/// non-blank most likely class (blank frames belong to none).
fn segments(probs: &Tensor) -> Result<Vec<(usize, usize)>> {
    let best: Vec<u32> = probs.argmax(D::Minus1)?.to_vec1()?;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (f, &k) in best.iter().enumerate() {
        if k == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((start, len)) if *start + *len == f && best[*start] == k => *len += 1,
            _ => runs.push((f, 1)),
        }
    }
    Ok(runs)
}

/// CTC's greedy collapse of each frame's best class (0 is blank): repeats merged, blanks
/// dropped, so `1 1 0 1 2 2 0` gives `1 1 2`.
pub fn ctc_collapse(best: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &k in best {
        if k != 0 && k != prev {
            out.push(k);
        }
        prev = k;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn cfg() -> SpeechHeadConfig {
        SpeechHeadConfig {
            shape: HeadShape {
                d_model: 6,
                kernel: 3,
                layers: 2,
                stride: 2,
                input_norm: true,
                block_norm: false,
                attention_layers: 0,
            },
            d_in: 8,
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
        c.shape.kernel = 4;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.tokens = vec![1, 1];
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }

    /// A clip padded in a batch reads as it does alone: its padding is zeroed after the input
    /// norm and every convolution (a lone clip's convolutions see zeros past its end) and
    /// masked from attention. Without the lengths they differ (the control).
    #[test]
    fn a_padded_clip_reads_as_it_does_alone() {
        let map = VarMap::new();
        let cfg = SpeechHeadConfig {
            shape: HeadShape {
                attention_layers: 2,
                d_model: 8,
                ..cfg().shape
            },
            ..cfg()
        };
        let head = SpeechHead::new(
            cfg.clone(),
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let long = Tensor::randn(0f32, 1.0, (1, 9, 8), &Device::Cpu).unwrap();
        let short = Tensor::randn(0f32, 1.0, (1, 5, 8), &Device::Cpu).unwrap();
        let padded = Tensor::cat(&[long, short.pad_with_zeros(1, 0, 4).unwrap()], 0).unwrap();
        let n = cfg.out_frames(5);
        let alone = head.forward(&short).unwrap().0.squeeze(0).unwrap();
        let row = |lengths: Option<&[usize]>| {
            let (t, _) = head.forward_padded(&padded, lengths).unwrap();
            t.get(1).unwrap().narrow(0, 0, n).unwrap()
        };
        let diff = |a: &Tensor| {
            (a - &alone)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&row(Some(&[9, 5]))) < 1e-5);
        assert!(
            diff(&row(None)) > 1e-4,
            "the control: padding leaks without lengths"
        );
    }

    /// Every parameter of the head receives a gradient (candle's conv1d backward included),
    /// with plain and with pre-norm residual blocks.
    #[test]
    fn every_parameter_gets_a_gradient() {
        for (block_norm, attention_layers) in [(false, 0), (true, 1)] {
            every_parameter_gets_a_gradient_with(SpeechHeadConfig {
                shape: HeadShape {
                    d_model: 8,
                    block_norm,
                    attention_layers,
                    ..cfg().shape
                },
                ..cfg()
            });
        }
    }

    fn every_parameter_gets_a_gradient_with(cfg: SpeechHeadConfig) {
        let map = VarMap::new();
        let head =
            SpeechHead::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 9, 8), &Device::Cpu).unwrap();
        let (t, c) = head.forward(&x).unwrap();
        let loss =
            (t.sqr().unwrap().sum_all().unwrap() + c.sqr().unwrap().sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let data = map.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let g = grads
                .get(data[name].as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "zero gradient for {name}");
        }
    }
}
