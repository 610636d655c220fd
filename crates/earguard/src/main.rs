//! `earguard`: load real LALM/LLM checkpoints, steer and evaluate their refusals.

mod audio;
mod bench;
mod bench_audio;
mod commands;
mod convert;
mod demo;
mod eval;
mod fit;
mod train;

use clap::{Parser, Subcommand};

/// earguard — make (audio-)language models refuse harmful requests without refusing benign
/// ones, and measure it.
///
/// Models are named by path (a .gguf file, a directory with model.gguf, or an HF directory with
/// config.json + safetensors) or by a short name installed by scripts/fetch-models.sh into
/// $EARGUARD_MODELS (default: the nearest ./models): qwen2.5-1.5b-instruct (default),
/// smollm2-135m-instruct. Audio-language models (Qwen2-Audio HF directories) also take speech:
/// `tts` renders prompt sets to WAV, `generate --audio`, `fit`/`eval --mode audio-text|audio-only`.
///
/// Typical flow: `fit sarsteer` → `generate --defense sarsteer=DIR` → `eval` / `sweep`.
/// Diagnostics go to stderr through `tracing`: warnings by default, `-v` adds progress
/// notes (info), `-vv` debug, `-vvv` trace; `-q` keeps errors only. `RUST_LOG` (e.g.
/// `RUST_LOG=earguard_model=debug`), when set, takes precedence over both.
#[derive(Parser)]
#[command(name = "earguard", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More diagnostics on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only on stderr: no warnings, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

/// Set once from `-q`: whether long jobs draw progress bars on stderr.
static PROGRESS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether to draw progress bars (false under `-q`).
pub(crate) fn progress_bars() -> bool {
    *PROGRESS.get().unwrap_or(&true)
}

/// Install the stderr log subscriber for the verbosity flags (or `RUST_LOG`).
fn init_logging(verbose: u8, quiet: bool) {
    let _ = PROGRESS.set(!quiet);
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match env.as_deref().map(tracing_subscriber::EnvFilter::try_new) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("warning: ignoring RUST_LOG ({e}); logging at {level}");
            tracing_subscriber::EnvFilter::new(level)
        }
        None => tracing_subscriber::EnvFilter::new(level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, quantization and chat template.
    Inspect(commands::InspectArgs),
    /// Generate a reply to one prompt (streamed to stdout), optionally defended, optionally JSON.
    Generate(commands::GenerateArgs),
    /// Render prompt sets to speech offline (espeak-ng, 16 kHz mono WAV, cached) with a manifest.
    Tts(audio::TtsArgs),
    /// Whisper log-mel features of one audio file, as HF's WhisperFeatureExtractor computes them.
    Features(audio::FeaturesArgs),
    /// Fit a steering vector from prompt sets (captures are cached and resumable).
    #[command(subcommand)]
    Fit(fit::FitCommand),
    /// Export a steering vector to another tool's format (llama.cpp control vector).
    Export(fit::ExportArgs),
    /// Import a llama.cpp control vector as an earguard steering vector.
    Import(fit::ImportArgs),
    /// Evaluate a defense: responses, judges, ASR / ORR / NSI with intervals, report + plots.
    Eval(eval::EvalArgs),
    /// Merge shard runs (`eval --shard I/N`) into one run and report.
    Merge(eval::MergeArgs),
    /// Sweep SARSteer's strength, layer sets and k/λ refits; pick the strongest within an ORR budget.
    Sweep(eval::SweepArgs),
    /// The main job: fit SARSteer on the default model and compare defenses end to end.
    Demo(demo::DemoArgs),
    /// Convert checkpoints from other formats (CTranslate2 Whisper → HF safetensors).
    Convert(convert::ConvertArgs),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Fine-tune LoRA adapters (RRS, SFT-shallow-mirror) into a PEFT adapter directory.
    Train(train::TrainArgs),
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect(args),
        Command::Generate(args) => commands::generate(args),
        Command::Tts(args) => audio::tts(args),
        Command::Features(args) => audio::features(args),
        Command::Fit(cmd) => fit::run(cmd),
        Command::Export(args) => fit::export(args),
        Command::Import(args) => fit::import(args),
        Command::Eval(args) => eval::eval(args),
        Command::Merge(args) => eval::merge(args),
        Command::Sweep(args) => eval::sweep(args),
        Command::Demo(args) => demo::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Train(args) => train::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
