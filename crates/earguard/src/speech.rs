//! `earguard speech`: build the speech head of a speech-language model from real parts
//! (Whisper-base encoder → CTC over the LLM's vocabulary; LegoSLM, arXiv 2505.11352).
//!
//! `prepare` renders training texts with espeak-ng and stores the frozen encoder's frames;
//! `train` fits the head on them with CTC; `transcribe` prints a head's greedy transcripts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use earguard_data::{PromptItem, PromptSet, ReadOptions};
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::speech::{HeadShape, ListenerKind, SpeechHead, SpeechModelConfig, Transcript};
use earguard_model::whisper::WhisperEncoder;
use earguard_model::Model;
use earguard_train::speech::{self as sp, HeadTrainConfig, PrepareOptions};
use serde::Serialize;

const SHARED: &str = "../shared/data";

#[derive(Subcommand)]
pub enum SpeechCommand {
    /// Render texts (espeak-ng; several voices, rates and seeded noise) and store the frozen
    /// Whisper encoder's frames of each clip, its real length. Resumable: run it again to go on.
    Prepare(PrepareArgs),
    /// Train the CTC head on a prepared directory (token CTC + char CTC); resumable per epoch.
    Train(HeadArgs),
    /// Greedy transcripts of audio files by a trained head (token and char branches).
    Transcribe(TranscribeArgs),
    /// Write a trained head with its weights in f16 (half the size; what is committed).
    ExportHead(ExportArgs),
    /// Did the model understand spoken questions? From two finished `eval` runs of the same
    /// questions (audio-only and text-only): word-F1 retrieval, and optionally a model judge
    /// asked whether each spoken answer addresses its question, with the judge's controls.
    Understand(UnderstandArgs),
    /// Make a speech model directory from a trained head, the Whisper encoder and the LLM it
    /// was trained for: usable as `--model DIR` everywhere (generate --audio, eval's audio
    /// modes, fit, sweep).
    Build(BuildArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// A trained head directory.
    #[arg(long)]
    pub head: PathBuf,
    /// Where to write head.json and head.safetensors (f16).
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct BuildArgs {
    /// How the model hears: a trained CTC head (--head), or Whisper's own decoder (its
    /// CTranslate2 or HF directory is copied whole into the model).
    #[arg(long, value_enum, default_value = "ctc-head")]
    pub listener: crate::args::ListenerArg,
    /// A trained head directory (head.json + head.safetensors), for the ctc-head listener.
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// The LLM the head emits tokens of (a short name or a path; recorded as given).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub llm: String,
    #[arg(long, default_value = "models/whisper-base")]
    pub whisper: PathBuf,
    /// Posterior temperature of the pseudo-audio embeddings.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// The model directory to write (speech.json, encoder/, head/).
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Output directory (plan.jsonl, shards/, encoder/).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Training texts (JSONL prompt sets, split "train" only). Default: the speech corpus and
    /// the train prompt sets in ../shared/data.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Only the first N texts of each file.
    #[arg(long)]
    pub limit: Option<usize>,
    /// espeak-ng voices for training clips.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "en-us,en-gb,en-gb-x-rp,en-us+f3,en-gb-scotland+m3"
    )]
    pub voices: Vec<String>,
    /// Voices used only for held-out texts (never in training).
    #[arg(long, value_delimiter = ',', default_value = "en-029,en-us+f4")]
    pub heldout_voices: Vec<String>,
    /// Speaking rates (words per minute).
    #[arg(long, value_delimiter = ',', default_value = "140,165,190")]
    pub rates: Vec<u32>,
    /// Renders per training text.
    #[arg(long, default_value_t = 1, value_parser = crate::args::positive)]
    pub renders: usize,
    /// Fraction of clips with white noise.
    #[arg(long, default_value_t = 0.3)]
    pub noise: f64,
    /// SNR range of that noise, dB (LOW:HIGH).
    #[arg(long, default_value = "10:30")]
    pub snr: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Whisper model directory (CTranslate2 model.bin or HF safetensors).
    #[arg(long, default_value = "models/whisper-base")]
    pub whisper: PathBuf,
    /// The LLM whose tokens the head will emit (its tokenizer is used).
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// espeak-ng render cache.
    #[arg(long, default_value = "out/tts-cache")]
    pub tts_dir: PathBuf,
    /// Clips per shard (the unit of resume).
    #[arg(long, default_value_t = 256, value_parser = crate::args::positive)]
    pub shard_size: usize,
}

