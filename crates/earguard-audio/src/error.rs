//! The crate's error type. Every variant names the file (or, for in-memory audio,
//! the pseudo-path `<memory>`) that the problem is about.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = AudioError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, featurising or rendering audio.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// An I/O error while reading or writing `path`.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{}: empty file (0 bytes), not audio", path.display())]
    EmptyFile { path: PathBuf },
    /// The container header ends early or is malformed.
    #[error("{}: truncated or malformed {format} header: {detail}", path.display())]
    BadHeader {
        path: PathBuf,
        format: &'static str,
        detail: String,
    },
    /// The bytes are not in any audio format we recognise.
    #[error("{}: not a WAV, FLAC, MP3 or Ogg/Vorbis audio file{}", path.display(), fmt_detail(detail))]
    NotAudio { path: PathBuf, detail: String },
    /// An audio container we recognise, holding a codec we cannot decode.
    #[error("{}: unsupported codec: {detail}", path.display())]
    UnsupportedCodec { path: PathBuf, detail: String },
    /// The sample data is corrupt or ends early.
    #[error("{}: corrupt or truncated audio data: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// A decoded sample is NaN or infinite.
    #[error("{}: sample {index} (channel {channel}) is {value}; audio must be finite", path.display())]
    NonFinite {
        path: PathBuf,
        index: usize,
        channel: usize,
        value: f32,
    },
    /// The file decodes to no samples at all.
    #[error("{}: audio has zero length (no samples)", path.display())]
    ZeroLength { path: PathBuf },
    /// The audio is longer than one Whisper window and truncation was not requested.
    #[error(
        "{}: audio is {seconds:.2} s long; the limit is one {max_seconds} s Whisper window \
         (shorten the recording, or truncate it to its first {max_seconds} s)",
        path.display()
    )]
    TooLong {
        path: PathBuf,
        seconds: f64,
        max_seconds: u32,
    },
    /// A sample rate or channel count we cannot work with.
    #[error("{}: invalid stream parameters: {detail}", path.display())]
    InvalidFormat { path: PathBuf, detail: String },
    /// The resampler failed.
    #[error("{}: resampling {from} Hz -> {to} Hz failed: {detail}", path.display())]
    Resample {
        path: PathBuf,
        from: u32,
        to: u32,
        detail: String,
    },
    /// Feature extraction was given audio it cannot featurise.
    #[error("{}: log-mel features: {detail}", path.display())]
    Features { path: PathBuf, detail: String },
    /// A speech synthesiser's program could not be started.
    #[error("{}: {engine} not found ({source}); {}", program.display(), engine.install_hint())]
    SynthMissing {
        engine: crate::tts::Engine,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A speech synthesiser ran but failed.
    #[error("{}: {engine} failed ({status}): {stderr}", path.display())]
    SynthFailed {
        engine: crate::tts::Engine,
        path: PathBuf,
        status: String,
        stderr: String,
    },
    /// A bad argument (voice name, speaking rate, ...) for the named output.
    #[error("{}: invalid argument: {detail}", path.display())]
    InvalidArgument { path: PathBuf, detail: String },
    /// Rendering one prompt of a set failed: names the prompt, not just the file.
    #[error("prompt '{id}' (voice {voice}): {source}")]
    Prompt {
        id: String,
        voice: String,
        #[source]
        source: Box<AudioError>,
    },
    /// A manifest line that cannot be read or written.
    #[error("{}:{line}: manifest: {detail}", path.display())]
    Manifest {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

fn fmt_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!("; {detail}")
    }
}

impl AudioError {
    /// `e`, tagged with the prompt (and voice) being rendered when it happened.
    pub fn in_prompt(id: &str, voice: &str, e: AudioError) -> AudioError {
        AudioError::Prompt {
            id: id.to_string(),
            voice: voice.to_string(),
            source: Box::new(e),
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            AudioError::Io { path, .. }
            | AudioError::EmptyFile { path }
            | AudioError::BadHeader { path, .. }
            | AudioError::NotAudio { path, .. }
            | AudioError::UnsupportedCodec { path, .. }
            | AudioError::Corrupt { path, .. }
            | AudioError::NonFinite { path, .. }
            | AudioError::ZeroLength { path }
            | AudioError::TooLong { path, .. }
            | AudioError::InvalidFormat { path, .. }
            | AudioError::Resample { path, .. }
            | AudioError::Features { path, .. }
            | AudioError::SynthFailed { path, .. }
            | AudioError::InvalidArgument { path, .. }
            | AudioError::Manifest { path, .. } => path,
            AudioError::SynthMissing { program, .. } => program,
            AudioError::Prompt { source, .. } => source.path(),
        }
    }
}
