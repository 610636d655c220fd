//! `earguard fit sarsteer | refusal-direction | cast`, `earguard export`, `earguard import`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use earguard_data::{Label, Mode, PromptItem, PromptSet, ReadOptions};
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::{AudioCache, HookKind, Model};
use earguard_steer::artifact::{DatasetRef, SteeringVector};
use earguard_steer::inputs::{InputStyle, DEFAULT_INSTRUCTION, DEFAULT_REFUSAL_SUFFIX};
use earguard_steer::pipeline::{FitSetup, LayerSelection};

use crate::args::SpecialsArg;

#[derive(Subcommand)]
pub enum FitCommand {
    /// SARSteer: text-derived refusal steering with safe-space ablation (SPEC §1).
    Sarsteer(SarsteerArgs),
    /// Harmful-minus-benign refusal direction per layer, with layer selection (Arditi et al.).
    RefusalDirection(RefusalArgs),
    /// Conditional activation steering: behaviour vectors plus a harmfulness condition.
    Cast(CastArgs),
    /// SafeCoDe's verdict threshold: score every training prompt's verdict and keep the
    /// threshold with the best balanced accuracy (`-o DIR`, then `safecode:calibration=DIR`).
    Safecode(SafecodeFitArgs),
}

#[derive(Args)]
pub struct SafecodeFitArgs {
    #[command(flatten)]
    pub common: FitCommon,
    /// The SafeCoDe spec whose verdicts are scored (its judge= decides who gives them).
    #[arg(long, default_value = "safecode")]
    pub spec: String,
}

#[derive(Args, Clone)]
pub struct FitCommon {
    /// Model path or short name.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Prompt set(s) (JSONL). Items are split by their "label"; a mirror set holds both.
    #[arg(long = "data")]
    pub data: Vec<PathBuf>,
    /// Extra prompt set(s) whose items are all used as harmful.
    #[arg(long)]
    pub harmful: Vec<PathBuf>,
    /// Extra prompt set(s) whose items are all used as benign.
    #[arg(long)]
    pub benign: Vec<PathBuf>,
    /// Input mode of the fit.
    #[arg(long, default_value = "text-only")]
    pub mode: Mode,
    /// Text instruction t of audio-text mode.
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub instruction: String,
    /// At most this many harmful and this many benign prompts (file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Hook kind whose last-position activation is fitted and steered.
    #[arg(long, value_enum, default_value_t = HookKind::ResidPost)]
    pub hook: HookKind,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Report malformed JSONL lines and go on instead of stopping.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Output directory: vectors.safetensors + meta.json (must not exist yet, see --overwrite).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace an existing steering vector at --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Where activations are cached (resumable; a re-fit with other hyper-parameters reuses
    /// them). Default: OUT.captures next to OUT.
    #[arg(long)]
    pub captures: Option<PathBuf>,
    #[command(flatten)]
    pub tokens: SpecialsArg,
    #[command(flatten)]
    pub adapter: crate::args::AdapterArg,
}

impl FitCommon {
    fn captures_dir(&self) -> PathBuf {
        self.captures
            .clone()
            .unwrap_or_else(|| earguard_steer::pipeline::default_captures_dir(&self.out))
    }
}

#[derive(Args)]
pub struct SarsteerArgs {
    #[command(flatten)]
    pub common: FitCommon,
    /// Benign principal directions removed from the steering vector.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Weight of the safe-space ablation (0 keeps the raw suffix contrast).
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// Refusal suffix r glued to the user's text.
    #[arg(long, default_value = DEFAULT_REFUSAL_SUFFIX)]
    pub suffix: String,
}

#[derive(Args)]
pub struct RefusalArgs {
    #[command(flatten)]
    pub common: FitCommon,
    /// Skip the layer search (ablate/actadd then default to the middle layer).
    #[arg(long)]
    pub no_select: bool,
    /// Prompts per label held for the layer search (taken from the end of the sets).
    #[arg(long, default_value_t = 8)]
    pub select_prompts: usize,
}

#[derive(Args)]
pub struct CastArgs {
    #[command(flatten)]
    pub common: FitCommon,
    /// Default steering strength stored in the artifact.
    #[arg(long, default_value_t = 0.1)]
    pub alpha: f64,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Format to write.
    #[arg(long, value_enum, default_value = "llama-cpp")]
    pub format: ExportFormat,
    /// Steering vector directory.
    pub vector: PathBuf,
    /// Output file (.gguf).
    pub out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// llama.cpp control vector GGUF.
    LlamaCpp,
}

#[derive(Args)]
pub struct ImportArgs {
    /// llama.cpp control vector GGUF.
    pub input: PathBuf,
    /// Output steering-vector directory (must not exist yet, see --overwrite).
    pub out: PathBuf,
    /// Model the vector is for (fills in identity and checks sizes).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Replace an existing steering vector at OUT.
    #[arg(long)]
    pub overwrite: bool,
}

/// Refuse to write a steering vector over an existing one unless `--overwrite` was given
/// (checked before any work, so a long fit never ends in a refusal). An empty directory is
/// not a vector and may be written into.
fn check_destination(out: &Path, overwrite: bool) -> Result<()> {
    let occupied = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => out.exists(),
    };
    if occupied && !overwrite {
        bail!(
            "{}: already exists; pass --overwrite to replace it, or choose another output",
            out.display()
        );
    }
    Ok(())
}

