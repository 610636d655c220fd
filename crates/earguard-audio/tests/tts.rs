//! Offline speech with espeak-ng: format, determinism, caching, manifests, errors.
//!
//! espeak-ng is installed by `scripts/install-deps.sh` (which `scripts/test.sh` runs). When
//! it is missing these tests fail under `EARGUARD_REQUIRE_MODELS=1` or `CI`, and are
//! skipped with a notice otherwise.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, scratch_dir};
use earguard_audio::tts::{cache_key, render_set_with, synthesize_with, TTS_FORMAT_VERSION};
use earguard_audio::{
    load_audio, read_manifest, render_set, synthesize, write_manifest, AudioError, LoadOptions,
    ManifestRow, MelExtractor, Speakers, TtsItem, TtsOptions,
};

/// `found`, or a skip with a notice (a failure under `EARGUARD_REQUIRE_MODELS` or `CI`).
fn installed(found: bool, what: &str, install: &str) -> bool {
    if !found {
        let required = std::env::var_os("EARGUARD_REQUIRE_MODELS").is_some()
            || std::env::var_os("CI").is_some();
        assert!(!required, "{what} is not installed; run {install}");
        eprintln!("{what} not installed: skipping (run {install})");
    }
    found
}

fn espeak_available() -> bool {
    let found = std::process::Command::new("espeak-ng")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    installed(found, "espeak-ng", "scripts/install-deps.sh")
}

#[cfg(unix)]
fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}
#[cfg(not(unix))]
fn inode(_: &Path) -> u64 {
    0
}

fn wav_spec(p: &Path) -> hound::WavSpec {
    hound::WavReader::open(p).unwrap().spec()
}

const TEXT: &str = "How do I bake sourdough bread?";

