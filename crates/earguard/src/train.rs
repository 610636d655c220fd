//! `earguard train`: LoRA fine-tuning (RRS and the four SFT baselines) into a PEFT adapter
//! directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use earguard_data::Label;
use earguard_data::Mode;
use earguard_data::{PromptSet, ReadOptions};
use earguard_eval::judge::Substring;
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::Proj;
use earguard_train::fs::write_json_atomic;
use earguard_train::objective::FrozenPrefix;
use earguard_train::optim::{AdamWParams, Decay, Schedule};
use earguard_train::prompts::{mirror_pairs, Instructions, Prompter, Question};
use earguard_train::rrs::{build_rrs, check_premise, FeatureSelect};
use earguard_train::sft::{build_sft, draw, SftInputs, SftMethod};
use earguard_train::{train, Adapter, LoraConfig, Objective, RunOptions, TrainConfig};
use serde_json::json;

#[derive(Clone, Copy, ValueEnum)]
pub enum Method {
    /// Reshaping Representation Space (SPEC §4): move last-position representations to
    /// frozen targets ± the masked refusal direction.
    Rrs,
    /// SFT on whole responses: the model's own refusal (under the refusal-inducing
    /// instruction) for harmful, its own answer for benign (mirror pairs).
    Sft,
    /// SFT on the first response token: "I" for harmful, the model's own for benign (mirror pairs).
    ShallowMirror,
    /// shallow-mirror with unpaired benign questions (--benign FILE) instead of the rewrites.
    ShallowParallel,
    /// Qi et al.: the refusal after 0–10 tokens of a harmful answer (made under --attack);
    /// benign as sft.
    Deep,
}

