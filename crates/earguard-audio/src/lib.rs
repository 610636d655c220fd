//! earguard-audio: audio decoding, resampling, Whisper log-mel features, perturbations and
//! offline speech. It depends on no model crate: its output is plain `Vec<f32>` data.
//!
//! One module per stage:
//!
//! | stage | module | main entry points |
//! | --- | --- | --- |
//! | decode + resample to 16 kHz mono | [`decode`] | [`load_audio`], [`from_samples`] |
//! | Whisper log-mel features (HF-exact) | [`mel`] | [`MelExtractor::new`], [`MelExtractor::extract`] |
//! | seeded noise | [`noise`] | [`add_noise_snr`], [`add_gaussian`] |
//! | offline speech (espeak-ng, Piper) | [`tts`] | [`synthesize`], [`render_set`], [`write_manifest`] |
//!
//! All errors are [`AudioError`]s that name the file concerned.
//!
//! ```
//! use earguard_audio::{add_noise_snr, from_samples, MelExtractor};
//!
//! // One second of a 440 Hz tone at 44.1 kHz, resampled to 16 kHz on the way in.
//! let tone: Vec<f32> = (0..44_100)
//!     .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 44_100.0).sin())
//!     .collect();
//! let audio = from_samples(tone, 44_100)?;
//! assert_eq!(audio.sample_rate, 16_000);
//! assert_eq!(audio.samples.len(), 16_000);
//!
//! // Whisper-v3 / Qwen2-Audio features: [128, 3000], 100 frames cover real audio.
//! let mel = MelExtractor::new(128)?;
//! let features = mel.extract(&audio)?;
//! assert_eq!((features.n_mels, features.n_frames), (128, 3000));
//! assert_eq!(features.valid_frames, 100);
//!
//! // The same clip at 10 dB SNR, reproducibly.
//! let noisy = add_noise_snr(&audio.samples, 10.0, 42);
//! assert_eq!(noisy, add_noise_snr(&audio.samples, 10.0, 42));
//! # Ok::<(), earguard_audio::AudioError>(())
//! ```

pub mod decode;
pub mod error;
pub mod mel;
pub mod noise;
pub mod tts;

pub use decode::{
    from_samples, from_samples_with, load_audio, resample, write_wav_pcm16, Audio, LoadOptions,
    SAMPLE_RATE, WINDOW_SAMPLES, WINDOW_SECONDS,
};
pub use error::{AudioError, Result};
pub use mel::{mel_realtime_factor, valid_frames, MelExtractor, MelFeatures, N_FRAMES};
pub use noise::{add_gaussian, add_noise_snr, measure_snr_db};
pub use tts::{
    read_manifest, render_set, synthesize, write_manifest, ManifestRow, Speakers, TtsItem,
    TtsOptions, Voice,
};