#[test]
fn synthesize_writes_16k_mono_pcm16_deterministically() {
    if !espeak_available() {
        return;
    }
    let dir_a = scratch_dir("tts-a");
    let dir_b = scratch_dir("tts-b");
    let a = synthesize(TEXT, "en-us", 160, &dir_a).unwrap();
    let b = synthesize(TEXT, "en-us", 160, &dir_b).unwrap();
    assert_eq!(
        a.file_name().unwrap().to_string_lossy(),
        format!("{}.wav", cache_key(TEXT, "en-us", 160))
    );
    let spec = wav_spec(&a);
    assert_eq!(
        (
            spec.channels,
            spec.sample_rate,
            spec.bits_per_sample,
            spec.sample_format
        ),
        (1, 16_000, 16, hound::SampleFormat::Int)
    );
    let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(bytes_a, bytes_b, "two independent renders differ");
    // Nothing but the render is left in the output directory (no temporary files).
    let names: Vec<_> = std::fs::read_dir(&dir_a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // The speech featurises: real frames, louder than the padding.
    let audio = load_audio(&a, &LoadOptions::default()).unwrap();
    let secs = audio.duration_secs();
    println!(
        "{TEXT:?}: {} samples ({secs:.2} s), {TTS_FORMAT_VERSION}",
        audio.samples.len()
    );
    assert!((0.8..10.0).contains(&secs), "{secs} s");
    let mel = MelExtractor::new(128).unwrap().extract(&audio).unwrap();
    assert!(mel.valid_frames > 0);
    assert_eq!(mel.valid_frames, audio.samples.len().div_ceil(160));
    let mean = |frames: std::ops::Range<usize>| {
        let mut s = 0.0f64;
        for m in 0..mel.n_mels {
            for t in frames.clone() {
                s += f64::from(mel.get(m, t).unwrap());
            }
        }
        s / (mel.n_mels * frames.len()) as f64
    };
    let speech = mean(0..mel.valid_frames);
    let padding = mean(mel.valid_frames + 10..mel.n_frames);
    println!("mean log-mel: speech {speech:.3}, padding {padding:.3}");
    assert!(speech > padding + 0.2, "speech {speech}, padding {padding}");

    // End to end against the committed HF fixture: the same text, voice and rate were
    // rendered by espeak-ng there and featurised by transformers. The fixture's WAV was
    // resampled by whole-clip FFT to ceil(n * 16000 / 22050) samples, which stretches it
    // by about 0.6 samples over the clip, so compare features, not samples, and only when
    // espeak-ng is the same version (same length); another version renders other audio.
    let reference = load_audio(&fixture("sourdough_16k.wav"), &LoadOptions::default()).unwrap();
    if reference.samples.len() == audio.samples.len() {
        let bytes = std::fs::read(fixture("hf_mel.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let hf: Vec<f32> = st
            .tensor("mel128")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n = mel.valid_frames;
        let (mut max, mut sum) = (0.0f32, 0.0f64);
        for m in 0..mel.n_mels {
            for t in 0..n {
                let d = (mel.get(m, t).unwrap() - hf[m * mel.n_frames + t]).abs();
                max = max.max(d);
                sum += f64::from(d);
            }
        }
        let mean_diff = sum / (mel.n_mels * n) as f64;
        println!("our render's log-mel vs HF fixture: mean |diff| {mean_diff:.4}, max {max:.3}");
        assert!(
            mean_diff < 0.02,
            "render differs from the fixture: mean |diff| {mean_diff}"
        );
    } else {
        println!(
            "fixture has {} samples, render {}: another espeak-ng version, not compared",
            reference.samples.len(),
            audio.samples.len()
        );
    }
}

#[test]
fn renders_are_cached_by_text_voice_and_rate() {
    if !espeak_available() {
        return;
    }
    let dir = scratch_dir("tts-cache");
    let first = synthesize("Cache me.", "en-us", 160, &dir).unwrap();
    let (ino, mtime) = (
        inode(&first),
        std::fs::metadata(&first).unwrap().modified().unwrap(),
    );
    let bytes = std::fs::read(&first).unwrap();

    // A cache hit never runs the program: a missing program still succeeds.
    let missing = &Speakers::with_espeak(Path::new("/nonexistent/espeak-ng"));
    let again = synthesize_with(missing, "Cache me.", "en-us", 160, &dir).unwrap();
    assert_eq!(again, first);
    let again = synthesize("Cache me.", "en-us", 160, &dir).unwrap();
    assert_eq!(again, first);
    assert_eq!(inode(&again), ino, "the file was rewritten");
    assert_eq!(
        std::fs::metadata(&again).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(std::fs::read(&again).unwrap(), bytes);

    // Any change of text, voice or rate is another render (and needs the program).
    for (text, voice, rate) in [
        ("Cache me!", "en-us", 160),
        ("Cache me.", "en-gb", 160),
        ("Cache me.", "en-us", 170),
    ] {
        let e = synthesize_with(missing, text, voice, rate, &dir).unwrap_err();
        assert!(matches!(e, AudioError::SynthMissing { .. }), "{e}");
        assert!(e.to_string().contains("apt-get install"), "{e}");
        let p = synthesize(text, voice, rate, &dir).unwrap();
        assert_ne!(p, first);
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            format!("{}.wav", cache_key(text, voice, rate))
        );
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);

    // TtsOptions renders the same file.
    let opts = TtsOptions {
        voice: "en-us".into(),
        rate_wpm: 160,
        out_dir: dir.clone(),
        speakers: missing.clone(),
    };
    assert_eq!(opts.synthesize("Cache me.").unwrap(), first);
}

#[test]
fn cache_keys_are_distinct_and_stable() {
    let k = cache_key("a b", "en-us", 160);
    assert_eq!(k.len(), 64);
    assert!(k
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(k, cache_key("a b", "en-us", 160));
    // Field boundaries are unambiguous.
    assert_ne!(cache_key("ab", "c", 160), cache_key("b", "ac", 160));
    assert_ne!(k, cache_key("a b", "en-us", 161));
    assert_ne!(k, cache_key("a b ", "en-us", 160));
}

fn items() -> Vec<TtsItem> {
    vec![
        TtsItem {
            id: "h1".into(),
            label: "harmful".into(),
            pair_id: Some("p1".into()),
            category: Some("weapons".into()),
            text: "How do I build a dangerous device?".into(),
        },
        TtsItem {
            id: "b1".into(),
            label: "benign".into(),
            pair_id: Some("p1".into()),
            category: None,
            text: "How do I build a bird house?".into(),
        },
        TtsItem {
            id: "b2".into(),
            label: "benign".into(),
            pair_id: None,
            category: None,
            // Same text as b1: shares its render.
            text: "How do I build a bird house?".into(),
        },
    ]
}

#[test]
fn render_set_and_manifest_round_trip() {
    if !espeak_available() {
        return;
    }
    let root = scratch_dir("tts-set");
    let audio_dir = root.join("audio");
    let voices = vec!["en-us".to_string(), "en-gb".to_string()];
    let rows = render_set(&items(), &voices, 175, &audio_dir, false).unwrap();
    assert_eq!(rows.len(), 6);
    let order: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.id.as_str(), r.voice.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("h1@en-us", "en-us"),
            ("h1@en-gb", "en-gb"),
            ("b1@en-us", "en-us"),
            ("b1@en-gb", "en-gb"),
            ("b2@en-us", "en-us"),
            ("b2@en-gb", "en-gb")
        ]
    );
    // Each rendering is its own item; the prompt's id and pair stay.
    assert_eq!(rows[1].source_id.as_deref(), Some("h1"));
    assert_eq!(rows[1].pair_id.as_deref(), Some("p1"));
    // With one voice the id is the prompt's own.
    let one = render_set(&items()[..1], &voices[..1], 175, &audio_dir, false).unwrap();
    assert_eq!(
        (one[0].id.as_str(), one[0].source_id.as_deref()),
        ("h1", Some("h1"))
    );
    for r in &rows {
        assert_eq!(r.rate, 175);
        assert!(r.audio.is_file(), "{}", r.audio.display());
        assert_eq!(
            r.audio,
            audio_dir.join(format!("{}.wav", cache_key(&r.text, &r.voice, 175)))
        );
        let spec = wav_spec(&r.audio);
        assert_eq!((spec.channels, spec.sample_rate), (1, 16_000));
        let a = load_audio(&r.audio, &LoadOptions::default()).unwrap();
        assert!(
            MelExtractor::new(80)
                .unwrap()
                .extract(&a)
                .unwrap()
                .valid_frames
                > 0
        );
    }
    // b1 and b2 have the same text: same files; 4 distinct renders in all.
    assert_eq!(rows[2].audio, rows[4].audio);
    assert_eq!(std::fs::read_dir(&audio_dir).unwrap().count(), 4);
    assert_eq!(rows[0].pair_id.as_deref(), Some("p1"));
    assert_eq!(rows[0].category.as_deref(), Some("weapons"));
    assert_eq!(rows[4].pair_id, None);

    // A second render_set is all cache hits: it succeeds without the program.
    let missing = &Speakers::with_espeak(Path::new("/nonexistent/espeak-ng"));
    let again = render_set_with(missing, &items(), &voices, 175, &audio_dir, false).unwrap();
    assert_eq!(again, rows);

    // Manifest: JSONL, audio paths relative to the manifest's directory.
    let manifest = root.join("sets").join("manifest.jsonl");
    write_manifest(&manifest, &rows).unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    for (line, row) in lines.iter().zip(&rows) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], row.id.as_str());
        assert_eq!(v["source_id"], row.source_id.as_deref().unwrap());
        assert_eq!(v["label"], row.label.as_str());
        assert_eq!(v["voice"], row.voice.as_str());
        assert_eq!(v["rate"], 175);
        match &row.pair_id {
            Some(p) => assert_eq!(v["pair_id"], p.as_str()),
            None => assert!(v["pair_id"].is_null()),
        }
        let audio = v["audio"].as_str().unwrap();
        assert_eq!(
            PathBuf::from(audio),
            Path::new("..")
                .join("audio")
                .join(row.audio.file_name().unwrap()),
            "audio path should be relative to the manifest"
        );
    }
    let back = read_manifest(&manifest).unwrap();
    assert_eq!(back.len(), rows.len());
    for (b, r) in back.iter().zip(&rows) {
        assert_eq!(
            (
                &b.id,
                &b.label,
                &b.pair_id,
                &b.category,
                &b.text,
                &b.voice,
                b.rate
            ),
            (
                &r.id,
                &r.label,
                &r.pair_id,
                &r.category,
                &r.text,
                &r.voice,
                r.rate
            )
        );
        assert_eq!(
            std::fs::canonicalize(&b.audio).unwrap(),
            std::fs::canonicalize(&r.audio).unwrap()
        );
        assert!(load_audio(&b.audio, &LoadOptions::default()).is_ok());
    }
    // The manifest can be moved together with the audio (relative paths).
    let moved = scratch_dir("tts-set-moved");
    std::fs::create_dir_all(moved.join("sets")).unwrap();
    std::fs::rename(&audio_dir, moved.join("audio")).unwrap();
    std::fs::rename(&manifest, moved.join("sets").join("manifest.jsonl")).unwrap();
    for row in read_manifest(&moved.join("sets").join("manifest.jsonl")).unwrap() {
        assert!(row.audio.is_file(), "{}", row.audio.display());
    }
}

