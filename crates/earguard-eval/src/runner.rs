//! The evaluation runner: generate responses for every (prompt, sample) of a run in batches,
//! judge them, and append one JSON line per response to `DIR/results.jsonl`.
//!
//! No lost work: each batch's lines are written and fsynced before the next batch starts; a
//! run killed at any moment and started again with the same command resumes, skipping the
//! (prompt, sample) pairs already recorded; a half-written last line (the kill landed mid-write)
//! is cut off, never parsed as a record. `DIR/config.json` pins the run's configuration, and a
//! resume with a different one is refused.
//!
//! Shards: `--shard I/N` keeps the prompts whose pair (or id) hashes to I mod N, so mirror pairs
//! stay together and N machines can split one run; `earguard merge` joins the shards.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use earguard_data::{Label, Mode, PromptItem, PromptSet};
use earguard_model::generate::{generate_batch, FinishReason, GenerateRequest, SamplingParams};
use earguard_model::{ContentSpecials, Model};
use earguard_steer::defense::Defense;
use earguard_steer::inputs::InputStyle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::judge::{Judge, JudgeInput, Verdict};

fn raw_specials() -> ContentSpecials {
    ContentSpecials::Raw
}

/// Everything that determines a run's responses; resuming requires an identical one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: String,
    pub model_identity: String,
    pub data: Vec<DataRef>,
    pub defense: String,
    pub mode: Mode,
    pub instruction: Option<String>,
    pub system: Option<String>,
    /// How special-token strings in prompts were tokenized. Configs written before this
    /// field existed came from whole-text tokenization, i.e. `raw`.
    #[serde(default = "raw_specials")]
    pub content_specials: ContentSpecials,
    pub samples: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub max_tokens: usize,
    pub seed: u64,
    pub judges: Vec<String>,
    pub shard: Option<Shard>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    pub path: PathBuf,
    pub sha256: String,
    pub n_items: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || EvalError::Invalid(format!("--shard '{s}': expected I/N with 0 ≤ I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) =
            (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Pairs stay together: the key is the pair id when there is one.
    pub fn contains(&self, item: &PromptItem) -> bool {
        let key = item.pair_id.as_deref().unwrap_or(&item.id);
        let h = Sha256::digest(key.as_bytes());
        let x = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]));
        (x % self.count as u64) as usize == self.index
    }
}

/// One line of results.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub id: String,
    pub set: String,
    pub label: Label,
    pub category: Option<String>,
    pub pair_id: Option<String>,
    pub mode: Mode,
    pub sample: usize,
    pub defense: String,
    pub prompt: String,
    pub response: String,
    pub verdicts: BTreeMap<String, Verdict>,
    pub refusal_score: Option<f32>,
    pub n_tokens: usize,
    pub finish: String,
    pub seconds: f64,
}

impl ResultRow {
    /// The verdict of the primary (first) judge of the run.
    pub fn refused(&self, judge: &str) -> Option<bool> {
        self.verdicts.get(judge).map(|v| v.refused)
    }
}

pub struct RunOptions {
    pub batch_size: usize,
    pub progress: bool,
}

/// A prompt of the run with the set it came from.
#[derive(Debug, Clone)]
pub struct RunItem {
    pub set: String,
    pub item: PromptItem,
}

/// The prompts a config covers (all sets, its shard only), in file order.
pub fn run_items(sets: &[PromptSet], shard: Option<Shard>) -> Vec<RunItem> {
    sets.iter()
        .flat_map(|s| {
            let set = s
                .path
                .file_stem()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            s.items.iter().map(move |i| RunItem {
                set: set.clone(),
                item: i.clone(),
            })
        })
        .filter(|r| shard.is_none_or(|s| s.contains(&r.item)))
        .collect()
}

pub const RESULTS: &str = "results.jsonl";
pub const CONFIG: &str = "config.json";

