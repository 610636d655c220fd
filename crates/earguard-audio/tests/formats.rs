//! Format coverage: every fixture of `tests/fixtures/formats/` (made by
//! `scripts/make_format_audio.py`, see its docstring for the signals) decodes to the
//! expected 16 kHz mono content.

mod common;

use common::{dominant_freq, fixture, rms, scratch_dir, tone_delay, tone_fit};
use earguard_audio::{
    from_samples, load_audio, resample, write_wav_pcm16, LoadOptions, MelExtractor,
};

fn load(name: &str) -> Vec<f32> {
    let path = fixture(&format!("formats/{name}"));
    let a = load_audio(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.sample_rate, 16_000, "{name}");
    assert_eq!(a.source, path);
    assert!(a.samples.iter().all(|s| s.is_finite()), "{name}");
    a.samples
}

/// The exact 440 Hz, amplitude-0.5 reference the 16 kHz fixtures hold.
fn reference_tone(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin()) as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn wav_integer_and_float_depths_decode_to_the_same_tone() {
    let reference = reference_tone(8000);
    // (file, allowed max abs error: about one quantisation step of the format)
    let cases = [
        ("tone440_16k_u8.wav", 1.0 / 128.0),
        ("tone440_16k_s16.wav", 1.0 / 32768.0),
        ("tone440_16k_s24.wav", 1.0 / 8_388_608.0 + 1e-7),
        ("tone440_16k_s24x.wav", 1.0 / 8_388_608.0 + 1e-7),
        ("tone440_16k_s32.wav", 1e-7),
        ("tone440_16k_f32.wav", 1e-7),
        ("tone440_16k_ulaw.wav", 0.02),
        ("tone440_16k_alaw.wav", 0.02),
        ("tone440_16k.flac", 1.0 / 32768.0),
    ];
    for (name, tol) in cases {
        let x = load(name);
        assert_eq!(x.len(), 8000, "{name}: length");
        let d = max_abs_diff(&x, &reference);
        println!("{name}: max |decoded - reference| = {d:.3e} (allowed {tol:.1e})");
        assert!(d <= tol as f32, "{name}: max diff {d:e} > {tol:e}");
    }
    // Lossless 16-bit WAV and FLAC decode to identical samples.
    assert_eq!(load("tone440_16k_s16.wav"), load("tone440_16k.flac"));
}

#[test]
fn stereo_is_averaged_to_mono() {
    // L = 0.5 sin(440) + 0.25 sin(1000), R = -0.5 sin(440) + 0.25 sin(1000): the 440 Hz
    // parts cancel, the mix is 0.25 sin(2π 1000 t).
    let expected: Vec<f32> = (0..8000)
        .map(|i| (0.25 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16_000.0).sin()) as f32)
        .collect();
    for name in ["stereo_16k_s16.wav", "stereo_16k.flac"] {
        let x = load(name);
        assert_eq!(x.len(), 8000, "{name}");
        let d = max_abs_diff(&x, &expected);
        println!("{name}: max |mono - expected| = {d:.3e}");
        assert!(d <= 2.0 / 32768.0, "{name}: {d:e}");
        let (amp440, _) = tone_fit(&x, 440.0, 16_000.0);
        assert!(
            amp440 < 1e-3,
            "{name}: 440 Hz should cancel, amplitude {amp440}"
        );
    }
}