#[derive(Args)]
pub struct HeadArgs {
    /// A directory made by `speech prepare`.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: head.json, head.safetensors, train.jsonl, checkpoint.
    #[arg(long, short)]
    pub out: PathBuf,
    /// The LLM the data was tokenized for (for held-out transcripts).
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    #[arg(long, default_value_t = HeadTrainConfig::default().epochs, value_parser = crate::args::positive)]
    pub epochs: usize,
    #[arg(long, default_value_t = HeadTrainConfig::default().batch_size, value_parser = crate::args::positive)]
    pub batch_size: usize,
    #[arg(long, default_value_t = HeadTrainConfig::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = HeadTrainConfig::default().shape.d_model, value_parser = crate::args::positive)]
    pub d_model: usize,
    #[arg(long, default_value_t = HeadTrainConfig::default().shape.layers)]
    pub layers: usize,
    #[arg(long, default_value_t = HeadTrainConfig::default().shape.kernel)]
    pub kernel: usize,
    /// Layer-normalise the encoder frames before the head's convolutions.
    #[arg(long)]
    pub input_norm: bool,
    /// Pre-norm residual blocks, each starting as the identity (convolution at zero).
    #[arg(long)]
    pub block_norm: bool,
    /// Self-attention layers after the convolutions (4 heads; context across the whole clip).
    #[arg(long, default_value_t = 0)]
    pub attention_layers: usize,
    /// Stride of the head's first convolution over Whisper's 50 frames per second (1 to 4).
    #[arg(long, default_value_t = 2)]
    pub stride: usize,
    /// Weight of the char CTC loss.
    #[arg(long, default_value_t = HeadTrainConfig::default().char_weight)]
    pub char_weight: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Linear warm-up of the learning rate over this many steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// After warm-up: constant, or linear to zero at the end of --epochs (then a resumed run
    /// must keep --epochs).
    #[arg(long, value_enum, default_value = "constant")]
    pub decay: crate::train::DecayArg,
}

