//! Errors of the evaluation stage.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] earguard_model::ModelError),
    #[error(transparent)]
    Data(#[from] earguard_data::DataError),
    #[error(transparent)]
    Steer(#[from] earguard_steer::SteerError),
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        EvalError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, EvalError>;
