//! Direction fitting from captured activations (`[n, layers, hidden]` tensors).
//!
//! - [`mean_difference`]: `mean(a) − mean(b)` per layer, unnormalised (Arditi's refusal
//!   direction when a = harmful, b = benign; SARSteer's `D_l` when a = with-suffix, b = plain).
//! - [`pca_direction`]: first principal component of the pooled, centred activations, its sign
//!   aligned with the mean difference.
//! - [`pca_2d`]: the 2-D PCA projection of plain rows (the coordinates of a PCA scatter plot).
//! - [`benign_subspace`]: the top-k right singular vectors of the centred benign activations.
//! - [`ablate_subspace`]: `v = D − λ U Uᵀ D`, SARSteer's safe-space ablation.

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, SteerError};

fn check_acts(name: &str, t: &Tensor) -> Result<(usize, usize, usize)> {
    let (n, l, d) = t.dims3().map_err(|_| {
        SteerError::Invalid(format!(
            "{name}: expected [n, layers, hidden], got {:?}",
            t.dims()
        ))
    })?;
    if n == 0 {
        return Err(SteerError::Invalid(format!("{name}: no prompts")));
    }
    Ok((n, l, d))
}

fn check_same_shape(a: (usize, usize, usize), b: (usize, usize, usize)) -> Result<()> {
    if (a.1, a.2) != (b.1, b.2) {
        return Err(SteerError::Invalid(format!(
            "activation sets disagree: {} layers × {} vs {} layers × {}",
            a.1, a.2, b.1, b.2
        )));
    }
    Ok(())
}

/// `mean_n a − mean_n b`: `[layers, hidden]`.
pub fn mean_difference(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let sa = check_acts("first set", a)?;
    let sb = check_acts("second set", b)?;
    check_same_shape(sa, sb)?;
    Ok((a.to_dtype(DType::F32)?.mean(0)? - b.to_dtype(DType::F32)?.mean(0)?)?)
}

/// Per layer, the first principal component of `a ∪ b` (centred), with the sign that makes it
/// point along `mean(a) − mean(b)`, scaled to that difference's projection so it is comparable
/// in magnitude to a mean-difference direction.
pub fn pca_direction(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let diff = mean_difference(a, b)?;
    let pooled = Tensor::cat(&[a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?], 0)?;
    let (_, layers, _) = pooled.dims3()?;
    let mut out = Vec::with_capacity(layers);
    for l in 0..layers {
        let x = pooled.narrow(1, l, 1)?.squeeze(1)?;
        let pc = top_components(&x, 1)?.squeeze(1)?;
        let d = diff.get(l)?;
        let proj = (&pc * &d)?.sum_all()?.to_scalar::<f32>()?;
        out.push((pc * f64::from(proj))?);
    }
    Ok(Tensor::stack(&out, 0)?)
}

/// The top-`k` principal directions `[hidden, k]` of the rows of `x` (`[n, hidden]`), centred,
/// signs fixed as [`principal_axes`] does.
pub fn top_components(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    if k == 0 {
        return Err(SteerError::Invalid("k must be at least 1".into()));
    }
    if k > n.min(d) {
        return Err(SteerError::Invalid(format!(
            "k = {k} is larger than the benign set allows ({n} prompts, hidden {d})"
        )));
    }
    let centred = x
        .to_dtype(DType::F64)?
        .broadcast_sub(&x.to_dtype(DType::F64)?.mean_keepdim(0)?)?;
    let rows: Vec<Vec<f64>> = centred.to_vec2()?;
    let m = faer::Mat::<f64>::from_fn(n, d, |i, j| rows[i][j]);
    let axes = principal_axes(&m, k)?;
    let mut data = vec![0f32; d * k];
    for i in 0..d {
        for (j, axis) in axes.iter().enumerate() {
            data[i * k + j] = axis[i] as f32;
        }
    }
    Ok(Tensor::from_vec(data, (d, k), &Device::Cpu)?)
}

/// The first `min(k, n, d)` principal axes of the already centred `n × d` matrix (right singular
/// vectors of its thin SVD, in f64). Each axis's sign is fixed so that its loading of largest
/// magnitude (the first such index) is positive: the same data always gives the same axes,
/// whatever sign the solver returns.
fn principal_axes(centred: &faer::Mat<f64>, k: usize) -> Result<Vec<Vec<f64>>> {
    let svd = centred
        .thin_svd()
        .map_err(|e| SteerError::Invalid(format!("SVD did not converge: {e:?}")))?;
    let v = svd.V();
    let d = v.nrows();
    let mut axes = Vec::with_capacity(k);
    for c in 0..v.ncols().min(k) {
        let mut axis: Vec<f64> = (0..d).map(|j| v[(j, c)]).collect();
        let mut best = 0;
        for j in 1..d {
            if axis[j].abs() > axis[best].abs() {
                best = j;
            }
        }
        if axis[best] < 0.0 {
            axis.iter_mut().for_each(|a| *a = -*a);
        }
        axes.push(axis);
    }
    Ok(axes)
}

