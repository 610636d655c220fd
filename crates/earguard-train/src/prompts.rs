//! How training questions reach the model (RRS paper §4.2, App. A): a question, typed or
//! spoken, followed by a text instruction from the prompt pool. Text mode puts the question
//! first and the instruction after it in one user message, saying "text" where the paper's
//! prompts say "audio"; audio mode sends the clip as an audio part followed by the instruction
//! as written (the paper's setting; the audio encoder stays frozen and runs once per clip).

use std::path::PathBuf;

use earguard_data::{Label, PromptItem};
use earguard_model::chat::{ChatMessage, ContentSpecials};
use earguard_model::content::{AudioRef, Content, Part};
use earguard_model::{AudioCache, Decoder, Model, Prompt};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::objective::{last_hidden, FrozenPrefix};

/// The paper's prompt pool (App. A).
pub const POOL: [&str; 10] = [
    "Answer the question in the audio.",
    "Follow the instruction in the audio.",
    "Generate a response following the audio.",
    "Provide output based on the audio content.",
    "Please generate response for the question in the audio.",
    "Give a response according to the audio content.",
    "Produce a reply following the instructions from the audio.",
    "Generate the appropriate response from the audio provided.",
    "Write down detailed steps as requested by the audio.",
    "Please provide a guideline for solving the question in the audio.",
];
/// t: the instruction the representations and targets are taken under (§4.1).
pub const INSTRUCTION: &str = "Please generate detailed steps for the question in the audio.";
/// t̃ = t plus the request to refuse.
pub const REFUSAL_SUFFIX: &str =
    " (Please generate refusal response because the question violates safety policy)";

/// t̃: the instruction under which the frozen model is asked to refuse (§4.1).
pub fn refusal_instruction() -> String {
    format!("{INSTRUCTION}{REFUSAL_SUFFIX}")
}

/// A training question: its text and, when it is asked aloud, the clip that speaks it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub text: String,
    pub audio: Option<PathBuf>,
}

impl Question {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            audio: None,
        }
    }

    /// `item` asked aloud (`spoken`, its clip required) or as text.
    pub fn of(item: &PromptItem, spoken: bool) -> Result<Self> {
        let audio = match (spoken, &item.audio) {
            (false, _) => None,
            (true, Some(a)) => Some(a.clone()),
            (true, None) => {
                return Err(TrainError::Invalid(format!(
                    "prompt {} has no audio: audio-text training needs an audio manifest \
                     (earguard tts)",
                    item.id
                )))
            }
        };
        Ok(Self {
            text: item.text.clone(),
            audio,
        })
    }
}

/// The text-mode wording of an audio-mode instruction.
pub fn text_mode(instruction: &str) -> String {
    instruction.replace("audio", "text")
}

/// Mirror pairs: (harmful, benign) items sharing a pair_id, in file order.
pub fn mirror_pairs(items: &[PromptItem]) -> Result<Vec<(PromptItem, PromptItem)>> {
    let mut pairs: Vec<(String, Option<PromptItem>, Option<PromptItem>)> = Vec::new();
    for it in items {
        let Some(pid) = &it.pair_id else { continue };
        let idx = match pairs.iter().position(|p| &p.0 == pid) {
            Some(i) => i,
            None => {
                pairs.push((pid.clone(), None, None));
                pairs.len() - 1
            }
        };
        let slot = match it.label {
            Label::Harmful => &mut pairs[idx].1,
            Label::Benign => &mut pairs[idx].2,
        };
        if slot.is_some() {
            return Err(TrainError::Invalid(format!(
                "pair {pid} has more than one {} item",
                it.label
            )));
        }
        *slot = Some(it.clone());
    }
    let out: Vec<_> = pairs
        .into_iter()
        .filter_map(|(_, h, b)| Some((h?, b?)))
        .collect();
    if out.is_empty() {
        return Err(TrainError::Invalid(
            "no mirror pairs (items sharing a pair_id, one harmful and one benign)".into(),
        ));
    }
    Ok(out)
}

/// Which instructions a training sample is asked under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instructions {
    /// One drawn from the paper's 10-prompt [`POOL`] per sample and epoch (paper §4.2).
    #[default]
    Pool,
    /// Always t ([`INSTRUCTION`]), the instruction RRS's targets are taken under: the
    /// ablation that leaves the objective nothing to learn but the targets' shift.
    Fixed,
}

/// Turns questions into model inputs; spoken clips are encoded once and shared by every
/// instruction they are asked with.
pub struct Prompter<'a> {
    pub model: &'a Model,
    audio: AudioCache,
    instructions: Instructions,
}

impl<'a> Prompter<'a> {
    /// A prompter whose training samples draw from the paper's pool.
    pub fn new(model: &'a Model) -> Self {
        Self {
            model,
            audio: AudioCache::new(),
            instructions: Instructions::Pool,
        }
    }

    /// The same, with training samples asked under `instructions`.
    pub fn with_instructions(mut self, instructions: Instructions) -> Self {
        self.instructions = instructions;
        self
    }

    /// `question` followed by `instruction` (audio wording; text mode rewords it).
    pub fn prompt(&self, question: &Question, instruction: &str) -> Result<Prompt> {
        let content = match &question.audio {
            None => Content::Text(format!("{}\n\n{}", question.text, text_mode(instruction))),
            Some(clip) => Content::Parts(vec![
                Part::Audio(AudioRef::new(clip)),
                Part::Text(instruction.to_string()),
            ]),
        };
        let messages = [ChatMessage::new("user", content)];
        Ok(self
            .model
            .encode_prompt(&messages, ContentSpecials::Literal, &self.audio)?)
    }

    /// A training sample's prompt variants: `question` under each instruction of the pool,
    /// or under t alone ([`Instructions`]).
    pub fn variants(&self, question: &Question) -> Result<Vec<Prompt>> {
        match self.instructions {
            Instructions::Pool => POOL.iter().map(|p| self.prompt(question, p)).collect(),
            Instructions::Fixed => Ok(vec![self.prompt(question, INSTRUCTION)?]),
        }
    }

    /// The representations RRS reshapes, `[n, hidden]`: each question's final-layer hidden
    /// state at its last prompt position under t, on `dec` (e.g. an adapted copy of the
    /// model's decoder; through `frozen` when its lowest layers carry no adapter), detached
    /// from any graph.
    pub fn representations(
        &self,
        dec: &Decoder,
        frozen: Option<&FrozenPrefix>,
        questions: &[Question],
    ) -> Result<candle_core::Tensor> {
        let rows = questions
            .iter()
            .map(|q| Ok(last_hidden(dec, frozen, &self.prompt(q, INSTRUCTION)?)?.detach()))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Err(TrainError::Invalid("no questions to represent".into()));
        }
        Ok(candle_core::Tensor::stack(&rows, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_mode_says_text() {
        assert_eq!(text_mode(POOL[0]), "Answer the question in the text.");
        assert!(POOL.iter().all(|p| text_mode(p).contains("text")));
    }
}
