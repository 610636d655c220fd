//! Activation capture over a prompt set: the last-position activation at one hook kind of
//! every layer, batched, with a progress bar, stored as safetensors so a fit can be re-run
//! without the model, and resumable: each finished batch is written as its own chunk file, and
//! a restarted capture skips the chunks already on disk.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use earguard_model::{
    prefill, ForwardOutput, HookKind, InterventionPlan, Logits, Model, Positions, Prompt,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, SteerError};

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Hook kind captured at every layer.
    pub hook: HookKind,
    pub batch_size: usize,
    /// Where chunks and the final `activations.safetensors` go (None: memory only).
    pub dir: Option<PathBuf>,
    /// Progress-bar label; None hides the bar.
    pub progress: Option<String>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            hook: HookKind::ResidPost,
            batch_size: 8,
            dir: None,
            progress: None,
        }
    }
}

/// What identifies a capture, so a resume never mixes activations of different inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CaptureManifest {
    hook: HookKind,
    n_inputs: usize,
    batch_size: usize,
    inputs_sha256: String,
    model_identity: String,
    n_layers: usize,
    hidden_size: usize,
}

const FINAL: &str = "activations.safetensors";

/// `[n, layers, hidden]` activations of the last prompt position of each input.
pub fn capture_last(model: &Model, inputs: &[Prompt], opts: &CaptureOptions) -> Result<Tensor> {
    if inputs.is_empty() {
        return Err(SteerError::Invalid(
            "nothing to capture: the prompt list is empty".into(),
        ));
    }
    let cfg = model.decoder.config();
    let batch_size = opts.batch_size.max(1);
    let manifest = CaptureManifest {
        hook: opts.hook,
        n_inputs: inputs.len(),
        batch_size,
        inputs_sha256: hash_inputs(inputs)?,
        model_identity: model.info.run_identity(),
        n_layers: cfg.n_layers,
        hidden_size: cfg.hidden_size,
    };
    if let Some(dir) = &opts.dir {
        if let Some(done) = load_finished(dir, &manifest)? {
            return Ok(done);
        }
    }

    // Batches of similar length waste less compute on padding; results go back in input order.
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| (inputs[i].len(), i));
    let mut plan = InterventionPlan::new();
    for l in 0..cfg.n_layers {
        plan = plan.capture(opts.hook.at(l), Positions::Last);
    }
    let bar =
        earguard_data::progress::bar(opts.progress.as_deref(), "prompts", inputs.len() as u64);
    let mut rows: Vec<Option<Tensor>> = vec![None; inputs.len()];
    for (chunk, idx) in order.chunks(batch_size).enumerate() {
        let acts = match opts
            .dir
            .as_deref()
            .map(|d| chunk_path(d, chunk))
            .filter(|p| p.is_file())
        {
            Some(path) => read_tensor(&path, "acts")?,
            None => {
                let batch: Vec<Prompt> = idx.iter().map(|&i| inputs[i].clone()).collect();
                let acts = capture_batch(model, &batch, &plan)?;
                if let Some(dir) = &opts.dir {
                    write_tensors(&chunk_path(dir, chunk), &[("acts", &acts)])?;
                }
                acts
            }
        };
        if acts.dim(0)? != idx.len() {
            return Err(SteerError::Artifact(format!(
                "capture chunk {chunk} holds {} rows, expected {}",
                acts.dim(0)?,
                idx.len()
            )));
        }
        for (r, &i) in idx.iter().enumerate() {
            rows[i] = Some(acts.get(r)?);
        }
        bar.inc(idx.len() as u64);
    }
    bar.finish_and_clear();
    let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
    let all = Tensor::stack(&rows, 0)?;
    if let Some(dir) = &opts.dir {
        write_tensors(&dir.join(FINAL), &[("acts", &all)])?;
        for chunk in 0..order.chunks(batch_size).len() {
            let _ = std::fs::remove_file(chunk_path(dir, chunk));
        }
    }
    Ok(all)
}

/// One left-padded batch: `[batch, layers, hidden]`.
fn capture_batch(model: &Model, batch: &[Prompt], plan: &InterventionPlan) -> Result<Tensor> {
    let out = forward_batch(model, batch, plan, Logits::None)?;
    let per_layer: Vec<Tensor> = out.captures.items.into_iter().map(|(_, t)| t).collect();
    // Fits run on the CPU, next to cached chunks read from disk, whatever the model's device.
    Ok(Tensor::stack(&per_layer, 1)?.to_device(&candle_core::Device::Cpu)?)
}

/// One left-padded prefill of a batch of prompts (for captures, probes and scores).
pub fn forward_batch(
    model: &Model,
    batch: &[Prompt],
    plan: &InterventionPlan,
    logits: Logits,
) -> Result<ForwardOutput> {
    // prefill refuses an empty batch or an empty prompt.
    let (out, _) = prefill(
        &model.decoder,
        batch,
        model.tokenizer.pad_id(),
        plan,
        logits,
    )?;
    Ok(out)
}

/// A finished capture in `dir` for exactly these inputs, if there is one; a manifest for other
/// inputs is an error, so activations of two different runs are never mixed.
fn load_finished(dir: &Path, manifest: &CaptureManifest) -> Result<Option<Tensor>> {
    std::fs::create_dir_all(dir).map_err(|e| SteerError::io(dir, e))?;
    let path = dir.join("manifest.json");
    if path.is_file() {
        let text = earguard_data::read_small_text(&path).map_err(|e| SteerError::io(&path, e))?;
        let found: CaptureManifest = serde_json::from_str(&text)
            .map_err(|e| SteerError::io(&path, format!("malformed capture manifest: {e}")))?;
        if &found != manifest {
            return Err(SteerError::io(
                &path,
                "this capture directory belongs to other inputs, another model or other settings; \
                 delete it or choose another output directory",
            ));
        }
    } else {
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| SteerError::Invalid(e.to_string()))?;
        earguard_data::atomic::write(&path, text.as_bytes())
            .map_err(|e| SteerError::io(&path, e))?;
    }
    let final_path = dir.join(FINAL);
    if final_path.is_file() {
        return Ok(Some(read_tensor(&final_path, "acts")?));
    }
    Ok(None)
}

/// Is a finished capture for these inputs already in `dir`? (Lets callers skip model loading.)
pub fn is_finished(dir: &Path) -> bool {
    dir.join(FINAL).is_file() && dir.join("manifest.json").is_file()
}

/// Read a finished capture without the model.
pub fn read_finished(dir: &Path) -> Result<Tensor> {
    read_tensor(&dir.join(FINAL), "acts")
}

fn chunk_path(dir: &Path, chunk: usize) -> PathBuf {
    dir.join(format!("chunk-{chunk:05}.safetensors"))
}

fn hash_inputs(inputs: &[Prompt]) -> Result<String> {
    let mut h = Sha256::new();
    for p in inputs {
        p.fingerprint(&mut |bytes| h.update(bytes))?;
    }
    Ok(earguard_data::hex(&h.finalize()))
}

pub(crate) fn read_tensor(path: &Path, key: &str) -> Result<Tensor> {
    let mut map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| SteerError::io(path, format!("not a readable safetensors file: {e}")))?;
    map.remove(key)
        .ok_or_else(|| SteerError::io(path, format!("has no tensor '{key}'")))
}

/// Write tensors atomically (earguard_data::atomic), so a kill never leaves half a file.
pub(crate) fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), (*t).clone()))
        .collect();
    earguard_data::atomic::write_with(path, |tmp| {
        candle_core::safetensors::save(&map, tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| SteerError::io(path, e))
}
