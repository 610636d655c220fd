//! Bad input: every file of the committed corpus `tests/fixtures/bad/` (made by
//! `scripts/make_bad_audio.py`) goes through the whole `load_audio` path and must give an
//! error of the expected variant whose message names the file — never a panic. Plus
//! in-memory bad input, and truncated / corrupted copies of every good fixture.

mod common;

use std::path::Path;

use common::{fixture, scratch_dir};
use earguard_audio::{
    from_samples, from_samples_with, load_audio, AudioError, LoadOptions, WINDOW_SAMPLES,
};

/// The expected error variant of each corpus file, by name.
fn expected_variant(name: &str) -> Option<&'static str> {
    Some(match name {
        "empty.wav" => "EmptyFile",
        "riff_only.wav" | "truncated_header.wav" | "no_fmt_chunk.wav" => "BadHeader",
        "flac_header_only.flac" | "truncated.ogg" => "BadHeader",
        "truncated_data.wav" | "truncated.flac" | "truncated.mp3" => "Corrupt",
        "text.wav" | "random.mp3" | "avi_riff.wav" | "id3_garbage.mp3" => "NotAudio",
        "nan_float.wav" | "inf_float.wav" => "NonFinite",
        "zero_length.wav" => "ZeroLength",
        "zero_rate.wav" => "InvalidFormat",
        "ima_adpcm.wav" | "gsm610.wav" | "opus.ogg" => "UnsupportedCodec",
        "too_long_31s.wav" | "too_long_31s.flac" => "TooLong",
        _ => return None,
    })
}

fn variant(e: &AudioError) -> &'static str {
    match e {
        AudioError::Io { .. } => "Io",
        AudioError::EmptyFile { .. } => "EmptyFile",
        AudioError::BadHeader { .. } => "BadHeader",
        AudioError::NotAudio { .. } => "NotAudio",
        AudioError::UnsupportedCodec { .. } => "UnsupportedCodec",
        AudioError::Corrupt { .. } => "Corrupt",
        AudioError::NonFinite { .. } => "NonFinite",
        AudioError::ZeroLength { .. } => "ZeroLength",
        AudioError::TooLong { .. } => "TooLong",
        AudioError::InvalidFormat { .. } => "InvalidFormat",
        AudioError::Resample { .. } => "Resample",
        AudioError::Features { .. } => "Features",
        AudioError::SynthMissing { .. } => "SynthMissing",
        AudioError::SynthFailed { .. } => "SynthFailed",
        AudioError::InvalidArgument { .. } => "InvalidArgument",
        AudioError::Manifest { .. } => "Manifest",
        AudioError::Prompt { .. } => "Prompt",
    }
}

/// The error names `path` in its message and in [`AudioError::path`].
fn assert_names_file(e: &AudioError, path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy();
    let msg = e.to_string();
    assert!(msg.contains(&*name), "message does not name {name}: {msg}");
    assert_eq!(e.path(), path, "{msg}");
}

#[test]
fn every_bad_file_gives_its_error_naming_the_file() {
    let dir = fixture("bad");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("read tests/fixtures/bad")
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 20,
        "corpus has only {} files",
        entries.len()
    );
    for path in &entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let want = expected_variant(&name)
            .unwrap_or_else(|| panic!("{name}: no expectation; add it to expected_variant"));
        for truncate in [false, true] {
            let result = load_audio(path, &LoadOptions { truncate });
            if truncate && want == "TooLong" {
                continue; // checked below
            }
            let e = match result {
                Ok(a) => panic!(
                    "{name} (truncate={truncate}): loaded {} samples, expected {want}",
                    a.samples.len()
                ),
                Err(e) => e,
            };
            println!("{name}: {e}");
            assert_eq!(variant(&e), want, "{name} (truncate={truncate}): {e}");
            assert_names_file(&e, path);
        }
    }
}

#[test]
fn bad_file_details() {
    let load = |name: &str| load_audio(&fixture(&format!("bad/{name}")), &LoadOptions::default());
    match load("nan_float.wav").unwrap_err() {
        AudioError::NonFinite {
            index,
            channel,
            value,
            ..
        } => {
            assert_eq!((index, channel), (1000, 0));
            assert!(value.is_nan());
        }
        e => panic!("{e}"),
    }
    match load("inf_float.wav").unwrap_err() {
        AudioError::NonFinite {
            index,
            channel,
            value,
            ..
        } => assert_eq!((index, channel, value), (7, 1, f32::INFINITY)),
        e => panic!("{e}"),
    }
    for name in ["too_long_31s.wav", "too_long_31s.flac"] {
        match load(name).unwrap_err() {
            AudioError::TooLong {
                seconds,
                max_seconds,
                ..
            } => {
                assert!((seconds - 31.0).abs() < 1e-6, "{name}: {seconds}");
                assert_eq!(max_seconds, 30);
            }
            e => panic!("{e}"),
        }
    }
    let e = load("ima_adpcm.wav").unwrap_err().to_string();
    assert!(e.contains("0x0011") && e.contains("IMA ADPCM"), "{e}");
    let e = load("opus.ogg").unwrap_err().to_string();
    assert!(e.contains("Opus"), "{e}");
    let e = load("too_long_31s.wav").unwrap_err().to_string();
    assert!(
        e.contains("truncate"),
        "the message should say how to load it anyway: {e}"
    );
}