/// Create the run directory or check that it belongs to this configuration.
pub fn prepare_dir(dir: &Path, config: &RunConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let path = dir.join(CONFIG);
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let found: RunConfig = serde_json::from_str(&text)
            .map_err(|e| EvalError::io(&path, format!("malformed run config: {e}")))?;
        if &found != config {
            let (a, b) = (
                serde_json::to_value(&found).unwrap_or_default(),
                serde_json::to_value(config).unwrap_or_default(),
            );
            let differing: Vec<String> = a
                .as_object()
                .into_iter()
                .flat_map(|o| o.iter())
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, _)| k.clone())
                .collect();
            return Err(EvalError::io(
                &path,
                format!(
                    "this directory holds a run with a different configuration (differs in: {}); \
                     refusing to resume into it — use another --out directory",
                    differing.join(", ")
                ),
            ));
        }
        return Ok(());
    }
    let text =
        serde_json::to_string_pretty(config).map_err(|e| EvalError::Invalid(e.to_string()))?;
    let tmp = dir.join(format!("{CONFIG}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| EvalError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| EvalError::io(&path, e))
}

/// Read results.jsonl, cutting off a half-written last line left by a kill.
pub fn read_results(path: &Path) -> Result<Vec<ResultRow>> {
    if !path.is_file() {
        return Ok(vec![]);
    }
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(last) => last + 1,
        None => 0,
    };
    if complete < bytes.len() {
        // The tail after the last newline was never finished: drop it from the file too, so the
        // next append starts on a clean line.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| EvalError::io(path, e))?;
        f.set_len(complete as u64)
            .map_err(|e| EvalError::io(path, e))?;
    }
    let text = std::str::from_utf8(&bytes[..complete]).map_err(|e| EvalError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| EvalError::io(path, format!("line {}: malformed result: {e}", i + 1)))
        })
        .collect()
}

/// Deterministic per-(prompt, sample) seed, independent of batching and sharding.
fn row_seed(seed: u64, id: &str, sample: usize) -> u64 {
    let h = Sha256::digest(format!("{seed}\0{id}\0{sample}").as_bytes());
    u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

/// Run (or resume) an evaluation; returns every row of the run, old and new.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model,
    defense: &dyn Defense,
    judges: &[Box<dyn Judge>],
    style: &InputStyle,
    items: &[RunItem],
    config: &RunConfig,
    dir: &Path,
    opts: &RunOptions,
) -> Result<Vec<ResultRow>> {
    prepare_dir(dir, config)?;
    let path = dir.join(RESULTS);
    let mut rows = read_results(&path)?;
    let done: HashSet<(String, usize)> = rows.iter().map(|r| (r.id.clone(), r.sample)).collect();
    let todo: Vec<(&RunItem, usize)> = items
        .iter()
        .flat_map(|it| (0..config.samples).map(move |s| (it, s)))
        .filter(|(it, s)| !done.contains(&(it.item.id.clone(), *s)))
        .collect();
    if todo.is_empty() {
        return Ok(rows);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| EvalError::io(&path, e))?;
    let stop = model.tokenizer.stop_token_ids();
    let score_tokens = earguard_steer::pipeline::refusal_start_tokens(model)?;
    let sampling = SamplingParams {
        temperature: config.temperature,
        top_k: None,
        top_p: config.top_p,
        seed: config.seed,
    };
    let request = GenerateRequest {
        max_tokens: config.max_tokens,
        sampling,
        stop_tokens: &stop,
        pad_token: model.tokenizer.pad_id(),
        score_tokens: &score_tokens,
    };
    let bar = progress(opts.progress, items.len() * config.samples, done.len());
    for batch in todo.chunks(opts.batch_size.max(1)) {
        let t0 = Instant::now();
        let mut prompts = Vec::with_capacity(batch.len());
        for (it, _) in batch {
            let messages = defense.rewrite(style.messages(&it.item, None)?);
            prompts.push(
                model
                    .encode_prompt(&messages, style.specials)
                    .map_err(|e| EvalError::Invalid(format!("prompt {}: {e}", it.item.id)))?,
            );
        }
        let plan = defense.plan(model, &prompts)?;
        let seeds: Vec<u64> = batch
            .iter()
            .map(|(it, s)| row_seed(config.seed, &it.item.id, *s))
            .collect();
        let gens = generate_batch(
            &model.decoder,
            &prompts,
            &request,
            &plan,
            Some(&seeds),
            |_, _| {},
        )?;
        let seconds = t0.elapsed().as_secs_f64() / batch.len() as f64;
        let texts = gens
            .iter()
            .map(|g| model.tokenizer.decode(&g.tokens, true))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let inputs: Vec<JudgeInput<'_>> = batch
            .iter()
            .zip(&texts)
            .zip(&gens)
            .map(|(((it, _), text), g)| JudgeInput {
                prompt: &it.item.text,
                response: text,
                refusal_score: g.first_token_log_odds,
            })
            .collect();
        let mut verdicts: Vec<BTreeMap<String, Verdict>> = vec![BTreeMap::new(); batch.len()];
        for judge in judges {
            for (slot, v) in verdicts.iter_mut().zip(judge.judge_batch(&inputs)?) {
                slot.insert(judge.name(), v);
            }
        }
        let mut lines = String::new();
        for ((((it, sample), text), g), v) in batch.iter().zip(texts).zip(&gens).zip(verdicts) {
            let row = ResultRow {
                id: it.item.id.clone(),
                set: it.set.clone(),
                label: it.item.label,
                category: it.item.category.clone(),
                pair_id: it.item.pair_id.clone(),
                mode: config.mode,
                sample: *sample,
                defense: config.defense.clone(),
                prompt: it.item.text.clone(),
                response: text,
                verdicts: v,
                refusal_score: g.first_token_log_odds,
                n_tokens: g.tokens.len(),
                finish: finish_name(g.finish).into(),
                seconds,
            };
            lines.push_str(
                &serde_json::to_string(&row).map_err(|e| EvalError::Invalid(e.to_string()))?,
            );
            lines.push('\n');
            rows.push(row);
        }
        // One write per batch, then fsync: a kill leaves whole batches or a cut-off tail.
        file.write_all(lines.as_bytes())
            .map_err(|e| EvalError::io(&path, e))?;
        file.sync_data().map_err(|e| EvalError::io(&path, e))?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(rows)
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Context => "context",
    }
}

