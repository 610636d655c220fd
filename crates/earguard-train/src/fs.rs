//! Atomic writes: a temporary file in the same directory, then a rename, so a reader (or a run
//! resumed after `kill -9`) sees the old file or the new one, never a torn one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Result, TrainError};

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

fn commit(tmp: &Path, path: &Path) -> Result<()> {
    // Flush the data before the rename makes it visible.
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::file(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| TrainError::file(path, e))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::file(&tmp, e))?;
    commit(&tmp, path)
}

pub fn save_tensors_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let tmp = tmp_path(path);
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| TrainError::file(&tmp, e))?;
    commit(&tmp, path)
}

pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::file(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, format!("{text}\n").as_bytes())
}