#[test]
fn over_long_audio_with_truncate_loads_exactly_30_s() {
    for name in ["too_long_31s.wav", "too_long_31s.flac"] {
        let path = fixture(&format!("bad/{name}"));
        let audio = load_audio(&path, &LoadOptions { truncate: true })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(audio.sample_rate, 16_000);
        assert_eq!(audio.samples.len(), WINDOW_SAMPLES, "{name}");
        assert_eq!(audio.source, path);
        assert!(audio.samples.iter().all(|s| s.is_finite()));
        // The content is the start of the file: a tone in the first second.
        let first = &audio.samples[..16_000];
        let freq = if name.ends_with(".wav") { 200.0 } else { 250.0 };
        let (amp, explained) = common::tone_fit(first, freq, 16_000.0);
        assert!(explained > 0.98, "{name}: {freq} Hz explains {explained}");
        assert!((amp - 0.5).abs() < 0.03, "{name}: amplitude {amp}");
    }
}

#[test]
fn missing_file_and_directory() {
    let missing = fixture("bad/does_not_exist.wav");
    let e = load_audio(&missing, &LoadOptions::default()).unwrap_err();
    assert_eq!(variant(&e), "Io", "{e}");
    assert_names_file(&e, &missing);

    let dir = fixture("bad");
    let e = load_audio(&dir, &LoadOptions::default()).unwrap_err();
    assert_eq!(variant(&e), "NotAudio", "{e}");
    assert!(e.to_string().contains("bad"), "{e}");
}

#[test]
fn bad_in_memory_audio() {
    let named_memory = |e: &AudioError| {
        assert!(e.to_string().contains("<memory>"), "{e}");
    };
    let e = from_samples(vec![0.0, 0.1, f32::NAN], 16_000).unwrap_err();
    assert!(matches!(e, AudioError::NonFinite { index: 2, .. }), "{e}");
    named_memory(&e);
    let e = from_samples(vec![0.0; 10], 0).unwrap_err();
    assert_eq!(variant(&e), "InvalidFormat");
    named_memory(&e);
    let e = from_samples(vec![0.0; 10], 2_000_000).unwrap_err();
    assert_eq!(variant(&e), "InvalidFormat");
    let e = from_samples(vec![], 16_000).unwrap_err();
    assert_eq!(variant(&e), "ZeroLength");
    named_memory(&e);

    // 30 s exactly is fine; one sample more is too long; truncate keeps 30 s.
    assert_eq!(
        from_samples(vec![0.1; WINDOW_SAMPLES], 16_000)
            .unwrap()
            .samples
            .len(),
        WINDOW_SAMPLES
    );
    let e = from_samples(vec![0.1; WINDOW_SAMPLES + 1], 16_000).unwrap_err();
    assert_eq!(variant(&e), "TooLong");
    named_memory(&e);
    let a = from_samples_with(
        vec![0.1; WINDOW_SAMPLES + 1],
        16_000,
        &LoadOptions { truncate: true },
    )
    .unwrap();
    assert_eq!(a.samples.len(), WINDOW_SAMPLES);
    // At another rate: 31 s at 8 kHz.
    let e = from_samples(vec![0.1; 31 * 8000], 8000).unwrap_err();
    assert_eq!(variant(&e), "TooLong");
    let a = from_samples_with(vec![0.1; 31 * 8000], 8000, &LoadOptions { truncate: true }).unwrap();
    assert_eq!(a.samples.len(), WINDOW_SAMPLES);
}

/// A tiny deterministic generator for the corruption test.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Cut and byte-corrupted copies of every good fixture: each load returns (never panics);
/// an error names the copy; a success is finite 16 kHz audio of at most 30 s. A copy cut
/// inside its header or data is never silently accepted.
#[test]
fn truncated_and_corrupted_copies_never_panic() {
    let scratch = scratch_dir("corrupt");
    let mut sources: Vec<_> = std::fs::read_dir(fixture("formats"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sources.push(fixture("sourdough_16k.wav"));
    sources.sort();
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let (mut ok, mut err) = (0usize, 0usize);
    for src in &sources {
        let bytes = std::fs::read(src).unwrap();
        let stem = src.file_name().unwrap().to_string_lossy().into_owned();
        let mut variants: Vec<(String, Vec<u8>, bool)> = Vec::new();
        for k in 1..16 {
            let cut = bytes.len() * k / 16;
            variants.push((format!("cut{k:02}_{stem}"), bytes[..cut].to_vec(), true));
        }
        for k in 0..24 {
            let mut b = bytes.clone();
            let flips = [1, 3, 16][k % 3];
            // Half the corruptions hit the first 256 bytes (headers), half anywhere.
            let span = if k % 2 == 0 {
                b.len().min(256)
            } else {
                b.len()
            };
            for _ in 0..flips {
                let i = rng.below(span);
                b[i] = rng.next() as u8;
            }
            variants.push((format!("flip{k:02}_{stem}"), b, false));
        }
        for (name, content, is_cut) in variants {
            let path = scratch.join(&name);
            std::fs::write(&path, &content).unwrap();
            match load_audio(&path, &LoadOptions::default()) {
                Ok(a) => {
                    ok += 1;
                    assert!(
                        !is_cut,
                        "{name}: a cut file loaded silently ({} samples)",
                        a.samples.len()
                    );
                    assert_eq!(a.sample_rate, 16_000);
                    assert!(!a.samples.is_empty() && a.samples.len() <= WINDOW_SAMPLES);
                    assert!(a.samples.iter().all(|s| s.is_finite()), "{name}");
                }
                Err(e) => {
                    err += 1;
                    assert_names_file(&e, &path);
                }
            }
        }
    }
    println!("corrupted copies: {ok} loaded, {err} refused");
}
