//! Stage 4: offline speech with the `espeak-ng` program, or with a Piper neural voice.
//!
//! A voice name selects the synthesiser ([`Voice`]): `piper:NAME` is the Piper voice
//! `NAME.onnx` (a VITS model trained on one person's recordings, run by the `piper` program of
//! the `piper-tts` package; `scripts/fetch-models.sh piper-joe` installs both), any other name
//! an espeak-ng voice (formant synthesis: robotic, and harder for recognisers trained on
//! people). [`synthesize`] runs `espeak-ng -v VOICE -s RATE -w TMP.wav --stdin`, or
//! `piper -m NAME.onnx -c NAME.onnx.json --noise-scale 0 --noise-w-scale 0 -f TMP.wav` (with
//! `--length-scale 160/RATE` at other rates than 160),
//! feeding the text on standard input (never through a shell, never as an argument), decodes
//! the 22 050 Hz output, resamples it to 16 kHz mono and writes a 16-bit PCM WAV named
//! `<sha256>.wav`, where the hash covers ([`TTS_FORMAT_VERSION`], voice, rate, text). Both
//! outputs are byte-identical run to run (Piper's sampling noise is off: with it every render
//! differs) and the resampler is deterministic, so renders are reproducible and an existing
//! file is reused as a cache hit. Files are written atomically (temporary file, then rename),
//! so a cache entry is never partial.
//!
//! Text stays text: both programs read `[[ … ]]` as raw phonemes, so square brackets (never
//! spoken) reach them as parentheses, and line breaks as spaces (one utterance per text).
//!
//! The cache key does not include the synthesiser's version or a Piper voice's file: clear the
//! output directory after upgrading either if bit-exact renders matter.
//!
//! Texts over [`MAX_TEXT_CHARS`] characters and renders longer than the 30 s the audio modes
//! accept are refused, and the synthesiser's temporary file is removed on every path.
//!
//! [`render_set`] checks every item first, then renders many items × voices with a progress
//! bar and returns [`ManifestRow`]s (with several voices, one item `ID@VOICE` per rendering;
//! errors name the prompt id and voice); [`write_manifest`] stores them as JSONL with audio paths relative to
//! the manifest's directory, and [`read_manifest`] reads them back.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::{self, Limit, SAMPLE_RATE, WINDOW_SECONDS};
use crate::error::{AudioError, Result};

/// Bumped whenever the rendering pipeline changes in a way that changes output bytes.
pub const TTS_FORMAT_VERSION: &str = "earguard-tts-v3";
/// Default espeak-ng voice.
pub const DEFAULT_VOICE: &str = "en-us";
/// Default speaking rate in words per minute.
pub const DEFAULT_RATE_WPM: u32 = 160;
/// The program run by default.
pub const DEFAULT_PROGRAM: &str = "espeak-ng";
/// Speaking rates espeak-ng accepts (words per minute).
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 80..=450;
/// The longest text rendered, in characters. Even at the fastest rate (450 wpm) 30 s of
/// speech holds about 225 words, some 1 500 characters; longer texts can only give audio the
/// audio modes refuse, so they are refused before espeak-ng runs (which would otherwise write
/// a temporary file of ~350 bytes per character).
pub const MAX_TEXT_CHARS: usize = 4_000;

/// Which program speaks a voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Espeak,
    Piper,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Espeak => "espeak-ng",
            Engine::Piper => "piper",
        })
    }
}

impl Engine {
    /// How to install the program.
    pub fn install_hint(self) -> &'static str {
        match self {
            Engine::Espeak => {
                "install it: `apt-get install -y espeak-ng` (Debian/Ubuntu), `dnf install \
                 espeak-ng` (Fedora) or `brew install espeak-ng` (macOS)"
            }
            Engine::Piper => {
                "install it with its voice: `scripts/fetch-models.sh piper-joe` (into the models \
                 directory's piper/; run it again if that directory moved, as a venv cannot \
                 move), or put a `piper` program (the piper-tts package) on PATH"
            }
        }
    }
}

/// The prefix of a Piper voice's name.
pub const PIPER_PREFIX: &str = "piper:";

