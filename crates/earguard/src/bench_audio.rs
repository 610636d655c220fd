//! `earguard bench audio`: log-mel throughput as a multiple of real time, and our Whisper
//! encoder against candle-transformers' stock `AudioEncoder` on the same weights and input.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_transformers::models::whisper as cw;
use clap::Args;
use earguard_audio::{from_samples, mel_realtime_factor, MelExtractor, WINDOW_SAMPLES};
use earguard_model::ct2::convert_ct2_whisper;
use earguard_model::stock_whisper::candle_stock_whisper;
use earguard_model::weights::{SafeTensorWeights, WeightStore};
use earguard_model::whisper::{Activation, WhisperEncoder, WhisperEncoderConfig};
use serde_json::json;

#[derive(Args)]
pub struct AudioBenchArgs {
    /// Whisper checkpoint: an HF directory (config.json + model.safetensors with
    /// `model.encoder.*`), or a CTranslate2 directory (model.bin, as fetched by
    /// `scripts/fetch-models.sh whisper-base`), converted to a temporary directory first.
    #[arg(long, default_value = "models/whisper-base")]
    pub whisper: PathBuf,
    /// Seconds of audio for the log-mel measurement.
    #[arg(long, default_value_t = 300.0)]
    pub seconds: f64,
    /// Encoder measurements per variant (interleaved; the best is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The converted HF directory, and whether it is a temporary one to delete afterwards.
fn hf_whisper_dir(dir: &Path) -> Result<(PathBuf, bool)> {
    if dir.join("model.safetensors").is_file() {
        return Ok((dir.to_path_buf(), false));
    }
    if !dir.join("model.bin").is_file() {
        bail!(
            "{}: no model.safetensors or CTranslate2 model.bin (fetch one with \
             `scripts/fetch-models.sh whisper-base`)",
            dir.display()
        );
    }
    let out = std::env::temp_dir().join(format!("earguard-bench-whisper-{}", std::process::id()));
    convert_ct2_whisper(dir, &out).with_context(|| format!("converting {}", dir.display()))?;
    Ok((out, true))
}

/// One 30 s window of a deterministic chirp's log-mel, `[1, n_mels, 3000]`.
fn window_features(n_mels: usize) -> Result<Tensor> {
    let samples: Vec<f32> = (0..WINDOW_SAMPLES)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (200.0 + 100.0 * t) * t).sin()
        })
        .collect();
    let mel = MelExtractor::new(n_mels)?.extract(&from_samples(samples, 16_000)?)?;
    Ok(Tensor::from_vec(
        mel.data,
        (1, mel.n_mels, mel.n_frames),
        &Device::Cpu,
    )?)
}

fn best_of(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn audio(args: AudioBenchArgs) -> Result<()> {
    // The first call pays for thread-pool start-up and page faults; keep it out of the figures.
    mel_realtime_factor(&MelExtractor::new(80)?, 30.0)?;
    let mel80 = mel_realtime_factor(&MelExtractor::new(80)?, args.seconds)?;
    let mel128 = mel_realtime_factor(&MelExtractor::new(128)?, args.seconds)?;

    let (dir, temporary) = hf_whisper_dir(&args.whisper)?;
    let config_text = earguard_data::read_small_text(&dir.join("config.json"))
        .with_context(|| format!("reading {}/config.json", dir.display()))?;
    let cfg: WhisperEncoderConfig = serde_json::from_str(&config_text)?;
    let stock_cfg: cw::Config = serde_json::from_str(&config_text)?;
    let weights = dir.join("model.safetensors");
    let store = WeightStore::SafeTensors(SafeTensorWeights::open(vec![weights.clone()])?);
    let ours = WhisperEncoder::load(cfg.clone(), &store, "model.encoder.")?;
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let mut stock = candle_stock_whisper(tensors, stock_cfg)?.encoder;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let features = window_features(cfg.num_mel_bins)?;
    // Warm-up, and a check that both compute the same thing: ours set to candle's two numeric
    // choices (tanh GELU, q and k each scaled by head_dim^-1/4) must match it.
    let mut same_math = ours.clone();
    same_math.set_activations(Activation::GeluTanh, Activation::GeluTanh);
    same_math.set_split_qk_scale(true);
    let a = same_math.forward(&features, None)?;
    let b = stock.forward(&features, true)?;
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    ours.forward(&features, None)?;
    let (mut t_ours, mut t_stock) = (vec![], vec![]);
    for _ in 0..args.repeats.max(1) {
        let t0 = Instant::now();
        ours.forward(&features, None)?;
        t_ours.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        stock.forward(&features, true)?;
        t_stock.push(t0.elapsed().as_secs_f64());
    }
    let (ours_s, stock_s) = (best_of(&t_ours), best_of(&t_stock));
    let report = json!({
        "mel_80_realtime_factor": mel80,
        "mel_128_realtime_factor": mel128,
        "mel_seconds_of_audio": args.seconds,
        "encoder": {
            "checkpoint": args.whisper,
            "layers": cfg.encoder_layers,
            "d_model": cfg.d_model,
            "window_seconds": 30,
            "ours_s": ours_s,
            "stock_s": stock_s,
            "ours_over_stock_time": ours_s / stock_s,
            "max_abs_diff_same_numerics": diff,
            "max_abs_output": scale,
        },
        "threads": candle_core::utils::get_num_threads(),
        "cpu_simd": crate::bench::cpu_simd(),
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} threads, {}",
        candle_core::utils::get_num_threads(),
        crate::bench::cpu_simd()
    );
    println!("log-mel ({} s of audio):", args.seconds);
    println!("  80 bins   {mel80:>8.0}× real time");
    println!("  128 bins  {mel128:>8.0}× real time");
    println!(
        "Whisper encoder ({} layers, d_model {}), one 30 s window, best of {}:",
        cfg.encoder_layers,
        cfg.d_model,
        args.repeats.max(1)
    );
    println!("  ours    {ours_s:>7.3} s");
    println!("  stock   {stock_s:>7.3} s   (candle-transformers whisper::model::AudioEncoder)");
    println!("  ours / stock time: {:.3}", ours_s / stock_s);
    println!(
        "  with candle's numerics (tanh GELU, split q/k scale) ours matches stock to {diff:.2e} \
         (|out| ≤ {scale:.1}); timed is our default, HF's exact GELU"
    );
    Ok(())
}
