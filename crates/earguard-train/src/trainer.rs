//! The training loop: seeded shuffling, gradient accumulation over a batch, AdamW with a
//! warm-up schedule, the adapter penalty, checkpoints every N steps, and resume.
//!
//! Everything random is derived from the run's seed and the step (shuffle order: seed and
//! epoch; a sample's prompt variant: seed, epoch and sample; dropout masks: seed, step and the
//! sample's place in the batch), so a run resumed from a checkpoint after `kill -9` takes exactly
//! the steps an uninterrupted run takes. The checkpoint is one safetensors file (adapter,
//! optimizer moments, step, loss history) replaced atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use earguard_model::lora::DropoutRng;
use earguard_model::{Decoder, Ops};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::error::{Result, TrainError};
use crate::fs::save_tensors_atomic;
use crate::optim::{AdamW, AdamWParams, Schedule};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// What a training method optimises, one sample at a time.
pub trait Objective {
    /// Number of training samples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The loss of sample `index` under `dec` (adapted, differentiable ops). `rng` is seeded
    /// from the run's seed, the epoch and the sample (e.g. to draw its instruction).
    fn loss(&self, dec: &Decoder, index: usize, rng: &mut StdRng) -> Result<Tensor>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Samples per optimizer step (gradients accumulated one sample at a time).
    pub batch_size: usize,
    pub schedule: Schedule,
    pub adamw: AdamWParams,
    /// Weight of the `Σ ‖scale·B A‖²` penalty added to each step's mean loss.
    pub penalty: f64,
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (and after the last).
    pub checkpoint_every: usize,
}

impl TrainConfig {
    fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.checkpoint_every == 0 {
            return Err(TrainError::Invalid(
                "epochs, batch size and checkpoint interval must be at least 1".into(),
            ));
        }
        if !(self.schedule.lr.is_finite() && self.schedule.lr > 0.0) {
            return Err(TrainError::Invalid(format!(
                "the learning rate must be positive, got {}",
                self.schedule.lr
            )));
        }
        if !(self.penalty.is_finite() && self.penalty >= 0.0) {
            return Err(TrainError::Invalid(format!(
                "the penalty weight must be ≥ 0, got {}",
                self.penalty
            )));
        }
        Ok(())
    }
}

/// Called with the epoch number `e` and the adapted decoder (no dropout) once `e` epochs are
/// done: at the start (e = 0, the base model) and after every epoch. A run resumed exactly at
/// an epoch's end calls it again for that epoch (with the same weights).
pub type EpochProbe<'a> = &'a dyn Fn(usize, &Decoder) -> Result<()>;

/// How one call runs (not part of what is trained).
#[derive(Clone, Default)]
pub struct RunOptions<'a> {
    /// Show a progress bar with the loss and seconds per step.
    pub progress: bool,
    /// Stop after this many steps in all (a checkpoint is written there): for tests and for
    /// short measured runs.
    pub stop_after: Option<usize>,
    /// Look at the model between epochs (e.g. the RRS report's per-epoch PCA).
    pub epoch_probe: Option<EpochProbe<'a>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub total_steps: usize,
    pub resumed_from: Option<usize>,
    /// Mean loss (objective + penalty) of every step so far, resumed steps included.
    pub losses: Vec<f32>,
    /// Wall seconds per step in this call (None if it took no step).
    pub seconds_per_step: Option<f64>,
}

/// Seeds for independent streams: splitmix64 of the parts.
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        let mut z = h ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// Sample order of `epoch`.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix(&[seed, 1, epoch as u64])));
    order
}

struct Checkpoint {
    step: usize,
    losses: Vec<f32>,
}

fn save_checkpoint(
    path: &Path,
    adapter: &Adapter,
    opt: &AdamW,
    step: usize,
    losses: &[f32],
) -> Result<()> {
    let mut t = adapter.tensors();
    for (i, (m, v)) in opt.m.iter().zip(&opt.v).enumerate() {
        t.insert(format!("optim.m.{i}"), m.clone());
        t.insert(format!("optim.v.{i}"), v.clone());
    }
    let dev = Device::Cpu;
    t.insert(
        "state.step".into(),
        Tensor::new(&[step as u32, opt.t as u32], &dev)?,
    );
    // An empty tensor is legal but some readers dislike it: keep one leading zero.
    let mut l = vec![0f32];
    l.extend_from_slice(losses);
    t.insert("state.losses".into(), Tensor::new(l, &dev)?);
    save_tensors_atomic(path, &t)
}