/// Centre `rows` (n × d) and project them onto their top two principal components (see
/// [`principal_axes`] for the sign rule): the coordinates of a PCA scatter plot. With a single
/// row or a single feature the missing coordinates are 0.
pub fn pca_2d(rows: &[Vec<f32>]) -> Result<Vec<(f32, f32)>> {
    let invalid = |m: String| SteerError::Invalid(format!("PCA: {m}"));
    let n = rows.len();
    if n == 0 {
        return Err(invalid("no rows".into()));
    }
    let d = rows[0].len();
    if d == 0 {
        return Err(invalid("rows have no features".into()));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.len() != d {
            return Err(invalid(format!(
                "row {i} has {} features but row 0 has {d}",
                r.len()
            )));
        }
        if let Some((j, v)) = r.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(format!(
                "row {i} has a non-finite value {v} at feature {j}"
            )));
        }
    }
    let mut mean = vec![0f64; d];
    for r in rows {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    let centred = faer::Mat::<f64>::from_fn(n, d, |i, j| f64::from(rows[i][j]) - mean[j]);
    let axes = principal_axes(&centred, 2).map_err(|e| invalid(e.to_string()))?;
    let project = |i: usize, axis: Option<&Vec<f64>>| -> f32 {
        match axis {
            None => 0.0,
            Some(a) => (0..d).map(|j| centred[(i, j)] * a[j]).sum::<f64>() as f32,
        }
    };
    Ok((0..n)
        .map(|i| (project(i, axes.first()), project(i, axes.get(1))))
        .collect())
}

/// Per layer, the top-`k` benign subspace `[layers, hidden, k]` of `benign` (`[n, layers, hidden]`).
pub fn benign_subspace(benign: &Tensor, k: usize) -> Result<Tensor> {
    let (_, layers, _) = check_acts("benign set", benign)?;
    let mut out = Vec::with_capacity(layers);
    for l in 0..layers {
        out.push(top_components(&benign.narrow(1, l, 1)?.squeeze(1)?, k)?);
    }
    Ok(Tensor::stack(&out, 0)?)
}

/// `v = D − λ U Uᵀ D` for one layer (`d`: `[hidden]`, `u`: `[hidden, k]`).
pub fn ablate_subspace(d: &Tensor, u: &Tensor, lambda: f64) -> Result<Tensor> {
    let d_col = d.unsqueeze(1)?;
    let inside = u.matmul(&u.t()?.matmul(&d_col)?)?;
    Ok((d_col - (inside * lambda)?)?.squeeze(1)?)
}

/// SARSteer's fit (SPEC §1): `D_l = mean[h(x, t⊕r) − h(x, t)]` over harmful prompts, then the
/// benign top-`k` subspace is ablated from it with weight `λ`. Returns `[layers, hidden]`.
pub fn sarsteer(
    harmful_with_suffix: &Tensor,
    harmful_plain: &Tensor,
    benign_plain: &Tensor,
    k: usize,
    lambda: f64,
) -> Result<Tensor> {
    crate::limits::coefficient("lambda", lambda)?;
    let (n1, ..) = check_acts("harmful (with suffix)", harmful_with_suffix)?;
    let (n2, ..) = check_acts("harmful", harmful_plain)?;
    if n1 != n2 {
        return Err(SteerError::Invalid(format!(
            "suffix contrast needs the same prompts twice: {n1} with suffix, {n2} without"
        )));
    }
    let d = mean_difference(harmful_with_suffix, harmful_plain)?;
    check_same_shape(harmful_plain.dims3()?, benign_plain.dims3()?)?;
    if lambda == 0.0 {
        return Ok(d);
    }
    let u = benign_subspace(benign_plain, k)?;
    let layers = d.dim(0)?;
    let mut out = Vec::with_capacity(layers);
    for l in 0..layers {
        out.push(ablate_subspace(&d.get(l)?, &u.get(l)?, lambda)?);
    }
    Ok(Tensor::stack(&out, 0)?)
}

/// CAST's condition: the layer, unit direction and cosine threshold that best separate
/// harmful from benign prompts on the training sets.
#[derive(Debug, Clone)]
pub struct Condition {
    pub layer: usize,
    pub direction: Tensor,
    pub threshold: f32,
    /// Training accuracy of `cos(h, direction) > threshold`.
    pub accuracy: f32,
}

