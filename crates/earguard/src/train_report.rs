//! A training run's report: the loss curve and, per epoch, the PCA of harmful and benign
//! representations (RRS paper Fig. 2: one mixed cluster drawing apart into two as training
//! goes on), with a separation figure per epoch so the picture has a number.
//!
//! Between epochs the trainer's probe stores each probe question's last-position final-layer
//! representation under the adapted model in `epochs/NNN.safetensors` (`harmful`, `benign`,
//! `[n, hidden]`); epoch 0 is the base model. The report is rebuilt from those files and
//! `train.json`, so a resumed run's report covers all its epochs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use earguard_eval::plots::{loss_curve, pca_scatter, ScatterPoint};
use earguard_model::Decoder;
use earguard_train::objective::FrozenPrefix;
use earguard_train::prompts::{Prompter, Question};

const EPOCHS_DIR: &str = "epochs";

fn epoch_file(out: &Path, epoch: usize) -> PathBuf {
    out.join(EPOCHS_DIR).join(format!("{epoch:03}.safetensors"))
}

/// The trainer's epoch probe: representations of `harmful` and `benign` under the adapted
/// decoder, written atomically for `epoch`.
pub fn probe<'a>(
    out: &'a Path,
    prompter: &'a Prompter<'a>,
    frozen: Option<&'a FrozenPrefix>,
    harmful: &'a [Question],
    benign: &'a [Question],
) -> impl Fn(usize, &Decoder) -> earguard_train::Result<()> + 'a {
    move |epoch, dec| {
        let h = prompter.representations(dec, frozen, harmful)?;
        let b = prompter.representations(dec, frozen, benign)?;
        let path = epoch_file(out, epoch);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| earguard_train::TrainError::file(dir, e))?;
        }
        let tensors = HashMap::from([("harmful".to_string(), h), ("benign".to_string(), b)]);
        earguard_train::fs::save_tensors_atomic(&path, &tensors)
    }
}

/// How far apart two groups of rows lie: the squared distance of their means along the line
/// joining them, over the sum of the groups' variances along it (Fisher's criterion on that
/// direction). 0 when the means coincide.
fn separation(h: &Tensor, b: &Tensor) -> Result<f64> {
    let (mh, mb) = (h.mean(0)?, b.mean(0)?);
    let diff = (&mh - &mb)?;
    let norm = diff.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if norm == 0.0 {
        return Ok(0.0);
    }
    let u = (diff / f64::from(norm))?;
    let var = |x: &Tensor, m: &Tensor| -> Result<f64> {
        let p = x.broadcast_sub(m)?.matmul(&u.unsqueeze(1)?)?;
        Ok(f64::from(p.sqr()?.mean_all()?.to_scalar::<f32>()?))
    };
    let spread = var(h, &mh)? + var(b, &mb)?;
    let gap = f64::from(norm).powi(2);
    Ok(if spread > 0.0 {
        gap / spread
    } else {
        f64::INFINITY
    })
}

/// Rebuild `report.md`, `loss.png` and `pca_epoch_N.png` in `out`.
pub fn write(
    out: &Path,
    method: &str,
    model: &str,
    losses: &[f32],
    steps_per_epoch: usize,
) -> Result<()> {
    let mut md = format!(
        "# earguard train {method}\n\nModel `{model}`. Loss per optimizer step and its mean per \
         epoch; then, per epoch, the PCA of the probe questions' final-layer representations at \
         the last prompt position (epoch 0: the base model), and how far apart harmful and \
         benign lie (Fisher's criterion along the line joining their means: the squared gap \
         over the summed variances along it).\n\n"
    );
    if !losses.is_empty() {
        loss_curve(
            out,
            "loss",
            losses,
            steps_per_epoch,
            &format!("{method}: training loss"),
        )?;
        md.push_str("![loss](loss.png)\n\n");
    }
    let mut epochs: Vec<usize> = match std::fs::read_dir(out.join(EPOCHS_DIR)) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".safetensors")?.parse().ok()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    epochs.sort_unstable();
    if !epochs.is_empty() {
        md.push_str("| epoch | separation | ‖mean harmful − mean benign‖ |\n|---|---|---|\n");
    }
    let mut figures = String::new();
    for &e in &epochs {
        let path = epoch_file(out, e);
        let t = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        let get = |k: &str| -> Result<Tensor> {
            Ok(t.get(k)
                .with_context(|| format!("{} has no {k}", path.display()))?
                .to_dtype(DType::F32)?)
        };
        let (h, b) = (get("harmful")?, get("benign")?);
        let sep = separation(&h, &b)?;
        let gap = (h.mean(0)? - b.mean(0)?)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        md.push_str(&format!("| {e} | {sep:.3} | {gap:.3} |\n"));
        let rows: Vec<Vec<f32>> = (0..h.dim(0)?)
            .map(|i| h.i(i)?.to_vec1())
            .chain((0..b.dim(0)?).map(|i| b.i(i)?.to_vec1()))
            .collect::<candle_core::Result<_>>()?;
        let xy = earguard_steer::fit::pca_2d(&rows)?;
        let n_h = h.dim(0)?;
        let points: Vec<ScatterPoint> = xy
            .into_iter()
            .enumerate()
            .map(|(i, (x, y))| ScatterPoint {
                x,
                y,
                group: if i < n_h { "harmful" } else { "benign" }.into(),
            })
            .collect();
        let stem = format!("pca_epoch_{e}");
        pca_scatter(
            out,
            &stem,
            &points,
            &format!("{method}, epoch {e}: PCA of last-position representations"),
        )?;
        figures.push_str(&format!("![epoch {e}]({stem}.png)\n\n"));
    }
    md.push('\n');
    md.push_str(&figures);
    earguard_train::fs::write_atomic(&out.join("report.md"), md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separation_grows_as_groups_draw_apart() {
        let rows = |v: [[f32; 2]; 2]| Tensor::new(&v, &Device::Cpu).unwrap();
        let h = rows([[1.0, 0.0], [1.0, 2.0]]);
        let b = rows([[-1.0, 0.0], [-1.0, 2.0]]);
        // Means (1, 1) and (-1, 1): gap² 4; no spread along x → infinite.
        assert!(separation(&h, &b).unwrap().is_infinite());
        let h = rows([[2.0, 0.0], [0.0, 0.0]]);
        let b = rows([[-2.0, 0.0], [0.0, 0.0]]);
        // Gap 2 (means ±1), variance 1 each along x → 4 / 2 = 2.
        assert!((separation(&h, &b).unwrap() - 2.0).abs() < 1e-6);
        assert_eq!(separation(&h, &h).unwrap(), 0.0);
    }
}
