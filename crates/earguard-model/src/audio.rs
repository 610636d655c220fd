//! The encoded-audio stage: each clip a run refers to is decoded (16 kHz mono, at most one 30 s
//! window), featurised (Whisper log-mel) and run through the audio tower once, and its projected
//! rows are reused by every prompt that names it (samples, a suffix contrast, the pre-check).
//!
//! Clips are keyed by the sha256 of the file's bytes plus everything else that shapes the
//! rows (the model and its mel bins), never by path alone: a file rewritten mid-run is encoded
//! again. A run uses one [`AudioCache`], and runs over the same prompts may share it (the modes
//! of a demo, the points of a sweep); it keeps the rows of recently used clips within a memory
//! budget (least recently used first out) and the token count of every clip it has seen.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::content::AudioRef;
use crate::error::{ModelError, Result};
use crate::qwen2_audio::{n_audio_tokens, AudioTower};
use crate::speech::SpeechTower;

/// What turns a clip's log-mel into the rows that take the place of its placeholder tokens.
// A model holds one front end, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AudioFrontEnd {
    /// Qwen2-Audio: Whisper-style encoder, pooling and projector; rows replace `<|AUDIO|>`.
    Qwen2Audio(AudioTower),
    /// A text LLM with a speech head (see [`crate::speech`]): pseudo-audio embeddings.
    Speech(SpeechTower),
}

impl AudioFrontEnd {
    pub fn n_mels(&self) -> usize {
        match self {
            AudioFrontEnd::Qwen2Audio(t) => t.n_mels(),
            AudioFrontEnd::Speech(t) => t.n_mels(),
        }
    }

    /// Rows `[n, hidden]` of one clip's padded log-mel `[n_mels, 3000]`.
    pub fn encode(&self, features: &Tensor, valid_frames: usize) -> Result<Tensor> {
        match self {
            AudioFrontEnd::Qwen2Audio(t) => t.encode(features, valid_frames),
            AudioFrontEnd::Speech(t) => t.encode(features, valid_frames),
        }
    }

    /// Rows of a corrupted copy of a clip (`noised`, the same length as `clean`) that keep the
    /// clean clip's row count, so a contrast between the two can share token ids. Qwen2-Audio's
    /// count is fixed by the length already; a speech head's depends on what it hears, so its
    /// noised posteriors are pooled over the clean clip's segments (see
    /// [`SpeechTower::encode_on_segments_of`]).
    pub fn encode_companion(
        &self,
        clean: &Tensor,
        noised: &Tensor,
        valid_frames: usize,
    ) -> Result<Tensor> {
        match self {
            AudioFrontEnd::Qwen2Audio(t) => t.encode(noised, valid_frames),
            AudioFrontEnd::Speech(t) => t.encode_on_segments_of(clean, noised, valid_frames),
        }
    }

    /// How many rows a clip of `valid_frames` mel frames gives, when that is known without
    /// encoding it (Qwen2-Audio: fixed by the length; a speech head: by what it hears).
    fn rows_for(&self, valid_frames: usize) -> Option<usize> {
        match self {
            AudioFrontEnd::Qwen2Audio(_) => Some(n_audio_tokens(valid_frames)),
            AudioFrontEnd::Speech(_) => None,
        }
    }
}

/// Default memory budget for cached audio rows: 1 GiB (a 30 s clip of a 7B Qwen2-Audio model
/// is 750 × 4096 f32 rows, 12 MiB).
pub const DEFAULT_BUDGET_BYTES: usize = 1 << 30;

/// What identifies a clip's encoding: its bytes and the model settings that shape its rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    sha256: [u8; 32],
    model: String,
    n_mels: usize,
    /// The cache's waveform noise, as (SNR bits, seed).
    noise: Option<(u32, u64)>,
}

/// Seeded Gaussian noise added to every clip's waveform at a signal-to-noise ratio before the
/// log-mel (SafeCoDe's corrupted audio). Each clip's stream is drawn from `seed` and the clip's
/// bytes, so two clips never share a noise pattern and a clip's noise does not depend on the
/// order it is met in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaveformNoise {
    pub snr_db: f32,
    pub seed: u64,
}

#[derive(Default)]
struct Entries {
    /// Encoded rows `[n_audio_tokens, hidden]` and when each was last used.
    rows: HashMap<Key, (Tensor, u64)>,
    /// `<|AUDIO|>` token count of every clip seen (tiny; never evicted).
    n_tokens: HashMap<Key, usize>,
    bytes: usize,
    clock: u64,
}

/// A cache of encoded audio clips, for one run or several. Shared by reference; safe across
/// threads.
pub struct AudioCache {
    entries: Mutex<Entries>,
    budget: usize,
    encoded: AtomicUsize,
    noise: Option<WaveformNoise>,
}

impl Default for AudioCache {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioCache {
    /// A cache with the default memory budget ([`DEFAULT_BUDGET_BYTES`]).
    pub fn new() -> Self {
        Self::with_budget(DEFAULT_BUDGET_BYTES)
    }

    /// A cache that keeps at most `bytes` of encoded rows (at least the clip in use).
    pub fn with_budget(bytes: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            budget: bytes,
            encoded: AtomicUsize::new(0),
            noise: None,
        }
    }

