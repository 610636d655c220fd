//! `earguard judge`: judge any JSONL of prompts and responses apart from generating them, and
//! score the judges against human labels when the rows carry them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use earguard_eval::judge::{Judge, JudgeSpec};
use earguard_eval::judging::{self, Fields};
use earguard_eval::runner;

#[derive(Args)]
#[command(after_long_help = "\
Each output row is the input row with the new verdicts added to its `verdicts` object.
summary.json holds, per judge, the refusal rate and, with --gold-field, the confusion matrix,
accuracy, precision and recall of \"refused\" (95 % Wilson intervals) and Cohen's κ against the
labels (95 % percentile bootstrap); and κ between every two judges. Agreement between judges
is not accuracy: only --gold-field says whether a judge is right.
Model judges read their verdict from the scores of the answer tokens (no text is parsed):
  llm=MODEL               complies (1) or not (0)
  llm:three-way=MODEL     XSTest's classes: full compliance, partial refusal, full refusal;
                          \"refused\" is a full refusal (a partial one hands over some of what
                          was asked, as ASR counts it); summaries list the three counts
  llm:strongreject=MODEL  StrongREJECT's rubric: refused, convincing 1-5, specific 1-5, giving
                          a harm score in [0, 1] (harmful at >= 0.5), scored against the gold
                          labels as \"not harmful\" = \"refused\" too
  openai[:…]=URL,model=M  the same questions to an OpenAI-compatible endpoint (URL ends in
                          /v1), from the answer token's logprobs; key from OPENAI_API_KEY
Without =MODEL a local judge uses the default model.
A killed job resumes where it stopped when run again with the same arguments.
--run DIR re-judges a finished `eval` run in place: the new verdicts join results.jsonl's rows,
and the report (report.json, report.md, plots) is rewritten with the first --judge as the
judge its rates count; responses are not regenerated.
Examples:
  earguard judge --data runs/none/results.jsonl --judge substring --judge llm=qwen2.5-coder-1.5b-instruct -o judged/none
  earguard judge --data human.jsonl --gold-field refused --judge substring -o judged/human
  earguard judge --data human.jsonl --gold-field refused --judge llm:strongreject -o judged/sr
  OPENAI_API_KEY=… earguard judge --data runs/none/results.jsonl --judge openai=http://127.0.0.1:8080/v1,model=judge -o judged/remote
  earguard judge --run out/runs/none --judge llm=qwen2.5-coder-1.5b-instruct")]
pub struct JudgeArgs {
    /// A JSONL file of prompts and responses (a run's results.jsonl, or another tool's output).
    #[arg(long, required_unless_present = "run", conflicts_with = "run")]
    pub data: Option<PathBuf>,
    /// A finished `eval` run directory to re-judge in place (its report is rewritten).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// A judge, repeatable: substring, substring:extended, refusal-score (needs the rows'
    /// `refusal_score`), llm[:three-way|:strongreject][=MODEL],
    /// openai[:three-way|:strongreject]=URL,model=NAME (key from OPENAI_API_KEY).
    #[arg(long = "judge", required = true, value_parser = crate::eval::judge_spec)]
    pub judges: Vec<JudgeSpec>,
    /// Output directory: judged.jsonl, summary.json, summary.md, job.json.
    #[arg(short, long, required_unless_present = "run", conflicts_with = "run")]
    pub out: Option<PathBuf>,
    /// The field holding the request.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// The field holding the response under judgement.
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// A boolean field of human labels (true = the response is a refusal): score each judge
    /// against it.
    #[arg(long, conflicts_with = "run")]
    pub gold_field: Option<String>,
    /// Rows handed to a judge at a time (and written at a time).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

pub fn run(args: JudgeArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = crate::device()?;
    let judges = args
        .judges
        .iter()
        .map(|j| j.build(&device))
        .collect::<earguard_eval::Result<Vec<_>>>()?;
    if let Some(run) = &args.run {
        return rejudge(run, &judges, args.batch_size);
    }
    let (Some(data), Some(out)) = (&args.data, &args.out) else {
        bail!("--data and --out are needed (or --run DIR)");
    };
    let fields = Fields {
        prompt: args.prompt_field,
        response: args.response_field,
        gold: args.gold_field,
    };
    let summary = judging::judge_file(
        data,
        &fields,
        &judges,
        out,
        args.batch_size,
        crate::progress_bars(),
    )?;
    let md = judging::markdown(&summary);
    crate::write_file(&out.join("summary.md"), md.as_bytes())?;
    print!("{md}");
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Re-judge a finished run in place and rewrite its report.
fn rejudge(dir: &Path, judges: &[Box<dyn Judge>], batch: usize) -> Result<()> {
    let config = runner::read_config(dir)?;
    let results = dir.join(runner::RESULTS);
    let mut rows = runner::read_results(&results)?;
    if rows.is_empty() {
        bail!("{} holds no responses to judge", results.display());
    }
    runner::check_rows(&results, &rows, &config, None)?;
    judging::rejudge(&mut rows, judges, batch, crate::progress_bars())?;
    let mut text = String::new();
    for r in &rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::write_file(&results, text.as_bytes())?;
    let skipped = runner::read_skipped(&dir.join(runner::SKIPPED))?;
    let primary = judges[0].name();
    let report = crate::eval::finish_report(
        &rows,
        &skipped,
        dir,
        None,
        &primary,
        &format!("{} (re-judged by {primary})", config.defense),
    )?;
    crate::eval::print_table(&[(config.defense.clone(), &report)]);
    eprintln!("re-judged {} responses in {}", rows.len(), dir.display());
    Ok(())
}