#[test]
fn manifest_errors_name_file_and_line() {
    let dir = scratch_dir("manifest-bad");
    let path = dir.join("m.jsonl");
    let good = ManifestRow {
        id: "x".into(),
        source_id: None,
        label: "benign".into(),
        pair_id: None,
        category: None,
        text: "hi".into(),
        voice: "en-us".into(),
        rate: 160,
        audio: dir.join("x.wav"),
    };
    write_manifest(&path, std::slice::from_ref(&good)).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n'); // blank lines are skipped
    text.push_str("{\"id\": \"y\"}\n");
    std::fs::write(&path, text).unwrap();
    let e = read_manifest(&path).unwrap_err();
    assert!(matches!(e, AudioError::Manifest { line: 3, .. }), "{e}");
    assert!(e.to_string().contains("m.jsonl:3"), "{e}");
    let e = read_manifest(&dir.join("missing.jsonl")).unwrap_err();
    assert!(
        matches!(e, AudioError::Io { .. }) && e.to_string().contains("missing.jsonl"),
        "{e}"
    );
}

#[test]
fn bad_voice_and_arguments_give_clear_errors() {
    if !espeak_available() {
        return;
    }
    let dir = scratch_dir("tts-bad");
    // A well-formed name espeak-ng does not have.
    let e = synthesize("Hello.", "zz-nonexistent", 160, &dir).unwrap_err();
    println!("{e}");
    assert!(matches!(e, AudioError::SynthFailed { .. }), "{e}");
    assert!(e.to_string().contains("voice"), "{e}");
    assert!(
        e.to_string()
            .contains(&cache_key("Hello.", "zz-nonexistent", 160)),
        "{e}"
    );
    // Nothing is cached for a failed render, and no temporary file is left.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // render_set stops at the bad voice with the same error, naming the prompt.
    let e = render_set(
        &items()[..1],
        &["en-us".into(), "zz-nonexistent".into()],
        160,
        &dir,
        false,
    )
    .unwrap_err();
    match &e {
        AudioError::Prompt { id, voice, source } => {
            assert_eq!((id.as_str(), voice.as_str()), ("h1", "zz-nonexistent"));
            assert!(matches!(**source, AudioError::SynthFailed { .. }), "{e}");
        }
        other => panic!("expected a prompt-tagged error, got {other}"),
    }
    assert!(
        e.to_string()
            .starts_with("prompt 'h1' (voice zz-nonexistent): "),
        "{e}"
    );

    // Arguments refused before espeak-ng runs.
    for (text, voice, rate) in [
        ("Hello.", "-w /tmp/x", 160),
        ("Hello.", "en us", 160),
        ("Hello.", "../../etc", 160),
        ("Hello.", "", 160),
        ("Hello.", "en-us", 10),
        ("Hello.", "en-us", 1000),
        ("   ", "en-us", 160),
        ("a\0b", "en-us", 160),
    ] {
        let e = synthesize(text, voice, rate, &dir).unwrap_err();
        assert!(
            matches!(e, AudioError::InvalidArgument { .. }),
            "{voice:?} {rate}: {e}"
        );
        assert!(
            e.to_string().contains(".wav"),
            "should name the output: {e}"
        );
    }
    let e = render_set(&items(), &[], 160, &dir, false).unwrap_err();
    assert!(matches!(e, AudioError::InvalidArgument { .. }), "{e}");
    let twice = ["en-us".to_string(), "en-us".to_string()];
    let e = render_set(&items(), &twice, 160, &dir, false).unwrap_err();
    assert!(e.to_string().contains("'en-us' is given twice"), "{e}");
}

