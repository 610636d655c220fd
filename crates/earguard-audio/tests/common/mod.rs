//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(rel)
}

/// A fresh, empty scratch directory under cargo's per-target temporary directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("earguard-audio-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Least-squares `a sin(w k) + b cos(w k)` through the samples `x[k]`, `k` in `range`:
/// returns (a, b, explained energy, total energy).
fn fit_sinusoid(x: &[f32], range: std::ops::Range<usize>, w: f64) -> (f64, f64, f64, f64) {
    let (mut ss, mut cc, mut sc, mut xs, mut xc, mut xx) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for i in range {
        let v = f64::from(x[i]);
        let (s, c) = (w * i as f64).sin_cos();
        ss += s * s;
        cc += c * c;
        sc += s * c;
        xs += v * s;
        xc += v * c;
        xx += v * v;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    (a, b, a * xs + b * xc, xx)
}

/// Least-squares fit of `a sin(2π f t) + b cos(2π f t)` to `x` (sampled at `rate` Hz):
/// returns (amplitude, fraction of the signal's energy the fitted sinusoid explains).
pub fn tone_fit(x: &[f32], freq: f64, rate: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (a, b, explained, xx) = fit_sinusoid(x, 0..x.len(), w);
    (
        (a * a + b * b).sqrt(),
        if xx > 0.0 { explained / xx } else { 0.0 },
    )
}

/// The frequency in `lo..=hi` Hz (1 Hz steps) whose sinusoid explains the most energy.
pub fn dominant_freq(x: &[f32], rate: f64, lo: u32, hi: u32) -> f64 {
    (lo..=hi)
        .map(|f| (f64::from(f), tone_fit(x, f64::from(f), rate).1))
        .fold((0.0, f64::NEG_INFINITY), |best, cur| {
            if cur.1 > best.1 {
                cur
            } else {
                best
            }
        })
        .0
}

/// Delay in samples of the `freq` Hz component of `x[range]` relative to the ideal
/// `sin(2π f k / rate)` at the same absolute indices `k` (positive: `x` lags), from its
/// least-squares phase; meaningful within half a period.
pub fn tone_delay(x: &[f32], range: std::ops::Range<usize>, freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (a, b, ..) = fit_sinusoid(x, range, w);
    // a sin(wk) + b cos(wk) = A sin(wk + φ) with φ = atan2(b, a); delay = -φ / w.
    -b.atan2(a) / w
}