fn load_checkpoint(path: &Path, adapter: &Adapter, opt: &mut AdamW) -> Result<Checkpoint> {
    let bad = |m: String| TrainError::file(path, m);
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| bad(format!("unreadable checkpoint: {e}")))?;
    adapter.load_values(&t, path)?;
    let dev = adapter
        .items
        .first()
        .map(|i| i.a.device().clone())
        .unwrap_or(Device::Cpu);
    for i in 0..opt.m.len() {
        for (name, slot) in [("m", &mut opt.m[i]), ("v", &mut opt.v[i])] {
            let k = format!("optim.{name}.{i}");
            let x = t.get(&k).ok_or_else(|| bad(format!("missing {k}")))?;
            if x.dims() != slot.dims() {
                return Err(bad(format!("{k} has shape {:?}", x.dims())));
            }
            *slot = x.to_dtype(DType::F32)?.to_device(&dev)?;
        }
    }
    let state: Vec<u32> = t
        .get("state.step")
        .ok_or_else(|| bad("missing state.step".into()))?
        .to_vec1()?;
    let [step, opt_t] = state[..] else {
        return Err(bad("state.step should hold 2 numbers".into()));
    };
    opt.t = opt_t as usize;
    let losses: Vec<f32> = t
        .get("state.losses")
        .ok_or_else(|| bad("missing state.losses".into()))?
        .to_vec1()?;
    let losses = losses[1..].to_vec();
    if losses.len() != step as usize {
        return Err(bad(format!(
            "step {step} but {} recorded losses",
            losses.len()
        )));
    }
    Ok(Checkpoint {
        step: step as usize,
        losses,
    })
}

fn progress_bar(on: bool, len: usize) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "train [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, eta {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Train `adapter` on `base` (its weights frozen) for `objective`, checkpointing into `dir`.
/// A checkpoint already in `dir` is resumed (the caller checks it belongs to this run).
pub fn train(
    base: &Decoder,
    adapter: &Adapter,
    objective: &dyn Objective,
    cfg: &TrainConfig,
    dir: &Path,
    run: &RunOptions,
) -> Result<TrainReport> {
    cfg.validate()?;
    let n = objective.len();
    if n == 0 {
        return Err(TrainError::Invalid("no training samples".into()));
    }
    let per_epoch = n.div_ceil(cfg.batch_size);
    let total = per_epoch * cfg.epochs;
    let vars = adapter.vars();
    let mut opt = AdamW::new(&vars, cfg.adamw)?;
    let ckpt_path: PathBuf = dir.join(CHECKPOINT_FILE);
    let (start, mut losses) = if ckpt_path.is_file() {
        let c = load_checkpoint(&ckpt_path, adapter, &mut opt)?;
        tracing::info!(step = c.step, "resuming from {}", ckpt_path.display());
        (c.step, c.losses)
    } else {
        (0, Vec::new())
    };
    let resumed_from = (start > 0).then_some(start);
    let end = run.stop_after.map_or(total, |s| s.min(total));

    let mut dec = base.clone();
    dec.set_ops(Ops::Differentiable);
    let dropout = DropoutRng::new(cfg.seed);
    adapter.attach(&mut dec, Some(&dropout))?;

    // The probe sees the adapters' current values without dropout.
    let probe = |epoch: usize| -> Result<()> {
        let Some(f) = run.epoch_probe else {
            return Ok(());
        };
        let mut plain = base.clone();
        adapter.attach(&mut plain, None)?;
        f(epoch, &plain)
    };
    if start % per_epoch == 0 && start < end {
        probe(start / per_epoch)?;
    }
    let bar = progress_bar(run.progress, total);
    bar.set_position(start as u64);
    let began = Instant::now();
    let mut order: Option<(usize, Vec<usize>)> = None;
    for step in start..end {
        let epoch = step / per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, epoch_order(n, cfg.seed, epoch)));
        }
        let Some((_, ord)) = &order else {
            unreachable!("order set above")
        };
        let first = (step % per_epoch) * cfg.batch_size;
        let batch = &ord[first..(first + cfg.batch_size).min(n)];
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut step_loss = 0f64;
        for (j, &i) in batch.iter().enumerate() {
            dropout.reseed(mix(&[cfg.seed, 2, step as u64, j as u64]));
            let mut rng = StdRng::seed_from_u64(mix(&[cfg.seed, 3, epoch as u64, i as u64]));
            let mut loss = (objective.loss(&dec, i, &mut rng)? / batch.len() as f64)?;
            if j == 0 && cfg.penalty > 0.0 {
                loss = (loss + (adapter.penalty()? * cfg.penalty)?)?;
            }
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the loss became {value} at step {step} (sample {i}): lower the learning rate"
                )));
            }
            step_loss += value;
            let g = loss.backward()?;
            for (slot, var) in grads.iter_mut().zip(&vars) {
                if let Some(gv) = g.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        None => gv.clone(),
                        Some(acc) => (acc + gv)?,
                    });
                }
            }
        }
        opt.step(&vars, &grads, cfg.schedule.lr_at(step, total))?;
        losses.push(step_loss as f32);
        let done = step + 1;
        if done % cfg.checkpoint_every == 0 || done == end {
            save_checkpoint(&ckpt_path, adapter, &opt, done, &losses)?;
        }
        if done % per_epoch == 0 {
            bar.suspend(|| probe(done / per_epoch))?;
        }
        let secs = began.elapsed().as_secs_f64() / (done - start) as f64;
        bar.set_message(format!("loss {step_loss:.4}, {secs:.2} s/step"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let taken = end.saturating_sub(start);
    Ok(TrainReport {
        steps: end.max(start),
        total_steps: total,
        resumed_from,
        losses,
        seconds_per_step: (taken > 0).then(|| began.elapsed().as_secs_f64() / taken as f64),
    })
}