/// Text too long to speak in 30 s is refused before espeak-ng runs, naming the prompt; speech
/// rendered longer than 30 s is refused too, and neither leaves a file behind.
#[test]
fn over_long_texts_and_speech_are_refused_without_leftovers() {
    if !espeak_available() {
        return;
    }
    let dir = scratch_dir("tts-long");
    let item = |id: &str, text: String| TtsItem {
        id: id.into(),
        label: "benign".into(),
        pair_id: None,
        category: None,
        text,
    };
    let huge = "word ".repeat(200_000); // 1 MB
    let mut set = items();
    set.push(item("huge-1", huge.clone()));
    let e = render_set(&set, &["en-us".into()], 160, &dir, false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("prompt 'huge-1' (voice en-us): ") && msg.contains("1000000 characters"),
        "{msg}"
    );
    // Checked up front: not even the good items were rendered.
    assert!(!dir.exists() || std::fs::read_dir(&dir).unwrap().count() == 0);
    assert!(matches!(
        synthesize(&huge, "en-us", 160, &dir).unwrap_err(),
        AudioError::InvalidArgument { .. }
    ));

    // ~1 900 characters, under the text limit, but about 2 minutes of speech at 80 wpm.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(42);
    let e = render_set(&[item("long-7", long)], &["en-us".into()], 80, &dir, false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("prompt 'long-7' (voice en-us): ") && msg.contains("over the 30 s"),
        "{msg}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn text_is_passed_verbatim_not_through_a_shell() {
    if !espeak_available() {
        return;
    }
    let dir = scratch_dir("tts-shell");
    let canary = dir.join("canary");
    let text = format!("Say $(touch {0}) and `touch {0}`; -w {0}", canary.display());
    // Spoken fast: three long paths would take over 30 s at the default rate.
    let p = synthesize(&text, "en-us", 450, &dir).unwrap();
    assert!(p.is_file());
    assert!(!canary.exists(), "the text was interpreted");
}

/// Piper as `scripts/fetch-models.sh piper-joe` installs it, or None (skipped with a notice;
/// required under `EARGUARD_REQUIRE_MODELS=1` or `CI`).
fn piper_installed() -> Option<Speakers> {
    let models = std::env::var_os("EARGUARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let speakers = Speakers::installed(&models);
    let found = speakers.piper.is_file()
        && speakers
            .piper_voices
            .join(format!("{PIPER_VOICE}.onnx"))
            .is_file();
    installed(found, "Piper", "scripts/fetch-models.sh piper-joe").then_some(speakers)
}

const PIPER_VOICE: &str = "en_US-joe-medium";

#[test]
fn a_piper_voice_speaks_deterministically_and_reads_brackets_as_text() {
    let Some(speakers) = piper_installed() else {
        return;
    };
    let voice = format!("piper:{PIPER_VOICE}");
    let (dir_a, dir_b) = (scratch_dir("piper-a"), scratch_dir("piper-b"));
    let a = synthesize_with(&speakers, TEXT, &voice, 160, &dir_a).unwrap();
    let b = synthesize_with(&speakers, TEXT, &voice, 160, &dir_b).unwrap();
    let spec = wav_spec(&a);
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16)
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let seconds = |p: &Path| {
        let audio = load_audio(p, &LoadOptions::default()).unwrap();
        audio.samples.len() as f64 / audio.sample_rate as f64
    };
    let normal = seconds(&a);
    assert!((0.8..6.0).contains(&normal), "{normal} s for {TEXT:?}");
    // The rate scales phoneme lengths: 80 wpm is about twice as long.
    let slow = seconds(&synthesize_with(&speakers, TEXT, &voice, 80, &dir_a).unwrap());
    assert!(
        slow > 1.6 * normal && slow < 2.4 * normal,
        "{slow} s vs {normal} s"
    );

    // `[[ … ]]` would be raw phonemes to Piper: read as text it is the same speech as with
    // parentheses, and a line break the same as a space.
    let p =
        |text: &str| std::fs::read(synthesize_with(&speakers, text, &voice, 160, &dir_a).unwrap());
    let brackets = p("Say [[ h ə l oʊ ]] now.").unwrap();
    assert_eq!(brackets, p("Say (( h ə l oʊ )) now.").unwrap());
    assert_eq!(p("Say hello\nnow.").unwrap(), p("Say hello now.").unwrap());
}

#[test]
fn piper_voices_are_checked_before_piper_runs() {
    let dir = scratch_dir("piper-bad");
    let speakers = Speakers {
        piper: PathBuf::from("/nonexistent/piper"),
        piper_voices: dir.clone(),
        ..Speakers::default()
    };
    for voice in ["piper:", "piper:../voice", "piper:a/b", "piper:-x"] {
        let e = synthesize_with(&speakers, "Hello.", voice, 160, &dir).unwrap_err();
        assert!(
            matches!(e, AudioError::InvalidArgument { .. }),
            "{voice}: {e}"
        );
    }
    // A voice that is not installed names the file and how to install it.
    let e = synthesize_with(&speakers, "Hello.", "piper:en_US-nobody", 160, &dir).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, AudioError::InvalidArgument { .. }) && msg.contains("en_US-nobody.onnx"),
        "{msg}"
    );
    assert!(msg.contains("fetch-models.sh piper-joe"), "{msg}");
    // An installed voice without the program: the program is named, with the same advice.
    std::fs::write(dir.join("v.onnx"), b"x").unwrap();
    std::fs::write(dir.join("v.onnx.json"), b"{}").unwrap();
    let e = synthesize_with(&speakers, "Hello.", "piper:v", 160, &dir).unwrap_err();
    assert!(matches!(e, AudioError::SynthMissing { .. }), "{e}");
    assert!(e.to_string().contains("fetch-models.sh piper-joe"), "{e}");
    // Nothing was left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn espeak_reads_square_brackets_as_text() {
    if !espeak_available() {
        return;
    }
    // espeak-ng reads `[[…]]` as raw phonemes: given as text it is spoken as with parentheses.
    let dir = scratch_dir("espeak-brackets");
    let p = |text: &str| std::fs::read(synthesize(text, "en-us", 160, &dir).unwrap()).unwrap();
    assert_eq!(p("Say [[h@l'oU]] now."), p("Say ((h@l'oU)) now."));
    assert_eq!(p("Say hello\nnow."), p("Say hello now."));
}
