//! Parity of our Whisper log-mel features with Hugging Face transformers'
//! `WhisperFeatureExtractor` on a real speech clip.
//!
//! The fixture `tests/fixtures/hf_mel.safetensors` was made by
//! `scripts/make_audio_fixtures.py` from `tests/fixtures/sourdough_16k.wav` (espeak-ng
//! speech, 16 kHz 16-bit) with the extractor's numpy path (float64 STFT) and
//! `return_attention_mask=True`. It holds `mel128` `[128, 3000]`, `mel80` `[80, 3000]`,
//! `valid_frames` (attention-mask sums for 128 and 80 bins) and `samples_len`.

mod common;

use common::fixture;
use earguard_audio::{load_audio, valid_frames, LoadOptions, MelExtractor, N_FRAMES};
use safetensors::{Dtype, SafeTensors};

/// Largest allowed absolute difference between our features and HF's, per value. The
/// features are `(log10(mel) + 4) / 4`, i.e. about a quarter of a log10 unit per unit, so
/// 1e-4 is a relative power error of about 0.1 %: float32 rounding in HF (it keeps the
/// STFT in complex64) is far below it, any formula difference (window, padding, filter
/// bank, floor) is far above it.
const TOLERANCE: f32 = 1e-4;

fn tensor_f32(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture lacks {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name} dtype");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), data)
}

fn tensor_i64(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture lacks {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name} dtype");
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn log_mel_matches_hf_whisper_feature_extractor() {
    let bytes = std::fs::read(fixture("hf_mel.safetensors")).expect("read HF fixture");
    let st = SafeTensors::deserialize(&bytes).expect("parse HF fixture");
    let audio = load_audio(&fixture("sourdough_16k.wav"), &LoadOptions::default())
        .expect("load speech clip");
    assert_eq!(audio.sample_rate, 16_000);

    let samples_len = tensor_i64(&st, "samples_len");
    assert_eq!(
        samples_len,
        vec![audio.samples.len() as i64],
        "clip length vs fixture"
    );

    // The fixture's order of attention-mask sums: (128, 80).
    let hf_valid = tensor_i64(&st, "valid_frames");
    let mut checked = 0;
    for (k, n_mels) in [128usize, 80].into_iter().enumerate() {
        let name = format!("mel{n_mels}");
        if st.tensor(&name).is_err() {
            continue;
        }
        let (shape, hf) = tensor_f32(&st, &name);
        assert_eq!(shape, vec![n_mels, N_FRAMES], "{name} shape");

        let ours = MelExtractor::new(n_mels).unwrap().extract(&audio).unwrap();
        assert_eq!((ours.n_mels, ours.n_frames), (n_mels, N_FRAMES));
        assert_eq!(ours.data.len(), hf.len());
        let (mut max_diff, mut at) = (0.0f32, 0usize);
        let mut sum_diff = 0.0f64;
        for (i, (a, b)) in ours.data.iter().zip(&hf).enumerate() {
            let d = (a - b).abs();
            sum_diff += f64::from(d);
            if d > max_diff {
                max_diff = d;
                at = i;
            }
        }
        println!(
            "n_mels={n_mels}: max |ours - HF| = {max_diff:.3e} (mel {}, frame {}), mean {:.3e}, tolerance {TOLERANCE:e}",
            at / N_FRAMES,
            at % N_FRAMES,
            sum_diff / hf.len() as f64
        );
        assert!(
            max_diff <= TOLERANCE,
            "n_mels={n_mels}: max abs diff {max_diff:e} at mel {}, frame {} exceeds {TOLERANCE:e}",
            at / N_FRAMES,
            at % N_FRAMES
        );

        let expected_valid = hf_valid[k] as usize;
        println!(
            "n_mels={n_mels}: valid_frames ours {} HF {expected_valid}",
            ours.valid_frames
        );
        assert_eq!(
            ours.valid_frames, expected_valid,
            "valid_frames vs HF attention mask"
        );
        assert_eq!(ours.valid_frames, valid_frames(audio.samples.len()));
        let mask = ours.attention_mask();
        assert_eq!(
            mask.iter().map(|&m| usize::from(m)).sum::<usize>(),
            expected_valid
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "the fixture should hold mel128 and mel80");
}

#[test]
fn features_are_deterministic_and_shareable_across_threads() {
    let audio = load_audio(&fixture("sourdough_16k.wav"), &LoadOptions::default()).unwrap();
    let mel = std::sync::Arc::new(MelExtractor::new(80).unwrap());
    let first = mel.extract(&audio).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (mel, audio) = (mel.clone(), audio.clone());
            std::thread::spawn(move || mel.extract(&audio).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), first);
    }
}

#[test]
fn valid_frames_counts_hops_and_caps_at_one_window() {
    assert_eq!(valid_frames(0), 0);
    assert_eq!(valid_frames(1), 1);
    assert_eq!(valid_frames(160), 1);
    assert_eq!(valid_frames(161), 2);
    assert_eq!(valid_frames(16_000), 100);
    assert_eq!(valid_frames(480_000), 3000);
    assert_eq!(valid_frames(10_000_000), 3000);
}

#[test]
fn extractor_rejects_bad_arguments_and_audio() {
    use earguard_audio::{Audio, AudioError};
    assert!(matches!(
        MelExtractor::new(64),
        Err(AudioError::InvalidArgument { .. })
    ));
    let mel = MelExtractor::new(128).unwrap();
    let at_8k = Audio {
        samples: vec![0.1; 800],
        sample_rate: 8000,
        source: "clip8k.wav".into(),
    };
    let e = mel.extract(&at_8k).unwrap_err();
    assert!(matches!(e, AudioError::Features { .. }), "{e}");
    assert!(e.to_string().contains("clip8k.wav"), "{e}");
    let empty = Audio {
        samples: vec![],
        sample_rate: 16_000,
        source: "empty-clip".into(),
    };
    assert!(matches!(
        mel.extract(&empty),
        Err(AudioError::ZeroLength { .. })
    ));
    let nan = Audio {
        samples: vec![0.0, f32::NAN],
        sample_rate: 16_000,
        source: "nan-clip".into(),
    };
    let e = mel.extract(&nan).unwrap_err();
    assert!(matches!(e, AudioError::NonFinite { index: 1, .. }), "{e}");
}

#[test]
fn longer_than_a_window_is_cut_like_hf() {
    // 31 s of in-memory audio (truncate) vs its first 30 s: identical features.
    let n = 31 * 16_000;
    let x: Vec<f32> = (0..n).map(|i| 0.3 * ((i as f32) * 0.05).sin()).collect();
    let long = earguard_audio::Audio {
        samples: x.clone(),
        sample_rate: 16_000,
        source: "long".into(),
    };
    let short = earguard_audio::Audio {
        samples: x[..480_000].to_vec(),
        sample_rate: 16_000,
        source: "long".into(),
    };
    let mel = MelExtractor::new(80).unwrap();
    let a = mel.extract(&long).unwrap();
    assert_eq!(a, mel.extract(&short).unwrap());
    assert_eq!(a.valid_frames, 3000);
}

#[test]
fn realtime_factor_is_positive() {
    let mel = MelExtractor::new(128).unwrap();
    let rtf = earguard_audio::mel_realtime_factor(&mel, 30.0).unwrap();
    println!("mel real-time factor: {rtf:.1}x");
    assert!(rtf.is_finite() && rtf > 0.0);
    assert!(earguard_audio::mel_realtime_factor(&mel, 0.0).is_err());
    assert!(earguard_audio::mel_realtime_factor(&mel, f64::NAN).is_err());
}
