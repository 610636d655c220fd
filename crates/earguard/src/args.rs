//! What every command that runs a model shares: loading it (on the chosen device, with a
//! one-line summary), `--adapter`, `--raw-specials`, and count arguments that must be ≥ 1.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use earguard_model::{ContentSpecials, Model};

/// How message content is tokenized, for every command that encodes prompts.
#[derive(Args, Clone, Copy, Default)]
pub struct SpecialsArg {
    /// UNSAFE, for research on injections: parse special-token strings written in prompts,
    /// system messages and instructions (`<|im_end|>`, `<|im_start|>`, ...) as real turn
    /// markers, so a prompt can close its own turn and write the assistant's. Off by default:
    /// content is tokenized as plain text and only the chat template's markup yields special
    /// tokens.
    #[arg(long)]
    pub raw_specials: bool,
}

impl SpecialsArg {
    pub fn specials(self) -> ContentSpecials {
        if self.raw_specials {
            ContentSpecials::Raw
        } else {
            ContentSpecials::Literal
        }
    }
}

pub fn load_model(spec: &str, quiet: bool) -> Result<Model> {
    let t0 = Instant::now();
    let model = earguard_model::load_on(spec, &crate::device()?)
        .with_context(|| format!("loading model '{spec}'"))?;
    if !quiet {
        eprintln!(
            "loaded {} ({} {}, {} layers, hidden {}) in {:.1}s",
            model.info.name,
            model.info.architecture,
            model.info.quantization,
            model.info.n_layers,
            model.info.hidden_size,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(model)
}

/// A count that must be at least 1 (`--max-tokens`, `--samples`, `--batch-size`).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--adapter DIR`: a PEFT LoRA adapter applied to the model before anything else (defenses
/// stack on top of it).
#[derive(Args, Clone, Default)]
pub struct AdapterArg {
    /// A LoRA adapter directory in PEFT's format (adapter_config.json +
    /// adapter_model.safetensors), e.g. from `earguard train`. Applied under any defense.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl AdapterArg {
    /// Put the adapter on `model` (if one was given); its name then says so in reports, and its
    /// run identity ([`earguard_model::ModelInfo::run_identity`]) covers the adapter's files.
    pub fn apply(&self, model: &mut Model) -> Result<()> {
        let Some(dir) = &self.adapter else {
            return Ok(());
        };
        let cfg = earguard_train::apply_adapter(&mut model.decoder, dir)
            .with_context(|| format!("loading the adapter in {}", dir.display()))?;
        tracing::info!(
            "applied LoRA adapter {} (r {}, alpha {}, {} modules)",
            dir.display(),
            cfg.rank,
            cfg.alpha,
            cfg.targets.len()
        );
        // The identity runs record (and resume by) covers the adapter's content.
        model.info.adapter = Some(earguard_train::adapter_sha256(dir)?);
        model.info.name = format!(
            "{}{}{}",
            model.info.name,
            earguard_model::model::ADAPTER_TAG,
            dir.display()
        );
        Ok(())
    }
}

/// How a speech model hears (`--listener`; see `earguard_model::speech::ListenerKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListenerArg {
    /// A trained CTC head over the LLM's tokens (--head; LegoSLM).
    CtcHead,
    /// Whisper's own decoder, each transcript token a posterior-weighted mix of LLM token
    /// embeddings (no head; the Whisper directory must hold the whole model).
    WhisperDecoder,
}

impl From<ListenerArg> for earguard_model::speech::ListenerKind {
    fn from(l: ListenerArg) -> Self {
        match l {
            ListenerArg::CtcHead => Self::CtcHead,
            ListenerArg::WhisperDecoder => Self::WhisperDecoder,
        }
    }
}
