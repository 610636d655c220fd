//! `earguard judge`: judge any JSONL of prompts and responses apart from generating them, and
//! score the judges against human labels when the rows carry them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use earguard_eval::judge;
use earguard_eval::judging::{self, Fields};

#[derive(Args)]
#[command(after_long_help = "\
Each output row is the input row with the new verdicts added to its `verdicts` object.
summary.json holds, per judge, the refusal rate and, with --gold-field, the confusion matrix,
accuracy, precision and recall of \"refused\" (95 % Wilson intervals) and Cohen's κ against the
labels (95 % percentile bootstrap); and κ between every two judges. Agreement between judges
is not accuracy: only --gold-field says whether a judge is right.
A killed job resumes where it stopped when run again with the same arguments.
Examples:
  earguard judge --data runs/none/results.jsonl --judge substring --judge llm=qwen2.5-coder-1.5b-instruct -o judged/none
  earguard judge --data human.jsonl --gold-field refused --judge substring -o judged/human")]
pub struct JudgeArgs {
    /// A JSONL file of prompts and responses (a run's results.jsonl, or another tool's output).
    #[arg(long)]
    pub data: PathBuf,
    /// A judge, repeatable: substring, substring:extended, refusal-score (needs the rows'
    /// `refusal_score`), llm=MODEL.
    #[arg(long = "judge", required = true)]
    pub judges: Vec<String>,
    /// Output directory: judged.jsonl, summary.json, summary.md, job.json.
    #[arg(short, long)]
    pub out: PathBuf,
    /// The field holding the request.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// The field holding the response under judgement.
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// A boolean field of human labels (true = the response is a refusal): score each judge
    /// against it.
    #[arg(long)]
    pub gold_field: Option<String>,
    /// Rows handed to a judge at a time (and written at a time).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

pub fn run(args: JudgeArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let judges = args
        .judges
        .iter()
        .map(|j| judge::build(j))
        .collect::<earguard_eval::Result<Vec<_>>>()?;
    let fields = Fields {
        prompt: args.prompt_field,
        response: args.response_field,
        gold: args.gold_field,
    };
    let summary = judging::judge_file(
        &args.data,
        &fields,
        &judges,
        &args.out,
        args.batch_size,
        crate::progress_bars(),
    )?;
    let md = judging::markdown(&summary);
    crate::write_file(&args.out.join("summary.md"), md.as_bytes())?;
    print!("{md}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
