//! The evaluation runner: generate responses for every (prompt, sample) of a run in batches,
//! judge them, and append one JSON line per response to `DIR/results.jsonl`.
//!
//! Every prompt is checked before anything is generated (chat template, length against the
//! model's context, audio file readable and short enough): a prompt the model cannot take stops
//! the run up front, naming it, or with `skip_bad_items` is recorded in `DIR/skipped.jsonl` and
//! left out. A run that fails before writing a response leaves no run directory behind.
//!
//! No lost work: each batch's lines are written and fsynced before the next batch starts; a
//! run killed at any moment and started again with the same command resumes, skipping the
//! (prompt, sample) pairs already recorded; a half-written last line (the kill landed mid-write)
//! is cut off, never parsed as a record. `DIR/config.json` pins the run's configuration, and a
//! resume with a different one is refused; so is one whose recorded rows are not all rows of
//! this configuration (another model, defense, mode or judges, a prompt not in the data set or
//! with other text, a sample out of range, a row twice), or a `results.jsonl` with no
//! `config.json`.
//!
//! Responses are classified as they are written: a degenerate one (see [`crate::degenerate`])
//! is marked in its row and the metrics count it apart, whatever the judges say.
//!
//! Shards: `--shard I/N` keeps the prompts whose pair (or, unpaired, id) hashes to I mod N, so
//! mirror pairs stay together and N machines can split one run; `earguard merge` joins the
//! shards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use earguard_data::{Label, Mode, PromptItem, PromptSet};
use earguard_model::generate::{generate_from, FinishReason, GenerateRequest, SamplingParams};
use earguard_model::score::{refusal_scores, refusal_start_tokens};
use earguard_model::{prefill, AudioCache, ContentSpecials, Logits, Model};
use earguard_steer::defense::{Defense, GuidedInput, ScoredVerdict, Verdict as SafeVerdict};
use earguard_steer::inputs::{InputStyle, DEFAULT_INSTRUCTION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::degenerate::{classify, Degenerate};
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
    /// In the order given; the first is the primary judge, whose verdicts the metrics use.
    pub judges: Vec<String>,
    pub shard: Option<Shard>,
}

impl RunConfig {
    /// The judge the metrics use: the first one given.
    pub fn primary_judge(&self) -> Result<&str> {
        self.judges
            .first()
            .map(String::as_str)
            .ok_or_else(|| EvalError::Invalid("the run configuration names no judge".into()))
    }

    /// The responses the run is made of when finished: every prompt of its data sets once per
    /// sample, less the prompts it skipped; None for one shard of a run (whose share is not
    /// recorded) or counts too large to hold.
    pub fn expected_responses(&self, skipped: usize) -> Option<usize> {
        if self.shard.is_some() {
            return None;
        }
        let items = self
            .data
            .iter()
            .try_fold(0usize, |n, d| n.checked_add(d.n_items))?;
        items.saturating_sub(skipped).checked_mul(self.samples)
    }

    /// How the run's prompts become conversations (mode, instruction, system message, special
    /// tokens: the settings this configuration records).
    pub fn style(&self) -> InputStyle {
        InputStyle {
            mode: self.mode,
            instruction: self
                .instruction
                .clone()
                .unwrap_or_else(|| DEFAULT_INSTRUCTION.to_string()),
            system: self.system.clone(),
            specials: self.content_specials,
        }
    }

    /// Counts that must be at least 1 (0 would make a run with no responses).
    fn check(&self) -> Result<()> {
        for (name, v) in [("samples", self.samples), ("max-tokens", self.max_tokens)] {
            if v == 0 {
                return Err(EvalError::Invalid(format!("--{name} must be at least 1")));
            }
        }
        self.primary_judge().map(|_| ())
    }

