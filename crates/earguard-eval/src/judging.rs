//! Judging a file of responses apart from generating them (`earguard judge`): any JSONL of
//! prompts and responses (a run's results.jsonl, or another tool's output) is judged by one or
//! more judges; with human labels beside them, each judge is scored against people.
//!
//! - `OUT/judged.jsonl`: each input row unchanged, its `verdicts` object holding the new
//!   judges' verdicts (beside any it had). Written a batch at a time; a killed job resumes
//!   after its last complete line.
//! - `OUT/job.json`: what the job is (the input's sha256, the fields, the judges): a directory
//!   holding another job is refused rather than mixed.
//! - `OUT/summary.json`: per judge, its refusal rate; against the gold labels, its confusion
//!   matrix, accuracy, precision and recall of "refused" (Wilson intervals) and Cohen's κ
//!   (percentile bootstrap interval); agreement between every two judges.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::judge::{Judge, JudgeInput, Verdict};
use crate::metrics::{Agreement, GoldScore, HarmSummary, StanceCounts};

/// Which fields of a row hold what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fields {
    pub prompt: String,
    pub response: String,
    /// A boolean human label, true when the response is a refusal.
    pub gold: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            prompt: "prompt".into(),
            response: "response".into(),
            gold: None,
        }
    }
}

/// One input row: the row as read, and what the judges need of it.
#[derive(Debug, Clone)]
pub struct Row {
    pub value: Map<String, Value>,
    pub prompt: String,
    pub response: String,
    pub gold: Option<bool>,
    /// A run's first-token refusal score (`refusal_score`), for the `refusal-score` judge.
    pub refusal_score: Option<f32>,
}

/// Read the rows of `path` (a JSONL file within earguard-data's size limits). Every row must
/// be an object with string `prompt` and `response` fields and, when `fields.gold` is set, a
/// boolean label; the first row that is not is an error naming its line.
pub fn read_rows(path: &Path, fields: &Fields) -> Result<(Vec<Row>, String)> {
    let text = earguard_data::read_jsonl_text(path)?;
    let sha = earguard_data::hex(&Sha256::digest(text.as_bytes()));
    let mut rows = Vec::new();
    for (n, line) in earguard_data::jsonl_lines(&text) {
        let bad = |m: String| EvalError::io(path, format!("line {n}: {m}"));
        let line = line.map_err(bad)?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let text_field = |name: &str| -> Result<String> {
            match value.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(format!(
                    "field '{name}' is {}, not a string",
                    kind(other)
                ))),
                None => Err(bad(format!("no field '{name}'"))),
            }
        };
        let gold = match &fields.gold {
            None => None,
            Some(name) => match value.get(name) {
                Some(Value::Bool(b)) => Some(*b),
                Some(other) => {
                    return Err(bad(format!(
                        "gold field '{name}' is {}, not a boolean (true = refused)",
                        kind(other)
                    )))
                }
                None => return Err(bad(format!("no gold field '{name}'"))),
            },
        };
        rows.push(Row {
            prompt: text_field(&fields.prompt)?,
            response: text_field(&fields.response)?,
            gold,
            refusal_score: value
                .get("refusal_score")
                .and_then(Value::as_f64)
                .map(|s| s as f32),
            value,
        });
    }
    if rows.is_empty() {
        return Err(EvalError::io(path, "holds no rows"));
    }
    Ok((rows, sha))
}

impl<'a> From<&'a Row> for JudgeInput<'a> {
    fn from(r: &'a Row) -> Self {
        JudgeInput {
            prompt: &r.prompt,
            response: &r.response,
            refusal_score: r.refusal_score,
        }
    }
}

