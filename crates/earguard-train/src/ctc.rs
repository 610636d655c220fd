//! Connectionist temporal classification (Graves et al. 2006, "Connectionist Temporal
//! Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks", §3–4):
//! the negative log-likelihood of a label sequence summed over every frame alignment, and its
//! gradient with respect to the per-frame logits.
//!
//! Hand-written because candle has no CTC loss and the forward–backward recursion, written as
//! tensor ops, would be thousands of tiny autograd nodes per utterance. The recursion runs in
//! f64 log space on the host; training applies the gradient through candle with the surrogate
//! `sum(logits · g)` (g held constant), whose gradient with respect to the logits is g.
//!
//! Class 0 is the blank.

/// `log(exp(a) + exp(b))`, exact at -inf.
fn lse(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Row-wise log-softmax of `logits` (`t` rows of `c` classes), in f64.
fn log_softmax(logits: &[f32], t: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0f64; t * c];
    for f in 0..t {
        let row = &logits[f * c..(f + 1) * c];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        let log_z = m + z.ln();
        for k in 0..c {
            out[f * c + k] = row[k] as f64 - log_z;
        }
    }
    out
}

/// CTC loss of one utterance: `logits` is `[t, c]` row-major (pre-softmax), `target` the label
/// sequence (classes 1..c, no blanks). Returns the negative log-likelihood and its gradient
/// with respect to `logits` (`[t, c]`), or None when no alignment exists (fewer frames than
/// the target needs: its length plus one blank between each repeated pair).
pub fn ctc_loss(logits: &[f32], t: usize, c: usize, target: &[u32]) -> Option<(f64, Vec<f32>)> {
    assert_eq!(logits.len(), t * c, "logits are not [t, c]");
    debug_assert!(target.iter().all(|&k| k > 0 && (k as usize) < c));
    if t == 0 {
        return None;
    }
    let lp = log_softmax(logits, t, c);
    // The extended label: blank, l1, blank, l2, …, blank.
    let s_len = 2 * target.len() + 1;
    let label = |s: usize| {
        if s.is_multiple_of(2) {
            0
        } else {
            target[s / 2] as usize
        }
    };
    // May an alignment jump from s - 2 to s (skipping a blank)?
    let skip = |s: usize| s >= 2 && label(s) != 0 && label(s) != label(s - 2);
    let ninf = f64::NEG_INFINITY;

    // alpha[f][s]: log-probability of the label prefix ending in state s at frame f, emissions
    // through frame f included.
    let mut alpha = vec![ninf; t * s_len];
    alpha[0] = lp[0];
    if s_len > 1 {
        alpha[1] = lp[label(1)];
    }
    for f in 1..t {
        for s in 0..s_len {
            let prev = &alpha[(f - 1) * s_len..f * s_len];
            let mut a = prev[s];
            if s >= 1 {
                a = lse(a, prev[s - 1]);
            }
            if skip(s) {
                a = lse(a, prev[s - 2]);
            }
            if a != ninf {
                alpha[f * s_len + s] = a + lp[f * c + label(s)];
            }
        }
    }
    let last = &alpha[(t - 1) * s_len..];
    let log_p = if s_len > 1 {
        lse(last[s_len - 1], last[s_len - 2])
    } else {
        last[0]
    };
    if log_p == ninf {
        return None;
    }

    // beta[f][s]: log-probability of completing the label from state s at frame f, emissions
    // after frame f only.
    let mut beta = vec![ninf; t * s_len];
    beta[(t - 1) * s_len + s_len - 1] = 0.0;
    if s_len > 1 {
        beta[(t - 1) * s_len + s_len - 2] = 0.0;
    }
    for f in (0..t - 1).rev() {
        for s in 0..s_len {
            let next = |s2: usize| beta[(f + 1) * s_len + s2] + lp[(f + 1) * c + label(s2)];
            let mut b = next(s);
            if s + 1 < s_len {
                b = lse(b, next(s + 1));
            }
            if s + 2 < s_len && skip(s + 2) {
                b = lse(b, next(s + 2));
            }
            beta[f * s_len + s] = b;
        }
    }

    // d(-log p)/d z[f, k] = softmax[f, k] - sum over states s labelled k of the posterior
    // occupancy exp(alpha + beta - log p).
    let mut grad = vec![0f32; t * c];
    let mut occ = vec![0f64; c];
    for f in 0..t {
        occ.iter_mut().for_each(|o| *o = 0.0);
        for s in 0..s_len {
            let g = alpha[f * s_len + s] + beta[f * s_len + s] - log_p;
            if g != ninf {
                occ[label(s)] += g.exp();
            }
        }
        for k in 0..c {
            grad[f * c + k] = (lp[f * c + k].exp() - occ[k]) as f32;
        }
    }
    Some((-log_p, grad))
}