    /// Why `row` cannot be a row of this configuration, if it cannot.
    fn foreign(&self, row: &ResultRow) -> Option<String> {
        let judges: BTreeSet<&str> = self.judges.iter().map(String::as_str).collect();
        let judged: BTreeSet<&str> = row.verdicts.keys().map(String::as_str).collect();
        if row.model.is_empty() {
            Some("records no model (written before earguard recorded it)".into())
        } else if row.model != self.model {
            Some(format!(
                "was made by model '{}', not '{}'",
                row.model, self.model
            ))
        } else if row.defense != self.defense {
            Some(format!(
                "was made with defense '{}', not '{}'",
                row.defense, self.defense
            ))
        } else if row.mode != self.mode {
            Some(format!("is in mode {}, not {}", row.mode, self.mode))
        } else if row.sample >= self.samples {
            Some(format!(
                "is sample {} of a run of {}",
                row.sample, self.samples
            ))
        } else if !judged.is_superset(&judges) {
            // More judges than the run's is a row re-judged since (`earguard judge --run`).
            Some(format!(
                "was judged by {judged:?}, not by this run's judges {judges:?}"
            ))
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRef {
    pub path: PathBuf,
    pub sha256: String,
    pub n_items: usize,
}

/// Shard `index` of `count` (0 ≤ index < count), checked however it is made: parsed from
/// `--shard I/N` or read back from a run's config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ShardFields")]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

#[derive(Deserialize)]
struct ShardFields {
    index: usize,
    count: usize,
}

impl TryFrom<ShardFields> for Shard {
    type Error = EvalError;
    fn try_from(f: ShardFields) -> Result<Self> {
        format!("{}/{}", f.index, f.count).parse()
    }
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
    /// The model's name (rows written before it was recorded read as "").
    #[serde(default)]
    pub model: String,
    pub set: String,
    pub label: Label,
    pub category: Option<String>,
    pub pair_id: Option<String>,
    /// The voice of a rendered (audio) item: mirror pairs are matched per voice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    pub mode: Mode,
    pub sample: usize,
    pub defense: String,
    pub prompt: String,
    pub response: String,
    /// Why the response is degenerate (then it counts in neither ASR nor ORR), or null.
    #[serde(default)]
    pub degenerate: Option<Degenerate>,
    pub verdicts: BTreeMap<String, Verdict>,
    pub refusal_score: Option<f32>,
    /// SafeCoDe's verdict on the request (rows of other defenses have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_verdict: Option<SafetyVerdict>,
    pub n_tokens: usize,
    pub finish: FinishReason,
    pub seconds: f64,
}

/// A decoding defense's verdict on the whole request (SafeCoDe), as recorded in a result row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SafetyVerdict {
    pub unsafe_request: bool,
    /// `logit(unsafe) − logit(safe)` of the verdict question.
    pub score: f32,
}

impl From<ScoredVerdict> for SafetyVerdict {
    fn from(v: ScoredVerdict) -> Self {
        Self {
            unsafe_request: v.verdict == SafeVerdict::Unsafe,
            score: v.score,
        }
    }
}

impl ResultRow {
    /// The verdict of `judge` (None if it did not judge this row). The metrics use the run's
    /// primary judge, [`RunConfig::primary_judge`], through [`ResultRow::counted`].
    pub fn refused(&self, judge: &str) -> Option<bool> {
        self.verdicts.get(judge).map(|v| v.refused)
    }

    /// The verdict the metrics count: `judge`'s, or None for a degenerate response (neither a
    /// refusal nor an answer).
    pub fn counted(&self, judge: &str) -> Option<bool> {
        match self.degenerate {
            Some(_) => None,
            None => self.refused(judge),
        }
    }
}

pub struct RunOptions {
    pub batch_size: usize,
    pub progress: bool,
    /// Record prompts the model cannot take in skipped.jsonl and go on (otherwise the first one
    /// stops the run before anything is generated).
    pub skip_bad_items: bool,
}

/// A prompt left out of a run because the model cannot take it (a line of skipped.jsonl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedItem {
    pub id: String,
    pub set: String,
    pub label: Label,
    pub reason: String,
}

/// What a run produced: every row, old and new, and the prompts it left out.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub rows: Vec<ResultRow>,
    pub skipped: Vec<SkippedItem>,
    /// Audio clips this run ran through the audio tower (each distinct clip once, none that
    /// an earlier run sharing its [`AudioCache`] encoded; counted from the cache's total, so
    /// runs sharing a cache at the same time would count each other's).
    pub audio_clips_encoded: usize,
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
pub const SKIPPED: &str = "skipped.jsonl";

/// What [`prepare_dir`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDir {
    /// A run of this configuration was there: resume it.
    Resumed,
    /// A new run (`made_dir`: the directory itself was created too).
    New { made_dir: bool },
}

