//! The Whisper audio encoder (HF `WhisperEncoder`, and `Qwen2AudioEncoder` inside Qwen2-Audio).
//!
//! Log-mel features `[batch, n_mels, frames]` go through a convolution stem (conv1: k=3, pad 1;
//! conv2: k=3, stride 2, pad 1; both followed by exact GELU), get position embeddings added
//! (the checkpoint's `embed_positions.weight`, or Whisper's fixed sinusoids when the checkpoint
//! has none), then pre-LayerNorm transformer blocks
//! (`h += out_proj(attn(self_attn_layer_norm(h)))`, `h += fc2(act(fc1(final_layer_norm(h))))`)
//! and a final `layer_norm`.
//!
//! Weights are read by their HF names under a prefix: `audio_tower.` in Qwen2-Audio checkpoints,
//! `model.encoder.` in plain HF Whisper checkpoints. `k_proj` has no bias.
//!
//! Qwen2-Audio masks padded audio on the *keys* only: with `L` valid mel frames, keys at
//! positions `>= (L - 1) / 2 + 1` (the conv2 output length) are hidden from every query; the
//! queries themselves are not masked. [`WhisperEncoder::forward_hidden`] takes those valid frame
//! counts per batch row. Qwen2-Audio pools *before* the final layer norm, so the final norm is a
//! separate step ([`WhisperEncoder::final_norm`]); [`WhisperEncoder::forward`] is plain Whisper.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::weights::{Linear, WeightStore};

/// LayerNorm epsilon of every Whisper / Qwen2-Audio norm (torch's default, not in the config).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// Encoder hyper-parameters, named as in HF `WhisperConfig` / `Qwen2AudioEncoderConfig`
/// (`audio_config` of a Qwen2-Audio `config.json`). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperEncoderConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub num_mel_bins: usize,
    /// Positions after the stride-2 conv: 1500 for 30 s of audio (3000 mel frames).
    pub max_source_positions: usize,
    /// Activation of the feed-forward blocks (HF `ACT2FN` name); the conv stem always uses
    /// exact GELU, as HF does.
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Present in HF configs but unused by the HF encoder's forward pass; ignored here too.
    #[serde(default)]
    pub scale_embedding: bool,
}

fn default_activation() -> String {
    "gelu".into()
}

impl WhisperEncoderConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(ModelError::Invalid(format!("audio encoder config: {m}")));
        if self.d_model == 0
            || self.encoder_layers == 0
            || self.encoder_attention_heads == 0
            || self.encoder_ffn_dim == 0
            || self.num_mel_bins == 0
            || self.max_source_positions == 0
        {
            return fail(format!(
                "d_model {}, encoder_layers {}, encoder_attention_heads {}, encoder_ffn_dim {}, \
                 num_mel_bins {} and max_source_positions {} must all be positive",
                self.d_model,
                self.encoder_layers,
                self.encoder_attention_heads,
                self.encoder_ffn_dim,
                self.num_mel_bins,
                self.max_source_positions
            ));
        }
        if !self.d_model.is_multiple_of(self.encoder_attention_heads) {
            return fail(format!(
                "d_model {} is not a multiple of encoder_attention_heads {}",
                self.d_model, self.encoder_attention_heads
            ));
        }
        Activation::from_hf(&self.activation_function)?;
        Ok(())
    }

    /// Mel frames of a full window: `2 * max_source_positions` (3000 = 30 s).
    pub fn n_frames(&self) -> usize {
        2 * self.max_source_positions
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.encoder_attention_heads.max(1)
    }
}

/// Length of the conv stem's output for `n_frames` input frames: `(n - 1) / 2 + 1` (0 for 0).
pub fn conv_output_len(n_frames: usize) -> usize {
    if n_frames == 0 {
        0
    } else {
        (n_frames - 1) / 2 + 1
    }
}

/// Activation functions, by their HF `ACT2FN` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, erf-based (HF and OpenAI Whisper).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation (what candle's
    /// `Tensor::gelu` computes).
    GeluTanh,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(ModelError::Invalid(format!(
                "activation_function '{other}' is not supported (gelu, gelu_new, \
                 gelu_pytorch_tanh, gelu_fast, relu, silu)"
            ))),
        }
    }

    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// Whisper's fixed sinusoidal position table `[length, channels]`: `sin` in the first half of
