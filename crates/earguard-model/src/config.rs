//! Decoder hyper-parameters, read from a GGUF header or an HF `config.json`.
//!
//! Both formats describe the same Qwen2/Llama block; this is the one place where their field
//! names meet, so the decoder never looks at either format.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Qwen2,
    Llama,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "qwen2" | "Qwen2ForCausalLM" => Ok(Self::Qwen2),
            "llama" | "LlamaForCausalLM" => Ok(Self::Llama),
            other => Err(ModelError::UnknownArchitecture(other.to_string())),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f64,
    /// Longest sequence (prompt + generation) the model supports.
    pub context_length: usize,
    pub tie_embeddings: bool,
    /// llama.cpp's converter permutes Llama q/k rows so GGUF Llama uses interleaved-pair RoPE;
    /// HF checkpoints (and every Qwen2) rotate the two halves of each head.
    pub rope_interleaved: bool,
}

impl DecoderConfig {
    /// Reject shapes no Qwen2/Llama block can have, before any tensor is touched.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(ModelError::Invalid(format!("model config: {m}")));
        if self.n_layers == 0 || self.hidden_size == 0 || self.n_heads == 0 || self.vocab_size == 0
        {
            return fail(format!(
                "n_layers {}, hidden_size {}, n_heads {} and vocab_size {} must all be positive",
                self.n_layers, self.hidden_size, self.n_heads, self.vocab_size
            ));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return fail(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return fail(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            ));
        }
        if self.context_length == 0 {
            return fail("context_length must be positive".into());
        }
        Ok(())
    }

    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let err = |m: String| ModelError::file(path, m);
        let arch_name = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(err("GGUF metadata has no general.architecture".into())),
        };
        let architecture = Architecture::parse(&arch_name)?;
        let get_u = |key: &str| -> Result<usize> {
            let full = format!("{arch_name}.{key}");
            match content.metadata.get(&full) {
                Some(v) => v
                    .to_u64()
                    .or_else(|_| v.to_u32().map(u64::from))
                    .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
                    .map(|x| x as usize)
                    .map_err(|e| err(format!("GGUF metadata {full}: {e}"))),
                None => Err(err(format!("GGUF metadata is missing {full}"))),
            }
        };
        let get_f = |key: &str| -> Option<f64> {
            let v = content.metadata.get(&format!("{arch_name}.{key}"))?;
            v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok()
        };
        let hidden_size = get_u("embedding_length")?;
        let n_heads = get_u("attention.head_count")?;
        let n_kv_heads = get_u("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = get_u("rope.dimension_count")
            .ok()
            .or_else(|| hidden_size.checked_div(n_heads))
            .unwrap_or(0);
        // candle reports GGUF shapes outermost-first: token_embd is [vocab, hidden].
        let vocab_size = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err(err("GGUF has no token_embd.weight tensor".into())),
        };
        let cfg = DecoderConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: get_u("feed_forward_length")?,
            n_layers: get_u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0) as f32,
            rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            context_length: get_u("context_length").unwrap_or(4096),
            tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
            rope_interleaved: architecture == Architecture::Llama,
        };
        cfg.validate().map_err(|e| err(e.to_string()))?;
        Ok(cfg)
    }

    /// Parse an HF `config.json` for a causal LM (Qwen2ForCausalLM or LlamaForCausalLM).
    pub fn from_hf_json(text: &str, path: &Path) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::file(path, format!("malformed config.json: {e}")))?;
        hf.into_config().map_err(|e| match e {
            ModelError::UnknownArchitecture(_) => e,
            other => ModelError::file(path, other.to_string()),
        })
    }
}

/// The fields of an HF `config.json` that a Qwen2/Llama decoder needs (as named there).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rope_theta: Option<f64>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes `{"rope_theta": …, "rope_type": "default"}` here instead.
    pub rope_parameters: Option<RopeParameters>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
}

impl HfConfig {
    pub fn into_config(self) -> Result<DecoderConfig> {
        let architecture = Architecture::parse(&self.model_type)?;
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(ModelError::Invalid(format!(
                "rope_scaling {scaling} is not supported yet"
            )));
        }
        let params = self.rope_parameters.as_ref();
        if let Some(kind) = params
            .and_then(|p| p.rope_type.as_deref())
            .filter(|t| *t != "default")
        {
            return Err(ModelError::Invalid(format!(
                "rope_type '{kind}' is not supported yet"
            )));
        }
        let rope_theta = self
            .rope_theta
            .or_else(|| params.and_then(|p| p.rope_theta));
        let head_dim = self
            .head_dim
            .or_else(|| self.hidden_size.checked_div(self.num_attention_heads))
            .unwrap_or(0);
        let cfg = DecoderConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rope_theta: rope_theta.unwrap_or(10_000.0) as f32,
            rms_norm_eps: self.rms_norm_eps,
            context_length: self.max_position_embeddings.unwrap_or(4096),
            // transformers defaults tie_word_embeddings to true when the field is absent.
            tie_embeddings: self.tie_word_embeddings.unwrap_or(true),
            rope_interleaved: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_config_names_the_file() {
        let err =
            DecoderConfig::from_hf_json("{\"model_type\": \"qwen2\"", Path::new("x/config.json"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("x/config.json") && err.contains("malformed"),
            "{err}"
        );
    }

    #[test]
    fn unknown_architecture_is_refused() {
        let json = r#"{"model_type":"gpt_neox","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-6}"#;
        let err = DecoderConfig::from_hf_json(json, Path::new("config.json")).unwrap_err();
        assert!(
            matches!(err, ModelError::UnknownArchitecture(ref a) if a == "gpt_neox"),
            "{err}"
        );
    }

    #[test]
    fn rope_theta_is_read_from_rope_parameters() {
        let json = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"}}"#;
        let cfg = DecoderConfig::from_hf_json(json, Path::new("config.json")).unwrap();
        assert_eq!(cfg.rope_theta, 1e6);
        let yarn = json.replace("\"default\"", "\"yarn\"");
        assert!(DecoderConfig::from_hf_json(&yarn, Path::new("config.json")).is_err());
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let json = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,"rms_norm_eps":1e-6}"#;
        let err = DecoderConfig::from_hf_json(json, Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("multiple of n_kv_heads"), "{err}");
    }
}
