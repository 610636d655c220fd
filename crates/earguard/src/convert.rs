//! `earguard convert`: turn checkpoints of other runtimes into HF-named ones earguard loads.
//!
//! `earguard convert ct2-whisper IN_DIR OUT_DIR` reads a CTranslate2 Whisper model
//! (`IN_DIR/model.bin`, e.g. faster-whisper's, as `scripts/fetch-models.sh whisper-base`
//! installs) and writes the encoder as an HF Whisper checkpoint: `OUT_DIR/model.safetensors`
//! (f32, `model.encoder.*` names), `config.json`, `preprocessor_config.json` and a copy of
//! `tokenizer.json`. The name mapping is documented in `earguard_model::ct2`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use earguard_model::ct2::convert_ct2_whisper;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(subcommand)]
    pub command: ConvertCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConvertCommand {
    /// CTranslate2 Whisper model (model.bin) -> HF-named encoder (model.safetensors + config.json).
    #[command(name = "ct2-whisper")]
    Ct2Whisper {
        /// Directory holding the CTranslate2 model.bin (and optionally tokenizer.json).
        in_dir: PathBuf,
        /// Directory to write model.safetensors, config.json, preprocessor_config.json into
        /// (created if needed; existing files of those names are replaced).
        out_dir: PathBuf,
    },
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    match args.command {
        ConvertCommand::Ct2Whisper { in_dir, out_dir } => {
            convert_ct2_whisper(&in_dir, &out_dir).with_context(|| {
                format!("converting {} to {}", in_dir.display(), out_dir.display())
            })?;
            println!(
                "wrote {} (HF Whisper encoder: model.safetensors, config.json, preprocessor_config.json)",
                out_dir.display()
            );
            Ok(())
        }
    }
}
