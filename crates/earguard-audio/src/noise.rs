//! Stage 3: seeded, deterministic noise.
//!
//! Both functions draw standard normal values from a ChaCha8 generator seeded with the
//! given `u64`, so the same input and seed always give bit-identical output (on every
//! platform, across runs).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn gaussian(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

fn mean_power(x: impl Iterator<Item = f64>) -> (f64, usize) {
    let (sum, count) = x.fold((0.0f64, 0usize), |(s, c), v| (s + v * v, c + 1));
    if count == 0 {
        (0.0, 0)
    } else {
        (sum / count as f64, count)
    }
}

/// Add white Gaussian noise at a signal-to-noise ratio of `snr_db` dB.
///
/// The noise is rescaled so that its mean power over the clip is exactly
/// `mean(signal²) / 10^(snr_db / 10)`, so the SNR measured back from the output is
/// `snr_db` up to float rounding. Returns an unchanged copy when the input is empty or
/// silent (zero power, where no SNR is defined), when it contains non-finite samples,
/// and when `snr_db` is not finite (`+∞` dB means "no noise"; NaN and `−∞` are not
/// meaningful levels).
pub fn add_noise_snr(samples: &[f32], snr_db: f32, seed: u64) -> Vec<f32> {
    let (signal_power, n) = mean_power(samples.iter().map(|&s| f64::from(s)));
    if n == 0 || !snr_db.is_finite() || !signal_power.is_finite() || signal_power <= 0.0 {
        return samples.to_vec();
    }
    let target = signal_power / 10f64.powf(f64::from(snr_db) / 10.0);
    let noise = gaussian(n, seed);
    let (raw_power, _) = mean_power(noise.iter().copied());
    if raw_power <= 0.0 || !raw_power.is_finite() {
        return samples.to_vec();
    }
    let scale = (target / raw_power).sqrt();
    samples
        .iter()
        .zip(&noise)
        .map(|(&s, &z)| (f64::from(s) + scale * z) as f32)
        .collect()
}

/// Add i.i.d. Gaussian noise with standard deviation `sigma` to every value (for
/// feature-space perturbations, e.g. of log-mel features). A `sigma` that is zero,
/// negative or not finite returns an unchanged copy.
pub fn add_gaussian(data: &[f32], sigma: f32, seed: u64) -> Vec<f32> {
    if !sigma.is_finite() || sigma <= 0.0 {
        return data.to_vec();
    }
    let sigma = f64::from(sigma);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    data.iter()
        .map(|&x| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (f64::from(x) + sigma * z) as f32
        })
        .collect()
}

/// Measured SNR in dB of `noisy` relative to the clean `signal` (noise = noisy − signal).
/// `None` when lengths differ, the input is empty, or either power is zero.
pub fn measure_snr_db(signal: &[f32], noisy: &[f32]) -> Option<f64> {
    if signal.len() != noisy.len() || signal.is_empty() {
        return None;
    }
    let (ps, _) = mean_power(signal.iter().map(|&s| f64::from(s)));
    let (pn, _) = mean_power(
        signal
            .iter()
            .zip(noisy)
            .map(|(&s, &y)| f64::from(y) - f64::from(s)),
    );
    if ps <= 0.0 || pn <= 0.0 || !ps.is_finite() || !pn.is_finite() {
        return None;
    }
    Some(10.0 * (ps / pn).log10())
}