/// A voice name, read: `piper:NAME` a Piper voice, anything else an espeak-ng voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice<'a> {
    Espeak(&'a str),
    Piper(&'a str),
}

impl<'a> Voice<'a> {
    pub fn parse(name: &'a str) -> Self {
        match name.strip_prefix(PIPER_PREFIX) {
            Some(piper) => Voice::Piper(piper),
            None => Voice::Espeak(name),
        }
    }

    pub fn engine(self) -> Engine {
        match self {
            Voice::Espeak(_) => Engine::Espeak,
            Voice::Piper(_) => Engine::Piper,
        }
    }
}

/// The programs that speak, and where Piper's voices are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speakers {
    /// The espeak-ng program (a name looked up on `PATH`, or a path).
    pub espeak: PathBuf,
    /// The piper program.
    pub piper: PathBuf,
    /// The directory holding Piper voices (`NAME.onnx` and `NAME.onnx.json`).
    pub piper_voices: PathBuf,
}

impl Default for Speakers {
    /// espeak-ng and piper on `PATH`, Piper voices in `./models/piper`.
    fn default() -> Self {
        Speakers {
            espeak: PathBuf::from(DEFAULT_PROGRAM),
            piper: PathBuf::from("piper"),
            piper_voices: PathBuf::from("models").join("piper"),
        }
    }
}

impl Speakers {
    /// espeak-ng on `PATH`, and Piper as `scripts/fetch-models.sh piper-joe` installs it in
    /// `models_dir` (`piper/venv/bin/piper`, else a `piper` on `PATH`; voices in `piper/`).
    pub fn installed(models_dir: &Path) -> Self {
        let dir = models_dir.join("piper");
        let venv = dir.join("venv").join("bin").join("piper");
        Speakers {
            espeak: PathBuf::from(DEFAULT_PROGRAM),
            piper: if venv.is_file() {
                venv
            } else {
                PathBuf::from("piper")
            },
            piper_voices: dir,
        }
    }

    /// Only espeak-ng, as `program`.
    pub fn with_espeak(program: &Path) -> Self {
        Speakers {
            espeak: program.to_path_buf(),
            ..Speakers::default()
        }
    }
}

/// Settings for rendering speech.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtsOptions {
    /// Voice, e.g. `en-us`, `en-gb`, `en-us+f3` (espeak-ng) or `piper:en_US-joe-medium`.
    pub voice: String,
    /// Speaking rate in words per minute (80–450; a Piper voice speaks at its own pace at
    /// [`DEFAULT_RATE_WPM`], with phoneme lengths scaled by 160/rate otherwise).
    pub rate_wpm: u32,
    /// Where rendered WAVs go (created if missing).
    pub out_dir: PathBuf,
    /// The programs that speak.
    pub speakers: Speakers,
}

impl Default for TtsOptions {
    fn default() -> Self {
        TtsOptions {
            voice: DEFAULT_VOICE.to_string(),
            rate_wpm: DEFAULT_RATE_WPM,
            out_dir: PathBuf::from("tts"),
            speakers: Speakers::default(),
        }
    }
}

impl TtsOptions {
    /// Render `text` with these options; see [`synthesize`].
    pub fn synthesize(&self, text: &str) -> Result<PathBuf> {
        synthesize_with(
            &self.speakers,
            text,
            &self.voice,
            self.rate_wpm,
            &self.out_dir,
        )
    }
}

/// One prompt to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtsItem {
    pub id: String,
    /// `harmful` or `benign` (kept as text so this crate does not depend on the data crate).
    pub label: String,
    pub pair_id: Option<String>,
    pub category: Option<String>,
    pub text: String,
}

/// One rendered (item, voice): a manifest line.
///
/// With one voice `id` is the item's id; with several, each rendering is its own item
/// `ID@VOICE` (ids stay unique, as prompt sets require), keeping the item's `pair_id`. Either
/// way `source_id` is the item's id and `voice` the voice. In memory `audio` is the path as
/// rendered; in a manifest file it is relative to the manifest's directory
/// ([`read_manifest`] resolves it back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRow {
    pub id: String,
    /// The id of the prompt this row renders (absent in manifests of earlier versions).
    #[serde(default)]
    pub source_id: Option<String>,
    pub label: String,
    pub pair_id: Option<String>,
    pub category: Option<String>,
    pub text: String,
    pub voice: String,
    pub rate: u32,
    pub audio: PathBuf,
}