fn progress(show: bool, total: usize, done: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} responses, {elapsed} elapsed, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message("eval");
    bar.set_position(done as u64);
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_and_keep_pairs_together() {
        let item = |id: &str, pair: Option<&str>| PromptItem {
            id: id.into(),
            source: None,
            split: None,
            label: Label::Benign,
            category: None,
            pair_id: pair.map(Into::into),
            text: "t".into(),
            audio: None,
        };
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for n in 0..50 {
            let it = item(&format!("x-{n}"), None);
            assert_eq!(shards.iter().filter(|s| s.contains(&it)).count(), 1);
            let (h, b) = (
                item(&format!("h-{n}"), Some(&format!("p{n}"))),
                item(&format!("b-{n}"), Some(&format!("p{n}"))),
            );
            for s in &shards {
                assert_eq!(s.contains(&h), s.contains(&b));
            }
        }
        assert!("3/3".parse::<Shard>().is_err());
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
    }

    #[test]
    fn half_written_lines_are_cut_off() {
        let dir = std::env::temp_dir().join(format!("earguard-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(RESULTS);
        let row = ResultRow {
            id: "a".into(),
            set: "s".into(),
            label: Label::Harmful,
            category: None,
            pair_id: None,
            mode: Mode::TextOnly,
            sample: 0,
            defense: "none".into(),
            prompt: "p".into(),
            response: "r".into(),
            verdicts: BTreeMap::new(),
            refusal_score: Some(1.5),
            n_tokens: 3,
            finish: "stop".into(),
            seconds: 0.1,
        };
        let line = serde_json::to_string(&row).unwrap();
        std::fs::write(&path, format!("{line}\n{}", &line[..line.len() / 2])).unwrap();
        let rows = read_results(&path).unwrap();
        assert_eq!(rows, vec![row]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{line}\n"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
