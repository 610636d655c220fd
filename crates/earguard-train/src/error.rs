use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] earguard_model::ModelError),
    #[error(transparent)]
    Data(#[from] earguard_data::DataError),
    #[error(transparent)]
    Audio(#[from] earguard_audio::AudioError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    pub fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        TrainError::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