/// Read prompt sets and split them into harmful and benign items.
pub fn read_sets(
    data: &[PathBuf],
    harmful: &[PathBuf],
    benign: &[PathBuf],
    skip_bad_lines: bool,
) -> Result<(Vec<PromptItem>, Vec<PromptItem>, Vec<DatasetRef>)> {
    let opts = ReadOptions { skip_bad_lines };
    let (mut h, mut b, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    let mut read = |path: &Path, force: Option<Label>| -> Result<()> {
        let set = PromptSet::read(path, &opts)?;
        for bad in &set.skipped {
            tracing::warn!("{}:{}: skipped: {}", path.display(), bad.line, bad.message);
        }
        for item in set.items {
            match force.unwrap_or(item.label) {
                Label::Harmful => h.push(item),
                Label::Benign => b.push(item),
            }
        }
        refs.push(DatasetRef::from_file(path)?);
        Ok(())
    };
    for p in data {
        read(p, None)?;
    }
    for p in harmful {
        read(p, Some(Label::Harmful))?;
    }
    for p in benign {
        read(p, Some(Label::Benign))?;
    }
    Ok((h, b, refs))
}

fn setup<'a>(model: &'a Model, c: &FitCommon, refs: Vec<DatasetRef>) -> FitSetup<'a> {
    let mut style = InputStyle::new(c.mode);
    style.instruction = c.instruction.clone();
    style.specials = c.tokens.specials();
    FitSetup {
        model,
        style,
        hook: c.hook,
        batch_size: c.batch_size,
        work_dir: Some(c.captures_dir()),
        progress: crate::progress_bars(),
        training_sets: refs,
        audio: AudioCache::new(),
    }
}

fn limited(mut v: Vec<PromptItem>, limit: Option<usize>) -> Vec<PromptItem> {
    if let Some(n) = limit {
        v.truncate(n);
    }
    v
}

pub fn run(cmd: FitCommand) -> Result<()> {
    let t0 = Instant::now();
    let (common, kind) = match &cmd {
        FitCommand::Sarsteer(a) => (&a.common, "sarsteer"),
        FitCommand::RefusalDirection(a) => (&a.common, "refusal-direction"),
        FitCommand::Cast(a) => (&a.common, "cast"),
        FitCommand::Safecode(a) => (&a.common, "safecode"),
    };
    check_destination(&common.out, common.overwrite)?;
    let (harmful, benign, refs) = read_sets(
        &common.data,
        &common.harmful,
        &common.benign,
        common.skip_bad_lines,
    )?;
    let (harmful, benign) = (
        limited(harmful, common.limit),
        limited(benign, common.limit),
    );
    if harmful.is_empty() || benign.is_empty() {
        bail!(
            "a fit needs harmful and benign prompts: got {} harmful and {} benign",
            harmful.len(),
            benign.len()
        );
    }
    let mut model = crate::args::load_model(&common.model, false)?;
    common.adapter.apply(&mut model)?;
    let setup = setup(&model, common, refs);
    eprintln!(
        "fitting {kind} on {} harmful + {} benign prompts ({} mode)",
        harmful.len(),
        benign.len(),
        common.mode
    );
    let vector = match &cmd {
        FitCommand::Sarsteer(a) => setup.sarsteer(&harmful, &benign, &a.suffix, a.k, a.lambda)?,
        FitCommand::RefusalDirection(a) => {
            let selection = (!a.no_select).then(|| {
                let n = a.select_prompts.min(harmful.len()).min(benign.len());
                LayerSelection {
                    harmful: harmful[harmful.len() - n..].to_vec(),
                    harmless: benign[benign.len() - n..].to_vec(),
                    max_fraction: 0.8,
                    max_kl: 0.1,
                }
            });
            setup.refusal_direction(&harmful, &benign, selection.as_ref())?
        }
        FitCommand::Cast(a) => setup.cast(&harmful, &benign, a.alpha)?,
        FitCommand::Safecode(a) => {
            return fit_safecode(&setup, &a.spec, &harmful, &benign, common, t0);
        }
    };
    vector.save(&common.out)?;
    print_summary(&vector, &common.out, t0.elapsed().as_secs_f64());
    Ok(())
}