impl Method {
    fn name(self) -> &'static str {
        match self.sft() {
            None => "rrs",
            Some(m) => m.name(),
        }
    }

    fn sft(self) -> Option<SftMethod> {
        match self {
            Method::Rrs => None,
            Method::Sft => Some(SftMethod::Full),
            Method::ShallowMirror => Some(SftMethod::ShallowMirror),
            Method::ShallowParallel => Some(SftMethod::ShallowParallel),
            Method::Deep => Some(SftMethod::Deep),
        }
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Training method.
    #[arg(value_enum)]
    pub method: Method,
    /// Model path or short name (GGUF models are dequantized to dense f32 for training).
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Mirror-pair prompt set (JSONL with pair_id; e.g. figstep_mirror_train.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// Only the first N pairs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// How questions reach the model: text-only, or audio-text (the spoken question, then the
    /// pool's text instruction, as the paper trains; --data must be an audio manifest, and the
    /// model an audio-language or speech model whose audio encoder stays frozen).
    #[arg(long, default_value = "text-only")]
    pub mode: Mode,
    /// shallow-parallel: unpaired benign questions (e.g. harmless_train.jsonl); as many as
    /// there are harmful pairs are drawn (seeded), leaving out any text of --data.
    #[arg(long)]
    pub benign: Option<PathBuf>,
    /// deep: a defense spec under which the model answers harmful questions, to make the
    /// harmful-answer prefixes (e.g. ablate=vec/rd, a refusal direction from `fit`).
    #[arg(long)]
    pub attack: Option<String>,
    /// sft / deep: the longest self-generated response, in tokens.
    #[arg(long, default_value_t = 48, value_parser = crate::args::positive)]
    pub response_tokens: usize,
    /// deep: the most harmful-answer tokens read before the refusal (drawn 0..=N per epoch).
    #[arg(long, default_value_t = 10)]
    pub max_prefill: usize,
    /// Output directory: adapter (PEFT format), config.json, train.json, checkpoint. A run
    /// stopped for any reason resumes from its last checkpoint when started again.
    #[arg(long, short)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10, value_parser = crate::args::positive)]
    pub epochs: usize,
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Samples per optimizer step (gradients accumulated one sample at a time).
    #[arg(long, default_value_t = 16, value_parser = crate::args::positive)]
    pub batch_size: usize,
    /// Linear warm-up over this many steps.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// After warm-up: constant, or linear to zero.
    #[arg(long, value_enum, default_value = "constant")]
    pub decay: DecayArg,
    #[arg(long, default_value_t = 16, value_parser = crate::args::positive)]
    pub rank: usize,
    #[arg(long, default_value_t = 4.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    /// Layers with adapters, e.g. 20-27 or 0,5,9 (default: all).
    #[arg(long)]
    pub layers: Option<String>,
    /// Linear layers with adapters (q,k,v,o,gate,up,down or q_proj, …).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    pub targets: Vec<String>,
    /// RRS: keep the top m % of features by w_I·ΔV instead of those with w_I·ΔV > 0.
    #[arg(long)]
    pub top_percent: Option<f64>,
    /// Weight of the Σ‖scale·B·A‖² penalty.
    #[arg(long, default_value_t = 1.0)]
    pub penalty: f64,
    /// The instruction each training sample is asked under: one drawn from the paper's
    /// 10-prompt pool per sample and epoch, or always t (the instruction RRS's targets are
    /// taken under; an ablation).
    #[arg(long, value_enum, default_value = "pool")]
    pub instructions: InstructionsArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N optimizer steps.
    #[arg(long, default_value_t = 10, value_parser = crate::args::positive)]
    pub checkpoint_every: usize,
    /// Stop after N optimizer steps in all (checkpointed; run again without it to go on).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// RRS: before training, ask the frozen model the first N harmful questions under the
    /// refusal-inducing instruction t̃ (greedy, 24 tokens, substring judge) and warn when it
    /// refuses fewer than half: then ΔV does not point toward refusal, and neither do the
    /// targets (0 skips the check).
    #[arg(long, default_value_t = 20)]
    pub premise_check: usize,
    /// Pairs whose representations the report draws after every epoch (PCA, separation);
    /// 0 for none. Costs one forward pass per question per epoch.
    #[arg(long, default_value_t = 50)]
    pub probe_pairs: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InstructionsArg {
    Pool,
    Fixed,
}

impl From<InstructionsArg> for Instructions {
    fn from(i: InstructionsArg) -> Self {
        match i {
            InstructionsArg::Pool => Instructions::Pool,
            InstructionsArg::Fixed => Instructions::Fixed,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DecayArg {
    Constant,
    Linear,
}

impl From<DecayArg> for Decay {
    fn from(d: DecayArg) -> Self {
        match d {
            DecayArg::Constant => Decay::Constant,
            DecayArg::Linear => Decay::Linear,
        }
    }
}

/// Parse "20-27", "0,5,9" or "0-3,8".
fn parse_layers(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                if a > b {
                    bail!("layer range {part} runs backwards");
                }
                out.extend(a..=b);
            }
            None => out.push(
                part.parse()
                    .with_context(|| format!("bad layer '{part}' in --layers"))?,
            ),
        }
    }
    if out.is_empty() {
        bail!("--layers names no layer");
    }
    Ok(out)
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The run's config.json must match a previous run in the same directory (resume).
fn claim_dir(out: &Path, config: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("config.json");
    if path.is_file() {
        let old = read_run_json(&path)?;
        if &old != config {
            bail!(
                "{} holds a different training run (its config.json differs); use a new --out",
                out.display()
            );
        }
        return Ok(());
    }
    write_json_atomic(&path, config)?;
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let targets = args
        .targets
        .iter()
        .map(|t| Proj::parse(t.trim()).with_context(|| format!("unknown target module '{t}'")))
        .collect::<Result<Vec<_>>>()?;
    let layers = args.layers.as_deref().map(parse_layers).transpose()?;
    let lora = LoraConfig {
        rank: args.rank,
        alpha: args.alpha,
        dropout: args.dropout,
        targets,
        layers,
        rslora: false,
    };
    let lowest = lora
        .layers
        .as_ref()
        .and_then(|l| l.iter().min().copied())
        .unwrap_or(0);
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        schedule: Schedule {
            lr: args.lr,
            warmup_steps: args.warmup_steps,
            decay: args.decay.into(),
        },
        adamw: AdamWParams::default(),
        penalty: args.penalty,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
    };
    let set = PromptSet::read(&args.data, &ReadOptions::default())?;
    let spoken = match args.mode {
        Mode::TextOnly => false,
        Mode::AudioText => true,
        Mode::AudioOnly => bail!(
            "train takes text-only or audio-text: the paper trains spoken questions with a \
             text instruction from its pool"
        ),
    };
    let mut pairs = mirror_pairs(&set.items)?
        .iter()
        .map(|(h, b)| Ok((Question::of(h, spoken)?, Question::of(b, spoken)?)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(n) = args.limit {
        pairs.truncate(n);
    }
    let parallel = match (args.method, &args.benign) {
        (Method::ShallowParallel, Some(path)) => {
            Some(parallel_benign(path, &set, pairs.len(), args.seed, spoken)?)
        }
        (Method::ShallowParallel, None) => {
            bail!("shallow-parallel needs --benign FILE (unpaired benign questions)")
        }
        (_, Some(_)) => bail!("--benign is for shallow-parallel only"),
        _ => None,
    };
    if args.attack.is_some() != matches!(args.method, Method::Deep) {
        bail!("--attack is for deep, and deep needs it (e.g. --attack ablate=vec/rd)");
    }

    let mut model = crate::args::load_model(&args.model, false)?;
    let params: usize = (0..model.decoder.config().n_layers)
        .flat_map(|l| Proj::ALL.map(|p| (l, p)))
        .filter_map(|(l, p)| model.decoder.linear(l, p))
        .map(|lin| lin.in_features() * lin.out_features())
        .sum();
    let gib = params as f64 * 4.0 / (1u64 << 30) as f64;
    if model.info.format == "gguf" {
        tracing::warn!(
            "{} is quantized: training dequantizes it to dense f32 ({gib:.2} GiB for the block \
             linears alone)",
            model.info.name
        );
    } else {
        tracing::info!("training on dense f32 base weights ({gib:.2} GiB of block linears)");
    }
    let select = match args.top_percent {
        Some(m) => FeatureSelect::TopPercent(m),
        None => FeatureSelect::Positive,
    };
    let mut config = json!({
        "method": args.method.name(),
        "model": args.model,
        "model_identity": model.info.run_identity(),
        "data": args.data,
        "data_sha256": set.sha256,
        "pairs": pairs.len(),
        "lora": &lora,
        "train": cfg,
        "feature_select": matches!(args.method, Method::Rrs).then_some(select),
        "benign": args.benign,
        "attack": args.attack,
        "response_tokens": args.method.sft().filter(|m| !matches!(m, SftMethod::ShallowMirror | SftMethod::ShallowParallel)).map(|_| args.response_tokens),
        "max_prefill": matches!(args.method, Method::Deep).then_some(args.max_prefill),
        "probe_pairs": args.probe_pairs,
        "mode": args.mode,
    });
    // Recorded only when not the paper's pool, so runs made before the option resume.
    let instructions = Instructions::from(args.instructions);
    if instructions != Instructions::Pool {
        config["instructions"] = serde_json::to_value(instructions)?;
    }
    // Checked before the directory is claimed: a bad layer list leaves nothing behind.
    let adapter = Adapter::init(&model.decoder, lora, args.seed)?;
    claim_dir(&args.out, &config)?;

    let t0 = Instant::now();
    // SFT targets are the model's own replies, generated on the model as loaded (fast when
    // quantized); RRS's targets come from the same dense forward the training runs.
    let sft = match args.method.sft() {
        None => None,
        Some(method) => {
            let (harmful, mirror): (Vec<Question>, Vec<Question>) = pairs.iter().cloned().unzip();
            let attack = match &args.attack {
                Some(spec) => {
                    let spec: earguard_steer::defense::DefenseSpec = spec.parse()?;
                    Some(earguard_steer::defense::build(&spec, &model, false)?.plan()?)
                }
                None => None,
            };
            let judge = Substring::standard();
            let inputs = SftInputs {
                harmful: &harmful,
                benign: parallel.as_deref().unwrap_or(&mirror),
                attack: attack.as_ref(),
                response_tokens: args.response_tokens,
                max_prefill: args.max_prefill,
                batch_size: 8,
                progress: crate::progress_bars(),
            };
            let prompter = Prompter::new(&model).with_instructions(instructions);
            let (obj, s) = build_sft(&prompter, method, &inputs, &|r| judge.is_refusal(r))?;
            eprintln!(
                "{}: {} harmful + {} benign samples ({} harmful dropped: reply not a refusal; {} \
                 dropped: refused under the attack), mean response {:.1} tokens",
                method.name(),
                s.harmful_samples,
                s.benign_samples,
                s.harmful_without_refusal,
                s.attack_refused,
                s.mean_response_tokens
            );
            Some((obj, s))
        }
    };
    // RRS's premise, checked on the model as loaded (fast when quantized).
    let premise = match (args.method, args.premise_check) {
        (Method::Rrs, n) if n > 0 => {
            let harmful: Vec<Question> = pairs.iter().take(n).map(|(h, _)| h.clone()).collect();
            let judge = Substring::standard();
            let p = check_premise(
                &Prompter::new(&model),
                &harmful,
                24,
                &|r| judge.is_refusal(r),
                crate::progress_bars(),
            )?;
            eprintln!(
                "RRS premise: the frozen model refuses {} of {} harmful questions under the \
                 refusal-inducing instruction (substring judge)",
                p.refused, p.asked
            );
            if !p.holds() {
                tracing::warn!(
                    "{} refuses {} of {} harmful questions even when told to refuse: ΔV does not \
                     point toward refusal on this model, so RRS's targets are not refusal \
                     representations and reaching them cannot teach it to refuse",
                    args.model,
                    p.refused,
                    p.asked
                );
            }
            Some(p)
        }
        _ => None,
    };
    model.decoder = model.decoder.dequantized()?;
    let prompter = Prompter::new(&model).with_instructions(instructions);
    // Layers below the lowest adapted one never change: their output is computed once per
    // prompt and each step runs only the adapted layers and those above.
    let frozen = if lowest > 0 {
        eprintln!(
            "layers 0–{} carry no adapter: their output is computed once per prompt and each \
             step runs layers {lowest}–{} only",
            lowest - 1,
            model.decoder.config().n_layers - 1
        );
        Some(Arc::new(FrozenPrefix::below(&model.decoder, lowest)?))
    } else {
        None
    };
    let (objective, summary): (Box<dyn Objective>, serde_json::Value) = match sft {
        Some((mut obj, s)) => {
            same_targets(&args.out, obj.samples.len(), &obj.fingerprint())?;
            obj.frozen = frozen.clone();
            (Box::new(obj), serde_json::to_value(s)?)
        }
        None => {
            let (obj, s) = build_rrs(
                &prompter,
                &pairs,
                select,
                frozen.clone(),
                crate::progress_bars(),
            )?;
            eprintln!(
                "RRS: ΔV from {} pairs, {} of {} features kept (w_I·ΔVˢ = {:.3}), |ΔV| {:.3}, |ΔVˢ| {:.3}",
                s.pairs, s.features_kept, s.features, s.refusal_logit_gain, s.delta_norm, s.delta_s_norm
            );
            (Box::new(obj), serde_json::to_value(s)?)
        }
    };
    let prepare_s = t0.elapsed().as_secs_f64();
    // The report's per-epoch picture: the first --probe-pairs pairs (the paper's Fig. 2).
    let probe_pairs = &pairs[..args.probe_pairs.min(pairs.len())];
    let (probe_h, probe_b): (Vec<Question>, Vec<Question>) = probe_pairs.iter().cloned().unzip();
    let probe =
        crate::train_report::probe(&args.out, &prompter, frozen.as_deref(), &probe_h, &probe_b);
    let run = RunOptions {
        progress: crate::progress_bars(),
        stop_after: args.max_steps,
        epoch_probe: (args.probe_pairs > 0).then_some(&probe as _),
    };
    let t1 = Instant::now();
    let report = train(
        &model.decoder,
        &adapter,
        objective.as_ref(),
        &cfg,
        &args.out,
        &run,
    )?;
    let train_s = t1.elapsed().as_secs_f64();
    let finished = report.steps >= report.total_steps;
    if finished {
        adapter.save_peft(&args.out, &args.model)?;
    }
    let peak = peak_rss_mib();
    write_json_atomic(
        &args.out.join("train.json"),
        &json!({
            "finished": finished,
            "steps": report.steps,
            "total_steps": report.total_steps,
            "resumed_from": report.resumed_from,
            "seconds_per_step": report.seconds_per_step,
            "prepare_seconds": prepare_s,
            "train_seconds": train_s,
            "peak_rss_mib": peak,
            "samples": objective.len(),
            "losses": report.losses,
            "targets": summary,
            "premise": premise,
        }),
    )?;
    crate::train_report::write(
        &args.out,
        args.method.name(),
        &args.model,
        &report.losses,
        objective.len().div_ceil(cfg.batch_size),
    )?;
    let first = report.losses.first().copied().unwrap_or(f32::NAN);
    let last = report.losses.last().copied().unwrap_or(f32::NAN);
    eprintln!(
        "{} {}/{} steps, loss {first:.4} -> {last:.4}, {} s/step, peak RSS {} MiB",
        if finished { "trained" } else { "stopped at" },
        report.steps,
        report.total_steps,
        report
            .seconds_per_step
            .map_or("-".into(), |s| format!("{s:.2}")),
        peak.map_or("?".into(), |p| format!("{p:.0}")),
    );
    if finished {
        println!("{}", args.out.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// The adapter's base model: an HF safetensors directory (GGUF bases cannot be merged
    /// into; use --adapter at run time).
    #[arg(long, short)]
    pub model: String,
    /// The PEFT adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory for the merged checkpoint (must not exist yet).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `earguard merge`: W + scale·B·A into a copy of the base checkpoint.
pub fn merge(args: MergeArgs) -> Result<()> {
    let base = earguard_model::loader::resolve(&args.model)?;
    if !base.is_dir() || earguard_model::weights::safetensor_files(&base).is_err() {
        bail!(
            "{} is not an HF safetensors model directory: merge writes HF safetensors and reads \
             its base the same way (for a GGUF model, pass --adapter where the model is used)",
            base.display()
        );
    }
    if args.out.exists() {
        bail!(
            "{} exists; merge writes a new directory",
            args.out.display()
        );
    }
    let s = earguard_train::merge(&base, &args.adapter, &args.out)
        .with_context(|| format!("merging {} into {}", args.adapter.display(), base.display()))?;
    eprintln!(
        "merged the adapter into {} of {} tensors; copied {}",
        s.merged,
        s.tensors,
        s.copied.join(", ")
    );
    println!("{}", args.out.display());
    Ok(())
}

/// A small JSON file a run wrote (config.json, targets.json), read back with a size limit: a
/// run directory is user-supplied, and anything there may have been replaced.
fn read_run_json(path: &Path) -> Result<serde_json::Value> {
    let text = earguard_data::read_small_text(path)
        .with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// SFT targets are the model's own replies, generated at every start: a resumed run must get
/// the ones it started with (an edited attack vector, or a nondeterministic device, would
/// otherwise change the data under its checkpoint). The first start records them.
fn same_targets(out: &Path, samples: usize, sha256: &str) -> Result<()> {
    let path = out.join("targets.json");
    let now = json!({"samples": samples, "sha256": sha256});
    if path.is_file() {
        let old = read_run_json(&path)?;
        if old != now {
            bail!(
                "the training targets differ from those {} started with ({} samples, sha256 {} \
                 now; {} before): the model, its replies or --attack changed; use a new --out",
                out.display(),
                samples,
                &sha256[..12],
                old
            );
        }
        return Ok(());
    }
    write_json_atomic(&path, &now)?;
    Ok(())
}

/// shallow-parallel's benign side: `n` benign questions of `path` drawn with `seed`, none of
/// them a text of the mirror set.
fn parallel_benign(
    path: &Path,
    mirror: &PromptSet,
    n: usize,
    seed: u64,
    spoken: bool,
) -> Result<Vec<Question>> {
    let set = PromptSet::read(path, &ReadOptions::default())?;
    let taken: std::collections::HashSet<&str> =
        mirror.items.iter().map(|i| i.text.as_str()).collect();
    let pool: Vec<Question> = set
        .items
        .iter()
        .filter(|i| i.label == Label::Benign && !taken.contains(i.text.as_str()))
        .map(|i| Question::of(i, spoken))
        .collect::<earguard_train::Result<_>>()?;
    if pool.len() < n {
        bail!(
            "{} has {} benign questions not in the mirror set; shallow-parallel needs {n}",
            path.display(),
            pool.len()
        );
    }
    Ok(draw(pool, n, seed))
}

#[cfg(test)]
mod tests {
    use super::parse_layers;

    #[test]
    fn layer_lists() {
        assert_eq!(parse_layers("0-3,8").unwrap(), [0, 1, 2, 3, 8]);
        assert_eq!(parse_layers("5").unwrap(), [5]);
        assert!(parse_layers("3-1").is_err());
        assert!(parse_layers("x").is_err());
        assert!(parse_layers("").is_err());
    }
}