#[test]
fn other_rates_are_resampled_to_16k_keeping_the_tone() {
    // (file, input frames, input rate, tone Hz): output is ceil(n * 16000 / rate) samples.
    for (name, frames, rate, freq) in [
        ("tone440_44k1_s16.wav", 22_051u64, 44_100u64, 440.0),
        ("tone1000_8k_s16.wav", 4_001, 8_000, 1000.0),
    ] {
        let x = load(name);
        let expected_len = (frames * 16_000).div_ceil(rate) as usize;
        assert_eq!(x.len(), expected_len, "{name}: resampled length");
        // Skip the edges (filter transients), check the body.
        let body = &x[400..x.len() - 400];
        let (amp, explained) = tone_fit(body, freq, 16_000.0);
        let found = dominant_freq(body, 16_000.0, 100, 3000);
        println!("{name}: {} samples, dominant {found} Hz, amplitude {amp:.4}, {freq} Hz explains {explained:.6}", x.len());
        assert_eq!(found, freq, "{name}: dominant frequency");
        assert!((amp - 0.5).abs() < 0.005, "{name}: amplitude {amp}");
        assert!(explained > 0.9999, "{name}: {explained}");
        // The tone is in phase with the original: sample k is at time k / 16000 s.
        let reference: Vec<f32> = (0..x.len())
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / 16_000.0).sin()) as f32)
            .collect();
        let d = max_abs_diff(body, &reference[400..x.len() - 400]);
        assert!(d < 0.01, "{name}: body differs from the ideal tone by {d}");
    }
}

#[test]
fn lossy_formats_decode_with_the_right_length_and_tone() {
    for name in ["tone440_44k1.mp3", "tone440_16k.ogg"] {
        let x = load(name);
        // Both hold exactly 0.5 s; gapless decoding trims encoder delay and padding.
        assert_eq!(x.len(), 8000, "{name}: length");
        let body = &x[800..7200];
        let (amp, explained) = tone_fit(body, 440.0, 16_000.0);
        let found = dominant_freq(body, 16_000.0, 100, 3000);
        println!("{name}: dominant {found} Hz, amplitude {amp:.4}, 440 Hz explains {explained:.5}, rms {:.4}", rms(body));
        assert_eq!(found, 440.0, "{name}");
        assert!((amp - 0.5).abs() < 0.03, "{name}: amplitude {amp}");
        assert!(explained > 0.99, "{name}: {explained}");
        // Aligned in time (no leftover encoder delay): close to the ideal tone.
        let reference = reference_tone(8000);
        let d = max_abs_diff(body, &reference[800..7200]);
        assert!(
            d < 0.1,
            "{name}: differs from the ideal tone by {d} (delay not trimmed?)"
        );
    }
}

/// Output sample `k` lines up with input time `k / 16000` s at every common rate. (Before
/// the fix rubato's delay trimming left the output early or late by up to ~0.7 samples
/// whenever its FFT block sizes were odd: 11025, 12000, 22050, 44100, 48000 Hz.)
#[test]
fn resampled_audio_is_time_aligned() {
    for from in [
        8_000u32, 11_025, 12_000, 22_050, 24_000, 32_000, 44_100, 48_000, 96_000,
    ] {
        for freq in [440.0, 1500.0] {
            let x: Vec<f32> = (0..from)
                .map(|i| {
                    (0.5 * (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(from))
                        .sin()) as f32
                })
                .collect();
            let y = resample(&x, from, 16_000).unwrap();
            assert_eq!(y.len(), 16_000);
            let delay = tone_delay(&y, 1000..15_000, freq, 16_000.0);
            println!("{from} Hz -> 16 kHz, {freq} Hz tone: delay {delay:+.5} samples");
            assert!(
                delay.abs() < 0.01,
                "{from} Hz, {freq} Hz: output is {delay:+.4} samples off"
            );
        }
    }
}

#[test]
fn format_is_sniffed_from_content_not_extension() {
    let scratch = scratch_dir("sniff");
    let src = fixture("formats/tone440_16k.flac");
    let renamed = scratch.join("actually_flac.wav");
    std::fs::copy(&src, &renamed).unwrap();
    let a = load_audio(&renamed, &LoadOptions::default()).unwrap();
    assert_eq!(a.samples, load("tone440_16k.flac"));
}

