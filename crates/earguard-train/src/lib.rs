//! earguard-train: LoRA fine-tuning on earguard's hookable decoder.
//!
//! Base weights stay frozen (dense f32; a GGUF model is dequantized first, costing its f32
//! size in memory) and only low-rank adapters ([`adapter::Adapter`]) are trained, with candle's
//! autograd through the decoder's differentiable forward mode. Adapters are read and written in
//! PEFT's format, so they move between earguard and Python.
//!
//! It also trains the speech head of a speech-language model built from parts ([`speech`]:
//! Whisper frames → CTC over the LLM's vocabulary, with [`ctc`]'s loss).

pub mod adapter;
pub mod ctc;
pub mod error;
pub mod fs;
pub mod objective;
pub mod optim;
pub mod prompts;
pub mod rrs;
pub mod sft;
pub mod speech;
pub mod trainer;

pub use adapter::{adapter_sha256, apply_adapter, merge, Adapter, LoraConfig, MergeSummary};
pub use error::{Result, TrainError};
pub use trainer::{train, Objective, RunOptions, TrainConfig, TrainReport};
