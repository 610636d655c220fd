//! Stage 2: Whisper log-mel features, computed as Hugging Face's `WhisperFeatureExtractor`
//! does with its defaults (`padding="max_length"`, truncation on):
//!
//! 1. the 16 kHz audio is zero-padded (or cut) to one 30 s window of 480 000 samples;
//! 2. it is centre-padded by `n_fft / 2 = 200` samples on each side by reflection;
//! 3. frames of 400 samples every 160 samples are multiplied by a periodic Hann window
//!    and transformed with a 400-point real FFT (realfft, double precision);
//! 4. the power spectrum (`|X|²`, 201 bins) goes through a Slaney-scale, Slaney-normalised
//!    triangular mel filter bank spanning 0–8000 Hz (80 or 128 filters);
//! 5. `log10(max(mel, 1e-10))`, the last of the 3001 frames is dropped, values are floored
//!    at `max − 8` and mapped by `(x + 4) / 4`.
//!
//! The result is `[n_mels, 3000]`, row-major. [`MelFeatures::valid_frames`] is the length
//! of the attention mask HF returns with `return_attention_mask=True` (as Qwen2-Audio's
//! processor requests): the sample-level mask subsampled every 160 samples, i.e.
//! `ceil(min(n, 480000) / 160)` frames.

use std::path::Path;
use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::decode::{Audio, SAMPLE_RATE, WINDOW_SAMPLES};
use crate::error::{AudioError, Result};

/// FFT size (and analysis window length) in samples.
pub const N_FFT: usize = 400;
/// Hop between frames in samples.
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30 s window after the last STFT frame is dropped.
pub const N_FRAMES: usize = WINDOW_SAMPLES / HOP_LENGTH;
/// Frequency bins of the one-sided spectrum.
pub const N_FREQS: usize = N_FFT / 2 + 1;
/// Mel-bin counts Whisper models use.
pub const SUPPORTED_N_MELS: [usize; 2] = [80, 128];

/// Log-mel features of one 30 s window.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFeatures {
    /// Row-major `[n_mels, n_frames]`.
    pub data: Vec<f32>,
    /// Number of mel bins (rows).
    pub n_mels: usize,
    /// Number of frames (columns): always 3000.
    pub n_frames: usize,
    /// Frames that cover real audio (HF's `feature_attention_mask` sum).
    pub valid_frames: usize,
}

impl MelFeatures {
    /// Value at mel bin `mel`, frame `frame` (None when out of range).
    pub fn get(&self, mel: usize, frame: usize) -> Option<f32> {
        if mel >= self.n_mels || frame >= self.n_frames {
            return None;
        }
        self.data.get(mel * self.n_frames + frame).copied()
    }

    /// One mel bin across all frames (None when out of range).
    pub fn row(&self, mel: usize) -> Option<&[f32]> {
        if mel >= self.n_mels {
            return None;
        }
        self.data
            .get(mel * self.n_frames..(mel + 1) * self.n_frames)
    }

    /// The attention mask over frames: `1` for the first `valid_frames`, then `0`.
    pub fn attention_mask(&self) -> Vec<u8> {
        (0..self.n_frames)
            .map(|t| u8::from(t < self.valid_frames))
            .collect()
    }
}

/// Number of valid feature frames for `n_samples` of 16 kHz audio, as HF's attention
/// mask counts them: `ceil(min(n, 480000) / 160)`.
pub fn valid_frames(n_samples: usize) -> usize {
    n_samples
        .min(WINDOW_SAMPLES)
        .div_ceil(HOP_LENGTH)
        .min(N_FRAMES)
}

/// One triangular filter, stored sparsely: weights for bins `start..start + weights.len()`.
#[derive(Debug, Clone)]
struct MelFilter {
    start: usize,
    weights: Vec<f64>,
}

/// Whisper log-mel extractor. Build once, reuse: the FFT plan, window and filter bank are
/// computed in [`MelExtractor::new`]. `extract` takes `&self`, so one extractor can be
/// shared across threads.
pub struct MelExtractor {
    n_mels: usize,
    filters: Vec<MelFilter>,
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for MelExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelExtractor")
            .field("n_mels", &self.n_mels)
            .field("n_fft", &N_FFT)
            .field("hop_length", &HOP_LENGTH)
            .finish()
    }
}