/// The cache key (lower-case hex SHA-256) of a render.
pub fn cache_key(text: &str, voice: &str, rate_wpm: u32) -> String {
    let mut h = Sha256::new();
    let rate = rate_wpm.to_string();
    for field in [TTS_FORMAT_VERSION, voice, rate.as_str(), text] {
        // Length-prefixed, so no choice of fields can collide with another.
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    earguard_data::hex(&h.finalize())
}

/// Render `text` with its voice's synthesiser ([`Speakers::default`]) to
/// `out_dir/<cache_key>.wav` (16 kHz mono 16-bit PCM) and return its path. An existing render
/// is reused.
pub fn synthesize(text: &str, voice: &str, rate_wpm: u32, out_dir: &Path) -> Result<PathBuf> {
    synthesize_with(&Speakers::default(), text, voice, rate_wpm, out_dir)
}

fn validate(text: &str, voice: &str, rate_wpm: u32, out: &Path) -> Result<()> {
    let bad = |detail: String| {
        Err(AudioError::InvalidArgument {
            path: out.to_path_buf(),
            detail,
        })
    };
    if text.trim().is_empty() {
        return bad("text to speak is empty".into());
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return bad(format!(
            "text is {chars} characters long, over the limit of {MAX_TEXT_CHARS}: its speech \
             would be far longer than the {WINDOW_SECONDS} s the audio modes accept"
        ));
    }
    if text.contains('\0') {
        return bad("text contains a NUL character".into());
    }
    let name_ok = |name: &str, extra: &str| {
        !name.is_empty()
            && name.len() <= 64
            && !name.starts_with(['-', '.'])
            && !name.contains("..")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    match Voice::parse(voice) {
        Voice::Espeak(name) if !name_ok(name, "-_+./") => {
            return bad(format!(
                "voice {voice:?} is not a valid espeak-ng voice name (letters, digits, - _ + . /)"
            ))
        }
        Voice::Piper(name) if !name_ok(name, "-_.") => {
            return bad(format!(
                "voice {voice:?} is not a valid Piper voice: {PIPER_PREFIX}NAME, NAME a voice \
                 file's stem (letters, digits, - _ .), e.g. piper:en_US-joe-medium"
            ))
        }
        _ => {}
    }
    if !RATE_RANGE.contains(&rate_wpm) {
        return bad(format!(
            "speaking rate {rate_wpm} wpm is outside {}..={} wpm",
            RATE_RANGE.start(),
            RATE_RANGE.end()
        ));
    }
    Ok(())
}

/// [`synthesize`] with explicit programs.
pub fn synthesize_with(
    speakers: &Speakers,
    text: &str,
    voice: &str,
    rate_wpm: u32,
    out_dir: &Path,
) -> Result<PathBuf> {
    let key = cache_key(text, voice, rate_wpm);
    let out = out_dir.join(format!("{key}.wav"));
    validate(text, voice, rate_wpm, &out)?;
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| AudioError::Io {
        path: out_dir.to_path_buf(),
        action: "creating output directory",
        source: e,
    })?;
    let raw = out_dir.join(format!(".{key}.tts-{}.wav", std::process::id()));
    // Whatever happens, the synthesiser's temporary file goes.
    let result = render_raw(speakers, text, voice, rate_wpm, &raw, &out).and_then(|()| {
        let audio = decode::load_with_limit(&raw, Limit::Refuse).map_err(|e| match e {
            AudioError::TooLong { seconds, .. } => AudioError::InvalidArgument {
                path: out.clone(),
                detail: format!(
                    "the speech is {seconds:.1} s long, over the {WINDOW_SECONDS} s the audio \
                     modes accept; shorten the text or speak faster (rate {rate_wpm} wpm now, \
                     at most {})",
                    RATE_RANGE.end()
                ),
            },
            other => other,
        })?;
        debug_assert_eq!(audio.sample_rate, SAMPLE_RATE);
        decode::write_wav_pcm16(&out, &audio.samples, SAMPLE_RATE)
    });
    let _ = std::fs::remove_file(&raw);
    result.map(|()| out)
}

fn render_raw(
    speakers: &Speakers,
    text: &str,
    voice: &str,
    rate_wpm: u32,
    raw: &Path,
    out: &Path,
) -> Result<()> {
    let voice = Voice::parse(voice);
    let engine = voice.engine();
    let mut command = match voice {
        Voice::Espeak(name) => {
            let mut c = Command::new(&speakers.espeak);
            c.arg("-v")
                .arg(name)
                .arg("-s")
                .arg(rate_wpm.to_string())
                .arg("-w")
                .arg(raw)
                .arg("--stdin");
            c
        }
        Voice::Piper(name) => {
            let model = speakers.piper_voices.join(format!("{name}.onnx"));
            let config = speakers.piper_voices.join(format!("{name}.onnx.json"));
            if !model.is_file() || !config.is_file() {
                return Err(AudioError::InvalidArgument {
                    path: out.to_path_buf(),
                    detail: format!(
                        "Piper voice {name}: {} or its .json not found; {}",
                        model.display(),
                        Engine::Piper.install_hint()
                    ),
                });
            }
            let mut c = Command::new(&speakers.piper);
            c.arg("-m")
                .arg(&model)
                .arg("-c")
                .arg(&config)
                .args(["--noise-scale", "0", "--noise-w-scale", "0"])
                .arg("-f")
                .arg(raw)
                // Piper reads standard input in the locale's encoding otherwise.
                .env("PYTHONUTF8", "1");
            if rate_wpm != DEFAULT_RATE_WPM {
                c.arg("--length-scale")
                    .arg(format!("{}", DEFAULT_RATE_WPM as f32 / rate_wpm as f32));
            }
            c
        }
    };
    let text = plain_text(text);
    let program = PathBuf::from(command.get_program());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AudioError::SynthMissing {
            engine,
            program,
            source: e,
        })?;
    // Feed the text from a separate thread so a chatty stderr cannot deadlock us.
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some(mut stdin) = stdin {
            stdin.write_all(text.as_bytes())?;
            stdin.write_all(b"\n")?;
        }
        Ok(())
    });
    let output = child.wait_with_output().map_err(|e| AudioError::Io {
        path: out.to_path_buf(),
        action: "waiting for the speech synthesiser",
        source: e,
    })?;
    let write_result = writer.join();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        return Err(AudioError::SynthFailed {
            engine,
            path: out.to_path_buf(),
            status: output.status.to_string(),
            stderr: if stderr.is_empty() {
                "(no message)".into()
            } else {
                stderr
            },
        });
    }
    if let Ok(Err(e)) = write_result {
        return Err(AudioError::Io {
            path: out.to_path_buf(),
            action: "sending text to the speech synthesiser",
            source: e,
        });
    }
    if !raw.is_file() {
        return Err(AudioError::SynthFailed {
            engine,
            path: out.to_path_buf(),
            status: output.status.to_string(),
            stderr: format!("{engine} wrote no WAV file. {stderr}"),
        });
    }
    Ok(())
}

