//! `earguard compare`: finished runs side by side, from their directories alone (no model is
//! loaded, and no file is written). Each run is paired with the undefended run among those
//! given that made the same prompts the same way: a run whose configuration is this run's with
//! no defense and no adapter (the data sets compared by content, not path; the model by
//! identity, not name). So the runs of a defenses × input-modes table (none, SARSteer,
//! SafeCoDe, an RRS adapter; text-only, audio-text, audio-only) each meet the undefended run in
//! their own mode, and the table says, for every defended run, how many harmful (and benign)
//! prompts it refused that the undefended run answered and the other way round, with
//! McNemar's exact p.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use earguard_eval::metrics::PairedComparison;
use earguard_eval::report::{self, cell, Report};
use earguard_eval::runner::{self, ResultRow, RunConfig};
use earguard_model::ModelInfo;
use serde::Serialize;

use crate::eval::judge_trust_lines;

#[derive(Args)]
pub struct CompareArgs {
    /// Finished run directories (`eval -o DIR`), in the order of the table's rows. A run still
    /// going is read as it stands and marked unfinished.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The judge whose verdicts count, in every run (e.g. one added by `earguard judge --run`);
    /// default: each run's first judge.
    #[arg(long)]
    pub judge: Option<String>,
    /// Print JSON (each run's directory, its undefended twin and its full report) instead of
    /// the table.
    #[arg(long)]
    pub json: bool,
}

/// One run, read back.
struct Finished {
    dir: PathBuf,
    config: RunConfig,
    rows: Vec<ResultRow>,
    skipped: Vec<runner::SkippedItem>,
    /// The judge whose verdicts count.
    judge: String,
    /// The responses the configuration asks for (unknown for a shard).
    expected: Option<usize>,
}

impl Finished {
    fn read(dir: &Path, judge: Option<&str>) -> Result<Self> {
        if !dir.join(runner::CONFIG).is_file() {
            bail!(
                "{} is not a run directory (no {})",
                dir.display(),
                runner::CONFIG
            );
        }
        let config = runner::read_config(dir)?;
        let results = dir.join(runner::RESULTS);
        let rows = runner::peek_results(&results)?;
        runner::check_rows(&results, &rows, &config, None)?;
        if rows.is_empty() {
            bail!("{} has no responses yet", dir.display());
        }
        let judge = match judge {
            Some(j) => j.to_owned(),
            None => config.primary_judge()?.to_owned(),
        };
        if let Some(r) = rows.iter().find(|r| r.refused(&judge).is_none()) {
            bail!(
                "{}: prompt '{}' has no verdict of judge `{judge}` (`earguard judge --run {} \
                 --judge {judge}` adds it)",
                results.display(),
                r.id,
                dir.display()
            );
        }
        let skipped = runner::read_skipped(&dir.join(runner::SKIPPED))?;
        let expected = config.expected_responses(skipped.len());
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            rows,
            skipped,
            judge,
            expected,
        })
    }

    /// What makes the run's responses and counts them: its configuration, but the model's
    /// display name (a model is its identity), the data sets' paths (a set is its content) and
    /// the judges (the one that counts stands for them).
    fn key(&self) -> RunConfig {
        let mut key = RunConfig {
            model: String::new(),
            judges: vec![self.judge.clone()],
            ..self.config.clone()
        };
        for d in &mut key.data {
            d.path = PathBuf::new();
        }
        key
    }

    /// The key of this run without its defense and adapter.
    fn undefended(&self) -> RunConfig {
        let (checkpoint, _) = ModelInfo::split_run_identity(&self.config.model_identity);
        RunConfig {
            defense: "none".into(),
            model_identity: checkpoint.to_owned(),
            ..self.key()
        }
    }

    fn has_adapter(&self) -> bool {
        ModelInfo::split_run_identity(&self.config.model_identity).1
    }

    fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into(),
        )
    }

    /// What the run defends with: its defense spec, and its adapter if it had one.
    fn defense(&self) -> String {
        match (self.config.defense.as_str(), self.has_adapter()) {
            (d, false) => d.to_owned(),
            ("none", true) => "LoRA adapter".to_owned(),
            (d, true) => format!("{d} + LoRA adapter"),
        }
    }

    /// "(shard 0/2)" or "(unfinished: 32 of 80)", or nothing.
    fn state(&self) -> String {
        match (&self.config.shard, self.expected) {
            (Some(s), _) => format!(" (shard {}/{})", s.index, s.count),
            (None, Some(n)) if self.rows.len() < n => {
                format!(" (unfinished: {} of {n})", self.rows.len())
            }
            _ => String::new(),
        }
    }
}