/// the channels, `cos` in the second, timescales from 1 to 10000. Computed in f32 step by step
/// as OpenAI's `sinusoids()` (and candle's) do, so the values match theirs, not a more precise
/// f64 evaluation.
pub fn sinusoids(length: usize, channels: usize) -> Result<Tensor> {
    if channels < 4 || !channels.is_multiple_of(2) {
        return Err(ModelError::Invalid(format!(
            "sinusoidal positions need an even channel count >= 4, got {channels}"
        )));
    }
    let half = channels / 2;
    let increment = 10000f32.ln() / (half - 1) as f32;
    let inv: Vec<f32> = (0..half).map(|i| (i as f32 * -increment).exp()).collect();
    let mut table = vec![0f32; length * channels];
    for t in 0..length {
        let row = &mut table[t * channels..(t + 1) * channels];
        for (i, &f) in inv.iter().enumerate() {
            let a = t as f32 * f;
            row[i] = a.sin();
            row[half + i] = a.cos();
        }
    }
    Ok(Tensor::from_vec(table, (length, channels), &Device::Cpu)?)
}

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn load(store: &WeightStore, module: &str, d: usize) -> Result<Self> {
        Ok(Self {
            weight: store.tensor_shaped(module, "weight", &[d])?,
            bias: store.tensor_shaped(module, "bias", &[d])?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, LAYER_NORM_EPS)
    }
}

#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    /// `[1, out, 1]`, ready to broadcast over `[batch, out, time]`.
    bias: Tensor,
    stride: usize,
}