fn hz_to_mel_slaney(hz: f64) -> f64 {
    // Linear below 1 kHz (3 mel per 200 Hz), logarithmic above.
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// `n` evenly spaced points from `start` to `stop` inclusive (numpy.linspace semantics).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// Dense Slaney mel filter bank `[n_mels][N_FREQS]` for 16 kHz audio, 0–8000 Hz.
fn slaney_filter_bank(n_mels: usize) -> Vec<Vec<f64>> {
    let sr = f64::from(SAMPLE_RATE);
    let mel_points = linspace(hz_to_mel_slaney(0.0), hz_to_mel_slaney(8000.0), n_mels + 2);
    let edges: Vec<f64> = mel_points.iter().map(|&m| mel_to_hz_slaney(m)).collect();
    let bin_hz = linspace(0.0, (SAMPLE_RATE / 2) as f64, N_FREQS);
    debug_assert!((bin_hz[1] - sr / N_FFT as f64).abs() < 1e-9);
    (0..n_mels)
        .map(|m| {
            let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
            let area_norm = 2.0 / (hi - lo);
            bin_hz
                .iter()
                .map(|&f| {
                    let rising = (f - lo) / (mid - lo);
                    let falling = (hi - f) / (hi - mid);
                    rising.min(falling).max(0.0) * area_norm
                })
                .collect()
        })
        .collect()
}

impl MelExtractor {
    /// An extractor with `n_mels` bins (80 for Whisper ≤ v2, 128 for Whisper v3 and
    /// Qwen2-Audio).
    pub fn new(n_mels: usize) -> Result<Self> {
        if !SUPPORTED_N_MELS.contains(&n_mels) {
            return Err(AudioError::InvalidArgument {
                path: "<mel-extractor>".into(),
                detail: format!("n_mels must be 80 or 128, got {n_mels}"),
            });
        }
        let filters = slaney_filter_bank(n_mels)
            .into_iter()
            .map(|row| {
                let start = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let end = row.iter().rposition(|&w| w > 0.0).map_or(start, |e| e + 1);
                MelFilter {
                    start,
                    weights: row[start..end].to_vec(),
                }
            })
            .collect();
        // Periodic Hann: 0.5 - 0.5 cos(2πn/N), n = 0..N-1.
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .collect();
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        Ok(MelExtractor {
            n_mels,
            filters,
            window,
            fft,
        })
    }

    /// Number of mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The filter bank as a dense row-major `[n_mels, 201]` matrix (for inspection).
    pub fn filter_bank(&self) -> Vec<f64> {
        let mut dense = vec![0.0; self.n_mels * N_FREQS];
        for (m, f) in self.filters.iter().enumerate() {
            for (j, &w) in f.weights.iter().enumerate() {
                dense[m * N_FREQS + f.start + j] = w;
            }
        }
        dense
    }

    /// Log-mel features of `audio` (16 kHz; longer than 30 s is cut to 30 s as HF does).
    pub fn extract(&self, audio: &Audio) -> Result<MelFeatures> {
        let path: &Path = &audio.source;
        let fail = |detail: String| AudioError::Features {
            path: path.to_path_buf(),
            detail,
        };
        if audio.sample_rate != SAMPLE_RATE {
            return Err(fail(format!(
                "audio is at {} Hz; features need {SAMPLE_RATE} Hz (use load_audio/from_samples to resample)",
                audio.sample_rate
            )));
        }
        if audio.samples.is_empty() {
            return Err(AudioError::ZeroLength {
                path: path.to_path_buf(),
            });
        }
        if let Some((index, &value)) = audio
            .samples
            .iter()
            .enumerate()
            .find(|(_, s)| !s.is_finite())
        {
            return Err(AudioError::NonFinite {
                path: path.to_path_buf(),
                index,
                channel: 0,
                value,
            });
        }
        let n = audio.samples.len().min(WINDOW_SAMPLES);

        // The 30 s window, zero-padded, then reflect-padded by N_FFT/2 on both sides.
        let pad = N_FFT / 2;
        let len = WINDOW_SAMPLES;
        let mut padded = vec![0.0f64; len + 2 * pad];
        for (dst, &s) in padded[pad..pad + n].iter_mut().zip(&audio.samples[..n]) {
            *dst = f64::from(s);
        }
        for i in 0..pad {
            // Left: padded[pad-1-i] = x[i+1]; right: padded[pad+len+i] = x[len-2-i].
            padded[pad - 1 - i] = padded[pad + i + 1];
            padded[pad + len + i] = padded[pad + len - 2 - i];
        }

        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f64; N_FREQS];
        let mut data = vec![0.0f32; self.n_mels * N_FRAMES];
        for t in 0..N_FRAMES {
            let start = t * HOP_LENGTH;
            for ((dst, &x), &w) in frame
                .iter_mut()
                .zip(&padded[start..start + N_FFT])
                .zip(&self.window)
            {
                *dst = x * w;
            }
            self.fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .map_err(|e| fail(format!("FFT failed: {e}")))?;
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &power[filter.start..filter.start + filter.weights.len()];
                let e: f64 = bins.iter().zip(&filter.weights).map(|(p, w)| p * w).sum();
                data[m * N_FRAMES + t] = e.max(1e-10).log10() as f32;
            }
        }
        let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = max - 8.0;
        for v in &mut data {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        Ok(MelFeatures {
            data,
            n_mels: self.n_mels,
            n_frames: N_FRAMES,
            valid_frames: valid_frames(n),
        })
    }
}

/// Speed of [`MelExtractor::extract`]: seconds of audio featurised per second of wall
/// time, measured on `seconds_of_audio` of deterministic synthetic audio (split into 30 s
/// windows; every window, even a partial last one, costs one full extraction).
pub fn mel_realtime_factor(extractor: &MelExtractor, seconds_of_audio: f64) -> Result<f64> {
    if !seconds_of_audio.is_finite() || seconds_of_audio <= 0.0 || seconds_of_audio > 86_400.0 {
        return Err(AudioError::InvalidArgument {
            path: "<mel-benchmark>".into(),
            detail: format!("seconds_of_audio must be in (0, 86400], got {seconds_of_audio}"),
        });
    }
    let total = (seconds_of_audio * f64::from(SAMPLE_RATE)).ceil() as usize;
    let windows = total.div_ceil(WINDOW_SAMPLES);
    // A chirp plus a little deterministic noise, one window long, reused for each window.
    let window_len = total.min(WINDOW_SAMPLES);
    let mut state: u32 = 0x9e37_79b9;
    let samples: Vec<f32> = (0..window_len)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (f64::from(state) / f64::from(u32::MAX) - 0.5) * 0.01;
            (0.3 * (2.0 * std::f64::consts::PI * (200.0 + 100.0 * t) * t).sin() + noise) as f32
        })
        .collect();
    let audio = Audio {
        samples,
        sample_rate: SAMPLE_RATE,
        source: "<mel-benchmark>".into(),
    };
    let start = std::time::Instant::now();
    for _ in 0..windows {
        let f = extractor.extract(&audio)?;
        std::hint::black_box(&f);
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    Ok(seconds_of_audio / elapsed)
}
