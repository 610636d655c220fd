//! `earguard compare`: finished runs side by side, from their directories alone (no model is
//! loaded). Each run is paired with the undefended run among those given that made the same
//! prompts the same way: a run whose configuration is this run's with no defense and no
//! adapter. So the runs of a defenses × input-modes table (none, SARSteer, SafeCoDe, an RRS
//! adapter; text-only, audio-text, audio-only) each meet the undefended run in their own mode,
//! and the table says, for every defended run, how many harmful (and benign) prompts it refused
//! that the undefended run answered and the other way round, with McNemar's exact p.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use earguard_eval::metrics::PairedComparison;
use earguard_eval::report::{self, Report};
use earguard_eval::runner::{self, ResultRow, RunConfig};
use earguard_model::ModelInfo;
use serde::Serialize;

#[derive(Args)]
pub struct CompareArgs {
    /// Finished run directories (`eval -o DIR`), in the order of the table's rows.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Print JSON (each run's directory, its undefended twin and its full report) instead of
    /// the table.
    #[arg(long)]
    pub json: bool,
}

/// One finished run, read back.
struct Finished {
    dir: PathBuf,
    config: RunConfig,
    rows: Vec<ResultRow>,
    skipped: Vec<runner::SkippedItem>,
}

impl Finished {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(runner::CONFIG);
        let text = earguard_data::read_small_text(&path)
            .with_context(|| format!("{} is not a run directory", dir.display()))?;
        let config: RunConfig =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let results = dir.join(runner::RESULTS);
        let rows = runner::read_results(&results)?;
        runner::check_rows(&results, &rows, &config, None)?;
        if rows.is_empty() {
            bail!("{} has no responses yet", dir.display());
        }
        let skipped = runner::read_skipped(&dir.join(runner::SKIPPED))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            rows,
            skipped,
        })
    }

    /// What makes the run's responses: its configuration but the model's display name (a
    /// model is its identity, however it was named).
    fn key(&self) -> RunConfig {
        RunConfig {
            model: String::new(),
            ..self.config.clone()
        }
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

    /// Responses the configuration asks for, when it is not a shard (whose share is unknown).
    fn expected(&self) -> Option<usize> {
        let items: usize = self.config.data.iter().map(|d| d.n_items).sum();
        self.config
            .shard
            .is_none()
            .then(|| (items - self.skipped.len().min(items)) * self.config.samples)
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
}

#[derive(Serialize)]
struct Compared {
    run: PathBuf,
    /// The undefended run it is paired with (none for an undefended run, or when none of the
    /// runs given is its twin).
    undefended: Option<PathBuf>,
    /// Responses written of those the configuration asks for (a run still going, or killed).
    responses: usize,
    expected: Option<usize>,
    report: Report,
}

/// For each run, the index of its undefended twin among `runs`, if any.
fn twins(runs: &[Finished]) -> Result<Vec<Option<usize>>> {
    runs.iter()
        .enumerate()
        .map(|(i, run)| {
            let want = run.undefended();
            if want == run.key() {
                return Ok(None);
            }
            let found: Vec<usize> = (0..runs.len())
                .filter(|&j| j != i && runs[j].key() == want)
                .collect();
            match found[..] {
                [] | [_] => Ok(found.first().copied()),
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
        .map(|d| Finished::read(d))
        .collect::<Result<Vec<_>>>()?;
    let twins = twins(&runs)?;
    let mut compared = Vec::new();
    for (run, twin) in runs.iter().zip(&twins) {
        let base = twin.map(|j| &runs[j]);
        let base_name = base.map(|b| b.dir.display().to_string());
        let report = report::build(
            &run.rows,
            run.config.primary_judge()?,
            &run.skipped,
            base.zip(base_name.as_deref())
                .map(|(b, name)| (name, b.rows.as_slice())),
        )
        .with_context(|| format!("reporting {}", run.dir.display()))?;
        compared.push(Compared {
            run: run.dir.clone(),
            undefended: base.map(|b| b.dir.clone()),
            responses: run.rows.len(),
            expected: run.expected(),
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
    format!("{} / {} (p {:.3})", p.only_first, p.only_second, p.p_value)
}

/// The Markdown table, then each judge's agreement with people (once per judge).
fn table(runs: &[Finished], twins: &[Option<usize>], compared: &[Compared]) -> String {
    let mut out = String::from(
        "| run | mode | defense | judge | ASR [95 % CI] | ORR [95 % CI] | degenerate | \
         vs undefended: harmful refused only there / only here | benign refused only there / \
         only here |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((run, twin), c) in runs.iter().zip(twins).zip(compared) {
        let r = &c.report;
        let unfinished = match c.expected {
            Some(n) if c.responses < n => format!(" (unfinished: {} of {n})", c.responses),
            _ => String::new(),
        };
        let (harmful, benign) = match (&r.baseline, twin) {
            (Some(b), Some(j)) => (
                format!("{}: {}", runs[*j].name(), paired_cell(&b.harmful)),
                paired_cell(&b.benign),
            ),
            _ => ("–".to_owned(), "–".to_owned()),
        };
        out += &format!(
            "| {}{unfinished} | {} | {} | {} | {} | {} | {} | {harmful} | {benign} |\n",
            run.name(),
            run.config.mode,
            run.defense(),
            r.judge,
            r.asr_rate.display_percent(),
            r.orr_rate.display_percent(),
            r.degenerate_rate.display_percent(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in compared {
        if seen.insert(c.report.judge.as_str()) {
            out += &format!("\n{}\n", c.report.judge_trust.sentence(&c.report.judge));
        }
    }
    out
}
