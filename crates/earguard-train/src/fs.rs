//! Atomic writes (through earguard-data's one helper), with training's error type: a reader, or
//! a run resumed after `kill -9`, sees the old file or the new one, never a torn one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Result, TrainError};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    earguard_data::atomic::write(path, bytes).map_err(|e| TrainError::file(path, e))
}

pub fn save_tensors_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    earguard_data::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| TrainError::file(path, e))
}

pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::file(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, format!("{text}\n").as_bytes())
}