/// Create the run directory or check that it belongs to this configuration.
pub fn prepare_dir(dir: &Path, config: &RunConfig) -> Result<RunDir> {
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
        return Ok(RunDir::Resumed);
    }
    let results = dir.join(RESULTS);
    if std::fs::metadata(&results).is_ok_and(|m| m.len() > 0) {
        return Err(EvalError::io(
            &results,
            format!(
                "results without a {CONFIG}: they cannot be checked against this run; refusing to \
                 resume into them — use another --out directory"
            ),
        ));
    }
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let text =
        serde_json::to_string_pretty(config).map_err(|e| EvalError::Invalid(e.to_string()))?;
    earguard_data::atomic::write(&path, text.as_bytes()).map_err(|e| EvalError::io(&path, e))?;
    Ok(RunDir::New { made_dir })
}

/// Undo [`prepare_dir`] of a new run that wrote no response: its files, and the directory if
/// this run made it (and nothing else is in it). Best effort: the run's own error is the one
/// to report.
fn discard_new_run(dir: &Path, made_dir: bool) {
    for name in [RESULTS, SKIPPED, CONFIG] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    if made_dir {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Check every recorded row against the run: its configuration, each (prompt, sample) once,
/// and with `items`, a prompt of the run with the same set, label, pair and text.
pub fn check_rows(
    path: &Path,
    rows: &[ResultRow],
    config: &RunConfig,
    items: Option<&[&RunItem]>,
) -> Result<()> {
    let by_id: Option<HashMap<&str, &RunItem>> =
        items.map(|items| items.iter().map(|r| (r.item.id.as_str(), *r)).collect());
    let mut seen = HashSet::new();
    for (n, row) in rows.iter().enumerate() {
        let item = by_id.as_ref().map(|m| m.get(row.id.as_str()));
        let problem = config.foreign(row).or_else(|| match item {
            Some(None) => {
                Some("is not a prompt of this run (its data set, --limit and --shard)".into())
            }
            Some(Some(it))
                if (
                    it.set.as_str(),
                    it.item.label,
                    &it.item.pair_id,
                    &it.item.voice,
                    it.item.text.as_str(),
                ) != (
                    row.set.as_str(),
                    row.label,
                    &row.pair_id,
                    &row.voice,
                    row.prompt.as_str(),
                ) =>
            {
                Some("differs from the data set's prompt of that id".into())
            }
            _ if !seen.insert((row.id.as_str(), row.sample)) => Some("is recorded twice".into()),
            _ => None,
        });
        if let Some(problem) = problem {
            return Err(EvalError::io(
                path,
                format!(
                    "row {} (id '{}', sample {}) {problem}: not a row of this run",
                    n + 1,
                    row.id,
                    row.sample
                ),
            ));
        }
    }
    Ok(())
}

/// The complete lines of an append-only JSONL file (empty when there is no file). A
/// half-written last line left by a kill is cut off the file too, so the next append starts on
/// a clean line.
pub fn read_complete_lines(path: &Path) -> Result<String> {
    if !path.is_file() {
        return Ok(String::new());
    }
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(last) => last + 1,
        None => 0,
    };
    if complete < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| EvalError::io(path, e))?;
        f.set_len(complete as u64)
            .map_err(|e| EvalError::io(path, e))?;
    }
    let mut bytes = bytes;
    bytes.truncate(complete);
    String::from_utf8(bytes).map_err(|e| EvalError::io(path, e))
}