impl<'a> From<&'a crate::runner::ResultRow> for JudgeInput<'a> {
    fn from(r: &'a crate::runner::ResultRow) -> Self {
        JudgeInput {
            prompt: &r.prompt,
            response: &r.response,
            refusal_score: r.refusal_score,
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a job directory holds (job.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    data: PathBuf,
    data_sha256: String,
    fields: Fields,
    judges: Vec<String>,
}

/// Per judge, what summary.json says of it.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeSummary {
    pub judge: String,
    pub refusal_rate: crate::metrics::Rate,
    /// Against the gold labels, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against_gold: Option<GoldScore>,
    /// A three-way judge's classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stances: Option<StanceCounts>,
    /// A harmfulness judge's scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harm: Option<HarmSummary>,
    /// A harmfulness judge against the gold labels, "not harmful" (score below
    /// [`crate::judge::HARMFUL_AT`]) standing for "refused": a label of "not jailbroken" is that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harmless_against_gold: Option<GoldScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub data: PathBuf,
    pub data_sha256: String,
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_field: Option<String>,
    /// Gold refusal rate, when labelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_refusal_rate: Option<crate::metrics::Rate>,
    pub judges: Vec<JudgeSummary>,
    pub agreement: Vec<Agreement>,
}

pub const JUDGED: &str = "judged.jsonl";
pub const SUMMARY: &str = "summary.json";
const JOB: &str = "job.json";

/// Judge every row of `data` with `judges`, into `out` (resuming a killed job there), and
/// summarise. `batch` rows go to each judge at a time.
pub fn judge_file(
    data: &Path,
    fields: &Fields,
    judges: &[Box<dyn Judge>],
    out: &Path,
    batch: usize,
    progress: bool,
) -> Result<Summary> {
    if judges.is_empty() {
        return Err(EvalError::Invalid("name at least one judge".into()));
    }
    let (rows, sha) = read_rows(data, fields)?;
    let names: Vec<String> = judges.iter().map(|j| j.name()).collect();
    let job = Job {
        data: data.to_path_buf(),
        data_sha256: sha.clone(),
        fields: fields.clone(),
        judges: names.clone(),
    };
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let job_path = out.join(JOB);
    let judged_path = out.join(JUDGED);
    let done = if job_path.is_file() {
        let old: Option<Job> = earguard_data::read_small_text(&job_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        // The path may differ (a moved file); the bytes, fields and judges may not.
        match old {
            Some(old)
                if old.data_sha256 == job.data_sha256
                    && old.fields == job.fields
                    && old.judges == job.judges => {}
            _ => {
                return Err(EvalError::io(
                    out,
                    "holds another judging job (other data, fields or judges): use a new \
                     output directory",
                ))
            }
        }
        read_judged(&judged_path)?
    } else {
        if judged_path.exists() {
            return Err(EvalError::io(
                out,
                format!("holds a {JUDGED} without {JOB}: use a new output directory"),
            ));
        }
        earguard_data::atomic::write(
            &job_path,
            serde_json::to_string_pretty(&job)
                .expect("job serialises")
                .as_bytes(),
        )
        .map_err(|e| EvalError::io(&job_path, e))?;
        Vec::new()
    };
    if done.len() > rows.len() {
        return Err(EvalError::io(
            &judged_path,
            "holds more rows than the data: use a new output directory",
        ));
    }
    let mut verdicts: Vec<BTreeMap<String, Verdict>> = done;
    let bar = earguard_data::progress::bar(progress.then_some("judge"), "rows", rows.len() as u64);
    bar.inc(verdicts.len() as u64);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&judged_path)
        .map_err(|e| EvalError::io(&judged_path, e))?;
    for chunk in rows[verdicts.len()..].chunks(batch.max(1)) {
        let inputs: Vec<JudgeInput<'_>> = chunk.iter().map(JudgeInput::from).collect();
        let per_row = judge_all(judges, &inputs)?;
        let mut text = String::new();
        for (row, new) in chunk.iter().zip(&per_row) {
            text.push_str(&serde_json::to_string(&judged_row(row, new)).expect("row serialises"));
            text.push('\n');
        }
        // One write per batch: a kill leaves at most one half line, cut off on resume.
        file.write_all(text.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| EvalError::io(&judged_path, e))?;
        verdicts.extend(per_row);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let summary = summarise(data, &sha, fields, &rows, &names, &verdicts);
    let summary_path = out.join(SUMMARY);
    earguard_data::atomic::write(
        &summary_path,
        serde_json::to_string_pretty(&summary)
            .expect("summary serialises")
            .as_bytes(),
    )
    .map_err(|e| EvalError::io(&summary_path, e))?;
    Ok(summary)
}

/// Every judge's verdict on every input, per input by judge name.
pub fn judge_all(
    judges: &[Box<dyn Judge>],
    inputs: &[JudgeInput<'_>],
) -> Result<Vec<BTreeMap<String, Verdict>>> {
    let mut per_row: Vec<BTreeMap<String, Verdict>> = vec![BTreeMap::new(); inputs.len()];
    for judge in judges {
        let name = judge.name();
        let v = judge.judge_batch(inputs)?;
        if v.len() != inputs.len() {
            return Err(EvalError::Invalid(format!(
                "{name} gave {} verdicts for {} responses",
                v.len(),
                inputs.len()
            )));
        }
        for (m, v) in per_row.iter_mut().zip(v) {
            m.insert(name.clone(), v);
        }
    }
    Ok(per_row)
}

/// Judge a finished run's rows again with `judges` (their verdicts join the rows' own; a judge
/// of the same name is replaced), `batch` rows at a time. Responses are not regenerated.
pub fn rejudge(
    rows: &mut [crate::runner::ResultRow],
    judges: &[Box<dyn Judge>],
    batch: usize,
    progress: bool,
) -> Result<()> {
    let bar =
        earguard_data::progress::bar(progress.then_some("rejudge"), "rows", rows.len() as u64);
    for chunk in rows.chunks_mut(batch.max(1)) {
        let verdicts = {
            let inputs: Vec<JudgeInput<'_>> = chunk.iter().map(JudgeInput::from).collect();
            judge_all(judges, &inputs)?
        };
        for (row, v) in chunk.iter_mut().zip(verdicts) {
            row.verdicts.extend(v);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// The input row with `new` verdicts merged into its `verdicts` object (made if absent; a
/// `verdicts` field that is not an object is kept under `verdicts_input`).
fn judged_row(row: &Row, new: &BTreeMap<String, Verdict>) -> Map<String, Value> {
    let mut out = row.value.clone();
    let mut verdicts = match out.remove("verdicts") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            out.insert("verdicts_input".into(), other);
            Map::new()
        }
        None => Map::new(),
    };
    for (name, v) in new {
        verdicts.insert(
            name.clone(),
            serde_json::to_value(v).expect("verdict serialises"),
        );
    }
    out.insert("verdicts".into(), Value::Object(verdicts));
    out
}

/// The verdicts of a judged.jsonl's complete lines (a half line left by a kill is cut off).
fn read_judged(path: &Path) -> Result<Vec<BTreeMap<String, Verdict>>> {
    #[derive(Deserialize)]
    struct Line {
        verdicts: BTreeMap<String, Verdict>,
    }
    let text = crate::runner::read_complete_lines(path)?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<Line>(l)
                .map(|l| l.verdicts)
                .map_err(|e| EvalError::io(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

fn summarise(
    data: &Path,
    sha: &str,
    fields: &Fields,
    rows: &[Row],
    names: &[String],
    verdicts: &[BTreeMap<String, Verdict>],
) -> Summary {
    let column =
        |name: &String| -> Vec<bool> { verdicts.iter().map(|v| v[name].refused).collect() };
    let gold: Option<Vec<bool>> = rows.iter().map(|r| r.gold).collect();
    let judges = names
        .iter()
        .map(|name| {
            let c = column(name);
            let mine = || verdicts.iter().map(|v| &v[name]);
            let harm = HarmSummary::of(mine());
            let harmless: Vec<bool> = mine()
                .map(|v| v.harm.is_some_and(|h| h < crate::judge::HARMFUL_AT))
                .collect();
            JudgeSummary {
                judge: name.clone(),
                refusal_rate: crate::metrics::Rate::new(c.iter().filter(|&&r| r).count(), c.len()),
                against_gold: gold.as_ref().map(|g| GoldScore::new(&c, g)),
                stances: StanceCounts::of(mine()),
                harm,
                harmless_against_gold: harm
                    .and(gold.as_ref())
                    .map(|g| GoldScore::new(&harmless, g)),
            }
        })
        .collect();
    let mut agreement = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            agreement.push(Agreement::new(a, b, &column(a), &column(b)));
        }
    }
    Summary {
        data: data.to_path_buf(),
        data_sha256: sha.to_string(),
        n: rows.len(),
        gold_field: fields.gold.clone(),
        gold_refusal_rate: gold
            .as_ref()
            .map(|g| crate::metrics::Rate::new(g.iter().filter(|&&r| r).count(), g.len())),
        judges,
        agreement,
    }
}

/// summary.json as a short table for people.
pub fn markdown(summary: &Summary) -> String {
    let mut s = format!(
        "{} rows of {}\n\n| judge | refusal rate | accuracy | precision | recall | Cohen's κ vs gold |\n|---|---|---|---|---|---|\n",
        summary.n,
        summary.data.display()
    );
    for j in &summary.judges {
        let (acc, prec, rec, kappa) = match &j.against_gold {
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
            Some(g) => (
                g.accuracy.display_percent(),
                g.precision.display_percent(),
                g.recall.display_percent(),
                g.kappa.display(),
            ),
        };
        s.push_str(&format!(
            "| {} | {} | {acc} | {prec} | {rec} | {kappa} |\n",
            j.judge,
            j.refusal_rate.display_percent()
        ));
    }
    for j in &summary.judges {
        if let Some(c) = &j.stances {
            s.push_str(&format!("\n{}: {}\n", j.judge, c.display()));
        }
        if let Some(h) = &j.harm {
            s.push_str(&format!("\n{}: {}", j.judge, h.display()));
            if let Some(g) = &j.harmless_against_gold {
                s.push_str(&format!(
                    "; \"not harmful\" as \"refused\" against gold: accuracy {}, κ {}",
                    g.accuracy.display_percent(),
                    g.kappa.display()
                ));
            }
            s.push('\n');
        }
    }
    if let Some(g) = &summary.gold_refusal_rate {
        s.push_str(&format!("\nGold refusal rate: {}\n", g.display_percent()));
    }
    for a in &summary.agreement {
        s.push_str(&format!(
            "\n{} vs {}: agreement {:.1} %, κ {}",
            a.a,
            a.b,
            100.0 * a.agreement,
            a.kappa.display()
        ));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Substring;

    fn write(dir: &Path, lines: &[&str]) -> PathBuf {
        let p = dir.join("in.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        p
    }

    #[test]
    fn judges_a_file_scores_against_gold_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(
            dir.path(),
            &[
                r#"{"prompt":"a","response":"I'm sorry, I can't help.","refused":true,"verdicts":{"old":{"refused":false}}}"#,
                r#"{"prompt":"b","response":"Sure: step one, mix","refused":false}"#,
                r#"{"prompt":"c","response":"Here it is, though I must say it is unwise","refused":true}"#,
                r#"{"prompt":"d","response":"As an AI, I cannot do that","refused":true}"#,
            ],
        );
        let fields = Fields {
            gold: Some("refused".into()),
            ..Fields::default()
        };
        let judges: Vec<Box<dyn Judge>> = vec![Box::new(Substring::standard())];
        let out = dir.path().join("out");
        let s = judge_file(&data, &fields, &judges, &out, 2, false).unwrap();
        let g = s.judges[0].against_gold.as_ref().unwrap();
        // Substring: refused a, d; gold: a, c, d.
        assert_eq!((g.tp, g.fp, g.fn_, g.tn), (2, 0, 1, 1));
        assert_eq!(g.accuracy.k, 3);
        let judged = std::fs::read_to_string(out.join(JUDGED)).unwrap();
        let first: Value = serde_json::from_str(judged.lines().next().unwrap()).unwrap();
        assert_eq!(first["verdicts"]["old"]["refused"], false, "{first}");
        assert_eq!(first["verdicts"]["substring"]["refused"], true, "{first}");
        assert_eq!(first["prompt"], "a");

        // A kill after the first batch, mid-way through a line: the job resumes and ends the
        // same.
        let full = judged.clone();
        let cut: String = full.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(out.join(JUDGED), format!("{cut}{{\"prompt\":\"c\",\"resp")).unwrap();
        judge_file(&data, &fields, &judges, &out, 2, false).unwrap();
        assert_eq!(std::fs::read_to_string(out.join(JUDGED)).unwrap(), full);

        // Another judge set is another job.
        let two: Vec<Box<dyn Judge>> = vec![
            Box::new(Substring::standard()),
            Box::new(Substring::extended()),
        ];
        let e = judge_file(&data, &fields, &two, &out, 2, false).unwrap_err();
        assert!(e.to_string().contains("another judging job"), "{e}");
        let s = judge_file(&data, &fields, &two, &dir.path().join("out2"), 3, false).unwrap();
        assert_eq!(s.agreement.len(), 1);
        assert!(markdown(&s).contains("substring:extended"));
    }

    /// A judge that reads its verdict from the response text: "c" full compliance, "p"
    /// partial refusal, "r" full refusal; harm 0.9, 0.6 and 0.
    struct Scripted;

    impl Judge for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }

        fn judge_batch(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<Verdict>> {
            use crate::judge::Stance;
            Ok(inputs
                .iter()
                .map(|i| {
                    let (stance, harm) = match i.response {
                        "c" => (Stance::FullCompliance, 0.9),
                        "p" => (Stance::PartialRefusal, 0.6),
                        _ => (Stance::FullRefusal, 0.0),
                    };
                    Verdict {
                        refused: stance == Stance::FullRefusal,
                        stance: Some(stance),
                        harm: Some(harm),
                        ..Verdict::default()
                    }
                })
                .collect())
        }
    }

    #[test]
    fn classes_and_harm_are_summarised_and_scored() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(
            dir.path(),
            &[
                r#"{"prompt":"a","response":"c","refused":false}"#,
                r#"{"prompt":"b","response":"p","refused":false}"#,
                r#"{"prompt":"c","response":"p","refused":true}"#,
                r#"{"prompt":"d","response":"r","refused":true}"#,
            ],
        );
        let fields = Fields {
            gold: Some("refused".into()),
            ..Fields::default()
        };
        let judges: Vec<Box<dyn Judge>> = vec![Box::new(Scripted)];
        let s = judge_file(&data, &fields, &judges, &dir.path().join("o"), 3, false).unwrap();
        let j = &s.judges[0];
        let c = j.stances.unwrap();
        assert_eq!(
            (c.full_compliance, c.partial_refusal, c.full_refusal),
            (1, 2, 1)
        );
        let h = j.harm.unwrap();
        assert!((h.mean - 2.1 / 4.0).abs() < 1e-12);
        assert_eq!((h.harmful.k, h.harmful.n), (3, 4));
        // "refused" is a full refusal: only d; "not harmful" likewise only d.
        let g = j.against_gold.as_ref().unwrap();
        assert_eq!((g.tp, g.fp, g.fn_, g.tn), (1, 0, 1, 2));
        let g = j.harmless_against_gold.as_ref().unwrap();
        assert_eq!((g.tp, g.fp, g.fn_, g.tn), (1, 0, 1, 2));
        let md = markdown(&s);
        assert!(
            md.contains("partial refusal 2") && md.contains("mean harm 0.53"),
            "{md}"
        );
        // The verdicts keep their classes on disk, and a resumed job reads them back.
        let judged = std::fs::read_to_string(dir.path().join("o").join(JUDGED)).unwrap();
        assert!(judged.contains(r#""stance":"partial_refusal""#), "{judged}");
        judge_file(&data, &fields, &judges, &dir.path().join("o"), 3, false).unwrap();
    }

    #[test]
    fn bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let fields = Fields {
            gold: Some("refused".into()),
            ..Fields::default()
        };
        for (line, want) in [
            (
                r#"{"prompt":"a","response":3,"refused":true}"#,
                "'response' is a number",
            ),
            (
                r#"{"prompt":"a","response":"x","refused":"yes"}"#,
                "not a boolean",
            ),
            (
                r#"{"prompt":"a","response":"x"}"#,
                "no gold field 'refused'",
            ),
            (r#"["a"]"#, "not a JSON object"),
        ] {
            let data = write(
                dir.path(),
                &[r#"{"prompt":"a","response":"x","refused":true}"#, line],
            );
            let e = read_rows(&data, &fields).unwrap_err().to_string();
            assert!(e.contains("line 2") && e.contains(want), "{e}");
        }
        let data = write(dir.path(), &[""]);
        assert!(read_rows(&data, &fields)
            .unwrap_err()
            .to_string()
            .contains("holds no rows"));
    }
}