#[test]
fn resample_lengths_and_identity() {
    let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.01).sin()).collect();
    assert_eq!(resample(&x, 16_000, 16_000).unwrap(), x);
    assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
    for (n, from) in [
        (1usize, 44_100u32),
        (7, 8_000),
        (44_100, 44_100),
        (12_345, 22_050),
        (999, 48_000),
        (10, 11_025),
    ] {
        let y = resample(&vec![0.1; n], from, 16_000).unwrap();
        assert_eq!(
            y.len(),
            (n as u64 * 16_000).div_ceil(u64::from(from)) as usize,
            "n={n} from {from}"
        );
    }
    // A 1 kHz tone at 48 kHz resampled to 16 kHz keeps frequency and energy.
    let tone: Vec<f32> = (0..48_000)
        .map(|i| (0.3 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 48_000.0).sin()) as f32)
        .collect();
    let y = resample(&tone, 48_000, 16_000).unwrap();
    assert_eq!(y.len(), 16_000);
    let body = &y[500..15_500];
    assert_eq!(dominant_freq(body, 16_000.0, 100, 7000), 1000.0);
    let ratio = rms(body) / rms(&tone);
    assert!((ratio - 1.0).abs() < 0.005, "energy ratio {ratio}");
    // Content above the new Nyquist (8 kHz) is removed, not aliased: 12 kHz at 48 kHz
    // would alias to 4 kHz.
    let high: Vec<f32> = (0..48_000)
        .map(|i| (0.3 * (2.0 * std::f64::consts::PI * 12_000.0 * i as f64 / 48_000.0).sin()) as f32)
        .collect();
    let y = resample(&high, 48_000, 16_000).unwrap();
    let leak = rms(&y[500..15_500]) / rms(&high);
    println!("12 kHz through 48k->16k: residual {leak:.2e} of the input rms");
    assert!(leak < 1e-3, "aliasing: {leak}");
    assert!(resample(&x, 0, 16_000).is_err());
}

#[test]
fn write_wav_pcm16_round_trips() {
    let scratch = scratch_dir("roundtrip");
    let path = scratch.join("tone.wav");
    let x = reference_tone(8000);
    write_wav_pcm16(&path, &x, 16_000).unwrap();
    let back = load_audio(&path, &LoadOptions::default()).unwrap();
    assert!(max_abs_diff(&back.samples, &x) <= 0.5 / 32768.0 + 1e-9);
    // Same bytes as the independent Python writer's 16-bit file (same rounding).
    let ours = std::fs::read(&path).unwrap();
    let python = std::fs::read(fixture("formats/tone440_16k_s16.wav")).unwrap();
    assert_eq!(ours, python, "16-bit WAV bytes differ from the fixture");
    // Out-of-range and non-finite samples are clipped / zeroed, not wrapped.
    let clip = scratch.join("clip.wav");
    write_wav_pcm16(&clip, &[2.0, -2.0, f32::NAN, 1.0], 8_000).unwrap();
    let r = hound::WavReader::open(&clip).unwrap();
    assert_eq!(r.spec().sample_rate, 8_000);
    let v: Vec<i16> = r.into_samples::<i16>().map(|s| s.unwrap()).collect();
    assert_eq!(v, vec![32767, -32768, 0, 32767]);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // An unwritable destination is an Io error naming it.
    let e = write_wav_pcm16(&scratch.join("no/such/dir/x.wav"), &x, 16_000).unwrap_err();
    assert!(e.to_string().contains("x.wav"), "{e}");
}

#[test]
fn decoded_formats_featurise() {
    let mel = MelExtractor::new(128).unwrap();
    for name in [
        "tone440_44k1.mp3",
        "tone440_16k.ogg",
        "stereo_16k.flac",
        "tone1000_8k_s16.wav",
    ] {
        let a = load_audio(
            &fixture(&format!("formats/{name}")),
            &LoadOptions::default(),
        )
        .unwrap();
        let f = mel.extract(&a).unwrap();
        assert_eq!(f.valid_frames, a.samples.len().div_ceil(160), "{name}");
        assert!(f.data.iter().all(|v| v.is_finite()));
    }
    // from_samples at 44.1 kHz gives the same features as the 44.1 kHz WAV file.
    let wav = load("tone440_44k1_s16.wav");
    let mem = from_samples(
        (0..22_051)
            .map(|i| {
                let v = 0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 44_100.0).sin();
                ((v * 32768.0).round().clamp(-32768.0, 32767.0) / 32768.0) as f32
            })
            .collect(),
        44_100,
    )
    .unwrap();
    assert_eq!(mem.samples, wav);
}
