//! Errors of the model stage. Every failure a user can cause (a file, a prompt, a shape)
//! names what was wrong; nothing a user controls may panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file that is missing, truncated, corrupt or not what it claims to be.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("unsupported architecture '{0}' (supported: qwen2, llama, qwen2_audio)")]
    UnknownArchitecture(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt has {n_tokens} tokens, more than the model's context of {context} tokens")]
    PromptTooLong { n_tokens: usize, context: usize },
    /// Wrong hidden size, layer count or tensor shape handed to the model.
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// NaN or infinity in a forward pass's output: never turned into (empty) text.
    #[error(
        "the forward pass produced non-finite {what} (NaN, infinity, or values whose squares \
         overflow f32) for batch row {row}; {}",
        if *edits > 0 {
            format!("its {edits} activation edits are the likely cause: a steering strength or vector far too large")
        } else {
            "with no activation edits, the weights or inputs are broken".to_string()
        }
    )]
    NonFinite {
        what: &'static str,
        row: usize,
        edits: usize,
    },
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Audio(#[from] earguard_audio::AudioError),
}

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        ModelError::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
