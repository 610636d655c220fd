//! `earguard eval`, `earguard merge`, `earguard sweep`.

use crate::args::positive;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use earguard_data::{Mode, PromptSet, ReadOptions};
use earguard_eval::judge::{Judge, JudgeSpec};
use earguard_eval::plots::{self, TradeoffPoint};
use earguard_eval::report::{self, Report};
use earguard_eval::runner::{
    self, DataRef, ResultRow, Run, RunConfig, RunItem, RunOptions, Shard, SkippedItem,
};
use earguard_model::loader::DEFAULT_MODEL;
use earguard_model::{AudioCache, Model};
use earguard_steer::defense::{self, DefenseKind, DefensePart, DefenseSpec};
use earguard_steer::inputs::DEFAULT_INSTRUCTION;

use crate::args::SpecialsArg;

/// What every evaluation takes, shared by eval, sweep and demo.
#[derive(Args, Clone)]
pub struct EvalSettings {
    /// Model path or short name.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Prompt set(s) (JSONL; audio modes need an audio manifest from `earguard tts`).
    #[arg(long = "data", required = true)]
    pub data: Vec<PathBuf>,
    /// Input mode.
    #[arg(long, default_value = "text-only")]
    pub mode: Mode,
    /// Text instruction of audio-text mode.
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub instruction: String,
    /// System message added to every conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Responses per prompt (SPEC §5 uses 5 sampled; 1 greedy for fast runs).
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub samples: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Most tokens per response (refusals show in the first few dozen).
    #[arg(long, default_value_t = 64, value_parser = positive)]
    pub max_tokens: usize,
    /// Base seed; each (prompt, sample) gets its own stream, whatever the batching.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Judges: substring, substring:extended, refusal-score, llm[:three-way|:strongreject][=MODEL],
    /// openai[:three-way|:strongreject]=URL,model=NAME (key from OPENAI_API_KEY). The first
    /// given is primary: ASR and ORR are its verdicts; the others are reported beside it
    /// (agreement).
    #[arg(long = "judge", value_parser = judge_spec, default_values = ["substring", "refusal-score"])]
    pub judges: Vec<JudgeSpec>,
    /// Prompts per batch.
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub batch_size: usize,
    /// Only the first N mirror pairs (or items) of each set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Report malformed JSONL lines, and prompts the model cannot take (longer than its
    /// context, audio unreadable or over 30 s), and go on: skipped prompts are listed in
    /// skipped.jsonl and the report. Otherwise the first one stops the run before anything is
    /// generated.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Skip the model-identity check of steering vectors (sizes are always checked).
    #[arg(long)]
    pub force: bool,
    /// Steering strength for sarsteer / text-steer / cast when the spec does not set alpha.
    #[arg(long)]
    pub alpha: Option<f64>,
    #[command(flatten)]
    pub tokens: SpecialsArg,
    #[command(flatten)]
    pub adapter: crate::args::AdapterArg,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub settings: EvalSettings,
    /// Defense spec, e.g. none, prompt, sarsteer=DIR, ablate=DIR+sarsteer=DIR:alpha=0.2.
    #[arg(long, default_value = "none")]
    pub defense: String,
    /// Run only shard I of N (pairs stay together); combine with `earguard merge`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// A finished run on the same prompts to compare against (NSI, McNemar).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Run directory (results.jsonl, report.json, report.md, plots). Resumes if it exists.
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct MergeArgs {
    /// Shard run directories.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Merged run directory.
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub settings: EvalSettings,
    /// Steering vector (sarsteer/text-steer fit) to sweep: α, layer sets, k/λ refits.
    #[arg(long, required_unless_present = "defense", conflicts_with = "defense")]
    pub vector: Option<PathBuf>,
    /// Steering strengths (α).
    #[arg(long, value_delimiter = ',', default_values_t = [0.05, 0.1, 0.2])]
    pub alphas: Vec<f64>,
    /// Layer sets to try (e.g. 0-27, 8-20); default: every layer of the vector.
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Benign-subspace sizes k to refit the vector with (from VECTOR.captures, the fit's cached
    /// activations: no forward passes); default: the vector as fitted.
    #[arg(long, value_delimiter = ',')]
    pub ks: Vec<usize>,
    /// Safe-space ablation strengths λ to refit the vector with (as --ks).
    #[arg(long, value_delimiter = ',')]
    pub lambdas: Vec<f64>,
    /// Instead of a steering vector, sweep one option of this defense (one part, e.g.
    /// `safecode:calibration=DIR`) over --values.
    #[arg(long, requires = "values", conflicts_with_all = ["alphas", "layers", "ks", "lambdas"])]
    pub defense: Option<String>,
    /// The option --defense is swept over and its values, e.g. `sigma=0.01,0.1,1` or
    /// `snr=0,10,30` (safecode) or `strength=0.25,0.5` (ablate).
    #[arg(long, requires = "defense")]
    pub values: Option<String>,
    /// Defense applied before the swept one (e.g. ablate=DIR to test robustness).
    #[arg(long)]
    pub under: Option<String>,
    /// Pick the strongest setting (lowest ASR) whose ORR and degenerate-response rate each stay
    /// within this many points of the baseline run's.
    #[arg(long)]
    pub max_orr: Option<f64>,
    /// Sweep directory: one run per point plus sweep.json / sweep.md / tradeoff plot.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Parse a `--judge` value (clap's value parser: a bad spec is refused before anything loads).
pub fn judge_spec(s: &str) -> Result<JudgeSpec, String> {
    s.parse()
        .map_err(|e: earguard_eval::EvalError| e.to_string())
}

/// The prompts, judges and encoded clips of one or more evaluations over the same sets: the
/// runs given the same `Prepared` one after another (a sweep's points, the demo's input modes)
/// encode each clip once between them.
pub struct Prepared {
    pub items: Vec<RunItem>,
    pub data: Vec<DataRef>,
    pub judges: Vec<Box<dyn Judge>>,
    pub audio: AudioCache,
}

pub fn prepare(s: &EvalSettings) -> Result<Prepared> {
    let opts = ReadOptions {
        skip_bad_lines: s.skip_bad_lines,
    };
    let mut sets = Vec::new();
    for path in &s.data {
        let mut set = PromptSet::read(path, &opts)?;
        for bad in &set.skipped {
            tracing::warn!("{}:{}: skipped: {}", path.display(), bad.line, bad.message);
        }
        if let Some(n) = s.limit {
            set.items = set.take_pairs(n);
        }
        sets.push(set);
    }
    let data = sets
        .iter()
        .map(|set| DataRef {
            path: set.path.clone(),
            sha256: set.sha256.clone(),
            n_items: set.items.len(),
        })
        .collect();
    // Judge models go where every other model goes (`--device`).
    let device = crate::device()?;
    let judges = s
        .judges
        .iter()
        .map(|j| j.build(&device))
        .collect::<Result<Vec<_>, _>>()?;
    if judges.is_empty() {
        bail!("at least one --judge is needed");
    }
    Ok(Prepared {
        items: runner::run_items(&sets, None),
        data,
        judges,
        audio: AudioCache::new(),
    })
}

/// Run (or resume) one evaluation of `spec` into `dir` and write its report.
pub fn evaluate(
    model: &Model,
    s: &EvalSettings,
    prepared: &Prepared,
    spec: &DefenseSpec,
    shard: Option<Shard>,
    baseline: Option<&Path>,
    dir: &Path,
) -> Result<Report> {
    let mut spec = spec.clone();
    if let Some(alpha) = s.alpha {
        spec.set_steering_alpha(alpha);
    }
    let defense = defense::build(&spec, model, s.force)?;
    let config = RunConfig {
        model: model.info.name.clone(),
        model_identity: model.info.run_identity(),
        data: prepared.data.clone(),
        defense: spec.to_string(),
        mode: s.mode,
        instruction: s.mode.needs_audio().then(|| s.instruction.clone()),
        system: s.system.clone(),
        content_specials: s.tokens.specials(),
        samples: s.samples,
        temperature: s.temperature,
        top_p: s.top_p,
        max_tokens: s.max_tokens,
        seed: s.seed,
        judges: prepared.judges.iter().map(|j| j.name()).collect(),
        shard,
    };
    let items: Vec<RunItem> = prepared
        .items
        .iter()
        .filter(|r| shard.is_none_or(|sh| sh.contains(&r.item)))
        .cloned()
        .collect();
    if items.is_empty() {
        bail!("no prompts to evaluate (empty set, or an empty shard)");
    }
    let out = runner::run(&Run {
        model,
        defense: defense.as_ref(),
        judges: &prepared.judges,
        items: &items,
        config: &config,
        dir,
        opts: &RunOptions {
            batch_size: s.batch_size,
            progress: crate::progress_bars(),
            skip_bad_items: s.skip_bad_lines,
        },
        audio: &prepared.audio,
    })?;
    for bad in &out.skipped {
        tracing::warn!("skipped prompt '{}' ({}): {}", bad.id, bad.set, bad.reason);
    }
    finish_report(
        &out.rows,
        &out.skipped,
        dir,
        baseline,
        config.primary_judge()?,
        &spec.to_string(),
    )
}

/// Build, plot and write the report of finished rows.
pub fn finish_report(
    rows: &[ResultRow],
    skipped: &[SkippedItem],
    dir: &Path,
    baseline: Option<&Path>,
    judge: &str,
    title: &str,
) -> Result<Report> {
    let base_rows = baseline
        .map(|b| {
            runner::read_results(&b.join(runner::RESULTS))
                .with_context(|| format!("baseline {}", b.display()))
        })
        .transpose()?;
    let base_name = baseline
        .map(|b| b.display().to_string())
        .unwrap_or_default();
    let report = report::build(
        rows,
        judge,
        skipped,
        base_rows.as_deref().map(|r| (base_name.as_str(), r)),
    )?;
    let mut points = Vec::new();
    if let Some(base) = &base_rows {
        let b = report::build(base, judge, &[], None)?;
        points.extend(tradeoff_point(&b, "baseline"));
    }
    points.extend(tradeoff_point(&report, title));
    let mut links = Vec::new();
    if !points.is_empty() {
        plots::tradeoff(dir, "tradeoff", &points, "ASR vs ORR", false)?;
        links.push(("ASR vs ORR".to_string(), "tradeoff.png".to_string()));
    }
    report::write(dir, &report, &format!("earguard eval: {title}"), &links)?;
    Ok(report)
}

pub fn tradeoff_point(r: &Report, label: &str) -> Option<TradeoffPoint> {
    Some(TradeoffPoint {
        label: label.to_string(),
        asr: r.asr?,
        orr: r.orr?,
        asr_ci: r.asr_rate.ci_low.zip(r.asr_rate.ci_high),
        orr_ci: r.orr_rate.ci_low.zip(r.orr_rate.ci_high),
    })
}

/// ASR and ORR (degenerate responses left out) with the degenerate rate beside them.
pub fn print_table(rows: &[(String, &Report)]) {
    println!(
        "{:<34} {:>26} {:>26} {:>26}",
        "defense", "ASR (harmful answered)", "ORR (benign refused)", "degenerate"
    );
    for (name, r) in rows {
        println!(
            "{:<34} {:>26} {:>26} {:>26}",
            name,
            r.asr_rate.display_percent(),
            r.orr_rate.display_percent(),
            r.degenerate_rate.display_percent()
        );
    }
    for line in judge_trust_lines(rows.iter().map(|(_, r)| *r)) {
        println!("{line}");
    }
}

/// Each judge's agreement with people, once per judge: a rate means no more than its judge.
pub fn judge_trust_lines<'a>(reports: impl Iterator<Item = &'a Report>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    reports
        .filter(|r| seen.insert(r.judge.as_str()))
        .map(|r| r.judge_trust.sentence(&r.judge))
        .collect()
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let spec: DefenseSpec = args.defense.parse()?;
    let prepared = prepare(&args.settings)?;
    let mut model = crate::args::load_model(&args.settings.model, false)?;
    args.settings.adapter.apply(&mut model)?;
    let report = evaluate(
        &model,
        &args.settings,
        &prepared,
        &spec,
        args.shard,
        args.baseline.as_deref(),
        &args.out,
    )?;
    print_table(&[(args.defense.clone(), &report)]);
    if let Some(b) = &report.baseline {
        if let Some(nsi) = b.nsi {
            println!("NSI vs {}: {:+.1} points", b.baseline, 100.0 * nsi);
        }
    }
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

/// Join the shard runs of one configuration: every shard 0..N exactly once, each complete.
pub fn merge(args: MergeArgs) -> Result<()> {
    let mut config: Option<RunConfig> = None;
    let mut shards: Vec<Option<&Path>> = Vec::new();
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut skipped: Vec<SkippedItem> = Vec::new();
    let mut owner: HashMap<(String, usize), &Path> = HashMap::new();
    for dir in &args.dirs {
        let mut c = runner::read_config(dir)?;
        let Some(shard) = c.shard.take() else {
            bail!(
                "{} is not a shard run (made without --shard)",
                dir.display()
            );
        };
        if shards.is_empty() {
            shards = vec![None; shard.count];
        }
        if shard.count != shards.len() {
            bail!(
                "{} is shard {}/{}, but {} is one of {} shards",
                dir.display(),
                shard.index,
                shard.count,
                args.dirs[0].display(),
                shards.len()
            );
        }
        if let Some(first) = shards[shard.index].replace(dir) {
            bail!(
                "shard {}/{} is given twice: {} and {}",
                shard.index,
                shard.count,
                first.display(),
                dir.display()
            );
        }
        match &config {
            Some(first) if *first != c => bail!(
                "{} was made with another configuration than {}",
                dir.display(),
                args.dirs[0].display()
            ),
            Some(_) => {}
            None => config = Some(c.clone()),
        }
        let results = dir.join(runner::RESULTS);
        let shard_rows = runner::read_results(&results)?;
        runner::check_rows(&results, &shard_rows, &c, None)?;
        for r in &shard_rows {
            if let Some(other) = owner.insert((r.id.clone(), r.sample), dir) {
                bail!(
                    "prompt '{}' sample {} is in two shards, {} and {}: these are not shards of \
                     one run",
                    r.id,
                    r.sample,
                    other.display(),
                    dir.display()
                );
            }
        }
        rows.extend(shard_rows);
        skipped.extend(runner::read_skipped(&dir.join(runner::SKIPPED))?);
    }
    let config = config.context("no directories given")?;
    let missing: Vec<String> = shards
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_none())
        .map(|(i, _)| format!("{i}/{}", shards.len()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "shard {} missing: merge needs every shard",
            missing.join(", ")
        );
    }
    // Every prompt of the data sets once per sample, or skipped; a shard killed half-way falls
    // short.
    let n_items: usize = config.data.iter().map(|d| d.n_items).sum();
    let expected = config
        .expected_responses(skipped.len())
        .context("the data sets' prompt counts are too large")?;
    if rows.len() != expected {
        bail!(
            "the shards hold {} responses, {} expected ({} prompts{} × {} samples): a shard run \
             did not finish; run it again with the same command to resume it",
            rows.len(),
            expected,
            n_items,
            match skipped.len() {
                0 => String::new(),
                n => format!(" − {n} skipped"),
            },
            config.samples
        );
    }
    runner::prepare_dir(&args.out, &config)?;
    let mut text = String::new();
    for r in &rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::write_file(&args.out.join(runner::RESULTS), text.as_bytes())?;
    runner::write_skipped(&args.out.join(runner::SKIPPED), &skipped)?;
    let report = finish_report(
        &rows,
        &skipped,
        &args.out,
        None,
        config.primary_judge()?,
        &config.defense,
    )?;
    print_table(&[(config.defense.clone(), &report)]);
    println!(
        "merged {} responses from {} shards into {}",
        rows.len(),
        args.dirs.len(),
        args.out.display()
    );
    Ok(())
}

/// The vectors a sweep steers with: the given one, or its refits over `--ks` × `--lambdas`
/// (saved under OUT/vectors/), each with a name prefix for its runs.
fn sweep_vectors(args: &SweepArgs, vector: &Path) -> Result<Vec<(String, PathBuf)>> {
    if args.ks.is_empty() && args.lambdas.is_empty() {
        return Ok(vec![(String::new(), vector.to_path_buf())]);
    }
    let fitted = earguard_steer::artifact::SteeringVector::load(vector)?;
    let hyper = &fitted.meta.hyper_parameters;
    let ks = match args.ks.as_slice() {
        [] => vec![hyper["k"]
            .as_u64()
            .context("the vector records no k; pass --ks")? as usize],
        ks => ks.to_vec(),
    };
    let lambdas = match args.lambdas.as_slice() {
        [] => vec![hyper["lambda"]
            .as_f64()
            .context("the vector records no lambda; pass --lambdas")?],
        ls => ls.to_vec(),
    };
    let captures = earguard_steer::pipeline::default_captures_dir(vector);
    let mut out = Vec::new();
    for &k in &ks {
        for &lambda in &lambdas {
            let tag = format!("k={k},lambda={lambda},");
            let dir = args.out.join("vectors").join(tag.trim_end_matches(','));
            earguard_steer::pipeline::refit_sarsteer(&fitted, &captures, k, lambda)?.save(&dir)?;
            out.push((tag, dir));
        }
    }
    Ok(out)
}

/// The swept defense at each point, named: SARSteer over α × layer sets × refits, or one
/// option of `--defense` over `--values`.
fn swept_points(args: &SweepArgs) -> Result<Vec<(String, DefensePart)>> {
    if let (Some(defense), Some(values)) = (&args.defense, &args.values) {
        let spec: DefenseSpec = defense
            .parse()
            .with_context(|| format!("--defense {defense}"))?;
        let [part] = spec.parts.as_slice() else {
            bail!("--defense {defense}: give one defense to sweep (stack others with --under)");
        };
        let (key, list) = values
            .split_once('=')
            .with_context(|| format!("--values {values}: write OPTION=V1,V2,…"))?;
        if !part.kind.options().contains(&key) {
            bail!(
                "--values {values}: {} has no option {key:?} (its options: {})",
                part.kind.name(),
                part.kind.options().join(", ")
            );
        }
        let mut seen = std::collections::HashSet::new();
        return list
            .split(',')
            .map(str::trim)
            .map(|v| {
                if v.is_empty() {
                    bail!("--values {values}: an empty value");
                }
                if !seen.insert(v) {
                    bail!("--values {values}: {v} is given twice");
                }
                // The point's name is its run directory under --out: one path component.
                if v.contains(['/', '\\']) || v == ".." || v == "." {
                    bail!("--values {values}: {v:?} cannot name a run directory");
                }
                Ok((format!("{key}={v}"), part.clone().with(key, v)))
            })
            .collect();
    }
    let vector = args
        .vector
        .as_deref()
        .context("give --vector (SARSteer) or --defense with --values")?;
    let layer_sets = if args.layers.is_empty() {
        vec![None]
    } else {
        args.layers.iter().cloned().map(Some).collect()
    };
    let mut points = Vec::new();
    for ((tag, vector), layers) in sweep_vectors(args, vector)?
        .iter()
        .flat_map(|v| layer_sets.iter().map(move |l| (v, l)))
    {
        for &alpha in &args.alphas {
            let mut steer =
                DefensePart::new(DefenseKind::Sarsteer, Some(vector.clone())).with("alpha", alpha);
            if let Some(l) = layers {
                steer = steer.with("layers", l);
            }
            let name = format!(
                "{tag}alpha={alpha}{}",
                layers
                    .as_ref()
                    .map(|l| format!(",layers={l}"))
                    .unwrap_or_default()
            );
            points.push((name, steer));
        }
    }
    Ok(points)
}

pub fn sweep(args: SweepArgs) -> Result<()> {
    // The defense the swept one is stacked on (none: nothing).
    let under: Vec<DefensePart> = match &args.under {
        Some(u) => {
            u.parse::<DefenseSpec>()
                .with_context(|| format!("--under {u}"))?
                .parts
        }
        None => Vec::new(),
    };
    let base_spec = DefenseSpec::of(under.clone());
    // Every point's spec is known, and its defenses' names, options and order checked, before
    // anything runs (option values are read when a point's defense is built).
    let swept = swept_points(&args)?;
    for (name, part) in &swept {
        let mut parts = under.clone();
        parts.push(part.clone());
        DefenseSpec::of(parts)
            .check()
            .with_context(|| format!("sweep point {name}"))?;
    }
    let prepared = prepare(&args.settings)?;
    let mut model = crate::args::load_model(&args.settings.model, false)?;
    args.settings.adapter.apply(&mut model)?;
    std::fs::create_dir_all(&args.out)?;
    let base_dir = args.out.join("baseline");
    eprintln!("sweep: baseline {base_spec}");
    let base = evaluate(
        &model,
        &args.settings,
        &prepared,
        &base_spec,
        None,
        None,
        &base_dir,
    )?;
    // "baseline (ablate)": the defense names of the baseline spec, without artifact paths.
    let base_name = format!(
        "baseline ({})",
        base_spec
            .parts
            .iter()
            .map(|p| p.kind.name())
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut points = vec![(base_name, base.clone())];
    let swept_kind = swept.first().map_or("sweep", |(_, p)| p.kind.name());
    for (name, part) in swept {
        let mut parts = under.clone();
        parts.push(part);
        let spec = DefenseSpec::of(parts);
        eprintln!("sweep: {name}");
        let r = evaluate(
            &model,
            &args.settings,
            &prepared,
            &spec,
            None,
            Some(&base_dir),
            &args.out.join(&name),
        )?;
        points.push((name, r));
    }
    let tradeoff: Vec<TradeoffPoint> = points
        .iter()
        .filter_map(|(n, r)| tradeoff_point(r, n))
        .collect();
    // Every response of a point may be degenerate (no ASR, no ORR): then there is no plot.
    if tradeoff.is_empty() {
        tracing::warn!("no sweep point has both an ASR and an ORR: no trade-off plot");
    } else {
        plots::tradeoff(
            &args.out,
            "tradeoff",
            &tradeoff,
            &format!("{swept_kind} sweep: ASR vs ORR"),
            true,
        )?;
    }
    // Eligible: ORR and the degenerate rate each within X points of the baseline's (a setting
    // whose harmful answers are mostly babble would otherwise win on a low ASR).
    let pick = args.max_orr.and_then(|x| {
        let limit = base.orr? + x / 100.0;
        let degenerate_limit = base.degenerate_rate.value.unwrap_or(0.0) + x / 100.0;
        points[1..]
            .iter()
            .filter(|(_, r)| r.orr.is_some_and(|o| o <= limit + 1e-12))
            .filter(|(_, r)| {
                r.degenerate_rate
                    .value
                    .is_none_or(|d| d <= degenerate_limit + 1e-12)
            })
            .min_by(|a, b| a.1.asr.unwrap_or(1.0).total_cmp(&b.1.asr.unwrap_or(1.0)))
            .map(|(n, _)| n.clone())
    });
    let summary = serde_json::json!({
        "baseline": base_spec.to_string(),
        "points": points.iter().map(|(n, r)| serde_json::json!({"setting": n, "asr": r.asr, "orr": r.orr, "degenerate": r.degenerate_rate.value, "nsi": r.baseline.as_ref().and_then(|b| b.nsi)})).collect::<Vec<_>>(),
        "max_orr_points": args.max_orr,
        "picked": pick,
    });
    crate::write_file(
        &args.out.join("sweep.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let table: Vec<(String, &Report)> = points.iter().map(|(n, r)| (n.clone(), r)).collect();
    print_table(&table);
    match (&pick, args.max_orr) {
        (Some(p), Some(x)) => {
            println!("strongest setting within {x} ORR points of the baseline: {p}")
        }
        (None, Some(x)) => println!("no setting keeps ORR within {x} points of the baseline"),
        _ => {}
    }
    println!("sweep: {}", args.out.join("sweep.json").display());
    Ok(())
}
