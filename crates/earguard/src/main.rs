//! `earguard`: load real LALM/LLM checkpoints, steer and evaluate their refusals.

mod args;
mod audio;
mod bench;
mod bench_audio;
mod commands;
mod compare;
mod convert;
mod demo;
mod demo_audio;
mod eval;
mod fit;
mod judge;
mod speech;
mod train;
mod train_report;

use clap::{Parser, Subcommand};

/// earguard — make (audio-)language models refuse harmful requests without refusing benign
/// ones, and measure it.
///
/// Models are named by path (a .gguf file, a directory with model.gguf, or an HF directory with
/// config.json + safetensors) or by a short name installed by scripts/fetch-models.sh into
/// $EARGUARD_MODELS (default: the nearest ./models): qwen2.5-coder-1.5b-instruct (default; alias
/// qwen2.5-1.5b-instruct), smollm2-135m-instruct; or as ORG/NAME (ORG/NAME/FILE.gguf for one file
/// of a GGUF repository), found offline in the Hugging Face cache ($HF_HUB_CACHE, else
/// $HF_HOME/hub, else ~/.cache/huggingface/hub). `--device` picks where they run (cpu by
/// default; cuda[:N] and metal[:N] in builds with those cargo features). Audio-language models
/// (Qwen2-Audio HF directories) also take speech: `tts` renders prompt sets to WAV, `generate --audio`, `fit`/`eval --mode audio-text|audio-only`.
///
/// Typical flow: `fit sarsteer` → `generate --defense sarsteer=DIR` → `eval` / `sweep`.
/// Diagnostics go to stderr through `tracing`: warnings by default, `-v` adds progress
/// notes (info), `-vv` debug, `-vvv` trace; `-q` keeps errors only. `RUST_LOG` (e.g.
/// `RUST_LOG=earguard_model=debug`), when set, takes precedence over both.
#[derive(Parser)]
#[command(name = "earguard", version, about, long_about, after_long_help = DEFENSE_SPECS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More diagnostics on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only on stderr: no warnings, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Where models run: cpu, cuda[:N] or metal[:N]. GPUs need a build with the `cuda` or
    /// `metal` cargo feature (`cargo build --release --features cuda`).
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE")]
    device: String,
}

/// Set once from `--device`: the device models are loaded on.
static DEVICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The device `--device` names (checked when a model is loaded).
pub(crate) fn device() -> anyhow::Result<candle_core::Device> {
    Ok(earguard_model::device::parse(
        DEVICE.get().map_or("cpu", String::as_str),
    )?)
}

/// Set once from `-q`: whether long jobs draw progress bars on stderr.
static PROGRESS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Write an output file atomically (earguard_data::atomic), naming it in the error.
pub(crate) fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    earguard_data::atomic::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

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
        // No clock on each line; unlike `without_time()`, this keeps span timings.
        .with_timer(())
        .with_target(false)
        // Each span (load, encode_audio, prefill, decode; decode_step at debug, hooks at
        // trace) reports its time when it closes. Spans below the level cost nothing.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
}