impl Conv {
    fn load(
        store: &WeightStore,
        module: &str,
        out: usize,
        inp: usize,
        stride: usize,
    ) -> Result<Self> {
        let weight = store.tensor_shaped(module, "weight", &[out, inp, 3])?;
        let bias = store
            .tensor_shaped(module, "bias", &[out])?
            .reshape((1, out, 1))?;
        Ok(Self {
            weight,
            bias,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.conv1d(&self.weight, 1, self.stride, 1, 1)?
            .broadcast_add(&self.bias)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attn_norm: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ffn_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// A loaded Whisper encoder.
#[derive(Debug, Clone)]
pub struct WhisperEncoder {
    cfg: WhisperEncoderConfig,
    conv1: Conv,
    conv2: Conv,
    /// `[max_source_positions, d_model]`.
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    layer_norm: LayerNorm,
    conv_act: Activation,
    ffn_act: Activation,
    split_qk_scale: bool,
}

impl WhisperEncoder {
    /// Load the encoder of a Whisper directory: a CTranslate2 one (`model.bin` and no
    /// safetensors, as `scripts/fetch-models.sh whisper-base` installs it) is converted in
    /// memory as it loads (the names and config of [`crate::ct2::convert_ct2_whisper`], nothing
    /// written); anything else is read as an HF directory ([`Self::load_hf_dir`]).
    pub fn load_dir(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let bin = dir.join("model.bin");
        if !bin.is_file() || dir.join("model.safetensors").is_file() {
            return Self::load_hf_dir(dir, device);
        }
        let (tensors, config) =
            crate::ct2::whisper_encoder_tensors(&crate::ct2::read_whisper(&bin)?)?;
        let cfg: WhisperEncoderConfig =
            serde_json::from_value(config).map_err(|e| ModelError::file(&bin, e))?;
        let store =
            WeightStore::Memory(crate::weights::MemoryWeights::new(tensors, bin)).on(device);
        Self::load(cfg, &store, "model.encoder.")
    }

    /// Load the encoder of an HF Whisper directory (`config.json` + safetensors, tensors
    /// under `model.encoder.`) onto `device`. `earguard convert ct2-whisper` makes one from a
    /// CTranslate2 model.
    pub fn load_hf_dir(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let text = earguard_data::read_small_text(&path).map_err(|e| {
            ModelError::file(
                &path,
                format!("{e} (an HF Whisper directory is needed: earguard convert ct2-whisper makes one)"),
            )
        })?;
        let cfg: WhisperEncoderConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::file(&path, e))?;
        let files = crate::weights::safetensor_files(dir)?;
        let store =
            WeightStore::SafeTensors(crate::weights::SafeTensorWeights::open(files)?).on(device);
        Self::load(cfg, &store, "model.encoder.")
    }

    /// Load the encoder whose tensors are named `{prefix}conv1.weight`, … (`prefix` is
    /// `audio_tower.` for Qwen2-Audio, `model.encoder.` for HF Whisper).
    pub fn load(cfg: WhisperEncoderConfig, store: &WeightStore, prefix: &str) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let m = |s: &str| format!("{prefix}{s}");
        let conv1 = Conv::load(store, &m("conv1"), d, cfg.num_mel_bins, 1)?;
        let conv2 = Conv::load(store, &m("conv2"), d, d, 2)?;
        let positions = if store.contains(&m("embed_positions"), "weight") {
            store.tensor_shaped(
                &m("embed_positions"),
                "weight",
                &[cfg.max_source_positions, d],
            )?
        } else {
            sinusoids(cfg.max_source_positions, d)?.to_device(store.device())?
        };
        let mut layers = Vec::with_capacity(cfg.encoder_layers);
        for l in 0..cfg.encoder_layers {
            let p = m(&format!("layers.{l}"));
            let lin =
                |name: &str, out, inp, bias| store.linear(&format!("{p}.{name}"), out, inp, bias);
            layers.push(EncoderLayer {
                attn_norm: LayerNorm::load(store, &format!("{p}.self_attn_layer_norm"), d)?,
                q: lin("self_attn.q_proj", d, d, true)?,
                k: lin("self_attn.k_proj", d, d, false)?,
                v: lin("self_attn.v_proj", d, d, true)?,
                out: lin("self_attn.out_proj", d, d, true)?,
                ffn_norm: LayerNorm::load(store, &format!("{p}.final_layer_norm"), d)?,
                fc1: lin("fc1", cfg.encoder_ffn_dim, d, true)?,
                fc2: lin("fc2", d, cfg.encoder_ffn_dim, true)?,
            });
        }
        let layer_norm = LayerNorm::load(store, &m("layer_norm"), d)?;
        let ffn_act = Activation::from_hf(&cfg.activation_function)?;
        Ok(Self {
            cfg,
            conv1,
            conv2,
            positions,
            layers,
            layer_norm,
            conv_act: Activation::Gelu,
            ffn_act,
            split_qk_scale: false,
        })
    }

    pub fn config(&self) -> &WhisperEncoderConfig {
        &self.cfg
    }

    /// Override the activations (conv stem, feed-forward). HF semantics are exact GELU for the
    /// stem and the config's `activation_function` for the blocks; candle's stock Whisper uses
    /// the tanh approximation for both, which this makes it possible to reproduce.
    pub fn set_activations(&mut self, conv: Activation, ffn: Activation) {
        self.conv_act = conv;
        self.ffn_act = ffn;
    }

    /// Scale queries and keys by `head_dim^-1/4` each (OpenAI's original formulation, and
    /// candle's) instead of the queries by `head_dim^-1/2` (HF, the default). Mathematically the
    /// same; the rounding differs (about 1e-5 relative on whisper-base's outputs).
    pub fn set_split_qk_scale(&mut self, split: bool) {
        self.split_qk_scale = split;
    }

    /// Output of the last block `[batch, T, d_model]`, before the final layer norm, for
    /// features `[batch, n_mels, frames]` (`T = (frames - 1) / 2 + 1 <= max_source_positions`).
    /// `valid_frames` (one count per batch row) hides the keys computed from padding, as
    /// Qwen2-Audio does; `None` attends everywhere (plain Whisper).
    pub fn forward_hidden(
        &self,
        features: &Tensor,
        valid_frames: Option<&[usize]>,
    ) -> Result<Tensor> {
        let (b, n_mels, n_frames) = features.dims3().map_err(|_| {
            ModelError::Shape(format!(
                "audio features must be [batch, n_mels, frames], got {:?}",
                features.dims()
            ))
        })?;
        if n_mels != self.cfg.num_mel_bins {
            return Err(ModelError::Shape(format!(
                "audio features have {n_mels} mel bins, the encoder expects {}",
                self.cfg.num_mel_bins
            )));
        }
        let t = conv_output_len(n_frames);
        if t == 0 || t > self.cfg.max_source_positions {
            return Err(ModelError::Shape(format!(
                "audio features have {n_frames} frames; the encoder takes 1 to {} frames",
                self.cfg.n_frames()
            )));
        }
        let mask = match valid_frames {
            Some(v) => self.key_mask(v, b, n_frames, t, features.device())?,
            None => None,
        };
        let x = features.to_dtype(DType::F32)?;
        let x = self.conv_act.apply(&self.conv1.forward(&x)?)?;
        let x = self.conv_act.apply(&self.conv2.forward(&x)?)?;
        let x = x
            .transpose(1, 2)?
            .broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        let mut x = x.contiguous()?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, mask.as_ref())?;
        }
        Ok(x)
    }

