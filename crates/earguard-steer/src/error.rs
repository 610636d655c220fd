//! Errors of the steering stage; each names the file, layer or option at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// A steering-vector artifact that is malformed.
    #[error("steering vector: {0}")]
    Artifact(String),
    /// A vector fitted on another model.
    #[error("{0}")]
    Incompatible(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] earguard_model::ModelError),
    #[error(transparent)]
    Data(#[from] earguard_data::DataError),
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl SteerError {
    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        SteerError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, SteerError>;
