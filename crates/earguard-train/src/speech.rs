//! Training a speech head ([`earguard_model::speech`]): render texts with espeak-ng, run the
//! frozen Whisper encoder once per clip and keep its frames, then fit the head with CTC.
//!
//! **Prepare** ([`prepare`]) writes a data directory:
//! - `plan.jsonl`: every clip to make, fixed up front from the seed (text, voice, rate, noise,
//!   split), so a resumed run makes the same clips;
//! - `shards/NNNNN.safetensors` + `shards/NNNNN.jsonl`: the encoder frames (f16 `[T, d]`, the
//!   clip's real length, not a padded 30 s window) and each clip's record. A shard counts once
//!   its JSONL exists (written last, atomically), so a killed run redoes at most one shard.
//!
//! Splits are by text, never by clip: one text in [`HELDOUT_EVERY`] (by a hash of its id) is
//! held out, rendered with the training voices (`heldout`) and with voices never used in
//! training (`heldout-voice`).
//!
//! **Train** ([`train_head`]): token CTC plus `char_weight` × char CTC (see
//! [`crate::ctc`]), AdamW, one checkpoint per epoch (weights, moments, losses), resumable.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use earguard_model::speech::{HeadShape, SpeechHead, SpeechHeadConfig, HEAD_CONFIG, HEAD_WEIGHTS};
use earguard_model::tokenizer::Tokenizer;
use earguard_model::whisper::WhisperEncoder;
use serde::{Deserialize, Serialize};

use crate::ctc;
use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWParams, Decay, Schedule};
use crate::trainer::mix;

/// One text in this many is held out (by a hash of its id).
pub const HELDOUT_EVERY: u64 = 20;

/// Characters of the char branch (after lower-casing).
pub const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789' ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    /// A held-out text, in a training voice.
    Heldout,
    /// A held-out text, in a voice never used in training.
    HeldoutVoice,
}

/// One clip: what is said, how, and (once encoded) its LLM tokens and frame count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub id: String,
    pub text: String,
    pub voice: String,
    pub rate: u32,
    /// White noise at this SNR (dB), if any.
    pub snr_db: Option<f32>,
    pub split: Split,
    /// The text's LLM token ids (filled in when encoded).
    #[serde(default)]
    pub tokens: Vec<u32>,
    /// Encoder frames (filled in when encoded).
    #[serde(default)]
    pub frames: usize,
}

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub out: PathBuf,
    /// Where espeak-ng renders are cached.
    pub tts_dir: PathBuf,
    /// (id, text) of every text to render.
    pub texts: Vec<(String, String)>,
    pub voices: Vec<String>,
    /// Voices used only for held-out texts.
    pub heldout_voices: Vec<String>,
    pub rates: Vec<u32>,
    /// Renders per training text (each with its own voice, rate and noise).
    pub renders: usize,
    /// Fraction of clips with white noise, at an SNR drawn from `snr_db`.
    pub noise_fraction: f64,
    pub snr_db: (f32, f32),
    pub seed: u64,
    pub shard_size: usize,
    pub progress: bool,
}

/// A uniform draw in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn hash_str(s: &str) -> u64 {
    mix(&s.bytes().map(u64::from).collect::<Vec<_>>())
}