#[derive(Args)]
pub struct TranscribeArgs {
    /// A speech model (a directory made by `speech build`).
    #[arg(long, short)]
    pub model: String,
    /// An audio manifest (JSONL with text and audio, as `earguard tts` writes): transcribe
    /// every item and print the greedy WER per voice, then overall, as JSON lines.
    #[arg(long, conflicts_with = "audio")]
    pub data: Option<PathBuf>,
    /// Audio files to transcribe (one JSON line each).
    pub audio: Vec<PathBuf>,
    /// With --data: also write the manifest as a text prompt set whose items read their greedy
    /// transcripts (`text`; the spoken text kept as `reference`): what the model would do
    /// with the head's hard transcript as text (`eval --mode text-only --data FILE`), to tell
    /// misrecognition from the modality itself.
    #[arg(long, requires = "data")]
    pub as_text: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_long_help = "\
Word-F1 retrieval (no judge): a spoken answer addresses its question when, by word-overlap F1,
it is closer to the text answer of its own question than to any other question's (chance 1/N).
--judge MODEL also asks that model, of each spoken answer and the question as written, whether
the answer answers this question (the log-odds of answering 1 against 0), and measures the
judge on two controls of known truth per question: its own text answer (should be judged an
answer) and the text answer to the question half the list away (should not). The threshold on
the log-odds is the one that best separates the controls (a small judge leans to 0). The
output says whether the judge gets at least 90 % of each control right there (if not, its rate
does not measure understanding; nothing stops), and the spoken rate corrected for its errors
on the controls (Rogan-Gladen). On 2 cores the 1.5B judge takes about 5 s per answer judged,
3 per question: some 10 min for 40 questions.
Example:
  earguard speech understand --text out/demo-audio/runs/understanding/text-only \\
      --spoken out/demo-audio/runs/understanding/audio-only --judge qwen2.5-coder-1.5b-instruct")]
pub struct UnderstandArgs {
    /// A finished text-only run of the questions.
    #[arg(long)]
    pub text: PathBuf,
    /// A finished audio-only run of the same questions, spoken.
    #[arg(long)]
    pub spoken: PathBuf,
    /// A local model to judge whether each spoken answer addresses its question.
    #[arg(long)]
    pub judge: Option<String>,
    /// Write the judged rows (per question: log-odds of the spoken answer and of both
    /// controls) to this JSONL file.
    #[arg(long, requires = "judge")]
    pub rows: Option<PathBuf>,
}

/// Both understanding measures of two finished runs (the judged one when `judge` names a model).
pub struct Understood {
    pub retrieval: earguard_eval::understanding::Understanding,
    pub judged: Option<earguard_eval::understanding::JudgedUnderstanding>,
}

pub fn understood(text: &Path, spoken: &Path, judge: Option<&str>) -> Result<Understood> {
    use earguard_eval::runner;
    use earguard_eval::understanding::{closest_answers, judge_answers, LlmAddressJudge};
    let read = |dir: &Path| -> Result<Vec<runner::ResultRow>> {
        runner::read_results(&dir.join(runner::RESULTS))
            .with_context(|| format!("reading the answers of {}", dir.display()))
    };
    let (text, spoken) = (read(text)?, read(spoken)?);
    // A rendering in one of several voices is the item ID@VOICE: compare one voice at a time,
    // by its question's id.
    let mut voices: Vec<&str> = spoken.iter().filter_map(|r| r.voice.as_deref()).collect();
    voices.sort_unstable();
    voices.dedup();
    if voices.len() > 1 {
        bail!(
            "the spoken answers are in {} voices ({}): compare one voice at a time (a manifest \
             spoken in one voice)",
            voices.len(),
            voices.join(", ")
        );
    }
    let question_id = |r: &runner::ResultRow| -> String {
        r.voice
            .as_deref()
            .and_then(|v| r.id.strip_suffix(&format!("@{v}")))
            .unwrap_or(&r.id)
            .to_string()
    };
    let asked: std::collections::HashMap<&str, &str> = text
        .iter()
        .map(|r| (r.id.as_str(), r.prompt.as_str()))
        .collect();
    for r in &spoken {
        let id = question_id(r);
        if let Some(q) = asked.get(id.as_str()) {
            if *q != r.prompt {
                bail!(
                    "question {id} reads {q:?} in the text run but {:?} in the spoken run: \
                     compare runs of the same questions",
                    r.prompt
                );
            }
        }
    }
    let text_answers: Vec<(String, String)> = text
        .iter()
        .map(|r| (r.id.clone(), r.response.clone()))
        .collect();
    let spoken_answers: Vec<(String, String)> = spoken
        .iter()
        .map(|r| (question_id(r), r.response.clone()))
        .collect();
    let retrieval = closest_answers(&spoken_answers, &text_answers)?;
    let judged = match judge {
        None => None,
        Some(spec) => {
            let questions: Vec<(String, String)> = text
                .iter()
                .map(|r| (r.id.clone(), r.prompt.clone()))
                .collect();
            let judge = LlmAddressJudge::load(spec, &crate::device()?)?;
            Some(judge_answers(
                &judge,
                &questions,
                &spoken_answers,
                &text_answers,
                8,
                crate::progress_bars(),
            )?)
        }
    };
    Ok(Understood { retrieval, judged })
}

/// The judged rows (per question: the log-odds of the spoken answer and of both controls), as
/// JSONL.
pub fn write_judged_rows(
    path: &Path,
    j: &earguard_eval::understanding::JudgedUnderstanding,
) -> Result<()> {
    let mut text = String::new();
    for r in &j.rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::write_file(path, text.as_bytes())
}

/// "31 of 40 (78 %; chance 2.5 %; word F1 to its own text answer 0.65, to the others' 0.12)".
pub fn retrieval_sentence(u: &earguard_eval::understanding::Understanding) -> String {
    format!(
        "{} of {} ({:.0} %; chance {:.1} %; word F1 to its own text answer {:.2}, to the others' {:.2})",
        u.addressed,
        u.questions,
        100.0 * u.rate,
        100.0 * u.chance,
        u.mean_f1_own,
        u.mean_f1_other
    )
}

/// The judged measure and its controls in one sentence.
pub fn judged_sentence(j: &earguard_eval::understanding::JudgedUnderstanding) -> String {
    format!(
        "{}: {} of spoken answers judged to answer their question (log-odds above {:.2}, the \
         threshold that best separates the controls; their ROC area {:.2}); controls: own text \
         answers {} (should be all), other questions' text answers {} (should be none){}; \
         corrected for the judge's errors on them {}",
        j.judge,
        j.spoken.display_percent(),
        j.threshold,
        j.controls_auc,
        j.own_text.display_percent(),
        j.other_text.display_percent(),
        if j.controls_passed() {
            ""
        } else {
            " — the judge FAILS its controls (below 90 % right on either), so its rate does not \
             measure understanding"
        },
        j.corrected
            .map_or("– (the controls do not separate)".into(), |c| format!(
                "{:.0} %",
                100.0 * c
            ))
    )
}

fn understand(a: UnderstandArgs) -> Result<()> {
    let u = understood(&a.text, &a.spoken, a.judge.as_deref())?;
    println!("word-F1 retrieval: {}", retrieval_sentence(&u.retrieval));
    let missed = |ids: &[String]| {
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.join(", ")
        }
    };
    println!("not closest to their own: {}", missed(&u.retrieval.missed));
    if let Some(j) = &u.judged {
        println!("judged: {}", judged_sentence(j));
        println!("judged not to answer: {}", missed(&j.missed));
        if let Some(path) = &a.rows {
            write_judged_rows(path, j)?;
        }
    }
    println!(
        "{}",
        serde_json::json!({"retrieval": u.retrieval, "judged": u.judged})
    );
    Ok(())
}