/// `text` as a synthesiser gets it: one line, and no `[[`, which espeak-ng and Piper read as
/// the start of raw phonemes (square brackets are not spoken; parentheses read the same).
fn plain_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '[' => '(',
            ']' => ')',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// The installed espeak-ng's version line (e.g. for provenance in reports).
pub fn espeak_version(program: &Path) -> Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| AudioError::SynthMissing {
            engine: Engine::Espeak,
            program: program.to_path_buf(),
            source: e,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Render every item with every voice into `out_dir` (cached renders are reused) and
/// return one [`ManifestRow`] per (item, voice), items in order, voices in order within
/// an item. `progress` shows an indicatif bar on stderr.
pub fn render_set(
    items: &[TtsItem],
    voices: &[String],
    rate_wpm: u32,
    out_dir: &Path,
    progress: bool,
) -> Result<Vec<ManifestRow>> {
    render_set_with(
        &Speakers::default(),
        items,
        voices,
        rate_wpm,
        out_dir,
        progress,
    )
}

/// [`render_set`] with explicit programs.
pub fn render_set_with(
    speakers: &Speakers,
    items: &[TtsItem],
    voices: &[String],
    rate_wpm: u32,
    out_dir: &Path,
    progress: bool,
) -> Result<Vec<ManifestRow>> {
    let invalid = |detail: String| AudioError::InvalidArgument {
        path: out_dir.to_path_buf(),
        detail,
    };
    if voices.is_empty() {
        return Err(invalid("no voices given".into()));
    }
    if let Some((i, v)) = voices
        .iter()
        .enumerate()
        .find(|(i, v)| voices[..*i].contains(v))
    {
        return Err(invalid(format!(
            "voice '{v}' is given twice (voice {} and {})",
            voices.iter().position(|w| w == v).map_or(0, |p| p + 1),
            i + 1
        )));
    }
    // Every item is checked before anything is rendered: a bad item found after an hour of
    // synthesis would waste it.
    for item in items {
        for voice in voices {
            validate(&item.text, voice, rate_wpm, out_dir)
                .map_err(|e| AudioError::in_prompt(&item.id, voice, e))?;
        }
    }
    let total = (items.len() * voices.len()) as u64;
    let bar = earguard_data::progress::bar(progress.then_some("tts"), "renders", total);
    let mut rows = Vec::with_capacity(items.len() * voices.len());
    for item in items {
        for voice in voices {
            bar.set_message(format!("{} ({voice})", item.id));
            let audio = synthesize_with(speakers, &item.text, voice, rate_wpm, out_dir)
                .map_err(|e| AudioError::in_prompt(&item.id, voice, e))?;
            rows.push(ManifestRow {
                id: if voices.len() > 1 {
                    format!("{}@{voice}", item.id)
                } else {
                    item.id.clone()
                },
                source_id: Some(item.id.clone()),
                label: item.label.clone(),
                pair_id: item.pair_id.clone(),
                category: item.category.clone(),
                text: item.text.clone(),
                voice: voice.clone(),
                rate: rate_wpm,
                audio,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// Lexically normalised absolute form of `p` (no symlink resolution).
fn absolute_clean(p: &Path) -> std::io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

/// `target` relative to directory `base` (both made absolute first); falls back to the
/// absolute target when no relative path exists (e.g. different Windows drives).
fn relative_to(target: &Path, base: &Path) -> std::io::Result<PathBuf> {
    let t = absolute_clean(target)?;
    let b = absolute_clean(base)?;
    let tc: Vec<Component> = t.components().collect();
    let bc: Vec<Component> = b.components().collect();
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return Ok(t);
    }
    let mut rel = PathBuf::new();
    for _ in common..bc.len() {
        rel.push("..");
    }
    for c in &tc[common..] {
        rel.push(c.as_os_str());
    }
    Ok(rel)
}

fn manifest_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write `rows` as JSONL to `path` (atomically), with each `audio` path rewritten relative
/// to the manifest's directory. Creates the parent directory if needed.
pub fn write_manifest(path: &Path, rows: &[ManifestRow]) -> Result<()> {
    let dir = manifest_dir(path);
    let io = |action: &'static str, source: std::io::Error| AudioError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("creating manifest directory", e))?;
    let mut text = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut row = row.clone();
        row.audio = relative_to(&row.audio, &dir).map_err(|e| io("resolving audio path", e))?;
        let line = serde_json::to_string(&row).map_err(|e| AudioError::Manifest {
            path: path.to_path_buf(),
            line: i + 1,
            detail: e.to_string(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    earguard_data::atomic::write(path, text.as_bytes()).map_err(|e| io("writing manifest", e))
}

/// Read a manifest written by [`write_manifest`]; `audio` paths are resolved against the
/// manifest's directory. Blank lines are skipped; errors give `file:line`.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| AudioError::Io {
        path: path.to_path_buf(),
        action: "reading manifest",
        source: e,
    })?;
    let dir = manifest_dir(path);
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut row: ManifestRow =
            serde_json::from_str(line).map_err(|e| AudioError::Manifest {
                path: path.to_path_buf(),
                line: i + 1,
                detail: e.to_string(),
            })?;
        if row.audio.is_relative() {
            row.audio = dir.join(&row.audio);
        }
        rows.push(row);
    }
    Ok(rows)
}