pub fn fit_condition(harmful: &Tensor, benign: &Tensor) -> Result<Condition> {
    let diff = mean_difference(harmful, benign)?;
    let (n_h, layers, _) = harmful.dims3()?;
    let n_b = benign.dim(0)?;
    let mut best: Option<Condition> = None;
    for l in 0..layers {
        let d = diff.get(l)?;
        let norm = d.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        if !(norm.is_finite() && norm > 0.0) {
            continue;
        }
        let dir = (d / f64::from(norm))?;
        let cos = |x: &Tensor| -> Result<Vec<f32>> {
            let x = x.narrow(1, l, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
            let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?;
            Ok(x.matmul(&dir.unsqueeze(1)?)?
                .div(&norms)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        let (h, b) = (cos(harmful)?, cos(benign)?);
        // Try every midpoint between sorted scores; keep the most accurate threshold.
        let mut all: Vec<(f32, bool)> = h
            .iter()
            .map(|&c| (c, true))
            .chain(b.iter().map(|&c| (c, false)))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Threshold below everything: all predicted harmful.
        let (mut correct, mut best_correct, mut best_t) = (n_h, n_h, all[0].0 - 1e-3);
        for i in 0..all.len() {
            correct = if all[i].1 { correct - 1 } else { correct + 1 };
            let t = match all.get(i + 1) {
                Some(next) => (all[i].0 + next.0) / 2.0,
                None => all[i].0 + 1e-3,
            };
            if correct > best_correct {
                best_correct = correct;
                best_t = t;
            }
        }
        let accuracy = best_correct as f32 / (n_h + n_b) as f32;
        if best.as_ref().is_none_or(|b| accuracy > b.accuracy) {
            best = Some(Condition {
                layer: l,
                direction: dir,
                threshold: best_t,
                accuracy,
            });
        }
    }
    best.ok_or_else(|| {
        SteerError::Invalid("harmful and benign activations do not differ at any layer".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t3(data: &[f32], shape: (usize, usize, usize)) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn mean_difference_is_unnormalised() {
        let a = t3(&[2., 0., 4., 0.], (2, 1, 2));
        let b = t3(&[0., 1., 0., 1.], (2, 1, 2));
        let d = mean_difference(&a, &b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(d, [3.0, -1.0]);
    }

    #[test]
    fn subspace_ablation_removes_the_benign_component() {
        // Benign points vary only along axis 0; D has components on axes 0 and 1.
        let benign = t3(
            &[1., 0., 0., -1., 0., 0., 2., 0., 0., -2., 0., 0.],
            (4, 1, 3),
        );
        let u = benign_subspace(&benign, 1).unwrap().get(0).unwrap();
        let d = Tensor::new(&[3f32, 4.0, 0.0], &Device::Cpu).unwrap();
        let v = ablate_subspace(&d, &u, 1.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(v[0].abs() < 1e-5 && (v[1] - 4.0).abs() < 1e-5, "{v:?}");
        let half = ablate_subspace(&d, &u, 0.5)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((half[0] - 1.5).abs() < 1e-5, "{half:?}");
    }

    #[test]
    fn pca_sign_follows_the_mean_difference() {
        let a = t3(&[5., 0.1, 6., -0.1], (2, 1, 2));
        let b = t3(&[-5., 0.1, -6., -0.1], (2, 1, 2));
        let p = pca_direction(&a, &b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(p[0] > 10.0 && p[1].abs() < 1e-3, "{p:?}");
        let p = pca_direction(&b, &a)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(p[0] < -10.0, "{p:?}");
    }

    #[test]
    fn condition_separates_clusters() {
        // Layer 0 is noise, layer 1 separates along axis 1.
        let h = t3(&[1., 0., 0.1, 1.0, 0., 1., 0.2, 0.9], (2, 2, 2));
        let b = t3(&[0., 1., 0.1, -1.0, 1., 0., 0.3, -0.8], (2, 2, 2));
        let c = fit_condition(&h, &b).unwrap();
        assert_eq!(c.layer, 1);
        assert_eq!(c.accuracy, 1.0);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let benign = t3(&[1., 0., 0., 1.], (2, 1, 2));
        assert!(benign_subspace(&benign, 5)
            .unwrap_err()
            .to_string()
            .contains("larger than the benign set"));
        let a = t3(&[1., 0.], (1, 1, 2));
        let b = t3(&[1., 0., 0.], (1, 1, 3));
        assert!(mean_difference(&a, &b).is_err());
        let empty = Tensor::zeros((0, 1, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(mean_difference(&empty, &a)
            .unwrap_err()
            .to_string()
            .contains("no prompts"));
        // λ must be a finite coefficient of sane size.
        let h = t3(&[1., 0., 0., 1.], (2, 1, 2));
        for lambda in [-1e30, f64::NAN, 1e4] {
            let e = sarsteer(&h, &h, &h, 1, lambda).unwrap_err().to_string();
            assert!(e.contains("lambda") && e.contains("out of range"), "{e}");
        }
    }
}
