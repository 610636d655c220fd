//! Seeded noise: SNR accuracy, determinism per seed, independence across seeds.

mod common;

use common::fixture;
use earguard_audio::{add_gaussian, add_noise_snr, load_audio, measure_snr_db, LoadOptions};

fn speech() -> Vec<f32> {
    load_audio(&fixture("sourdough_16k.wav"), &LoadOptions::default())
        .unwrap()
        .samples
}

#[test]
fn measured_snr_is_within_0_1_db_of_requested() {
    let clean = speech();
    let tone: Vec<f32> = (0..16_000).map(|i| 0.3 * (i as f32 * 0.07).sin()).collect();
    let mut worst = 0.0f64;
    for (name, x) in [("speech", &clean), ("tone", &tone)] {
        for snr in [-10.0f32, -5.0, 0.0, 5.0, 10.0, 20.0, 30.0, 40.0, 60.0] {
            for seed in [0u64, 1, 42, u64::MAX] {
                let noisy = add_noise_snr(x, snr, seed);
                assert_eq!(noisy.len(), x.len());
                assert!(noisy.iter().all(|v| v.is_finite()));
                let measured = measure_snr_db(x, &noisy).unwrap();
                let err = (measured - f64::from(snr)).abs();
                worst = worst.max(err);
                assert!(
                    err <= 0.1,
                    "{name}: asked {snr} dB (seed {seed}), measured {measured:.4} dB"
                );
            }
        }
    }
    println!("largest |measured - requested| SNR over all cases: {worst:.2e} dB");
}

#[test]
fn noise_is_deterministic_per_seed_and_differs_across_seeds() {
    let x = speech();
    let a = add_noise_snr(&x, 10.0, 7);
    assert_eq!(a, add_noise_snr(&x, 10.0, 7), "same seed, same output");
    let b = add_noise_snr(&x, 10.0, 8);
    assert_ne!(a, b, "different seeds, different noise");
    // The two noise draws are (nearly) uncorrelated.
    let na: Vec<f64> = a.iter().zip(&x).map(|(y, s)| f64::from(y - s)).collect();
    let nb: Vec<f64> = b.iter().zip(&x).map(|(y, s)| f64::from(y - s)).collect();
    let dot: f64 = na.iter().zip(&nb).map(|(p, q)| p * q).sum();
    let norm =
        (na.iter().map(|v| v * v).sum::<f64>() * nb.iter().map(|v| v * v).sum::<f64>()).sqrt();
    let corr = dot / norm;
    println!("correlation of noise for seeds 7 and 8: {corr:+.4}");
    assert!(corr.abs() < 0.05, "{corr}");
    // The same seed at another SNR is the same noise, rescaled.
    let c = add_noise_snr(&x, 20.0, 7);
    let nc: Vec<f64> = c.iter().zip(&x).map(|(y, s)| f64::from(y - s)).collect();
    let dot: f64 = na.iter().zip(&nc).map(|(p, q)| p * q).sum();
    let norm =
        (na.iter().map(|v| v * v).sum::<f64>() * nc.iter().map(|v| v * v).sum::<f64>()).sqrt();
    assert!(dot / norm > 0.999);
}

#[test]
fn noise_is_zero_mean_gaussian() {
    let x = vec![0.5f32; 100_000];
    let y = add_noise_snr(&x, 0.0, 3);
    let n: Vec<f64> = y.iter().map(|v| f64::from(*v) - 0.5).collect();
    let mean = n.iter().sum::<f64>() / n.len() as f64;
    let var = n.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n.len() as f64;
    let kurt = n.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n.len() as f64 / (var * var);
    println!("noise mean {mean:+.2e}, variance {var:.4}, kurtosis {kurt:.3}");
    assert!(mean.abs() < 0.01, "{mean}");
    // Signal power 0.25 at 0 dB: noise power 0.25.
    assert!((var - 0.25).abs() < 0.005, "{var}");
    assert!((kurt - 3.0).abs() < 0.1, "not Gaussian: kurtosis {kurt}");
}

#[test]
fn undefined_snr_cases_return_the_input_unchanged() {
    assert!(add_noise_snr(&[], 10.0, 0).is_empty());
    let silent = vec![0.0f32; 100];
    assert_eq!(add_noise_snr(&silent, 10.0, 0), silent);
    let x = vec![0.1f32, -0.2, 0.3];
    assert_eq!(add_noise_snr(&x, f32::INFINITY, 0), x);
    assert_eq!(add_noise_snr(&x, f32::NAN, 0), x);
    assert_eq!(add_noise_snr(&x, f32::NEG_INFINITY, 0), x);
    let bad = vec![0.1f32, f32::NAN];
    let out = add_noise_snr(&bad, 10.0, 0);
    assert_eq!(out[0], 0.1);
    assert!(out[1].is_nan());

    assert_eq!(measure_snr_db(&x, &x), None, "no noise: SNR undefined");
    assert_eq!(measure_snr_db(&x, &x[..2]), None);
    assert_eq!(measure_snr_db(&[], &[]), None);
    assert_eq!(measure_snr_db(&silent, &x[..1].repeat(100)), None);
    let doubled: Vec<f32> = x.iter().map(|v| 2.0 * v).collect();
    // noise == signal: 0 dB.
    assert!(measure_snr_db(&x, &doubled).unwrap().abs() < 1e-9);
}

#[test]
fn gaussian_feature_noise() {
    let x = vec![1.0f32; 50_000];
    let y = add_gaussian(&x, 0.2, 11);
    assert_eq!(y, add_gaussian(&x, 0.2, 11));
    assert_ne!(y, add_gaussian(&x, 0.2, 12));
    let n = y.len() as f64;
    let mean = y.iter().map(|&v| f64::from(v) - 1.0).sum::<f64>() / n;
    let sd = (y
        .iter()
        .map(|&v| (f64::from(v) - 1.0 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    println!("add_gaussian sigma 0.2: measured mean {mean:+.2e}, sd {sd:.4}");
    assert!(
        mean.abs() < 0.005 && (sd - 0.2).abs() < 0.004,
        "mean {mean}, sd {sd}"
    );
    for sigma in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        assert_eq!(add_gaussian(&x[..10], sigma, 0), &x[..10]);
    }
    assert!(add_gaussian(&[], 0.2, 0).is_empty());
}
