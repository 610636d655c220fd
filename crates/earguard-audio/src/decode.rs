//! Stage 1: decode an audio file (or in-memory samples) to mono `f32` at 16 kHz.
//!
//! * WAV is read with `hound` (8/16/24/32-bit integer PCM, 32-bit IEEE float, plain or
//!   `WAVE_FORMAT_EXTENSIBLE`). WAV codecs hound does not handle (A-law, µ-law, 64-bit
//!   float) fall back to `symphonia`.
//! * FLAC, MP3 and Ogg/Vorbis are read with `symphonia`.
//! * The format is chosen from the file's leading bytes, not its extension.
//! * Channels are averaged to mono.
//! * Any other sample rate is converted with rubato's synchronous FFT resampler
//!   ([`rubato::Fft`], a fixed-ratio band-limited resampler with a Blackman-Harris
//!   anti-aliasing filter; its start-up delay is trimmed, so output sample `k` lines up
//!   with input time `k / 16000` s). The output has exactly `ceil(n * 16000 / rate)`
//!   samples.
//! * Decoding is gapless: MP3 encoder delay/padding (LAME tag) and Ogg/Vorbis end padding
//!   (last granule position) are trimmed, so decoded audio is as long as the original.
//! * A stream that ends before the length its header declares (WAV data size, FLAC
//!   STREAMINFO, MP3 Xing/Info frame count) is refused as [`AudioError::Corrupt`]
//!   (truncated file), never silently shortened.
//! * Audio longer than one 30 s Whisper window (480 000 samples at 16 kHz) is refused
//!   unless [`LoadOptions::truncate`] is set, in which case the first 30 s are kept.
//!
//! Every failure is an [`AudioError`] naming the file; nothing here panics on bad input.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::error::{AudioError, Result};

/// The sample rate of every [`Audio`]: Whisper's 16 kHz.
pub const SAMPLE_RATE: u32 = 16_000;
/// Length of one Whisper window in seconds.
pub const WINDOW_SECONDS: u32 = 30;
/// Length of one Whisper window in samples at [`SAMPLE_RATE`] (480 000).
pub const WINDOW_SAMPLES: usize = (SAMPLE_RATE * WINDOW_SECONDS) as usize;
/// Highest input sample rate accepted (Hz).
pub const MAX_INPUT_RATE: u32 = 1_000_000;
/// The pseudo-path that names in-memory audio in errors.
pub const MEMORY_SOURCE: &str = "<memory>";

/// Options for [`load_audio`] and [`from_samples_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep only the first 30 s of longer audio instead of refusing it.
    pub truncate: bool,
}

/// Mono audio at 16 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples, nominally in `[-1, 1]`, always finite.
    pub samples: Vec<f32>,
    /// Always [`SAMPLE_RATE`] (16 000) for audio made by this crate.
    pub sample_rate: u32,
    /// The file the audio came from, or `<memory>`.
    pub source: PathBuf,
}

impl Audio {
    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        if self.sample_rate == 0 {
            return 0.0;
        }
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// What to do with audio longer than one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Refuse it ([`AudioError::TooLong`]).
    Refuse,
    /// Keep the first window.
    Truncate,
}

impl Limit {
    fn of(opts: &LoadOptions) -> Self {
        if opts.truncate {
            Limit::Truncate
        } else {
            Limit::Refuse
        }
    }
}

/// Decode `path` to mono `f32` at 16 kHz. See the module docs for what is accepted.
pub fn load_audio(path: &Path, opts: &LoadOptions) -> Result<Audio> {
    load_with_limit(path, Limit::of(opts))
}

pub(crate) fn load_with_limit(path: &Path, limit: Limit) -> Result<Audio> {
    let decoded = decode_file(path, limit)?;
    finish(
        path,
        decoded.mono,
        decoded.rate,
        limit,
        decoded.total_frames,
    )
}

/// Wrap in-memory mono samples at `rate` Hz as [`Audio`] (resampled to 16 kHz), refusing
/// audio longer than 30 s. Errors name the source `<memory>`.
pub fn from_samples(samples: Vec<f32>, rate: u32) -> Result<Audio> {
    from_samples_with(samples, rate, &LoadOptions::default())
}