    /// The encoder's final LayerNorm (`layer_norm`).
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.layer_norm.forward(x)?)
    }

    /// HF `WhisperEncoder(...).last_hidden_state`: blocks then the final layer norm.
    pub fn forward(&self, features: &Tensor, valid_frames: Option<&[usize]>) -> Result<Tensor> {
        self.final_norm(&self.forward_hidden(features, valid_frames)?)
    }

    /// Additive key mask `[batch, 1, 1, T]` (0 or -inf), or None when nothing is hidden.
    fn key_mask(
        &self,
        valid: &[usize],
        b: usize,
        n_frames: usize,
        t: usize,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        if valid.len() != b {
            return Err(ModelError::Shape(format!(
                "{} valid-frame counts for a batch of {b} audio inputs",
                valid.len()
            )));
        }
        if let Some(&bad) = valid.iter().find(|&&v| v == 0 || v > n_frames) {
            return Err(ModelError::Invalid(format!(
                "valid audio frame count {bad} is outside 1..={n_frames}"
            )));
        }
        let lens: Vec<usize> = valid.iter().map(|&v| conv_output_len(v)).collect();
        if lens.iter().all(|&l| l >= t) {
            return Ok(None);
        }
        let mut m = vec![0f32; b * t];
        for (row, &len) in lens.iter().enumerate() {
            m[row * t + len..(row + 1) * t].fill(f32::NEG_INFINITY);
        }
        Ok(Some(Tensor::from_vec(m, (b, 1, 1, t), device)?))
    }

    fn layer_forward(
        &self,
        layer: &EncoderLayer,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let n_heads = self.cfg.encoder_attention_heads;
        let hd = d / n_heads;
        let heads = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, n_heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let h = layer.attn_norm.forward(x)?;
        // HF scales the projected queries (bias included) before q·kᵀ.
        let (q, k) = (layer.q.forward(&h)?, layer.k.forward(&h)?);
        let (q, k) = if self.split_qk_scale {
            let s = (hd as f64).powf(-0.25);
            ((q * s)?, (k * s)?)
        } else {
            ((q * (hd as f64).powf(-0.5))?, k)
        };
        let (q, k) = (heads(q)?, heads(k)?);
        let v = heads(layer.v.forward(&h)?)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let a = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + layer.out.forward(&a)?)?;
        let h = layer.ffn_norm.forward(&x)?;
        let h = layer
            .fc2
            .forward(&self.ffn_act.apply(&layer.fc1.forward(&h)?)?)?;
        Ok((x + h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_output_lengths_match_hf() {
        assert_eq!(conv_output_len(3000), 1500);
        assert_eq!(conv_output_len(1234), 617);
        assert_eq!(conv_output_len(1), 1);
        assert_eq!(conv_output_len(0), 0);
    }

    #[test]
    fn sinusoids_start_with_sin_zero_cos_one() {
        let t = sinusoids(4, 8).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(&t[0][..4], &[0.0; 4]);
        assert_eq!(&t[0][4..], &[1.0; 4]);
        assert!((t[1][0] - 1f32.sin()).abs() < 1e-7);
        assert!(sinusoids(4, 3).is_err());
    }

    #[test]
    fn config_rejects_bad_heads_and_activation() {
        let mut cfg = WhisperEncoderConfig {
            d_model: 64,
            encoder_layers: 1,
            encoder_attention_heads: 3,
            encoder_ffn_dim: 8,
            num_mel_bins: 80,
            max_source_positions: 1500,
            activation_function: "gelu".into(),
            scale_embedding: false,
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("multiple"));
        cfg.encoder_attention_heads = 4;
        cfg.validate().unwrap();
        cfg.activation_function = "quick_gelu".into();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("quick_gelu"));
    }
}
