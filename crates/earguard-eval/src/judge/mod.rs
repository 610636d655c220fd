//! Judges: decide whether a response is a refusal. One trait, one file per judge.
//!
//! - `substring`: SPEC §2's refusal substrings (case-insensitive); `substring:extended` adds
//!   more phrases seen in practice.
//! - `refusal-score`: the first-token log-odds of refusal tokens at the start of the answer
//!   (computed during generation, with the defense applied); a refusal when > 0.
//! - `llm=MODEL`: a local model asked, SORRY-Bench style, whether the response complies.
//!
//! ```
//! use earguard_eval::judge::{Judge, JudgeInput, Substring};
//! let j = Substring::standard();
//! let v = j.judge_batch(&[JudgeInput { prompt: "q", response: "I'm sorry, I can't.", refusal_score: None }]).unwrap();
//! assert!(v[0].refused);
//! ```

mod llm;
mod refusal_score;
mod substring;

pub use llm::LlmJudge;
pub use refusal_score::RefusalScore;
pub use substring::{Substring, EXTENDED_SUBSTRINGS, REFUSAL_SUBSTRINGS};

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

pub struct JudgeInput<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
    /// First-token refusal log-odds measured while generating this response.
    pub refusal_score: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub refused: bool,
    /// The judge's underlying number, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// An LLM judge's probability of answering with one of its answer tokens at all: low when
    /// it would rather reply otherwise (e.g. refuse to read harmful text), and then its verdict
    /// is close to a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_mass: Option<f64>,
}

pub trait Judge: Send + Sync {
    /// Name used in results and reports, e.g. `substring`, `llm=qwen2.5-coder-1.5b-instruct`.
    fn name(&self) -> String;
    fn judge_batch(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<Verdict>>;
}

/// Build the judges named on the command line (`substring`, `refusal-score`, `llm=MODEL`).
pub fn build(spec: &str) -> Result<Box<dyn Judge>> {
    match spec.split_once('=') {
        None if spec == "substring" => Ok(Box::new(Substring::standard())),
        None if spec == "substring:extended" => Ok(Box::new(Substring::extended())),
        None if spec == "refusal-score" => Ok(Box::new(RefusalScore)),
        Some(("llm", model)) if !model.is_empty() => Ok(Box::new(LlmJudge::load(model)?)),
        _ => Err(EvalError::Invalid(format!(
            "unknown judge '{spec}' (substring, substring:extended, refusal-score, llm=MODEL)"
        ))),
    }
}