/// [`from_samples`] with explicit options (e.g. `truncate`).
pub fn from_samples_with(samples: Vec<f32>, rate: u32, opts: &LoadOptions) -> Result<Audio> {
    let path = Path::new(MEMORY_SOURCE);
    check_rate(path, rate)?;
    if let Some((index, value)) = samples
        .iter()
        .enumerate()
        .find(|(_, s)| !s.is_finite())
        .map(|(i, s)| (i, *s))
    {
        return Err(AudioError::NonFinite {
            path: path.to_path_buf(),
            index,
            channel: 0,
            value,
        });
    }
    let total = samples.len() as u64;
    let limit = Limit::of(opts);
    let samples = if limit == Limit::Truncate {
        let keep = input_frames_for_window(rate);
        let mut s = samples;
        s.truncate(keep);
        s
    } else {
        samples
    };
    finish(path, samples, rate, limit, total)
}

/// Resample mono `samples` from `from` Hz to `to` Hz with rubato's synchronous FFT
/// resampler (delay-compensated; output length `ceil(n * to / from)`).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    resample_named(Path::new(MEMORY_SOURCE), samples, from, to)
}

/// Write mono `samples` at `rate` Hz as a 16-bit PCM WAV, atomically (a temporary file in
/// the same directory, then a rename). Samples are scaled by 32768, rounded and clipped.
pub fn write_wav_pcm16(path: &Path, samples: &[f32], rate: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    earguard_data::atomic::write_with(path, |tmp| {
        let mut writer = hound::WavWriter::create(tmp, spec).map_err(hound_io)?;
        for &s in samples {
            let v = if s.is_finite() {
                (f64::from(s) * 32768.0).round().clamp(-32768.0, 32767.0) as i16
            } else {
                0
            };
            writer.write_sample(v).map_err(hound_io)?;
        }
        writer.finalize().map_err(hound_io)
    })
    .map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        action: "writing WAV",
        source,
    })
}