/// A run directory's config.json.
pub fn read_config(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(CONFIG);
    let text = earguard_data::read_small_text(&path).map_err(|e| EvalError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| EvalError::io(&path, format!("malformed run configuration: {e}")))
}

/// Read results.jsonl, cutting off a half-written last line left by a kill. Each row's
/// `degenerate` is set from its response (so rows written before it was recorded count right).
pub fn read_results(path: &Path) -> Result<Vec<ResultRow>> {
    parse_results(path, &read_complete_lines(path)?)
}

/// Read results.jsonl as it stands, leaving the file alone (its run may still be writing it):
/// a half-written last line is left out, not cut off.
pub fn peek_results(path: &Path) -> Result<Vec<ResultRow>> {
    let text = match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        read => read.map_err(|e| EvalError::io(path, e))?,
    };
    let complete = text.rfind('\n').map_or(0, |last| last + 1);
    parse_results(path, &text[..complete])
}

fn parse_results(path: &Path, text: &str) -> Result<Vec<ResultRow>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|row: ResultRow| ResultRow {
                    degenerate: classify(&row.response),
                    ..row
                })
                .map_err(|e| EvalError::io(path, format!("line {}: malformed result: {e}", i + 1)))
        })
        .collect()
}

/// Read skipped.jsonl (no file: nothing was skipped).
pub fn read_skipped(path: &Path) -> Result<Vec<SkippedItem>> {
    if !path.is_file() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| EvalError::io(path, format!("line {}: malformed entry: {e}", i + 1)))
        })
        .collect()
}

/// Write skipped.jsonl (removed when nothing is skipped).
pub fn write_skipped(path: &Path, skipped: &[SkippedItem]) -> Result<()> {
    if skipped.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(EvalError::io(path, e)),
            _ => Ok(()),
        };
    }
    let mut text = String::new();
    for s in skipped {
        text.push_str(&serde_json::to_string(s).map_err(|e| EvalError::Invalid(e.to_string()))?);
        text.push('\n');
    }
    earguard_data::atomic::write(path, text.as_bytes()).map_err(|e| EvalError::io(path, e))
}

/// Deterministic per-(prompt, sample) seed, independent of batching and sharding.
fn row_seed(seed: u64, id: &str, sample: usize) -> u64 {
    let h = Sha256::digest(format!("{seed}\0{id}\0{sample}").as_bytes());
    u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

/// Check that the model can take every prompt (template, context length, audio) without
/// generating: the prompts it can take, and the others with the reason. Without
/// `skip_bad_items` any bad prompt is an error naming it. Each prompt is tokenized as
/// generation will tokenize it, its audio decoded and measured but not run through the audio
/// tower ([`Model::prompt_ids`]): generation encodes each clip once, through `audio`.
pub fn check_items<'a>(
    model: &Model,
    defense: &dyn Defense,
    style: &InputStyle,
    items: &'a [RunItem],
    skip_bad_items: bool,
    audio: &AudioCache,
) -> Result<(Vec<&'a RunItem>, Vec<SkippedItem>)> {
    let mut good = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for it in items {
        let checked = style
            .messages(&it.item, None)
            .map_err(EvalError::from)
            .and_then(|m| Ok(model.prompt_ids(&defense.rewrite(m), style.specials, audio)?));
        match checked {
            Ok(_) => good.push(it),
            Err(e) => bad.push(SkippedItem {
                id: it.item.id.clone(),
                set: it.set.clone(),
                label: it.item.label,
                reason: e.to_string(),
            }),
        }
    }
    match bad.first() {
        Some(first) if !skip_bad_items || good.is_empty() => Err(EvalError::Invalid(format!(
            "prompt '{}' (set {}): {}; {} of {} prompts cannot be run{}",
            first.id,
            first.set,
            first.reason,
            bad.len(),
            items.len(),
            if skip_bad_items {
                ""
            } else {
                " (pass --skip-bad-lines to skip them); nothing was generated"
            }
        ))),
        _ => Ok((good, bad)),
    }
}