/// A Whisper encoder from a CTranslate2 or HF directory (a CTranslate2 model is converted once
/// into `cache`).
fn load_encoder(dir: &Path, cache: &Path) -> Result<WhisperEncoder> {
    let hf = if dir.join("model.safetensors").is_file() {
        dir.to_path_buf()
    } else if dir.join("model.bin").is_file() {
        if !cache.join("model.safetensors").is_file() {
            earguard_model::ct2::convert_ct2_whisper(dir, cache)
                .with_context(|| format!("converting {}", dir.display()))?;
        }
        cache.to_path_buf()
    } else {
        bail!(
            "{}: no model.safetensors or CTranslate2 model.bin (fetch one with \
             `scripts/fetch-models.sh whisper-base`)",
            dir.display()
        );
    };
    Ok(WhisperEncoder::load_hf_dir(&hf, &Device::Cpu)?)
}

fn parse_snr(s: &str) -> Result<(f32, f32)> {
    let (a, b) = s
        .split_once(':')
        .with_context(|| format!("--snr {s}: expected LOW:HIGH in dB, e.g. 10:30"))?;
    let (a, b): (f32, f32) = (a.trim().parse()?, b.trim().parse()?);
    if !(a.is_finite() && b.is_finite() && a <= b) {
        bail!("--snr {s}: LOW and HIGH must be finite with LOW <= HIGH");
    }
    Ok((a, b))
}

