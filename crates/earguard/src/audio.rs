//! `tts` (render prompt sets to speech offline) and `features` (Whisper log-mel of one file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use earguard_audio::tts::{render_set_with, DEFAULT_RATE_WPM, DEFAULT_VOICE};
use earguard_audio::{
    add_noise_snr, load_audio, write_manifest, AudioError, LoadOptions, MelExtractor, Speakers,
    TtsItem,
};
use earguard_data::{PromptSet, ReadOptions};
use serde_json::json;

#[derive(Args)]
pub struct TtsArgs {
    /// Prompt set(s) to speak (JSONL with id, label, text; pair_id and category are kept).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Output directory: WAVs go to OUT/wav/<hash>.wav, and one manifest per set to
    /// OUT/<set name>.jsonl (the prompt's fields plus `audio`, `voice`, `rate`), usable as
    /// `--data` for audio-text and audio-only runs.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Voices, comma-separated: espeak-ng voices (e.g. en-us,en-gb,en-us+f3) and Piper neural
    /// voices as piper:NAME (e.g. piper:en_US-joe-medium, installed with its program by
    /// `scripts/fetch-models.sh piper-joe` into the models directory's piper/). Each prompt is
    /// rendered once per voice. With several voices each rendering is its own item, ID@VOICE,
    /// keeping the prompt's pair_id (and its id as source_id). Texts over 4000 characters and
    /// speech over 30 s are refused, naming the prompt.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_VOICE)]
    pub voices: Vec<String>,
    /// Speaking rate in words per minute (80–450; a Piper voice speaks at its own pace at 160,
    /// its phonemes lengthened by 160/RATE otherwise).
    #[arg(long, default_value_t = DEFAULT_RATE_WPM)]
    pub rate: u32,
    /// Report malformed JSONL lines and go on instead of stopping at the first one.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

/// Render every prompt to 16 kHz mono WAV with espeak-ng or Piper, cached by (text, voice,
/// rate).
pub fn tts(args: TtsArgs) -> Result<()> {
    let opts = ReadOptions {
        skip_bad_lines: args.skip_bad_lines,
    };
    for data in &args.data {
        speak(data, &args.out, &args.voices, args.rate, &opts)?;
    }
    Ok(())
}

/// Speak one prompt set: WAVs to `out/wav/`, the manifest to `out/<set file name>`, whose path
/// is returned.
pub fn speak(
    data: &Path,
    out: &Path,
    voices: &[String],
    rate: u32,
    opts: &ReadOptions,
) -> Result<PathBuf> {
    let set = PromptSet::read(data, opts)?;
    if set.items.is_empty() {
        bail!("{}: the prompt set is empty", data.display());
    }
    let items: Vec<TtsItem> = set
        .items
        .iter()
        .map(|i| TtsItem {
            id: i.id.clone(),
            label: i.label.to_string(),
            pair_id: i.pair_id.clone(),
            category: i.category.clone(),
            text: i.text.clone(),
        })
        .collect();
    // Checked before rendering, so a bad --out costs no speech synthesis.
    let name = data
        .file_name()
        .context("--data must name a file")?
        .to_string_lossy()
        .into_owned();
    let manifest = out.join(name);
    if manifest.canonicalize().ok() == data.canonicalize().ok() {
        bail!(
            "{}: the manifest would overwrite its own prompt set; choose another --out",
            data.display()
        );
    }
    let rows = render_set_with(
        &Speakers::installed(&earguard_model::loader::models_dir()),
        &items,
        voices,
        rate,
        &out.join("wav"),
        crate::progress_bars(),
    )?;
    write_manifest(&manifest, &rows)?;
    eprintln!(
        "{}: {} prompts × {} voice(s) → {}",
        data.display(),
        items.len(),
        voices.len(),
        manifest.display(),
    );
    Ok(manifest)
}

#[derive(Args)]
pub struct FeaturesArgs {
    /// Audio file (WAV, FLAC, MP3, Ogg; any rate and channel count).
    #[arg(long)]
    pub audio: PathBuf,
    /// Mel bins: 80 (Whisper up to v2) or 128 (Whisper-large-v3, Qwen2-Audio).
    #[arg(long, default_value_t = 128)]
    pub n_mels: usize,
    /// Keep the first 30 s of longer audio instead of refusing it.
    #[arg(long)]
    pub truncate: bool,
    /// Add white Gaussian noise at this signal-to-noise ratio (dB) before featurising (the
    /// corrupted input of contrastive decoding, or a robustness probe).
    #[arg(long)]
    pub snr: Option<f32>,
    /// Noise seed (the same seed gives the same noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file: `input_features` [n_mels, 3000] (f32) and
    /// `feature_attention_mask` [3000] (u8, 1 on frames that cover real audio).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Whisper log-mel features of one file, as HF's `WhisperFeatureExtractor` computes them.
pub fn features(args: FeaturesArgs) -> Result<()> {
    if !matches!(args.n_mels, 80 | 128) {
        bail!("--n-mels must be 80 or 128, not {}", args.n_mels);
    }
    let mut audio = load_audio(
        &args.audio,
        &LoadOptions {
            truncate: args.truncate,
        },
    )
    .map_err(|e| match e {
        AudioError::TooLong { max_seconds, .. } => {
            anyhow::anyhow!("{e}; pass --truncate to keep only the first {max_seconds} s")
        }
        other => other.into(),
    })?;
    if let Some(snr) = args.snr {
        if !snr.is_finite() {
            bail!("--snr must be a finite number of dB, not {snr}");
        }
        audio.samples = add_noise_snr(&audio.samples, snr, args.seed);
    }
    let mel = MelExtractor::new(args.n_mels)?.extract(&audio)?;
    let shape = (mel.n_mels, mel.n_frames);
    let mask: Vec<u8> = (0..mel.n_frames)
        .map(|i| u8::from(i < mel.valid_frames))
        .collect();
    let tensors: HashMap<String, Tensor> = HashMap::from([
        (
            "input_features".to_string(),
            Tensor::from_vec(mel.data, shape, &Device::Cpu)?,
        ),
        (
            "feature_attention_mask".to_string(),
            Tensor::from_vec(mask, mel.n_frames, &Device::Cpu)?,
        ),
    ]);
    candle_core::safetensors::save(&tensors, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let seconds = audio.samples.len() as f64 / audio.sample_rate as f64;
    if args.json {
        let value = json!({
            "audio": args.audio,
            "out": args.out,
            "shape": [shape.0, shape.1],
            "valid_frames": mel.valid_frames,
            "snr_db": args.snr,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!(
            "input_features [{}, {}] ({} frames of {:.2} s audio) → {}",
            shape.0,
            shape.1,
            mel.valid_frames,
            seconds,
            args.out.display()
        );
    }
    Ok(())
}