fn hound_io(e: hound::Error) -> std::io::Error {
    match e {
        hound::Error::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Shared tail: resample, length policy.

fn check_rate(path: &Path, rate: u32) -> Result<()> {
    if rate == 0 || rate > MAX_INPUT_RATE {
        return Err(AudioError::InvalidFormat {
            path: path.to_path_buf(),
            detail: format!("sample rate {rate} Hz is outside 1..={MAX_INPUT_RATE} Hz"),
        });
    }
    Ok(())
}

/// Number of 16 kHz samples that `frames` input frames at `rate` become.
fn output_len(frames: u64, rate: u32) -> u64 {
    (frames * u64::from(SAMPLE_RATE)).div_ceil(u64::from(rate))
}

/// How many input frames to keep when truncating to one window: enough for 30 s plus a
/// short margin so that the resampler's edge effects fall outside the kept window.
fn input_frames_for_window(rate: u32) -> usize {
    let exact = (WINDOW_SAMPLES as u64 * u64::from(rate)).div_ceil(u64::from(SAMPLE_RATE));
    (exact + u64::from(rate) / 10 + 64) as usize
}

fn too_long(path: &Path, total_frames: u64, rate: u32) -> AudioError {
    AudioError::TooLong {
        path: path.to_path_buf(),
        seconds: total_frames as f64 / f64::from(rate),
        max_seconds: WINDOW_SECONDS,
    }
}

fn finish(
    path: &Path,
    mono: Vec<f32>,
    rate: u32,
    limit: Limit,
    total_frames: u64,
) -> Result<Audio> {
    check_rate(path, rate)?;
    if total_frames == 0 || mono.is_empty() {
        return Err(AudioError::ZeroLength {
            path: path.to_path_buf(),
        });
    }
    if limit == Limit::Refuse && output_len(total_frames, rate) > WINDOW_SAMPLES as u64 {
        return Err(too_long(path, total_frames, rate));
    }
    let mut samples = if rate == SAMPLE_RATE {
        mono
    } else {
        resample_named(path, &mono, rate, SAMPLE_RATE)?
    };
    if samples.len() > WINDOW_SAMPLES {
        match limit {
            Limit::Truncate => samples.truncate(WINDOW_SAMPLES),
            Limit::Refuse => return Err(too_long(path, total_frames, rate)),
        }
    }
    Ok(Audio {
        samples,
        sample_rate: SAMPLE_RATE,
        source: path.to_path_buf(),
    })
}

fn resample_named(path: &Path, samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    use rubato::audioadapter_buffers::owned::InterleavedOwned;
    use rubato::{Fft, FixedSync, Resampler};

    check_rate(path, from)?;
    check_rate(path, to)?;
    if from == to {
        return Ok(samples.to_vec());
    }
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let err = |detail: String| AudioError::Resample {
        path: path.to_path_buf(),
        from,
        to,
        detail,
    };
    // ~2k-frame FFT blocks: a sharp anti-aliasing filter at modest cost. rubato's block is
    // k * (from / gcd) input frames; its filter is centred on input frame block / 2 and it
    // trims floor(out_block / 2) output frames of delay, which is exact only when both
    // block sizes are even. With an odd k the output was misaligned by up to ~0.7 output
    // samples (e.g. 11025 Hz, 12 kHz, 44.1 kHz, 48 kHz), so round k up to an even number.
    let (from_us, to_us) = (from as usize, to as usize);
    let min_in = from_us / gcd(from_us, to_us);
    let k = 2048usize.div_ceil(min_in).next_multiple_of(2);
    let mut resampler = Fft::<f64>::new(from_us, to_us, k * min_in, 1, FixedSync::Both)
        .map_err(|e| err(e.to_string()))?;
    let n = samples.len();
    let input: Vec<f64> = samples.iter().map(|&s| f64::from(s)).collect();
    let input = InterleavedOwned::new_from(input, 1, n).map_err(|e| err(e.to_string()))?;
    let out = resampler
        .process_all(&input, n, None)
        .map_err(|e| err(e.to_string()))?;
    let expected = output_len(n as u64, from) as usize;
    let data = out.take_data();
    let mut result: Vec<f32> = data.iter().map(|&s| s as f32).collect();
    // process_all returns ceil(n * ratio) frames; keep the contract explicit regardless.
    result.resize(expected, 0.0);
    Ok(result)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

// ---------------------------------------------------------------------------------------
// Container dispatch.

struct Decoded {
    /// Mono samples at `rate` (possibly only a prefix of the file when truncating).
    mono: Vec<f32>,
    rate: u32,
    /// Frames in the whole file (for length checks and messages).
    total_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wav,
    Flac,
    Mp3,
    Ogg,
}

fn decode_file(path: &Path, limit: Limit) -> Result<Decoded> {
    let io = |action: &'static str, source: std::io::Error| AudioError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| io("reading file metadata", e))?;
    if meta.is_dir() {
        return Err(AudioError::NotAudio {
            path: path.to_path_buf(),
            detail: "it is a directory".into(),
        });
    }
    let file_len = meta.len();
    if file_len == 0 {
        return Err(AudioError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let mut head = [0u8; 12];
    let got = {
        let mut f = File::open(path).map_err(|e| io("opening file", e))?;
        read_up_to(&mut f, &mut head).map_err(|e| io("reading file", e))?
    };
    let head = &head[..got];
    match sniff(head) {
        Some(Kind::Wav) => {
            if got < 12 {
                return Err(AudioError::BadHeader {
                    path: path.to_path_buf(),
                    format: "WAV",
                    detail: format!(
                        "file is only {file_len} bytes; a RIFF/WAVE header needs at least 44"
                    ),
                });
            }
            if &head[8..12] != b"WAVE" {
                return Err(AudioError::NotAudio {
                    path: path.to_path_buf(),
                    detail: format!(
                        "RIFF container of type {:?}, not WAVE",
                        String::from_utf8_lossy(&head[8..12])
                    ),
                });
            }
            decode_wav(path, file_len, limit)
        }
        Some(kind) => decode_symphonia(path, kind, limit),
        None => Err(AudioError::NotAudio {
            path: path.to_path_buf(),
            detail: describe_head(head),
        }),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn sniff(head: &[u8]) -> Option<Kind> {
    if head.starts_with(b"RIFF") || head.starts_with(b"RIFX") || head.starts_with(b"RF64") {
        return Some(Kind::Wav);
    }
    if head.starts_with(b"fLaC") {
        return Some(Kind::Flac);
    }
    if head.starts_with(b"OggS") {
        return Some(Kind::Ogg);
    }
    if head.starts_with(b"ID3") {
        return Some(Kind::Mp3);
    }
    // MPEG audio frame sync: 11 set bits, layer bits not "reserved".
    if head.len() >= 2 && head[0] == 0xFF && (head[1] & 0xE0) == 0xE0 && (head[1] & 0x06) != 0 {
        return Some(Kind::Mp3);
    }
    None
}

fn describe_head(head: &[u8]) -> String {
    let printable = head
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n' || *b == b'\r' || *b == b'\t');
    if printable {
        format!(
            "it starts with text {:?}",
            String::from_utf8_lossy(head).trim_end()
        )
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("it starts with bytes {}", hex.join(" "))
    }
}

// ---------------------------------------------------------------------------------------
// WAV via hound.

fn decode_wav(path: &Path, file_len: u64, limit: Limit) -> Result<Decoded> {
    let io = |action: &'static str, source: std::io::Error| AudioError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    let file = File::open(path).map_err(|e| io("opening file", e))?;
    let reader = match hound::WavReader::new(BufReader::new(file)) {
        Ok(r) => r,
        Err(hound::Error::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
            return Err(AudioError::BadHeader {
                path: path.to_path_buf(),
                format: "WAV",
                detail: format!("the file ({file_len} bytes) ends before the header is complete"),
            });
        }
        Err(hound::Error::IoError(e)) if e.raw_os_error().is_none() => {
            // hound reports a header that ends early as a plain (non-OS) I/O error.
            return Err(AudioError::BadHeader {
                path: path.to_path_buf(),
                format: "WAV",
                detail: format!(
                    "the file ({file_len} bytes) ends before the header is complete ({e})"
                ),
            });
        }
        Err(hound::Error::IoError(e)) => return Err(io("reading WAV header", e)),
        Err(hound::Error::Unsupported) => {
            // A codec hound does not decode (A-law, µ-law, ...): symphonia may.
            let tag = wav_format_tag(path);
            // Its errors about the codec are reported with the WAV format tag; errors
            // about the data (truncated, non-finite, too long) stand as they are.
            return decode_symphonia(path, Kind::Wav, limit).map_err(|e| match e {
                AudioError::UnsupportedCodec { .. } | AudioError::NotAudio { .. } => {
                    AudioError::UnsupportedCodec {
                        path: path.to_path_buf(),
                        detail: describe_wav_tag(tag),
                    }
                }
                other => other,
            });
        }
        Err(hound::Error::FormatError(msg)) => {
            // Some of these (e.g. 64-bit float) are still decodable by symphonia. Others
            // are compressed codecs (ADPCM, GSM, ...) whose fmt chunk hound calls
            // inconsistent: those are unsupported codecs, not broken headers.
            let tag = wav_format_tag(path);
            return decode_symphonia(path, Kind::Wav, limit).map_err(|e| match e {
                AudioError::TooLong { .. }
                | AudioError::NonFinite { .. }
                | AudioError::ZeroLength { .. }
                | AudioError::InvalidFormat { .. }
                | AudioError::Io { .. } => e,
                _ if tag.is_some_and(is_compressed_wav_tag) => AudioError::UnsupportedCodec {
                    path: path.to_path_buf(),
                    detail: describe_wav_tag(tag),
                },
                _ => AudioError::BadHeader {
                    path: path.to_path_buf(),
                    format: "WAV",
                    detail: msg.to_string(),
                },
            });
        }
        Err(e) => {
            return Err(AudioError::BadHeader {
                path: path.to_path_buf(),
                format: "WAV",
                detail: e.to_string(),
            })
        }
    };
    let spec = reader.spec();
    check_rate(path, spec.sample_rate)?;
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(AudioError::InvalidFormat {
            path: path.to_path_buf(),
            detail: "zero channels".into(),
        });
    }
    let total_samples = u64::from(reader.len());
    let total_frames = total_samples / channels as u64;
    let min_bytes = total_samples * u64::from(spec.bits_per_sample).div_ceil(8);
    if min_bytes > file_len {
        return Err(AudioError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "the header declares {total_samples} samples ({min_bytes} bytes) but the file is only {file_len} bytes (truncated?)"
            ),
        });
    }
    if total_frames == 0 {
        return Err(AudioError::ZeroLength {
            path: path.to_path_buf(),
        });
    }
    if limit == Limit::Refuse && output_len(total_frames, spec.sample_rate) > WINDOW_SAMPLES as u64
    {
        return Err(too_long(path, total_frames, spec.sample_rate));
    }
    let keep_frames = if limit == Limit::Truncate {
        total_frames.min(input_frames_for_window(spec.sample_rate) as u64)
    } else {
        total_frames
    } as usize;
    let keep_samples = keep_frames * channels;

    let mut mixer = Downmix::new(path, channels, keep_frames);
    let corrupt = |done: usize, e: hound::Error| match e {
        hound::Error::IoError(e)
            if e.kind() == ErrorKind::UnexpectedEof || e.raw_os_error().is_none() =>
        {
            AudioError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "the data ends after {done} of {total_samples} samples (truncated file)"
                ),
            }
        }
        hound::Error::IoError(e) => AudioError::Io {
            path: path.to_path_buf(),
            action: "reading samples",
            source: e,
        },
        other => AudioError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    };
    match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(AudioError::UnsupportedCodec {
                    path: path.to_path_buf(),
                    detail: format!("{}-bit float WAV", spec.bits_per_sample),
                });
            }
            let mut reader = reader;
            for (i, s) in reader.samples::<f32>().take(keep_samples).enumerate() {
                mixer.push(s.map_err(|e| corrupt(i, e))?)?;
            }
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(AudioError::UnsupportedCodec {
                    path: path.to_path_buf(),
                    detail: format!("{bits}-bit integer WAV"),
                });
            }
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            let mut reader = reader;
            for (i, s) in reader.samples::<i32>().take(keep_samples).enumerate() {
                let v = s.map_err(|e| corrupt(i, e))?;
                mixer.push((f64::from(v) * scale) as f32)?;
            }
        }
    }
    let mono = mixer.finish();
    Ok(Decoded {
        mono,
        rate: spec.sample_rate,
        total_frames,
    })
}