/// One evaluation: the model, defense and judges that make the responses, the prompts, the
/// configuration that pins them (recorded in `dir`/config.json; the conversation style comes
/// from it, see [`RunConfig::style`]), and how the work is done.
pub struct Run<'a> {
    pub model: &'a Model,
    /// Built from the spec `config.defense` names.
    pub defense: &'a dyn Defense,
    /// Built from the names in `config.judges`, in that order.
    pub judges: &'a [Box<dyn Judge>],
    /// The prompts (see [`run_items`]).
    pub items: &'a [RunItem],
    pub config: &'a RunConfig,
    pub dir: &'a Path,
    pub opts: &'a RunOptions,
    /// The prompts' encoded clips: runs that share a cache, one after another (the modes or
    /// sweep points over one set), encode each clip once between them while it stays within
    /// the cache's memory budget.
    pub audio: &'a AudioCache,
}

impl Run<'_> {
    /// The configuration is valid and names the judges the run uses.
    fn check(&self) -> Result<()> {
        self.config.check()?;
        if self.opts.batch_size == 0 {
            return Err(EvalError::Invalid("--batch-size must be at least 1".into()));
        }
        let names: Vec<String> = self.judges.iter().map(|j| j.name()).collect();
        if names != self.config.judges {
            return Err(EvalError::Invalid(format!(
                "the run's judges {names:?} are not the configuration's {:?}",
                self.config.judges
            )));
        }
        Ok(())
    }
}

/// Run (or resume) an evaluation: every row of the run, old and new, and the prompts skipped.
pub fn run(run: &Run) -> Result<RunOutput> {
    run.check()?;
    let Run {
        model,
        defense,
        config,
        dir,
        opts,
        audio,
        ..
    } = *run;
    let style = config.style();
    let encoded_before = audio.encoded();
    let (items, skipped) = check_items(
        model,
        defense,
        &style,
        run.items,
        opts.skip_bad_items,
        audio,
    )?;
    let run_dir = prepare_dir(dir, config)?;
    let path = dir.join(RESULTS);
    let mut rows = read_results(&path)?;
    check_rows(&path, &rows, config, Some(&items)).map_err(|e| {
        EvalError::Invalid(format!(
            "{e}; refusing to resume into {} — use another --out directory",
            dir.display()
        ))
    })?;
    let written = write_skipped(&dir.join(SKIPPED), &skipped)
        .and_then(|()| generate_rows(run, &style, &items, audio, &mut rows));
    match (written, run_dir) {
        (Err(e), RunDir::New { made_dir }) if rows.is_empty() => {
            discard_new_run(dir, made_dir);
            Err(e)
        }
        (Err(e), _) => Err(e),
        (Ok(()), _) => Ok(RunOutput {
            rows,
            skipped,
            audio_clips_encoded: audio.encoded() - encoded_before,
        }),
    }
}