/// Greedy CTC decoding: the best class of each frame of `logits` (`[t, c]`), collapsed
/// ([`earguard_model::speech::ctc_collapse`]).
pub fn greedy_decode(logits: &[f32], t: usize, c: usize) -> Vec<u32> {
    let best: Vec<u32> = (0..t)
        .map(|f| {
            logits[f * c..(f + 1) * c]
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(k, _)| k as u32)
        })
        .collect();
    earguard_model::speech::ctc_collapse(&best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random logit matrix.
    fn logits(t: usize, c: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..t * c)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// The independent reference: enumerate every path of `t` frames over `c` classes, collapse
    /// it (merge repeats, drop blanks) and sum the probabilities of those that give `target`.
    fn brute_force(logits: &[f32], t: usize, c: usize, target: &[u32]) -> f64 {
        let lp = log_softmax(logits, t, c);
        let mut total = 0f64;
        for code in 0..c.pow(t as u32) {
            let mut path = Vec::with_capacity(t);
            let mut x = code;
            for _ in 0..t {
                path.push(x % c);
                x /= c;
            }
            let mut collapsed = Vec::new();
            let mut prev = usize::MAX;
            for &k in &path {
                if k != 0 && k != prev {
                    collapsed.push(k as u32);
                }
                prev = k;
            }
            if collapsed == target {
                total += path
                    .iter()
                    .enumerate()
                    .map(|(f, &k)| lp[f * c + k])
                    .sum::<f64>()
                    .exp();
            }
        }
        -total.ln()
    }

    #[test]
    fn the_loss_sums_every_alignment() {
        for (t, c, target, seed) in [
            (5, 3, vec![1, 2], 1),
            (6, 3, vec![1, 1], 2), // a repeat needs a blank between
            (4, 4, vec![3], 3),
            (5, 3, vec![], 4),
            (7, 4, vec![2, 3, 2], 5),
        ] {
            let z = logits(t, c, seed);
            let (nll, _) = ctc_loss(&z, t, c, &target).unwrap();
            let reference = brute_force(&z, t, c, &target);
            assert!(
                (nll - reference).abs() < 1e-9 * reference.abs().max(1.0),
                "t {t} target {target:?}: {nll} vs {reference}"
            );
        }
    }

    #[test]
    fn infeasible_targets_have_no_loss() {
        // [1, 1] needs three frames (1, blank, 1).
        assert!(ctc_loss(&logits(2, 3, 9), 2, 3, &[1, 1]).is_none());
        assert!(ctc_loss(&logits(3, 3, 9), 3, 3, &[1, 1]).is_some());
    }

    /// The analytic gradient against central differences of the loss (f32 logits, steps of
    /// 1e-3: agreement within 1e-4 absolute).
    #[test]
    fn the_gradient_matches_finite_differences() {
        let (t, c, target) = (6, 4, vec![1, 3, 3]);
        let z = logits(t, c, 11);
        let (_, grad) = ctc_loss(&z, t, c, &target).unwrap();
        let h = 1e-3f32;
        for i in 0..t * c {
            let mut up = z.clone();
            up[i] += h;
            let mut down = z.clone();
            down[i] -= h;
            let fd = (ctc_loss(&up, t, c, &target).unwrap().0
                - ctc_loss(&down, t, c, &target).unwrap().0)
                / (2.0 * h as f64);
            assert!(
                (fd - grad[i] as f64).abs() < 1e-4,
                "logit {i}: finite difference {fd}, analytic {}",
                grad[i]
            );
        }
        // Each frame's gradient sums to zero (softmax minus a distribution).
        for f in 0..t {
            let s: f32 = grad[f * c..(f + 1) * c].iter().sum();
            assert!(s.abs() < 1e-5);
        }
    }

    #[test]
    fn greedy_decoding_merges_repeats_and_drops_blanks() {
        // Frames' best classes: 1 1 0 1 2 2 0.
        let best = [1usize, 1, 0, 1, 2, 2, 0];
        let c = 3;
        let mut z = vec![0f32; best.len() * c];
        for (f, &k) in best.iter().enumerate() {
            z[f * c + k] = 5.0;
        }
        assert_eq!(greedy_decode(&z, best.len(), c), [1, 1, 2]);
    }
}