/// Reads the WAV `fmt ` chunk's format tag (best effort, for error messages).
fn wav_format_tag(path: &Path) -> Option<u16> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .ok()?;
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        if id == b"fmt " {
            let tag = bytes.get(pos + 8..pos + 10)?;
            return Some(u16::from_le_bytes([tag[0], tag[1]]));
        }
        pos = pos.checked_add(8 + size + (size & 1))?;
    }
    None
}

/// True for WAV format tags that name a codec other than plain PCM, IEEE float and
/// the extensible wrapper (whose sub-format decides).
fn is_compressed_wav_tag(tag: u16) -> bool {
    !matches!(tag, 0x0001 | 0x0003 | 0xFFFE)
}

fn describe_wav_tag(tag: Option<u16>) -> String {
    let supported =
        "supported WAV codecs: integer PCM (8/16/24/32-bit), 32-bit float, A-law, µ-law";
    match tag {
        Some(t) => {
            let name = match t {
                0x0002 => "Microsoft ADPCM",
                0x0006 => "A-law",
                0x0007 => "µ-law",
                0x0011 => "IMA ADPCM",
                0x0031 => "GSM 6.10",
                0x0050 => "MPEG",
                0x0055 => "MPEG layer 3",
                _ => "unknown",
            };
            format!("WAV format tag 0x{t:04x} ({name}) cannot be decoded; {supported}")
        }
        None => format!("WAV codec cannot be decoded; {supported}"),
    }
}