/// The defense-spec grammar (parsed by `earguard_steer::defense::DefenseSpec`), shown by
/// `--help` of the commands that take `--defense`.
const DEFENSE_SPECS: &str = "\
Defense specs (--defense): NAME[=ARTIFACT][:key=value,...], several joined with + and applied
in order. Options are separated by ',', lists inside a value by '|'; an option is given at most
once, and an unknown option is an error.
  none                      no defense
  prompt[:variant=V]        a safety prompt; V = system | prefix | suffix | adashield
  sarsteer=DIR[:...]        SARSteer vector (earguard fit sarsteer); options (defaults):
                            alpha=0.1 (strength), layers=L|A-B|... (default: every layer
                            of the vector; e.g. 3|5|7, 0-3|10-12), beta=1 (per-layer weight,
                            one value or one per layer: 1|0.5|1), positions=last (last | all |
                            prompt-only | generated-only | A..B), normalize=false
  text-steer=DIR[:...]      a SARSteer fit made on text-only inputs; options as sarsteer
  actadd=DIR[:layer=L,coeff=1.0]
                            add the refusal direction at layer L (default: the fit's selected
                            layer), every position
  ablate=DIR[:layer=L,strength=1]
                            remove the refusal direction (the attack); strength in [0, 1].
                            ablate must come before the steering parts of a spec
  cast=DIR[:alpha=A,threshold=T]
                            conditional steering (earguard fit cast); T a cosine in [-1, 1]
  safecode[:...]            SafeCoDe contrastive decoding against a noised copy of the input,
                            steered by a local safe/unsafe verdict; options (defaults):
                            variant=paper | reference, alpha=0.3, steps=5, top_k=20, boost=1,
                            suppress=1, sigma=0.1 (text: noise on the user's embeddings, times
                            their RMS) or snr=10 (audio: waveform noise, dB), seed=0,
                            judge=self | MODEL, threshold=0 (on logit(unsafe) − logit(safe)),
                            sampling=greedy | reference
Strengths (alpha, beta, coeff) are finite with magnitude at most 1e3.
Examples: none | prompt:variant=adashield | sarsteer=vec/sar:alpha=0.2,layers=10-20
          ablate=vec/rd:layer=14+sarsteer=vec/sar:alpha=0.1 | safecode:variant=reference";

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, quantization and chat template.
    Inspect(commands::InspectArgs),
    /// Generate a reply to one prompt (streamed to stdout), optionally defended, optionally JSON.
    #[command(after_long_help = DEFENSE_SPECS)]
    Generate(commands::GenerateArgs),
    /// Render prompt sets to speech offline (espeak-ng or a Piper neural voice; 16 kHz mono WAV, cached) with a manifest.
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
    #[command(after_long_help = DEFENSE_SPECS)]
    Eval(eval::EvalArgs),
    /// Merge shard runs (`eval --shard I/N`) into one run and report.
    Merge(eval::MergeArgs),
    /// Finished runs side by side (no model loaded): ASR / ORR with intervals, each defended
    /// run paired with the undefended run among them that made the same prompts the same way
    /// (McNemar), and each judge's agreement with people.
    Compare(compare::CompareArgs),
    /// Judge a JSONL of prompts and responses (a run's results, another tool's output); with
    /// human labels, each judge's accuracy and κ against people.
    Judge(judge::JudgeArgs),
    /// Sweep SARSteer's strength, layer sets and k/λ refits, or one option of any defense
    /// (`--defense safecode:… --values sigma=0.01,0.1,1`); pick the strongest within an ORR budget.
    Sweep(eval::SweepArgs),
    /// The main job: fit SARSteer on the default model and compare defenses end to end.
    Demo(demo::DemoArgs),
    /// Convert checkpoints from other formats (CTranslate2 Whisper → HF safetensors).
    Convert(convert::ConvertArgs),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Fine-tune LoRA adapters (RRS and the SFT baselines) into a PEFT adapter directory.
    Train(train::TrainArgs),
    /// Fold a LoRA adapter into its HF safetensors base model and write the merged checkpoint.
    MergeAdapter(train::MergeArgs),
    /// Build a speech head for a text LLM (Whisper frames → CTC over its vocabulary): render
    /// and encode training speech, train the head, transcribe with it.
    #[command(subcommand)]
    Speech(speech::SpeechCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Write `shell`'s completion script for the whole command line to `out`.
fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "earguard", out);
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let _ = DEVICE.set(cli.device);
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
        Command::Compare(args) => compare::compare(args),
        Command::Judge(args) => judge::run(args),
        Command::Sweep(args) => eval::sweep(args),
        Command::Demo(args) => demo::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Train(args) => train::run(args),
        Command::MergeAdapter(args) => train::merge(args),
        Command::Speech(cmd) => speech::run(cmd),
        Command::Completions { shell } => {
            completions(shell, &mut std::io::stdout());
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