    /// A cache (default budget) whose clips are encoded with `noise` on their waveform.
    pub fn with_waveform_noise(noise: WaveformNoise) -> Result<Self> {
        if !noise.snr_db.is_finite() {
            return Err(ModelError::Invalid(format!(
                "the noise SNR must be a finite number of dB, got {}",
                noise.snr_db
            )));
        }
        Ok(Self {
            noise: Some(noise),
            ..Self::new()
        })
    }

    /// How many clips this cache has run through an audio tower (its misses).
    pub fn encoded(&self) -> usize {
        self.encoded.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rows `[n, hidden]` of `clip`, encoded by `tower` on first use.
    pub(crate) fn rows(
        &self,
        model: &str,
        tower: &AudioFrontEnd,
        device: &Device,
        clip: &AudioRef,
    ) -> Result<Tensor> {
        let key = self.key(model, tower, clip)?;
        {
            let mut e = self.lock();
            e.clock += 1;
            let now = e.clock;
            if let Some((rows, used)) = e.rows.get_mut(&key) {
                *used = now;
                return Ok(rows.clone());
            }
        }
        let (features, valid) = featurise(tower, device, clip, self.noise, &key.sha256)?;
        let rows = match &features {
            Features::Clean(x) => tower.encode(x, valid)?,
            Features::Noised { clean, noised } => tower.encode_companion(clean, noised, valid)?,
        };
        self.encoded.fetch_add(1, Ordering::Relaxed);
        let size = rows.elem_count() * rows.dtype().size_in_bytes();
        let mut e = self.lock();
        e.n_tokens.insert(key.clone(), rows.dim(0)?);
        while e.bytes + size > self.budget && !e.rows.is_empty() {
            let oldest = e
                .rows
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some((old, _)) = oldest.and_then(|k| e.rows.remove(&k)) {
                e.bytes -= old.elem_count() * old.dtype().size_in_bytes();
            }
        }
        let now = e.clock;
        e.bytes += size;
        e.rows.insert(key, (rows.clone(), now));
        Ok(rows)
    }

    /// The number of placeholder tokens `clip` expands to: without running the tower when the
    /// length decides it (decoded once; remembered), else by encoding it (cached).
    pub(crate) fn n_tokens(
        &self,
        model: &str,
        tower: &AudioFrontEnd,
        device: &Device,
        clip: &AudioRef,
    ) -> Result<usize> {
        let key = self.key(model, tower, clip)?;
        if let Some(&n) = self.lock().n_tokens.get(&key) {
            return Ok(n);
        }
        let audio = earguard_audio::load_audio(&clip.path, &Default::default())?;
        let Some(n) = tower.rows_for(earguard_audio::mel::valid_frames(audio.samples.len())) else {
            return Ok(self.rows(model, tower, device, clip)?.dim(0)?);
        };
        self.lock().n_tokens.insert(key, n);
        Ok(n)
    }
}

/// A clip's log-mel features `[n_mels, 3000]`: the clean clip's, and for a noised cache also
/// its corrupted copy's.
enum Features {
    Clean(Tensor),
    Noised { clean: Tensor, noised: Tensor },
}

/// The log-mel features of a clip (and of its noised copy when the cache says so) and its
/// count of valid frames (noise keeps the length).
fn featurise(
    tower: &AudioFrontEnd,
    device: &Device,
    clip: &AudioRef,
    noise: Option<WaveformNoise>,
    sha256: &[u8; 32],
) -> Result<(Features, usize)> {
    let audio = earguard_audio::load_audio(&clip.path, &Default::default())?;
    let extractor = earguard_audio::MelExtractor::new(tower.n_mels())?;
    let mel = |audio: &earguard_audio::Audio| -> Result<(Tensor, usize)> {
        let f = extractor.extract(audio)?;
        let t = Tensor::from_vec(f.data, (f.n_mels, f.n_frames), device)?;
        Ok((t, f.valid_frames))
    };
    let (clean, valid) = mel(&audio)?;
    let Some(n) = noise else {
        return Ok((Features::Clean(clean), valid));
    };
    let mut clip_seed = [0u8; 8];
    clip_seed.copy_from_slice(&sha256[..8]);
    let seed = n.seed ^ u64::from_le_bytes(clip_seed);
    let mut noisy = audio;
    noisy.samples = earguard_audio::add_noise_snr(&noisy.samples, n.snr_db, seed);
    let (noised, _) = mel(&noisy)?;
    Ok((Features::Noised { clean, noised }, valid))
}

impl AudioCache {
    fn key(&self, model: &str, tower: &AudioFrontEnd, clip: &AudioRef) -> Result<Key> {
        Ok(Key {
            sha256: file_sha256(clip)?,
            model: model.to_owned(),
            n_mels: tower.n_mels(),
            noise: self.noise.map(|n| (n.snr_db.to_bits(), n.seed)),
        })
    }
}

/// sha256 of a clip's bytes. Anything but a regular file (missing, a pipe, a device) is left to
/// the decoder, whose error names what is wrong, so nothing here can block on a read.
fn file_sha256(clip: &AudioRef) -> Result<[u8; 32]> {
    let path = &clip.path;
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        earguard_audio::load_audio(path, &Default::default())?;
        return Err(ModelError::file(path, "not a regular file"));
    }
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::file(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::file(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}
