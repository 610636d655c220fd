//! earguard-model: the runtime every earguard defense stands on.
//!
//! Loads real checkpoints (GGUF, HF safetensors directories), builds their tokenizer and chat
//! template, and runs one hookable decoder for Qwen2 and Llama blocks whose forward pass takes an
//! [`InterventionPlan`](hooks::InterventionPlan) to capture and edit the residual stream.
//!
//! Data flows one way: a conversation ([`ChatMessage`], typed [`Content`]) → [`Model`] renders
//! and tokenizes it, encoding each audio clip once through an [`AudioCache`] (one per run, or
//! shared by the runs over one set) → a [`Prompt`] (ids + encoded audio) → [`prefill`] →
//! [`score`] (first-token refusal log-odds from the prefill logits) and [`generate`] (sampling
//! from the same prefill).

pub mod audio;
pub mod chat;
pub mod config;
pub mod content;
pub mod ct2;
pub mod decoder;
pub mod device;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod hub;
pub mod loader;
pub mod lora;
pub mod model;
pub mod prompt;
pub mod qwen2_audio;
pub mod score;
pub mod speech;
#[cfg(feature = "stock-whisper")]
pub mod stock_whisper;
pub mod tokenizer;
pub mod weights;
pub mod whisper;
pub mod whisper_listener;

pub use audio::{AudioCache, WaveformNoise};
pub use chat::{ChatMessage, ContentSpecials};
pub use config::{Architecture, DecoderConfig};
pub use content::{AudioRef, Content, Part};
pub use decoder::{Decoder, ForwardOutput, KvCache, Logits, Ops};
pub use error::{ModelError, Result};
pub use hooks::{
    Capture, Captures, Edit, HookKind, HookPoint, Intervention, InterventionPlan, Positions,
};
pub use loader::{load, load_on};
pub use lora::{Lora, Proj};
pub use model::{Model, ModelInfo};
pub use prompt::{prefill, AudioRows, EmbeddingNoise, Prompt};