#[derive(Serialize)]
struct Compared {
    run: PathBuf,
    /// The undefended run it is paired with (none for an undefended run, or when none of the
    /// runs given is its twin).
    undefended: Option<PathBuf>,
    /// Responses written of those the configuration asks for (a run still going, or killed;
    /// unknown for a shard).
    responses: usize,
    expected: Option<usize>,
    report: Report,
}

/// What a run is paired with.
enum Twin {
    /// The run is undefended itself.
    Itself,
    /// The undefended run at this index of the runs given.
    At(usize),
    /// A defended run none of the runs given is the twin of.
    Missing,
}

/// Each run's undefended twin among `runs`.
fn twins(runs: &[Finished]) -> Result<Vec<Twin>> {
    runs.iter()
        .enumerate()
        .map(|(i, run)| {
            let want = run.undefended();
            if want == run.key() {
                return Ok(Twin::Itself);
            }
            let found: Vec<usize> = (0..runs.len())
                .filter(|&j| j != i && runs[j].key() == want)
                .collect();
            match found[..] {
                [] => Ok(Twin::Missing),
                [j] => Ok(Twin::At(j)),
                [a, b, ..] => bail!(
                    "{} and {} are both the undefended run of {}; give one",
                    runs[a].dir.display(),
                    runs[b].dir.display(),
                    run.dir.display()
                ),
            }
        })
        .collect()
}

pub fn compare(args: CompareArgs) -> Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|d| Finished::read(d, args.judge.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let twins = twins(&runs)?;
    let mut compared = Vec::new();
    for (run, twin) in runs.iter().zip(&twins) {
        let base = match twin {
            Twin::At(j) => Some(&runs[*j]),
            Twin::Itself | Twin::Missing => None,
        };
        let base_name = base.map(|b| b.dir.display().to_string());
        let report = report::build(
            &run.rows,
            &run.judge,
            &run.skipped,
            base.zip(base_name.as_deref())
                .map(|(b, name)| (name, b.rows.as_slice())),
        )
        .with_context(|| format!("reporting {}", run.dir.display()))?;
        compared.push(Compared {
            run: run.dir.clone(),
            undefended: base.map(|b| b.dir.clone()),
            responses: run.rows.len(),
            expected: run.expected,
            report,
        });
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "runs": compared }))?
        );
    } else {
        print!("{}", table(&runs, &twins, &compared));
    }
    Ok(())
}

/// "refused only by the undefended run / only by this one (p)".
fn paired_cell(p: &PairedComparison) -> String {
    let p_value = match p.p_value {
        v if v < 0.001 => "p < 0.001".to_owned(),
        v => format!("p {v:.3}"),
    };
    format!("{} / {} ({p_value})", p.only_first, p.only_second)
}

/// The Markdown table; then the defended runs without an undefended twin among those given,
/// and each judge's agreement with people (once per judge).
fn table(runs: &[Finished], twins: &[Twin], compared: &[Compared]) -> String {
    let mut out = String::from(
        "| run | mode | defense | judge | ASR [95 % CI] | ORR [95 % CI] | degenerate | \
         vs undefended: harmful refused only there / only here | benign refused only there / \
         only here |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut alone = Vec::new();
    for ((run, twin), c) in runs.iter().zip(twins).zip(compared) {
        let r = &c.report;
        let (harmful, benign) = match (&r.baseline, twin) {
            (Some(b), Twin::At(j)) => (
                format!("{}: {}", cell(&runs[*j].name()), paired_cell(&b.harmful)),
                paired_cell(&b.benign),
            ),
            _ => ("–".to_owned(), "–".to_owned()),
        };
        if let Twin::Missing = twin {
            alone.push(run.name());
        }
        out += &format!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {harmful} | {benign} |\n",
            cell(&run.name()),
            run.state(),
            run.config.mode,
            cell(&run.defense()),
            cell(&r.judge),
            r.asr_rate.display_percent(),
            r.orr_rate.display_percent(),
            r.degenerate_rate.display_percent(),
        );
    }
    if !alone.is_empty() {
        out += &format!(
            "\nNo undefended run of the same prompts, mode and settings was given for: {}.\n",
            alone.join(", ")
        );
    }
    for line in judge_trust_lines(compared.iter().map(|c| &c.report)) {
        out += &format!("\n{line}\n");
    }
    out
}
