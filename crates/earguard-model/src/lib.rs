//! earguard-model: the runtime every earguard defense stands on.
//!
//! Loads real checkpoints (GGUF, HF safetensors directories), builds their tokenizer and chat
//! template, and runs one hookable decoder for Qwen2 and Llama blocks whose forward pass takes an
//! [`InterventionPlan`](hooks::InterventionPlan) to capture and edit the residual stream.

pub mod chat;
pub mod config;
pub mod ct2;
pub mod decoder;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod loader;
pub mod lora;
pub mod prompt;
pub mod qwen2_audio;
pub mod tokenizer;
pub mod weights;
pub mod whisper;

pub use chat::{ChatMessage, ContentSpecials};
pub use config::{Architecture, DecoderConfig};
pub use decoder::{Decoder, ForwardOutput, KvCache, Logits, Ops};
pub use error::{ModelError, Result};
pub use hooks::{Capture, Captures, Edit, HookPoint, Intervention, InterventionPlan, Positions};
pub use loader::{load, Model, ModelInfo};
pub use lora::{Lora, Proj};
pub use prompt::{prefill, AudioRows, Prompt};