/// A readable name for a symphonia codec type (for error messages).
fn codec_name(codec: symphonia::core::codecs::CodecType) -> String {
    use symphonia::core::codecs as c;
    let name = match codec {
        c::CODEC_TYPE_OPUS => "Opus",
        c::CODEC_TYPE_SPEEX => "Speex",
        c::CODEC_TYPE_AAC => "AAC",
        c::CODEC_TYPE_ALAC => "ALAC",
        c::CODEC_TYPE_ADPCM_IMA_WAV => "IMA ADPCM",
        c::CODEC_TYPE_ADPCM_MS => "Microsoft ADPCM",
        c::CODEC_TYPE_VORBIS => "Vorbis",
        c::CODEC_TYPE_FLAC => "FLAC",
        c::CODEC_TYPE_MP3 => "MP3",
        _ => return format!("codec {codec}"),
    };
    name.to_string()
}

/// Averages interleaved channels into mono, refusing non-finite samples.
struct Downmix<'a> {
    path: &'a Path,
    channels: usize,
    acc: f64,
    ch: usize,
    frame: usize,
    out: Vec<f32>,
}

impl<'a> Downmix<'a> {
    fn new(path: &'a Path, channels: usize, capacity_hint: usize) -> Self {
        Downmix {
            path,
            channels: channels.max(1),
            acc: 0.0,
            ch: 0,
            frame: 0,
            // Cap the up-front reservation; the vector grows if needed.
            out: Vec::with_capacity(capacity_hint.min(4 * WINDOW_SAMPLES)),
        }
    }