/// Generate, judge and append the rows of `items` × samples not yet in `rows`.
fn generate_rows(
    run: &Run,
    style: &InputStyle,
    items: &[&RunItem],
    audio: &AudioCache,
    rows: &mut Vec<ResultRow>,
) -> Result<()> {
    let Run {
        model,
        defense,
        judges,
        config,
        dir,
        opts,
        ..
    } = *run;
    let path = dir.join(RESULTS);
    let done: HashSet<(String, usize)> = rows.iter().map(|r| (r.id.clone(), r.sample)).collect();
    let todo: Vec<(&RunItem, usize)> = items
        .iter()
        .copied()
        .flat_map(|it| (0..config.samples).map(move |s| (it, s)))
        .filter(|(it, s)| !done.contains(&(it.item.id.clone(), *s)))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| EvalError::io(&path, e))?;
    let stop = model.tokenizer.stop_token_ids();
    let refusal = refusal_start_tokens(&model.tokenizer)?;
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
    };
    request.sampling.validate()?;
    // Plans do not depend on the batch: built once for the run.
    let plan = defense.plan()?;
    let bar = progress(opts.progress, items.len() * config.samples, done.len());
    for batch in todo.chunks(opts.batch_size) {
        let t0 = Instant::now();
        let mut prompts = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        let mut templated = Vec::with_capacity(batch.len());
        for (it, _) in batch {
            let request = style.messages(&it.item, None)?;
            let messages = defense.rewrite(request.clone());
            prompts.push(
                model
                    .encode_prompt(&messages, style.specials, audio)
                    .map_err(|e| EvalError::Invalid(format!("prompt {}: {e}", it.item.id)))?,
            );
            requests.push(request);
            templated.push(messages);
        }
        let seeds: Vec<u64> = batch
            .iter()
            .map(|(it, s)| row_seed(config.seed, &it.item.id, *s))
            .collect();
        // One prefill: its logits give the refusal scores and the first sampled token.
        let (logits, gens, safety) = match defense.safecode() {
            None => {
                let (out, cache) = prefill(
                    &model.decoder,
                    &prompts,
                    request.pad_token,
                    &plan,
                    Logits::Last,
                )?;
                let logits = out
                    .logits
                    .ok_or_else(|| EvalError::Invalid("the prefill returned no logits".into()))?;
                let gens = generate_from(
                    &model.decoder,
                    logits.clone(),
                    cache,
                    &request,
                    &plan,
                    Some(&seeds),
                    |_, _| {},
                )?;
                (logits, gens, vec![None; batch.len()])
            }
            Some(sc) => {
                let inputs: Vec<GuidedInput<'_>> = (0..batch.len())
                    .map(|i| GuidedInput {
                        request: &requests[i],
                        messages: &templated[i],
                        prompt: &prompts[i],
                        seed: seeds[i],
                    })
                    .collect();
                let out = sc.generate(
                    model,
                    &inputs,
                    style.specials,
                    &plan,
                    &request,
                    audio,
                    |_, _| {},
                )?;
                let safety = out.verdicts.into_iter().map(Some).collect();
                (out.logits, out.generations, safety)
            }
        };
        let scores: Vec<Option<f32>> = match refusal.is_empty() {
            true => vec![None; prompts.len()],
            false => refusal_scores(&logits, &refusal)?
                .into_iter()
                .map(Some)
                .collect(),
        };
        let seconds = t0.elapsed().as_secs_f64() / batch.len() as f64;
        let texts = gens
            .iter()
            .map(|g| model.tokenizer.decode(&g.tokens, true))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let inputs: Vec<JudgeInput<'_>> = batch
            .iter()
            .zip(&texts)
            .zip(&scores)
            .map(|(((it, _), text), &score)| JudgeInput {
                prompt: &it.item.text,
                response: text,
                refusal_score: score,
            })
            .collect();
        let mut verdicts: Vec<BTreeMap<String, Verdict>> = vec![BTreeMap::new(); batch.len()];
        for judge in judges {
            for (slot, v) in verdicts.iter_mut().zip(judge.judge_batch(&inputs)?) {
                slot.insert(judge.name(), v);
            }
        }
        let mut lines = String::new();
        for ((((((it, sample), text), g), v), &score), safety) in batch
            .iter()
            .zip(texts)
            .zip(&gens)
            .zip(verdicts)
            .zip(&scores)
            .zip(safety)
        {
            let row = ResultRow {
                id: it.item.id.clone(),
                model: config.model.clone(),
                set: it.set.clone(),
                label: it.item.label,
                category: it.item.category.clone(),
                pair_id: it.item.pair_id.clone(),
                voice: it.item.voice.clone(),
                mode: config.mode,
                sample: *sample,
                defense: config.defense.clone(),
                prompt: it.item.text.clone(),
                degenerate: classify(&text),
                response: text,
                verdicts: v,
                refusal_score: score,
                safety_verdict: safety.map(SafetyVerdict::from),
                n_tokens: g.tokens.len(),
                finish: g.finish,
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
    Ok(())
}

fn progress(show: bool, total: usize, done: usize) -> indicatif::ProgressBar {
    let bar = earguard_data::progress::bar(show.then_some("eval"), "responses", total as u64);
    bar.set_position(done as u64);
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, pair: Option<&str>) -> PromptItem {
        PromptItem {
            id: id.into(),
            source: None,
            split: None,
            label: Label::Benign,
            category: None,
            pair_id: pair.map(Into::into),
            text: "t".into(),
            audio: None,
            voice: None,
        }
    }

    fn config() -> RunConfig {
        RunConfig {
            model: "m".into(),
            model_identity: "sha".into(),
            data: vec![],
            defense: "none".into(),
            mode: Mode::TextOnly,
            instruction: None,
            system: None,
            content_specials: ContentSpecials::Literal,
            samples: 2,
            temperature: 0.0,
            top_p: None,
            max_tokens: 8,
            seed: 0,
            judges: vec!["substring".into(), "refusal-score".into()],
            shard: None,
        }
    }

    fn row(id: &str, sample: usize) -> ResultRow {
        ResultRow {
            id: id.into(),
            model: "m".into(),
            set: "s".into(),
            label: Label::Benign,
            category: None,
            pair_id: None,
            voice: None,
            mode: Mode::TextOnly,
            sample,
            defense: "none".into(),
            prompt: "t".into(),
            response: "r".into(),
            degenerate: None,
            verdicts: ["substring", "refusal-score"]
                .map(|j| {
                    (
                        j.to_string(),
                        Verdict {
                            refused: false,
                            ..Verdict::default()
                        },
                    )
                })
                .into(),
            refusal_score: None,
            safety_verdict: None,
            n_tokens: 1,
            finish: FinishReason::Stop,
            seconds: 0.1,
        }
    }

    /// Rows of another run (model, defense, mode, judges, prompts, samples) or a row twice are
    /// refused, naming the row; the run's own rows pass.
    #[test]
    fn shards_read_from_a_config_are_checked() {
        let ok: Shard = serde_json::from_str(r#"{"index":1,"count":2}"#).unwrap();
        assert_eq!(ok, Shard { index: 1, count: 2 });
        for bad in [r#"{"index":2,"count":2}"#, r#"{"index":0,"count":0}"#] {
            let e = serde_json::from_str::<Shard>(bad).unwrap_err().to_string();
            assert!(e.contains("0 ≤ I < N"), "{bad}: {e}");
        }
    }

    #[test]
    fn rows_of_another_run_are_refused() {
        let items: Vec<RunItem> = ["a", "b"]
            .map(|id| RunItem {
                set: "s".into(),
                item: item(id, None),
            })
            .into();
        let refs: Vec<&RunItem> = items.iter().collect();
        let path = Path::new("run/results.jsonl");
        let check = |rows: &[ResultRow]| {
            check_rows(path, rows, &config(), Some(&refs)).map_err(|e| e.to_string())
        };
        let own = vec![row("a", 0), row("a", 1), row("b", 0)];
        check(&own).unwrap();
        type Edit = fn(&mut ResultRow);
        let bad: [(Edit, &str); 9] = [
            (|r| r.model = "other".into(), "model 'other'"),
            (|r| r.model.clear(), "records no model"),
            (|r| r.defense = "prompt".into(), "defense 'prompt'"),
            (|r| r.mode = Mode::AudioOnly, "mode audio-only"),
            (|r| r.sample = 2, "sample 2 of a run of 2"),
            (
                |r| {
                    r.verdicts.remove("refusal-score");
                },
                "judged by",
            ),
            (|r| r.id = "z".into(), "not a prompt of this run"),
            (
                |r| r.prompt = "other text".into(),
                "differs from the data set",
            ),
            (|r| r.id = "a".into(), "recorded twice"),
        ];
        for (edit, want) in bad {
            let mut rows = own.clone();
            edit(&mut rows[2]);
            let err = check(&rows).unwrap_err();
            assert!(err.starts_with("run/results.jsonl: row 3 (id '"), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
        // Without the items (merge), the configuration and duplicates are still checked.
        let mut rows = own.clone();
        rows[1].defense = "prompt".into();
        assert!(check_rows(path, &rows, &config(), None).is_err());
        check_rows(path, &own, &config(), None).unwrap();
    }

    /// A results.jsonl with no config.json is not resumed; an empty one is.
    #[test]
    fn results_without_a_config_are_refused() {
        let dir = std::env::temp_dir().join(format!("earguard-orphan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(RESULTS), "{}\n").unwrap();
        let err = prepare_dir(&dir, &config()).unwrap_err().to_string();
        assert!(err.contains("results without a config.json"), "{err}");
        assert!(!dir.join(CONFIG).exists());
        std::fs::write(dir.join(RESULTS), "").unwrap();
        assert_eq!(
            prepare_dir(&dir, &config()).unwrap(),
            RunDir::New { made_dir: false }
        );
        assert_eq!(prepare_dir(&dir, &config()).unwrap(), RunDir::Resumed);
        let mut other = config();
        other.judges.reverse();
        let err = prepare_dir(&dir, &other).unwrap_err().to_string();
        assert!(err.contains("differs in: judges"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The conversation style is the configuration's own settings.
    #[test]
    fn style_comes_from_the_config() {
        let mut c = config();
        c.system = Some("be safe".into());
        let style = c.style();
        assert_eq!(style.mode, Mode::TextOnly);
        assert_eq!(style.system.as_deref(), Some("be safe"));
        assert_eq!(style.specials, ContentSpecials::Literal);
        c.mode = Mode::AudioText;
        c.instruction = Some("Answer the question.".into());
        assert_eq!(c.style().instruction, "Answer the question.");
    }

    #[test]
    fn primary_judge_is_the_first_given() {
        let mut c = config();
        c.judges = vec!["substring".into(), "llm=a".into()];
        assert_eq!(c.primary_judge().unwrap(), "substring");
        c.judges = vec!["refusal-score".into(), "llm=a".into(), "substring".into()];
        assert_eq!(c.primary_judge().unwrap(), "refusal-score");
        c.judges.clear();
        assert!(c.primary_judge().is_err());
    }

    /// Unpaired items are spread by id: two shards of an unpaired set are both non-empty,
    /// disjoint, and together the whole set.
    #[test]
    fn unpaired_items_spread_over_shards() {
        let items: Vec<PromptItem> = (0..20).map(|n| item(&format!("q{n}"), None)).collect();
        let shards = [Shard { index: 0, count: 2 }, Shard { index: 1, count: 2 }];
        let parts: Vec<Vec<&str>> = shards
            .iter()
            .map(|s| {
                items
                    .iter()
                    .filter(|i| s.contains(i))
                    .map(|i| i.id.as_str())
                    .collect()
            })
            .collect();
        assert!(parts.iter().all(|p| !p.is_empty()), "{parts:?}");
        let mut all: Vec<&str> = parts.concat();
        all.sort();
        let mut want: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        want.sort();
        assert_eq!(all, want, "disjoint and complete");
    }

    #[test]
    fn shards_partition_and_keep_pairs_together() {
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
            model: "m".into(),
            set: "s".into(),
            label: Label::Harmful,
            category: None,
            pair_id: None,
            voice: None,
            mode: Mode::TextOnly,
            sample: 0,
            defense: "none".into(),
            prompt: "p".into(),
            response: "r".into(),
            degenerate: None,
            verdicts: BTreeMap::new(),
            refusal_score: Some(1.5),
            safety_verdict: None,
            n_tokens: 3,
            finish: FinishReason::Stop,
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