pub fn run(cmd: SpeechCommand) -> Result<()> {
    match cmd {
        SpeechCommand::Prepare(a) => prepare(a),
        SpeechCommand::Train(a) => train(a),
        SpeechCommand::Transcribe(a) => transcribe(a),
        SpeechCommand::Build(a) => build(a),
        SpeechCommand::ExportHead(a) => export_head(a),
        SpeechCommand::Understand(a) => understand(a),
    }
}

fn export_head(a: ExportArgs) -> Result<()> {
    use earguard_model::speech::{HEAD_CONFIG, HEAD_WEIGHTS};
    SpeechHead::load(&a.head, &Device::Cpu)
        .with_context(|| format!("reading the head {}", a.head.display()))?;
    let src = a.head.join(HEAD_WEIGHTS);
    let tensors = candle_core::safetensors::load(&src, &Device::Cpu)?;
    let half = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(candle_core::DType::F16)?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    std::fs::create_dir_all(&a.out)?;
    let dst = a.out.join(HEAD_WEIGHTS);
    earguard_data::atomic::write_with(&dst, |tmp| {
        candle_core::safetensors::save(&half, tmp).map_err(std::io::Error::other)
    })?;
    std::fs::copy(a.head.join(HEAD_CONFIG), a.out.join(HEAD_CONFIG))?;
    // The exported head must load and agree with the original within f16 rounding.
    SpeechHead::load(&a.out, &Device::Cpu)?;
    eprintln!(
        "{} → {} ({} bytes)",
        src.display(),
        dst.display(),
        std::fs::metadata(&dst)?.len()
    );
    Ok(())
}

fn build(a: BuildArgs) -> Result<()> {
    assemble(&a)?;
    let model = crate::args::load_model(&a.out.to_string_lossy(), false)
        .context("loading the model just built")?;
    println!("{}", serde_json::to_string(&model.info)?);
    Ok(())
}

/// Write a speech model directory (`a.out`): the head, the encoder (converted from
/// CTranslate2 when needed) and `speech.json` naming the LLM.
fn assemble(a: &BuildArgs) -> Result<()> {
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!("--temperature {} must be a positive number", a.temperature);
    }
    let listener = ListenerKind::from(a.listener);
    let head = match (listener, &a.head) {
        (ListenerKind::CtcHead, None) => {
            bail!("--head: the ctc-head listener needs a trained head")
        }
        (ListenerKind::WhisperDecoder, Some(_)) => {
            bail!("--head is for the ctc-head listener; the whisper-decoder listener has none")
        }
        (_, head) => head.as_ref(),
    };
    // Check the parts before writing anything.
    if let Some(head) = head {
        SpeechHead::load(head, &Device::Cpu)
            .with_context(|| format!("reading the head {}", head.display()))?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let cfg = match head {
        Some(head) => {
            let encoder = a.out.join("encoder");
            load_encoder(&a.whisper, &encoder)?;
            if a.whisper.join("model.safetensors").is_file() {
                std::fs::create_dir_all(&encoder)?;
                for f in ["config.json", "model.safetensors"] {
                    std::fs::copy(a.whisper.join(f), encoder.join(f))?;
                }
            }
            let dest = a.out.join("head");
            std::fs::create_dir_all(&dest)?;
            for f in [
                earguard_model::speech::HEAD_CONFIG,
                earguard_model::speech::HEAD_WEIGHTS,
            ] {
                std::fs::copy(head.join(f), dest.join(f))
                    .with_context(|| format!("copying {}", head.join(f).display()))?;
            }
            SpeechModelConfig {
                llm: a.llm.clone(),
                whisper: "encoder".into(),
                listener,
                head: Some("head".into()),
                temperature: a.temperature,
            }
        }
        None => {
            // Whisper's decoder needs the whole model as it is: copied, not converted.
            let dest = a.out.join("whisper");
            std::fs::create_dir_all(&dest)?;
            for f in [
                "model.bin",
                "model.safetensors",
                "config.json",
                "tokenizer.json",
            ] {
                if a.whisper.join(f).is_file() {
                    std::fs::copy(a.whisper.join(f), dest.join(f))
                        .with_context(|| format!("copying {}", a.whisper.join(f).display()))?;
                }
            }
            SpeechModelConfig {
                llm: a.llm.clone(),
                whisper: "whisper".into(),
                listener,
                head: None,
                temperature: a.temperature,
            }
        }
    };
    cfg.write(&a.out)?;
    Ok(())
}