    #[inline]
    fn push(&mut self, s: f32) -> Result<()> {
        if !s.is_finite() {
            return Err(AudioError::NonFinite {
                path: self.path.to_path_buf(),
                index: self.frame,
                channel: self.ch,
                value: s,
            });
        }
        if self.channels == 1 {
            self.out.push(s);
            self.frame += 1;
            return Ok(());
        }
        self.acc += f64::from(s);
        self.ch += 1;
        if self.ch == self.channels {
            self.out.push((self.acc / self.channels as f64) as f32);
            self.acc = 0.0;
            self.ch = 0;
            self.frame += 1;
        }
        Ok(())
    }

    fn finish(self) -> Vec<f32> {
        self.out
    }
}

// ---------------------------------------------------------------------------------------
// FLAC / MP3 / Ogg (and exotic WAV) via symphonia.

fn decode_symphonia(path: &Path, kind: Kind, limit: Limit) -> Result<Decoded> {
    use symphonia::core::audio::SampleBuffer;
    use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
    use symphonia::core::errors::Error as SymError;
    use symphonia::core::formats::FormatOptions;
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;
    use symphonia::core::probe::Hint;

    let format_name = match kind {
        Kind::Wav => "WAV",
        Kind::Flac => "FLAC",
        Kind::Mp3 => "MP3",
        Kind::Ogg => "Ogg",
    };
    let p = || path.to_path_buf();
    let file = File::open(path).map_err(|e| AudioError::Io {
        path: p(),
        action: "opening file",
        source: e,
    })?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(match kind {
        Kind::Wav => "wav",
        Kind::Flac => "flac",
        Kind::Mp3 => "mp3",
        Kind::Ogg => "ogg",
    });
    let sym_err = |stage: &str, e: SymError| match e {
        SymError::Unsupported(what) => AudioError::UnsupportedCodec {
            path: p(),
            detail: format!("{format_name}: {what}"),
        },
        SymError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => AudioError::BadHeader {
            path: p(),
            format: format_name,
            detail: format!("the file ends early (truncated?) while {stage}"),
        },
        SymError::IoError(e) => AudioError::Io {
            path: p(),
            action: "reading file",
            source: e,
        },
        other => AudioError::BadHeader {
            path: p(),
            format: format_name,
            detail: format!("{stage}: {other}"),
        },
    };
    // Gapless: trim encoder delay and padding (MP3 LAME tags, Ogg granule positions), so
    // decoded audio starts and ends where the original did.
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..FormatOptions::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| match e {
            // No reader accepts the bytes behind an MP3 signature (e.g. an ID3 tag followed
            // by no MPEG frames): not audio, rather than an unsupported codec.
            SymError::Unsupported(what) if kind == Kind::Mp3 => AudioError::NotAudio {
                path: p(),
                detail: format!("it starts like {format_name} but no {format_name} stream could be read ({what})"),
            },
            other => sym_err("reading the container header", other),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::NotAudio {
            path: p(),
            detail: format!("{format_name} container has no audio track"),
        })?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(what) => AudioError::UnsupportedCodec {
                path: p(),
                detail: format!(
                    "the {format_name} file holds {} audio, which cannot be decoded \
                     (supported: PCM/A-law/µ-law WAV, FLAC, MP3, Ogg/Vorbis; {what})",
                    codec_name(params.codec)
                ),
            },
            other => sym_err("opening the decoder", other),
        })?;

    let mut rate = params.sample_rate;
    if let Some(r) = rate {
        check_rate(path, r)?;
    }
    let declared_frames = params.n_frames;
    if let (Some(r), Some(n), Limit::Refuse) = (rate, declared_frames, limit) {
        if output_len(n, r) > WINDOW_SAMPLES as u64 {
            return Err(too_long(path, n, r));
        }
    }

    let mut mono: Vec<f32> = Vec::new();
    let mut frames_seen: u64 = 0;
    let mut keep_limit: Option<usize> = rate.map(input_frames_for_window);
    let mut sample_buf: Option<SampleBuffer<f32>> = None;
    let mut decode_errors = 0usize;
    let mut last_decode_error = String::new();
    // Whether the loop stopped at the end of the data (rather than at the truncation limit).
    let mut reached_end = true;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(SymError::DecodeError(what)) => {
                decode_errors += 1;
                last_decode_error = what.to_string();
                if decode_errors > 1000 {
                    break;
                }
                continue;
            }
            Err(e) => return Err(sym_err("reading packets", e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(what)) => {
                decode_errors += 1;
                last_decode_error = what.to_string();
                if decode_errors > 1000 {
                    break;
                }
                continue;
            }
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(sym_err("decoding", e)),
        };
        let spec = *decoded.spec();
        match rate {
            None => {
                check_rate(path, spec.rate)?;
                rate = Some(spec.rate);
                keep_limit = Some(input_frames_for_window(spec.rate));
            }
            Some(r) if r != spec.rate => {
                return Err(AudioError::InvalidFormat {
                    path: p(),
                    detail: format!(
                        "sample rate changes mid-stream ({r} Hz -> {} Hz)",
                        spec.rate
                    ),
                });
            }
            Some(_) => {}
        }
        let channels = spec.channels.count();
        if channels == 0 {
            return Err(AudioError::InvalidFormat {
                path: p(),
                detail: "zero channels".into(),
            });
        }
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let needed = decoded.capacity() as u64;
        let buf = match &mut sample_buf {
            Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
            _ => sample_buf.insert(SampleBuffer::<f32>::new(needed, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let samples = buf.samples();
        let keep = keep_limit.unwrap_or(usize::MAX);
        let already = mono.len();
        let frames_to_store = frames.min(keep.saturating_sub(already));
        let mut mixer = Downmix::new(path, channels, frames_to_store);
        mixer.frame = already;
        for &s in samples.iter().take(frames_to_store * channels) {
            mixer.push(s)?;
        }
        // Samples past the kept prefix are still checked for NaN/inf only when they are
        // kept; the rest is counted for the length check.
        mono.extend(mixer.finish());
        frames_seen += frames as u64;
        if limit == Limit::Truncate && mono.len() >= keep {
            // Length beyond the window is irrelevant when truncating.
            reached_end = false;
            break;
        }
        if limit == Limit::Refuse {
            if let Some(r) = rate {
                // Keep counting (without storing) to report the true length.
                if output_len(frames_seen, r) > WINDOW_SAMPLES as u64 {
                    keep_limit = Some(0);
                }
            }
        }
    }
    let Some(rate) = rate else {
        return Err(if decode_errors > 0 {
            AudioError::Corrupt {
                path: p(),
                detail: format!("no packet could be decoded ({last_decode_error})"),
            }
        } else {
            AudioError::ZeroLength { path: p() }
        });
    };
    if mono.is_empty() && decode_errors > 0 {
        return Err(AudioError::Corrupt {
            path: p(),
            detail: format!(
                "no packet could be decoded ({decode_errors} errors, last: {last_decode_error})"
            ),
        });
    }
    // A stream that ends well before the length its header declares was cut short (or lost
    // packets). FLAC's STREAMINFO and WAV's data size are exact; an MP3's length comes from
    // its Xing/VBRI tag or, failing that, an estimate from the bitrate, so allow slack there.
    if let (true, Some(declared)) = (reached_end, declared_frames) {
        let slack = match kind {
            // A LAME tag (delay/padding) comes with a Xing/Info frame count: exact, up to
            // how an encoder counts its last frame; allow one MPEG frame.
            Kind::Mp3 if params.delay.is_some() || params.padding.is_some() => 1152,
            Kind::Mp3 => (declared / 20).max(2 * 1152),
            Kind::Ogg | Kind::Flac | Kind::Wav => 0,
        };
        if frames_seen + slack < declared {
            return Err(AudioError::Corrupt {
                path: p(),
                detail: format!(
                    "the stream ends after {frames_seen} of the {declared} frames its header declares (truncated file{})",
                    if decode_errors > 0 {
                        format!(", or {decode_errors} undecodable packets; last: {last_decode_error}")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }
    // Ogg's last granule position, FLAC's STREAMINFO and WAV's data size give the exact
    // length: a final Vorbis packet decodes to more samples than the stream holds (symphonia
    // trims it only when it can see the previous page), so cut the padding off here. An
    // MP3's declared length may be a bitrate estimate, so it is never used to cut.
    if let (true, Some(declared)) = (reached_end, declared_frames) {
        if kind != Kind::Mp3 && frames_seen > declared {
            mono.truncate(usize::try_from(declared).unwrap_or(usize::MAX));
            frames_seen = declared;
        }
    }
    let total_frames = if limit == Limit::Truncate {
        declared_frames.unwrap_or(frames_seen).max(frames_seen)
    } else {
        frames_seen
    };
    Ok(Decoded {
        mono,
        rate,
        total_frames,
    })
}