/// Score every prompt's SafeCoDe verdict and write the calibrated threshold.
fn fit_safecode(
    setup: &FitSetup<'_>,
    spec: &str,
    harmful: &[PromptItem],
    benign: &[PromptItem],
    common: &FitCommon,
    t0: Instant,
) -> Result<()> {
    let cal = calibrate_safecode(setup, spec, harmful, benign, common.batch_size)?;
    cal.save(&common.out)?;
    println!(
        "{}",
        serde_json::json!({
            "out": common.out, "threshold": cal.fitted.threshold,
            "fitted": cal.fitted, "at_zero": cal.at_zero,
            "seconds": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// SafeCoDe's verdict threshold for `spec` (a safecode part without `calibration=`): every
/// prompt's verdict score under `setup`'s input style, and the threshold with the best
/// balanced accuracy.
pub fn calibrate_safecode(
    setup: &FitSetup<'_>,
    spec: &str,
    harmful: &[PromptItem],
    benign: &[PromptItem],
    batch_size: usize,
) -> Result<earguard_steer::defense::calibration::Calibration> {
    use earguard_steer::defense::calibration::{fit_threshold, separation, Calibration};
    use earguard_steer::defense::{DefenseKind, DefenseSpec, SafeCode};
    let parsed: DefenseSpec = spec.parse()?;
    let [part] = parsed.parts.as_slice() else {
        bail!("--spec {spec}: give one safecode part");
    };
    if part.kind != DefenseKind::Safecode || part.option("calibration").is_some() {
        bail!("--spec {spec}: give a safecode spec without calibration=");
    }
    let sc = SafeCode::from_part(part, setup.model, false)?;
    let items: Vec<&PromptItem> = harmful.iter().chain(benign).collect();
    let bar = earguard_data::progress::bar(
        crate::progress_bars().then_some("verdicts"),
        "prompts",
        items.len() as u64,
    );
    let mut scores = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch_size.max(1)) {
        let requests = chunk
            .iter()
            .map(|it| setup.style.messages(it, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let refs: Vec<&[earguard_model::ChatMessage]> =
            requests.iter().map(Vec::as_slice).collect();
        let v = sc.verdicts(
            setup.model,
            &refs,
            &earguard_model::InterventionPlan::new(),
            &setup.audio,
        )?;
        scores.extend(v.into_iter().map(|v| v.score));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (h, b) = scores.split_at(harmful.len());
    Ok(Calibration {
        model: setup.model.info.name.clone(),
        model_identity: setup.model.info.run_identity(),
        spec: spec.to_string(),
        mode: setup.style.mode.to_string(),
        training_sets: setup.training_sets.clone(),
        at_zero: separation(h, b, 0.0),
        fitted: fit_threshold(h, b)?,
        scores: items
            .iter()
            .zip(&scores)
            .map(|(it, &s)| (it.id.clone(), it.label.to_string(), s))
            .collect(),
    })
}

fn print_summary(v: &SteeringVector, out: &Path, seconds: f64) {
    let norms: Vec<String> = v
        .directions
        .values()
        .map(|t| {
            let n = t
                .sqr()
                .and_then(|s| s.sum_all())
                .and_then(|s| s.sqrt())
                .and_then(|s| s.to_scalar::<f32>());
            n.map_or("?".into(), |n| format!("{n:.2}"))
        })
        .collect();
    println!(
        "wrote {} ({} layers, method {}) in {seconds:.1}s",
        out.display(),
        v.directions.len(),
        v.meta.method
    );
    println!("per-layer norms: {}", norms.join(" "));
    if let Some(l) = v.meta.extra.get("selected_layer") {
        println!("selected layer: {l}");
    }
}

pub fn export(args: ExportArgs) -> Result<()> {
    let vector = SteeringVector::load(&args.vector)?;
    match args.format {
        ExportFormat::LlamaCpp => {
            let report = earguard_steer::llamacpp::export_control_vector(&vector, &args.out)?;
            println!(
                "wrote {} (layers {:?})",
                report.path.display(),
                report.written
            );
            for s in &report.skipped {
                tracing::warn!("layer {} not exported: {}", s.layer, s.reason);
            }
            for n in &report.notes {
                eprintln!("note: {n}");
            }
        }
    }
    Ok(())
}

pub fn import(args: ImportArgs) -> Result<()> {
    check_destination(&args.out, args.overwrite)?;
    let model = args
        .model
        .as_deref()
        .map(|m| crate::args::load_model(m, false))
        .transpose()?;
    let vector = earguard_steer::llamacpp::import_control_vector(
        &args.input,
        model.as_ref().map(|m| &m.info),
    )?;
    vector.save(&args.out)?;
    println!(
        "wrote {} ({} layers)",
        args.out.display(),
        vector.directions.len()
    );
    Ok(())
}