fn prepare(a: PrepareArgs) -> Result<()> {
    let files = if a.data.is_empty() {
        [
            "speech_corpus",
            "harmful_train",
            "harmless_train",
            "figstep_mirror_train",
        ]
        .iter()
        .map(|n| Path::new(SHARED).join(format!("{n}.jsonl")))
        .collect()
    } else {
        a.data.clone()
    };
    let mut texts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in &files {
        let set = PromptSet::read(f, &ReadOptions::default())?;
        let n = a.limit.unwrap_or(usize::MAX);
        for item in set.items.into_iter().take(n) {
            if item.split.as_deref() != Some("train") {
                bail!(
                    "{}: item {} is in split {:?}; a speech head trains on split \"train\" only \
                     (never on the sets it is evaluated on)",
                    f.display(),
                    item.id,
                    item.split
                );
            }
            // The same text in two files is one text (one split, one set of renders).
            if seen.insert(item.text.clone()) {
                texts.push((item.id, item.text));
            }
        }
    }
    let model = crate::args::load_model(&a.model, false)?;
    let encoder = load_encoder(&a.whisper, &a.out.join("encoder"))?;
    let opts = PrepareOptions {
        out: a.out.clone(),
        tts_dir: a.tts_dir,
        texts,
        voices: a.voices,
        heldout_voices: a.heldout_voices,
        rates: a.rates,
        renders: a.renders,
        noise_fraction: a.noise,
        snr_db: parse_snr(&a.snr)?,
        seed: a.seed,
        shard_size: a.shard_size,
        progress: true,
    };
    let t0 = Instant::now();
    let clips = sp::prepare(&opts, &encoder, &model.tokenizer)?;
    let count = |s: sp::Split| clips.iter().filter(|c| c.split == s).count();
    eprintln!(
        "{} clips ({} train, {} held-out, {} held-out voice) in {:.0} s → {}",
        clips.len(),
        count(sp::Split::Train),
        count(sp::Split::Heldout),
        count(sp::Split::HeldoutVoice),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn train(a: HeadArgs) -> Result<()> {
    let cfg = HeadTrainConfig {
        shape: HeadShape {
            d_model: a.d_model,
            kernel: a.kernel,
            layers: a.layers,
            input_norm: a.input_norm,
            block_norm: a.block_norm,
            attention_layers: a.attention_layers,
            stride: a.stride,
        },
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: HeadTrainConfig::default().weight_decay,
        char_weight: a.char_weight,
        seed: a.seed,
        warmup_steps: a.warmup_steps,
        decay: a.decay.into(),
    };
    let model = crate::args::load_model(&a.model, false)?;
    let t0 = Instant::now();
    let data = sp::load_data(&a.data)?;
    eprintln!(
        "loaded {} clips in {:.1} s",
        data.len(),
        t0.elapsed().as_secs_f64()
    );
    let reports = sp::train_head(&data, &model.tokenizer, &cfg, &a.out, true)?;
    if let Some(last) = reports.last() {
        println!("{}", serde_json::to_string(last)?);
    }
    Ok(())
}

/// One clip of a manifest and what the head heard in it.
pub struct Heard {
    pub item: PromptItem,
    /// The manifest's voice, or "default".
    pub voice: String,
    /// The greedy transcript (token branch), decoded.
    pub text: String,
}

/// Greedy transcripts of every item of an audio manifest by a speech model's head.
pub fn transcribe_set(model: &Model, set: &PromptSet) -> Result<Vec<Heard>> {
    let bar = earguard_data::progress::bar(
        crate::progress_bars().then_some("transcribe"),
        "clips",
        set.items.len() as u64,
    );
    let mut out = Vec::with_capacity(set.items.len());
    for item in &set.items {
        let audio = item
            .audio
            .as_ref()
            .with_context(|| format!("{}: item {} has no audio", set.path.display(), item.id))?;
        out.push(Heard {
            item: item.clone(),
            voice: item.voice.clone().unwrap_or_else(|| "default".into()),
            text: transcript(model, audio)?,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// A greedy word error rate over the clips of one voice (or "all").
#[derive(Debug, Clone, Serialize)]
pub struct VoiceWer {
    pub voice: String,
    pub clips: usize,
    /// None when the references have no words.
    pub wer: Option<f64>,
}

/// Word error rate per voice (ascending voice names), then over all clips as "all".
pub fn wer_by_voice(heard: &[Heard]) -> Vec<VoiceWer> {
    let mut by_voice: std::collections::BTreeMap<&str, Vec<&Heard>> = Default::default();
    for h in heard {
        by_voice.entry(&h.voice).or_default().push(h);
    }
    let row = |voice: &str, hs: &[&Heard]| VoiceWer {
        voice: voice.to_string(),
        clips: hs.len(),
        wer: earguard_data::wer::wer(hs.iter().map(|h| (h.item.text.as_str(), h.text.as_str()))),
    };
    let mut rows: Vec<VoiceWer> = by_voice.iter().map(|(v, hs)| row(v, hs)).collect();
    rows.push(row("all", &heard.iter().collect::<Vec<_>>()));
    rows
}

/// The greedy transcript of one audio file by `model`'s listener.
fn transcript(model: &Model, path: &Path) -> Result<String> {
    let Some(earguard_model::audio::AudioFrontEnd::Speech(tower)) = &model.audio else {
        bail!(
            "{} is not a speech model (make one with `earguard speech build`)",
            model.info.name
        );
    };
    let audio = earguard_audio::load_audio(path, &Default::default())?;
    let mel = earguard_audio::MelExtractor::new(tower.n_mels())?.extract(&audio)?;
    let features =
        candle_core::Tensor::from_vec(mel.data, (mel.n_mels, mel.n_frames), &Device::Cpu)?;
    Ok(match tower.transcript(&features, mel.valid_frames)? {
        Transcript::LlmTokens(ids) => model.tokenizer.decode(&ids, true)?,
        Transcript::Text(text) => text,
    })
}

fn transcribe(a: TranscribeArgs) -> Result<()> {
    let model = crate::args::load_model(&a.model, true)?;
    let Some(data) = &a.data else {
        if a.audio.is_empty() {
            bail!("give audio files, or --data MANIFEST");
        }
        for path in &a.audio {
            println!(
                "{}",
                serde_json::json!({"audio": path, "transcript": transcript(&model, path)?})
            );
        }
        return Ok(());
    };
    let set = PromptSet::read(data, &ReadOptions::default())?;
    let heard = transcribe_set(&model, &set)?;
    if let Some(path) = &a.as_text {
        let mut as_text = String::new();
        for h in &heard {
            if h.text.trim().is_empty() {
                // A prompt set has no empty texts: the clip is left out of the text set, said.
                tracing::warn!(
                    "{}: nothing was heard in item {}; left out of --as-text",
                    data.display(),
                    h.item.id
                );
                continue;
            }
            let mut row = serde_json::to_value(&h.item)?;
            row["reference"] = row["text"].take();
            row["text"] = h.text.clone().into();
            row["audio"] = serde_json::Value::Null;
            as_text.push_str(&format!("{row}\n"));
        }
        earguard_data::atomic::write(path, as_text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for w in wer_by_voice(&heard) {
        let mut row = serde_json::to_value(&w)?;
        if w.voice != "all" {
            let examples: Vec<(&str, &str)> = heard
                .iter()
                .filter(|h| h.voice == w.voice)
                .take(3)
                .map(|h| (h.item.text.as_str(), h.text.as_str()))
                .collect();
            row["examples"] = serde_json::json!(examples);
        }
        println!("{row}");
    }
    Ok(())
}