/// Every clip to make, in order: deterministic in the options (not in the order of work).
pub fn plan(opts: &PrepareOptions) -> Result<Vec<Clip>> {
    if opts.voices.is_empty() || opts.rates.is_empty() || opts.renders == 0 {
        return Err(TrainError::Invalid(
            "prepare needs at least one voice, one rate and one render per text".into(),
        ));
    }
    if !(0.0..=1.0).contains(&opts.noise_fraction) {
        return Err(TrainError::Invalid(format!(
            "noise fraction {} is not in [0, 1]",
            opts.noise_fraction
        )));
    }
    let mut clips = Vec::new();
    for (id, text) in &opts.texts {
        let h = mix(&[opts.seed, hash_str(id)]);
        let heldout = mix(&[hash_str(id)]).is_multiple_of(HELDOUT_EVERY);
        let mut add = |voices: &[String], k: usize, split: Split| {
            let hk = mix(&[h, k as u64, split as u64]);
            let voice = voices[(mix(&[hk, 1]) % voices.len() as u64) as usize].clone();
            let rate = opts.rates[(mix(&[hk, 2]) % opts.rates.len() as u64) as usize];
            let snr_db = (unit(mix(&[hk, 3])) < opts.noise_fraction).then(|| {
                let (lo, hi) = opts.snr_db;
                lo + (hi - lo) * unit(mix(&[hk, 4])) as f32
            });
            clips.push(Clip {
                id: format!("{id}#{k}"),
                text: text.clone(),
                voice,
                rate,
                snr_db,
                split,
                tokens: vec![],
                frames: 0,
            });
        };
        if !heldout {
            for k in 0..opts.renders {
                add(&opts.voices, k, Split::Train);
            }
        } else {
            add(&opts.voices, 0, Split::Heldout);
            if !opts.heldout_voices.is_empty() {
                add(&opts.heldout_voices, 1, Split::HeldoutVoice);
            }
        }
    }
    Ok(clips)
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).map_err(|e| TrainError::file(path, e))?);
        text.push('\n');
    }
    earguard_data::atomic::write(path, text.as_bytes()).map_err(|e| TrainError::file(path, e))
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = earguard_data::read_small_text(path).map_err(|e| TrainError::file(path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::file(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Whisper log-mel of a clip at its real length, `[1, n_mels, frames]`: exactly what a speech
/// model's front end reads ([`earguard_model::speech::real_length`]).
pub fn clip_features(audio: &earguard_audio::Audio, n_mels: usize) -> Result<Tensor> {
    let mel = earguard_audio::MelExtractor::new(n_mels)?.extract(audio)?;
    let t = Tensor::from_vec(mel.data, (mel.n_mels, mel.n_frames), &Device::Cpu)?;
    Ok(earguard_model::speech::real_length(&t, mel.valid_frames)?)
}

/// Render, encode and store every clip of the plan (resuming finished shards). Returns the
/// plan.
pub fn prepare(
    opts: &PrepareOptions,
    encoder: &WhisperEncoder,
    tokenizer: &Tokenizer,
) -> Result<Vec<Clip>> {
    let clips = plan(opts)?;
    let shards = opts.out.join("shards");
    std::fs::create_dir_all(&shards).map_err(|e| TrainError::file(&shards, e))?;
    let plan_path = opts.out.join("plan.jsonl");
    if plan_path.exists() {
        let old: Vec<Clip> = read_jsonl(&plan_path)?;
        if old != clips {
            return Err(TrainError::file(
                &plan_path,
                "holds another plan (other texts, voices, rates, noise or seed): use a new \
                 --out directory",
            ));
        }
    } else {
        write_jsonl(&plan_path, &clips)?;
    }
    let n_mels = encoder.config().num_mel_bins;
    let bar = earguard_data::progress::bar(
        opts.progress.then_some("encode"),
        "clips",
        clips.len() as u64,
    );
    let size = opts.shard_size.max(1);
    for (s, chunk) in clips.chunks(size).enumerate() {
        let index = shards.join(format!("{s:05}.jsonl"));
        if index.exists() {
            bar.inc(chunk.len() as u64);
            continue;
        }
        let mut tensors = HashMap::new();
        let mut done = Vec::with_capacity(chunk.len());
        for clip in chunk {
            let wav =
                earguard_audio::tts::synthesize(&clip.text, &clip.voice, clip.rate, &opts.tts_dir)?;
            let mut audio = earguard_audio::load_audio(&wav, &Default::default())?;
            if let Some(snr) = clip.snr_db {
                audio.samples =
                    earguard_audio::add_noise_snr(&audio.samples, snr, hash_str(&clip.id));
            }
            let features = clip_features(&audio, n_mels)?;
            let frames = encoder.forward(&features, None)?.squeeze(0)?;
            let mut c = clip.clone();
            c.frames = frames.dim(0)?;
            c.tokens = tokenizer.encode(&clip.text, false)?;
            tensors.insert(c.id.clone(), frames.to_dtype(DType::F16)?);
            done.push(c);
            bar.inc(1);
        }
        let path = shards.join(format!("{s:05}.safetensors"));
        earguard_data::atomic::write_with(&path, |tmp| {
            candle_core::safetensors::save(&tensors, tmp).map_err(std::io::Error::other)
        })
        .map_err(|e| TrainError::file(&path, e))?;
        write_jsonl(&index, &done)?;
    }
    bar.finish_and_clear();
    Ok(clips)
}

/// The encoded clips of a data directory (finished shards only), frames in f16.
pub fn load_data(dir: &Path) -> Result<Vec<(Clip, Tensor)>> {
    let shards = dir.join("shards");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&shards)
        .map_err(|e| TrainError::file(&shards, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for index in names {
        let clips: Vec<Clip> = read_jsonl(&index)?;
        let path = index.with_extension("safetensors");
        let t = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| TrainError::file(&path, e))?;
        for c in clips {
            let frames = t
                .get(&c.id)
                .ok_or_else(|| TrainError::file(&path, format!("no frames for {}", c.id)))?
                .clone();
            out.push((c, frames));
        }
    }
    if out.is_empty() {
        return Err(TrainError::file(
            dir,
            "holds no encoded clips: run `earguard speech prepare` first",
        ));
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadTrainConfig {
    /// The head's layers (flat in train-config.json, as in head.json).
    #[serde(flatten)]
    pub shape: HeadShape,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Weight of the char CTC loss beside the token CTC loss.
    pub char_weight: f64,
    pub seed: u64,
    /// Linear warm-up of the learning rate over this many steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// After warm-up: constant, or linear to zero at the last epoch's end. A constant rate
    /// leaves the loss at its noise floor; decaying lets it settle.
    #[serde(default)]
    pub decay: Decay,
}

impl Default for HeadTrainConfig {
    fn default() -> Self {
        Self {
            shape: HeadShape {
                d_model: 384,
                kernel: 5,
                layers: 3,
                input_norm: false,
                block_norm: false,
                attention_layers: 0,
                stride: 2,
            },
            epochs: 12,
            batch_size: 16,
            lr: 1e-3,
            weight_decay: 0.01,
            char_weight: 0.5,
            seed: 0,
            warmup_steps: 0,
            decay: Decay::Constant,
        }
    }
}

/// Per-epoch figures, as `train.jsonl` records them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub token_loss: f64,
    pub char_loss: f64,
    pub seconds: f64,
    /// Greedy token-CTC WER per held-out split.
    pub wer: HashMap<String, f64>,
    /// Greedy char-CTC WER per held-out split.
    pub char_wer: HashMap<String, f64>,
    pub skipped: usize,
}

/// Pad `[T_i, d]` frames to `[b, T_max, d]` (zeros), in f32.
fn batch_frames(frames: &[&Tensor]) -> Result<Tensor> {
    let t_max = frames
        .iter()
        .map(|f| f.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let t_max = t_max.into_iter().max().unwrap_or(0);
    let rows = frames
        .iter()
        .map(|f| {
            let f = f.to_dtype(DType::F32)?;
            let pad = t_max - f.dim(0)?;
            if pad == 0 {
                Ok(f)
            } else {
                f.pad_with_zeros(0, 0, pad)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// The head's transcripts of clips: (token-CTC text, char-CTC text) each.
pub fn transcribe(
    head: &SpeechHead,
    tokenizer: &Tokenizer,
    frames: &[&Tensor],
) -> Result<Vec<(String, String)>> {
    let cfg = head.config();
    let lengths = frames
        .iter()
        .map(|f| f.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let (tok, ch) = head.forward_padded(&batch_frames(frames)?, Some(&lengths))?;
    let mut out = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let t = cfg.out_frames(f.dim(0)?);
        let tl: Vec<f32> = tok.get(i)?.narrow(0, 0, t)?.flatten_all()?.to_vec1()?;
        let cl: Vec<f32> = ch.get(i)?.narrow(0, 0, t)?.flatten_all()?.to_vec1()?;
        let ids: Vec<u32> = ctc::greedy_decode(&tl, t, cfg.n_token_classes())
            .into_iter()
            .map(|k| cfg.tokens[k as usize - 1])
            .collect();
        let chars = ctc::greedy_decode(&cl, t, cfg.n_char_classes());
        out.push((tokenizer.decode(&ids, true)?, cfg.chars_text(&chars)));
    }
    Ok(out)
}

/// Greedy WER (token branch, char branch) of `clips` under `head`.
pub fn evaluate(
    head: &SpeechHead,
    tokenizer: &Tokenizer,
    clips: &[&(Clip, Tensor)],
) -> Result<(f64, f64)> {
    let mut pairs = Vec::with_capacity(clips.len());
    for chunk in clips.chunks(32) {
        let frames: Vec<&Tensor> = chunk.iter().map(|(_, f)| f).collect();
        for ((c, _), (tok, ch)) in chunk.iter().zip(transcribe(head, tokenizer, &frames)?) {
            pairs.push((c.text.as_str(), tok, ch));
        }
    }
    let tok = earguard_data::wer::wer(pairs.iter().map(|(r, t, _)| (*r, t.as_str())));
    let ch = earguard_data::wer::wer(pairs.iter().map(|(r, _, c)| (*r, c.as_str())));
    Ok((tok.unwrap_or(f64::NAN), ch.unwrap_or(f64::NAN)))
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// Re-draw every parameter from `seed` (candle's initialisers use an unseeded generator): the
/// uniform ±1/√fan_in of PyTorch's defaults for convolutions and linears, weights and biases
/// alike (a bias takes its weight's fan-in); a layer norm starts as the identity, and so do a
/// pre-norm residual block (its convolution at zero) and an attention layer (its output
/// projection at zero).
fn seeded_init(names: &[String], vars: &[Var], seed: u64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in names.iter().zip(vars) {
        // A pre-norm block's convolution and an attention layer's output projection start at
        // zero: each starts as the identity.
        if (name.starts_with("blocks.") && name.contains(".conv."))
            || (name.starts_with("attn.") && name.contains(".out."))
        {
            var.set(&var.zeros_like()?)?;
            continue;
        }
        if name.starts_with("norm.") || name.contains(".norm.") {
            let value: f32 = if name.ends_with("weight") { 1.0 } else { 0.0 };
            var.set(&Tensor::full(value, var.dims(), var.device())?)?;
            continue;
        }
        let weight = name.replace(".bias", ".weight");
        let w = names
            .iter()
            .position(|n| *n == weight)
            .map_or(var, |i| &vars[i]);
        let fan_in: usize = w.dims().iter().skip(1).product::<usize>().max(1);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let data: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        var.set(&Tensor::from_vec(data, var.dims(), var.device())?)?;
    }
    Ok(())
}

/// Train a head on a prepared data directory into `out` (`head.json`, `head.safetensors`,
/// `train.jsonl`); resumes from `out`'s checkpoint when its config matches.
pub fn train_head(
    data: &[(Clip, Tensor)],
    tokenizer: &Tokenizer,
    cfg: &HeadTrainConfig,
    out: &Path,
    progress: bool,
) -> Result<Vec<EpochReport>> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(TrainError::Invalid(
            "epochs and batch size must be at least 1".into(),
        ));
    }
    let train: Vec<&(Clip, Tensor)> = data
        .iter()
        .filter(|(c, _)| c.split == Split::Train)
        .collect();
    if train.is_empty() {
        return Err(TrainError::Invalid(
            "the data holds no training clips".into(),
        ));
    }
    let tokens: BTreeSet<u32> = train
        .iter()
        .flat_map(|(c, _)| c.tokens.iter().copied())
        .collect();
    let d_in = train[0].1.dim(1)?;
    let head_cfg = SpeechHeadConfig {
        shape: HeadShape {
            d_model: cfg.shape.d_model,
            kernel: cfg.shape.kernel,
            layers: cfg.shape.layers,
            input_norm: cfg.shape.input_norm,
            block_norm: cfg.shape.block_norm,
            attention_layers: cfg.shape.attention_layers,
            stride: cfg.shape.stride,
        },
        d_in,
        tokens: tokens.into_iter().collect(),
        alphabet: ALPHABET.into(),
    };
    let class_of: HashMap<u32, u32> = head_cfg
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| (t, i as u32 + 1))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| TrainError::file(out, e))?;
    let cfg_path = out.join(HEAD_CONFIG);
    let train_cfg_path = out.join("train-config.json");
    // What a resumed run must share with the checkpoint's run: everything but the epoch count
    // (a finished run can be continued for more epochs), unless the rate decays over them.
    let resumable = HeadTrainConfig {
        epochs: match cfg.decay {
            Decay::Constant => 0,
            Decay::Linear => cfg.epochs,
        },
        ..cfg.clone()
    };
    let train_cfg_text = serde_json::to_string_pretty(&resumable).expect("config serialises");
    let ckpt = out.join(CHECKPOINT);
    if ckpt.exists() {
        let same = earguard_data::read_small_text(&train_cfg_path)
            .ok()
            .and_then(|t| serde_json::from_str::<HeadTrainConfig>(&t).ok())
            == Some(resumable)
            && earguard_data::read_small_text(&cfg_path)
                .ok()
                .and_then(|t| serde_json::from_str::<SpeechHeadConfig>(&t).ok())
                == Some(head_cfg.clone());
        if !same {
            return Err(TrainError::file(
                out,
                "holds a checkpoint of another training run (config or data differ): use a new \
                 output directory",
            ));
        }
    }
    let write = |p: &Path, s: &str| {
        earguard_data::atomic::write(p, s.as_bytes()).map_err(|e| TrainError::file(p, e))
    };
    write(
        &cfg_path,
        &serde_json::to_string_pretty(&head_cfg).expect("config serialises"),
    )?;
    write(&train_cfg_path, &train_cfg_text)?;

    let dev = Device::Cpu;
    let mut map = VarMap::new();
    let head = SpeechHead::new(
        head_cfg.clone(),
        VarBuilder::from_varmap(&map, DType::F32, &dev),
    )?;
    let mut names: Vec<String> = map.data().lock().expect("varmap").keys().cloned().collect();
    names.sort();
    let vars: Vec<Var> = {
        let d = map.data().lock().expect("varmap");
        names.iter().map(|n| d[n].clone()).collect()
    };
    seeded_init(&names, &vars, cfg.seed)?;
    let var_refs: Vec<&Var> = vars.iter().collect();
    let mut opt = AdamW::new(
        &var_refs,
        AdamWParams {
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let log_path = out.join("train.jsonl");
    let mut reports: Vec<EpochReport> = Vec::new();
    if ckpt.exists() {
        map.load(&ckpt).map_err(|e| TrainError::file(&ckpt, e))?;
        let t =
            candle_core::safetensors::load(&ckpt, &dev).map_err(|e| TrainError::file(&ckpt, e))?;
        for (i, n) in names.iter().enumerate() {
            opt.m[i] = t
                .get(&format!("optim.m.{n}"))
                .ok_or_else(|| TrainError::file(&ckpt, "no moments"))?
                .clone();
            opt.v[i] = t
                .get(&format!("optim.v.{n}"))
                .ok_or_else(|| TrainError::file(&ckpt, "no moments"))?
                .clone();
        }
        opt.t = t
            .get("optim.t")
            .ok_or_else(|| TrainError::file(&ckpt, "no step count"))?
            .to_vec1::<u32>()?[0] as usize;
        reports = read_jsonl(&log_path)?;
    }
    let heldout: Vec<(String, Vec<&(Clip, Tensor)>)> = [Split::Heldout, Split::HeldoutVoice]
        .into_iter()
        .map(|s| {
            let name = serde_json::to_value(s)
                .expect("split")
                .as_str()
                .unwrap_or("")
                .to_string();
            (
                name,
                data.iter()
                    .filter(|(c, _)| c.split == s)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();

    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let schedule = Schedule {
        lr: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        decay: cfg.decay,
    };
    let total_steps = steps_per_epoch * cfg.epochs;
    for epoch in reports.len()..cfg.epochs {
        let t0 = Instant::now();
        // This epoch's order: shuffled by the seed, then batched by length (less padding).
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.sort_by_key(|&i| mix(&[cfg.seed, epoch as u64, i as u64]));
        let mut batches: Vec<Vec<usize>> = order
            .chunks(cfg.batch_size * 32)
            .flat_map(|group| {
                let mut g = group.to_vec();
                g.sort_by_key(|&i| train[i].0.frames);
                g.chunks(cfg.batch_size)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        batches.sort_by_key(|b| mix(&[cfg.seed, epoch as u64, b[0] as u64, 7]));
        let bar = earguard_data::progress::bar(
            progress.then_some("train head"),
            "steps",
            steps_per_epoch as u64,
        );
        let (mut tok_sum, mut char_sum, mut n, mut skipped) = (0f64, 0f64, 0usize, 0usize);
        for b in &batches {
            let clips: Vec<&(Clip, Tensor)> = b.iter().map(|&i| train[i]).collect();
            let frames: Vec<&Tensor> = clips.iter().map(|(_, f)| f).collect();
            let x = batch_frames(&frames)?;
            let lengths: Vec<usize> = clips.iter().map(|(c, _)| c.frames).collect();
            let (tok, ch) = head.forward_padded(&x, Some(&lengths))?;
            let (bsz, t_out, v) = tok.dims3()?;
            let c_char = ch.dim(2)?;
            let tok_host: Vec<f32> = tok.flatten_all()?.to_vec1()?;
            let ch_host: Vec<f32> = ch.flatten_all()?.to_vec1()?;
            let mut g_tok = vec![0f32; bsz * t_out * v];
            let mut g_ch = vec![0f32; bsz * t_out * c_char];
            for (i, (clip, _)) in clips.iter().enumerate() {
                let t = head_cfg.out_frames(clip.frames);
                let target: Vec<u32> = clip.tokens.iter().map(|t| class_of[t]).collect();
                let chars = head_cfg.char_targets(&clip.text);
                let tl = &tok_host[i * t_out * v..(i * t_out + t) * v];
                let cl = &ch_host[i * t_out * c_char..(i * t_out + t) * c_char];
                let (Some((lt, gt)), Some((lc, gc))) = (
                    ctc::ctc_loss(tl, t, v, &target),
                    ctc::ctc_loss(cl, t, c_char, &chars),
                ) else {
                    skipped += 1;
                    continue;
                };
                // Mean over the batch, each utterance's loss per target symbol.
                let (wt, wc) = (
                    1.0 / (bsz * target.len().max(1)) as f32,
                    cfg.char_weight as f32 / (bsz * chars.len().max(1)) as f32,
                );
                for (dst, g) in g_tok[i * t_out * v..].iter_mut().zip(&gt) {
                    *dst = g * wt;
                }
                for (dst, g) in g_ch[i * t_out * c_char..].iter_mut().zip(&gc) {
                    *dst = g * wc;
                }
                tok_sum += lt / target.len().max(1) as f64;
                char_sum += lc / chars.len().max(1) as f64;
                n += 1;
            }
            let g_tok = Tensor::from_vec(g_tok, (bsz, t_out, v), &dev)?;
            let g_ch = Tensor::from_vec(g_ch, (bsz, t_out, c_char), &dev)?;
            // Surrogate whose gradient with respect to the logits is the CTC gradient.
            let surrogate = ((&tok * &g_tok)?.sum_all()? + (&ch * &g_ch)?.sum_all()?)?;
            let grads = surrogate.backward()?;
            let g: Vec<Option<Tensor>> = vars
                .iter()
                .map(|v| grads.get(v.as_tensor()).cloned())
                .collect();
            let lr = schedule.lr_at(opt.t, total_steps);
            opt.step(&var_refs, &g, lr)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let mut wer = HashMap::new();
        let mut char_wer = HashMap::new();
        for (name, clips) in &heldout {
            let (w, c) = evaluate(&head, tokenizer, clips)?;
            wer.insert(name.clone(), w);
            char_wer.insert(name.clone(), c);
        }
        let report = EpochReport {
            epoch,
            token_loss: tok_sum / n.max(1) as f64,
            char_loss: char_sum / n.max(1) as f64,
            seconds,
            wer,
            char_wer,
            skipped,
        };
        tracing::info!(?report, "epoch");
        if progress {
            eprintln!(
                "epoch {epoch}: token loss {:.3}, char loss {:.3}, {:.0} s, held-out WER {:?} (chars {:?})",
                report.token_loss, report.char_loss, seconds, report.wer, report.char_wer
            );
        }
        reports.push(report);
        // The checkpoint: weights, moments, step count; then the head; then the log.
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            t.insert(n.clone(), vars[i].as_tensor().clone());
            t.insert(format!("optim.m.{n}"), opt.m[i].clone());
            t.insert(format!("optim.v.{n}"), opt.v[i].clone());
        }
        t.insert("optim.t".into(), Tensor::new(&[opt.t as u32], &dev)?);
        earguard_data::atomic::write_with(&ckpt, |tmp| {
            candle_core::safetensors::save(&t, tmp).map_err(std::io::Error::other)
        })
        .map_err(|e| TrainError::file(&ckpt, e))?;
        let weights = out.join(HEAD_WEIGHTS);
        earguard_data::atomic::write_with(&weights, |tmp| {
            map.save(tmp).map_err(std::io::Error::other)
        })
        .map_err(|e| TrainError::file(&weights, e))?;
        write_jsonl(&log_path, &reports)?;
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PrepareOptions {
        PrepareOptions {
            out: PathBuf::new(),
            tts_dir: PathBuf::new(),
            texts: (0..200)
                .map(|i| (format!("t{i}"), format!("text {i}")))
                .collect(),
            voices: vec!["en-us".into(), "en-gb".into()],
            heldout_voices: vec!["en-029".into()],
            rates: vec![140, 180],
            renders: 2,
            noise_fraction: 0.5,
            snr_db: (10.0, 30.0),
            seed: 3,
            shard_size: 8,
            progress: false,
        }
    }

    /// The plan is fixed by the options; held-out texts are never trained on, and only they
    /// meet the held-out voices.
    #[test]
    fn the_plan_splits_by_text() {
        let p = plan(&opts()).unwrap();
        assert_eq!(p, plan(&opts()).unwrap());
        let train: BTreeSet<&str> = p
            .iter()
            .filter(|c| c.split == Split::Train)
            .map(|c| c.text.as_str())
            .collect();
        let held: BTreeSet<&str> = p
            .iter()
            .filter(|c| c.split != Split::Train)
            .map(|c| c.text.as_str())
            .collect();
        assert!(train.is_disjoint(&held));
        assert!(!held.is_empty() && held.len() < 30, "{}", held.len());
        assert!(p
            .iter()
            .all(|c| (c.voice == "en-029") == (c.split == Split::HeldoutVoice)));
        let noisy = p.iter().filter(|c| c.snr_db.is_some()).count() as f64 / p.len() as f64;
        assert!((0.35..0.65).contains(&noisy), "{noisy}");
        let mut o = opts();
        o.seed = 4;
        assert_ne!(plan(&o).unwrap(), p);
    }

    /// Synthetic frames that spell their characters at speech's density (each character a
    /// fixed random pattern held for 3 of Whisper's frames, so 1.5 frames per character after
    /// the stride-2 stem; 140–190 words a minute give 1.4–1.9): the char branch learns to read
    /// them, held-out word orders included. The control for the real head's char floor.
    #[test]
    fn the_char_branch_reads_dense_synthetic_characters() {
        let tok = Tokenizer::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../earguard-model/tests/fixtures/hf/tiny-qwen2/tokenizer.json"
        )))
        .unwrap();
        let d = 16;
        let pattern = |c: char| -> Vec<f32> {
            (0..d)
                .map(|i| ((mix(&[u64::from(c), i as u64, 9]) % 200) as f32 / 100.0) - 1.0)
                .collect()
        };
        let words = [
            "the", "cat", "dog", "sat", "on", "a", "mat", "red", "big", "small", "tree", "bell",
        ];
        let mut data = Vec::new();
        for n in 0..160u64 {
            let len = 2 + (mix(&[n, 1]) % 4) as usize;
            let text: Vec<&str> = (0..len)
                .map(|i| words[(mix(&[n, i as u64, 2]) % words.len() as u64) as usize])
                .collect();
            let text = text.join(" ");
            let mut rows: Vec<f32> = vec![0f32; 2 * d];
            for c in text.chars() {
                for _ in 0..3 {
                    rows.extend(pattern(c));
                }
            }
            rows.extend(vec![0f32; 2 * d]);
            let frames = rows.len() / d;
            let split = if n < 140 {
                Split::Train
            } else {
                Split::Heldout
            };
            data.push((
                Clip {
                    id: format!("s{n}"),
                    text: text.clone(),
                    voice: "v".into(),
                    rate: 1,
                    snr_db: None,
                    split,
                    tokens: tok.encode(&text, false).unwrap(),
                    frames,
                },
                Tensor::from_vec(rows, (frames, d), &Device::Cpu).unwrap(),
            ));
        }
        let cfg = HeadTrainConfig {
            shape: HeadShape {
                d_model: 32,
                kernel: 5,
                layers: 0,
                input_norm: false,
                block_norm: false,
                attention_layers: 0,
                stride: 2,
            },
            epochs: 30,
            batch_size: 8,
            lr: 1e-2,
            weight_decay: 0.0,
            char_weight: 1.0,
            seed: 6,
            warmup_steps: 0,
            decay: Decay::Constant,
        };
        let dir =
            std::env::temp_dir().join(format!("earguard-speech-chars-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = train_head(&data, &tok, &cfg, &dir, false).unwrap();
        // Measured: char loss 3.58 → 0.26 (epoch 5) → 0.002 (epoch 29), held-out char WER 0.
        let last = r.last().unwrap();
        assert!(r[0].char_loss > 2.0 && last.char_loss < 0.1, "{r:?}");
        assert!(last.char_wer["heldout"] < 0.1, "{last:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Synthetic frames that spell their tokens (each token a fixed random pattern held for a
    /// few frames, blanks between): the head learns them, and a run stopped after one epoch and
    /// resumed ends with the same weights as an uninterrupted run.
    #[test]
    fn training_learns_and_resumes_exactly() {
        let tok = Tokenizer::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../earguard-model/tests/fixtures/hf/tiny-qwen2/tokenizer.json"
        )))
        .unwrap();
        let d = 16;
        let pattern = |k: u32| -> Vec<f32> {
            (0..d)
                .map(|i| ((mix(&[u64::from(k), i as u64]) % 200) as f32 / 100.0) - 1.0)
                .collect()
        };
        let texts = ["a cat", "the dog", "a dog", "the cat", "cat dog"];
        let mut data = Vec::new();
        for (n, text) in texts.iter().cycle().take(40).enumerate() {
            let tokens = tok.encode(text, false).unwrap();
            let mut rows: Vec<f32> = Vec::new();
            for &t in &tokens {
                for _ in 0..6 {
                    rows.extend(pattern(t));
                }
                rows.extend(vec![0f32; 2 * d]);
            }
            let frames = rows.len() / d;
            let split = if n < 35 { Split::Train } else { Split::Heldout };
            data.push((
                Clip {
                    id: format!("c{n}"),
                    text: text.to_string(),
                    voice: "v".into(),
                    rate: 1,
                    snr_db: None,
                    split,
                    tokens,
                    frames,
                },
                Tensor::from_vec(rows, (frames, d), &Device::Cpu).unwrap(),
            ));
        }
        let cfg = HeadTrainConfig {
            shape: HeadShape {
                d_model: 24,
                kernel: 3,
                layers: 1,
                input_norm: true,
                block_norm: true,
                attention_layers: 1,
                stride: 2,
            },
            epochs: 2,
            batch_size: 4,
            lr: 1e-2,
            weight_decay: 0.0,
            char_weight: 0.5,
            seed: 5,
            warmup_steps: 0,
            decay: Decay::Constant,
        };
        let dir =
            std::env::temp_dir().join(format!("earguard-speech-train-{}", std::process::id()));
        let (whole, halves) = (dir.join("whole"), dir.join("halves"));
        let _ = std::fs::remove_dir_all(&dir);
        let r = train_head(&data, &tok, &cfg, &whole, false).unwrap();
        train_head(
            &data,
            &tok,
            &HeadTrainConfig {
                epochs: 1,
                ..cfg.clone()
            },
            &halves,
            false,
        )
        .unwrap();
        train_head(&data, &tok, &cfg, &halves, false).unwrap();
        let w = |p: &Path| std::fs::read(p.join(HEAD_WEIGHTS)).unwrap();
        assert_eq!(w(&whole), w(&halves), "resumed weights differ");
        // Longer training learns the synthetic tokens.
        let long = HeadTrainConfig {
            epochs: 25,
            ..cfg.clone()
        };
        let r2 = train_head(&data, &tok, &long, &whole, false).unwrap();
        assert!(
            r2.last().unwrap().token_loss < 0.5 * r[0].token_loss,
            "{r2:?}"
        );
        assert!(r2.last().unwrap().wer["heldout"] < 0.2, "{:?}", r2.last());
        // A decaying rate ties the run to its epoch count: continuing it for more epochs
        // would change the rate of every step already taken, so it is another run.
        let linear = HeadTrainConfig {
            warmup_steps: 2,
            decay: Decay::Linear,
            ..cfg.clone()
        };
        let lin_dir = dir.join("linear");
        train_head(&data, &tok, &linear, &lin_dir, false).unwrap();
        let more = HeadTrainConfig {
            epochs: 3,
            ..linear.clone()
        };
        assert!(train_head(&data, &tok, &more, &lin_dir, false).is_err());
        // Another config is refused in the same directory.
        let other = HeadTrainConfig { lr: 0.5, ..cfg };
        assert!(train_head(&data, &tok, &other, &whole, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
