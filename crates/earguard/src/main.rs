//! `earguard`: load real LALM/LLM checkpoints, steer and evaluate their refusals.

mod bench;
mod commands;

use clap::{Parser, Subcommand};

/// earguard — make (audio-)language models refuse harmful requests without refusing benign
/// ones, and measure it.
///
/// Models are named by path (a .gguf file, a directory with model.gguf, or an HF directory with
/// config.json + safetensors) or by a short name installed by scripts/fetch-models.sh into
/// $EARGUARD_MODELS (default: the nearest ./models): qwen2.5-1.5b-instruct (default),
/// smollm2-135m-instruct.
#[derive(Parser)]
#[command(name = "earguard", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, quantization and chat template.
    Inspect(commands::InspectArgs),
    /// Generate a reply to one prompt (streamed to stdout), optionally as JSON.
    Generate(commands::GenerateArgs),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect(args),
        Command::Generate(args) => commands::generate(args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
