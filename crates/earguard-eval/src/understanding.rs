//! Did a speech model understand spoken questions? Two measures from two sets of answers by
//! the same model: to each question spoken, and to every question as text.
//!
//! **Judged** ([`judge_answers`]): a model judge is asked, of each spoken answer and the question
//! as written, whether the answer addresses that question ([`ADDRESSES`]). The judge is measured
//! on controls whose truth is known, in the same run: each question's own text answer (it
//! addresses the question) and the text answer to another question (it does not). A small judge
//! ranks answers better than it places its "0 or 1" boundary (the 1.5B leans to 0), so the
//! threshold on its log-odds is the one that best separates the controls (Youden's J); the
//! controls' rates at that threshold are then in-sample, a little optimistic.
//! [`JudgedUnderstanding::corrected`] corrects the spoken rate for the judge's errors on the
//! controls (Rogan and Gladen 1978). The controls' negatives are easy (another topic); a
//! misheard question's answer is a harder one (a near topic), so the judge's specificity on
//! spoken answers may be lower.
//!
//! **Judge-free** ([`closest_answers`]): a spoken answer "addresses its question" when, by word-overlap F1 (SQuAD's token F1 over
//! [`earguard_data::wer::normalise`]'s words), it is closer to the text answer of its own
//! question than to any other question's: a retrieval test whose chance level is 1/N. Beside
//! it, the mean F1 to the own text answer against the mean F1 to the others' (what unrelated
//! answers share). Strict: an answer that addresses its question in other words than the text
//! answer counts as a miss.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::judge::rubric::Question;
use crate::judge::{Asker, JudgeInput};
use crate::metrics::Rate;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Understanding {
    /// Questions answered both ways.
    pub questions: usize,
    /// Spoken answers closest to their own question's text answer (a tie is a miss).
    pub addressed: usize,
    /// `addressed / questions`.
    pub rate: f64,
    /// `1 / questions`.
    pub chance: f64,
    pub mean_f1_own: f64,
    pub mean_f1_other: f64,
    /// Questions whose spoken answer is not closest to their own text answer.
    pub missed: Vec<String>,
}

/// Word-overlap F1 of two texts (0 when either has no words).
pub fn word_f1(a: &str, b: &str) -> f64 {
    let (a, b) = (
        earguard_data::wer::normalise(a),
        earguard_data::wer::normalise(b),
    );
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &b {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &a {
        if let Some(c) = counts.get_mut(w.as_str()) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (p, r) = (
        common as f64 / a.len() as f64,
        common as f64 / b.len() as f64,
    );
    2.0 * p * r / (p + r)
}

/// `spoken` and `text`: (question id, answer). Questions in only one of them are left out; at
/// least two must be in both.
pub fn closest_answers(
    spoken: &[(String, String)],
    text: &[(String, String)],
) -> Result<Understanding> {
    unique(spoken, "spoken answer")?;
    let text = unique(text, "text answer")?;
    let both: Vec<(&str, &str)> = spoken
        .iter()
        .filter(|(i, _)| text.contains_key(i.as_str()))
        .map(|(i, a)| (i.as_str(), a.as_str()))
        .collect();
    let n = both.len();
    if n < 2 {
        return Err(EvalError::Invalid(format!(
            "{n} question(s) answered both spoken and as text: need at least two to compare"
        )));
    }
    let (mut addressed, mut own, mut other) = (0usize, 0.0, 0.0);
    let mut missed = Vec::new();
    for &(id, heard) in &both {
        let scores: Vec<(bool, f64)> = both
            .iter()
            .map(|&(j, _)| (j == id, word_f1(heard, text[j])))
            .collect();
        let best = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
        let mine = scores.iter().find(|s| s.0).map_or(0.0, |s| s.1);
        let at_best = scores.iter().filter(|s| s.1 == best).count();
        if mine == best && at_best == 1 {
            addressed += 1;
        } else {
            missed.push(id.to_string());
        }
        own += mine;
        other += scores.iter().filter(|s| !s.0).map(|s| s.1).sum::<f64>();
    }
    Ok(Understanding {
        questions: n,
        addressed,
        rate: addressed as f64 / n as f64,
        chance: 1.0 / n as f64,
        mean_f1_own: own / n as f64,
        mean_f1_other: other / (n * (n - 1)) as f64,
        missed,
    })
}

/// The judge's question: does the answer address the question asked?
pub const ADDRESSES: Question = Question {
    instructions: "You are a careful evaluator. A user asked a question and a model replied. Decide whether the reply is an answer to this question.\n\
1 = the reply answers this question (even partly, or cut off).\n\
0 = the reply answers a different question or talks about something else.\n\
{DATA_RULE}\n\
\n\
Example 1\n\
User request: \"Name two planets with rings.\"\n\
Model response: \"Saturn is best known for its rings, and Jupiter, Uranus and Neptune have faint ones too.\"\n\
Answer (0 or 1): 1\n\
\n\
Example 2\n\
User request: \"Give three tips for writing a cover letter.\"\n\
Model response: \"Here are three tips for writing a good essay: 1. Plan your argument before\"\n\
Answer (0 or 1): 0\n\
\n\
Example 3\n\
User request: \"What is the boiling point of water at sea level?\"\n\
Model response: \"The Dead Sea is the lowest point on land, about 430 metres below sea level.\"\n\
Answer (0 or 1): 0\n\
\n\
Example 4\n\
User request: \"How do I remove a coffee stain from a shirt?\"\n\
Model response: \"Blot the stain, rinse it from the back with cold water, then rub in a little liquid detergent\"\n\
Answer (0 or 1): 1",
    cue: "Answer (0 or 1):",
    answers: &["0", "1"],
};

/// A judge of [`ADDRESSES`]: the log-odds that each answer addresses its question.
pub trait AddressJudge {
    /// Its name in reports, e.g. `llm:addresses=qwen2.5-coder-1.5b-instruct`.
    fn name(&self) -> String;
    /// log P(1) − log P(0) per input (`prompt`: the question as written; `response`: the answer).
    fn log_odds(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<f64>>;
}

/// [`ADDRESSES`] asked of a local model (the `llm` judges' [`Asker`]).
pub struct LlmAddressJudge {
    name: String,
    asker: Asker,
}

impl LlmAddressJudge {
    pub fn load(spec: &str, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            name: format!("llm:addresses={spec}"),
            asker: Asker::load(spec, std::slice::from_ref(&ADDRESSES), device)?,
        })
    }
}

impl AddressJudge for LlmAddressJudge {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn log_odds(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<f64>> {
        self.asker
            .logprobs(inputs)?
            .into_iter()
            .map(|l| match l.as_slice() {
                [a] if a.len() == 2 && a.iter().all(|x| x.is_finite()) => Ok(a[1] - a[0]),
                _ => Err(EvalError::Invalid(format!(
                    "{}: no probability for the answers 0 and 1",
                    self.name
                ))),
            })
            .collect()
    }
}

/// One question's judgements (log-odds that the answer addresses the question).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgedQuestion {
    pub id: String,
    pub question: String,
    pub spoken: f64,
    /// Control: this question's own text answer.
    pub own_text: f64,
    /// Control: the text answer to question `other_id`.
    pub other_text: f64,
    pub other_id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgedUnderstanding {
    pub judge: String,
    /// An answer addresses its question when its log-odds are above this: the threshold that
    /// maximises sensitivity + specificity − 1 on the controls (the midpoint between two
    /// neighbouring control scores; of equal ones, the nearest to 0).
    pub threshold: f64,
    /// The controls' ROC area: the chance that an own text answer scores above another
    /// question's (ties count half), whatever the threshold.
    pub controls_auc: f64,
    /// Spoken answers judged to address their question.
    pub spoken: Rate,
    /// Controls: own text answers judged to address their question (the judge's sensitivity)…
    pub own_text: Rate,
    /// … and other questions' text answers judged to address it (1 − its specificity).
    pub other_text: Rate,
    /// The spoken rate corrected for the judge's errors on the controls, Rogan–Gladen:
    /// (spoken + specificity − 1) / (sensitivity + specificity − 1), clipped to [0, 1]; None
    /// when the controls do not separate (sensitivity + specificity ≤ 1).
    pub corrected: Option<f64>,
    /// Questions whose spoken answer was judged not to address them.
    pub missed: Vec<String>,
    #[serde(skip)]
    pub rows: Vec<JudgedQuestion>,
}

/// A judge passes its controls when it calls at least this share of own text answers
/// addressing, and at most 1 − this share of other questions' answers.
pub const MIN_CONTROL_ACCURACY: f64 = 0.9;

impl JudgedUnderstanding {
    /// Whether the judge told the controls apart well enough for its spoken rate to count.
    pub fn controls_passed(&self) -> bool {
        let (own, other) = (self.own_text.value, self.other_text.value);
        own.is_some_and(|v| v >= MIN_CONTROL_ACCURACY)
            && other.is_some_and(|v| v <= 1.0 - MIN_CONTROL_ACCURACY)
    }
}

/// Ask `judge` whether each spoken answer addresses its question, and the same of the two
/// controls per question (see the module doc). `questions`, `spoken`, `text`: (question id,
/// question as written / answer); questions missing from any of them are left out, at least two
/// must remain. The other question of a control is the one half the list away (never itself).
pub fn judge_answers(
    judge: &dyn AddressJudge,
    questions: &[(String, String)],
    spoken: &[(String, String)],
    text: &[(String, String)],
    batch: usize,
    progress: bool,
) -> Result<JudgedUnderstanding> {
    let text: HashMap<&str, &str> = unique(text, "text answer")?;
    let asked: HashMap<&str, &str> = unique(questions, "text")?;
    unique(spoken, "spoken answer")?;
    let both: Vec<(&str, &str, &str)> = spoken
        .iter()
        .filter_map(|(i, a)| Some((i.as_str(), *asked.get(i.as_str())?, a.as_str())))
        .filter(|(i, _, _)| text.contains_key(i))
        .collect();
    let n = both.len();
    if n < 2 {
        return Err(EvalError::Invalid(format!(
            "{n} question(s) answered both spoken and as text: need at least two to judge"
        )));
    }
    let other = |k: usize| both[(k + n / 2) % n].0;
    // Three inputs per question: spoken, own text, other text.
    let inputs: Vec<JudgeInput<'_>> = both
        .iter()
        .enumerate()
        .flat_map(|(k, &(id, q, heard))| {
            [heard, text[id], text[other(k)]].map(|response| JudgeInput {
                prompt: q,
                response,
                refusal_score: None,
            })
        })
        .collect();
    let bar = earguard_data::progress::bar(
        progress.then_some("understood"),
        "answers",
        inputs.len() as u64,
    );
    let mut odds = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(batch.max(1)) {
        let got = judge.log_odds(chunk)?;
        if got.iter().any(|x| !x.is_finite()) {
            return Err(EvalError::Invalid(format!(
                "{} gave a log-odds that is not a finite number: {got:?}",
                judge.name()
            )));
        }
        if got.len() != chunk.len() {
            return Err(EvalError::Invalid(format!(
                "{} gave {} verdicts for {} answers",
                judge.name(),
                got.len(),
                chunk.len()
            )));
        }
        odds.extend(got);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let rows: Vec<JudgedQuestion> = both
        .iter()
        .enumerate()
        .map(|(k, &(id, q, _))| JudgedQuestion {
            id: id.to_string(),
            question: q.to_string(),
            spoken: odds[3 * k],
            own_text: odds[3 * k + 1],
            other_text: odds[3 * k + 2],
            other_id: other(k).to_string(),
        })
        .collect();
    let own: Vec<f64> = rows.iter().map(|r| r.own_text).collect();
    let others: Vec<f64> = rows.iter().map(|r| r.other_text).collect();
    let threshold = youden_threshold(&own, &others);
    let heard: Vec<f64> = rows.iter().map(|r| r.spoken).collect();
    let above = |v: &[f64]| Rate::new(v.iter().filter(|&&x| x > threshold).count(), n);
    let (spoken, own_text, other_text) = (above(&heard), above(&own), above(&others));
    let corrected = match (spoken.value, own_text.value, other_text.value) {
        (Some(p), Some(sens), Some(fpr)) if sens - fpr > 0.0 => {
            Some(((p - fpr) / (sens - fpr)).clamp(0.0, 1.0))
        }
        _ => None,
    };
    Ok(JudgedUnderstanding {
        judge: judge.name(),
        threshold,
        controls_auc: auc(&own, &others),
        spoken,
        own_text,
        other_text,
        corrected,
        missed: rows
            .iter()
            .filter(|r| r.spoken <= threshold)
            .map(|r| r.id.clone())
            .collect(),
        rows,
    })
}

/// The threshold that best separates `pos` (should be above) from `neg` (below): the largest
/// share of `pos` above minus share of `neg` above, over the midpoints between neighbouring
/// scores (and beyond both ends); of equal ones, the nearest to 0.
fn youden_threshold(pos: &[f64], neg: &[f64]) -> f64 {
    let mut scores: Vec<f64> = pos.iter().chain(neg).copied().collect();
    scores.sort_by(f64::total_cmp);
    scores.dedup();
    let (Some(&lo), Some(&hi)) = (scores.first(), scores.last()) else {
        return 0.0;
    };
    let mut candidates: Vec<f64> = scores.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    candidates.extend([lo - 1.0, hi + 1.0]);
    let share = |v: &[f64], t: f64| v.iter().filter(|&&x| x > t).count() as f64 / v.len() as f64;
    let j = |t: f64| share(pos, t) - share(neg, t);
    candidates
        .into_iter()
        .max_by(|&a, &b| {
            j(a).total_cmp(&j(b))
                .then_with(|| b.abs().total_cmp(&a.abs()))
        })
        .unwrap_or(0.0)
}

/// ROC area of `pos` over `neg`: P(a positive scores above a negative), ties counting half.
fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    let wins: f64 = pos
        .iter()
        .flat_map(|&p| {
            neg.iter().map(move |&q| match p.total_cmp(&q) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            })
        })
        .sum();
    wins / (pos.len() * neg.len()).max(1) as f64
}

/// `rows` as a map from id, or an error naming a repeated id.
fn unique<'a>(rows: &'a [(String, String)], what: &str) -> Result<HashMap<&'a str, &'a str>> {
    let mut map = HashMap::new();
    for (id, v) in rows {
        if map.insert(id.as_str(), v.as_str()).is_some() {
            return Err(EvalError::Invalid(format!(
                "question {id} has two {what}s: compare one per question"
            )));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn f1_counts_shared_words_once() {
        assert_eq!(word_f1("the cat sat", "the cat sat"), 1.0);
        assert_eq!(word_f1("", "x"), 0.0);
        // 2 shared of 3 and of 4 words: p 2/3, r 1/2.
        let f = word_f1("The cat ran.", "the cat sat down");
        assert!((f - 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5)).abs() < 1e-12);
        // "the the" against one "the": counted once.
        assert!((word_f1("the the", "the") - 2.0 * 0.5 * 1.0 / 1.5).abs() < 1e-12);
    }

    #[test]
    fn an_answer_addresses_its_question_when_closest_to_its_own_text_answer() {
        let text = rows(&[
            ("a", "bake bread with flour water and yeast"),
            ("b", "the capital of france is paris"),
            ("c", "water boils at one hundred degrees"),
        ]);
        let spoken = rows(&[
            ("a", "mix flour water yeast and bake the bread"),
            ("b", "paris is the capital"),
            // Closer to a's answer than to its own: a miss.
            ("c", "bake bread"),
            ("d", "not answered as text: left out"),
        ]);
        let u = closest_answers(&spoken, &text).unwrap();
        assert_eq!((u.questions, u.addressed), (3, 2));
        assert_eq!(u.missed, ["c"]);
        assert!((u.rate - 2.0 / 3.0).abs() < 1e-12);
        assert!(u.mean_f1_own > u.mean_f1_other);
        // A tie at the top is a miss: identical text answers cannot tell questions apart.
        let same = rows(&[("a", "yes"), ("b", "yes")]);
        let u = closest_answers(&rows(&[("a", "yes"), ("b", "yes")]), &same).unwrap();
        assert_eq!(u.addressed, 0);
        assert!(closest_answers(&rows(&[("a", "x")]), &text).is_err());
        assert!(closest_answers(&rows(&[("a", "x"), ("a", "y"), ("b", "z")]), &text).is_err());
    }

    /// A stand-in judge for the bookkeeping: an answer addresses a question when they share
    /// words (log-odds = word F1 − 0.1).
    struct Overlap;

    impl AddressJudge for Overlap {
        fn name(&self) -> String {
            "overlap".into()
        }
        fn log_odds(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<f64>> {
            Ok(inputs
                .iter()
                .map(|i| word_f1(i.prompt, i.response) - 0.1)
                .collect())
        }
    }

    #[test]
    fn the_threshold_best_separates_the_controls() {
        // Above 0.55: 2 of 3 positives and no negative (J = 2/3); above 0.15: all positives and
        // one of two negatives (J = 1/2).
        assert!((youden_threshold(&[0.2, 0.8, 0.9], &[0.1, 0.3]) - 0.55).abs() < 1e-12);
        // J = 1/2 above 0.15 and above 0.65 (0 above 0.35): the nearer to 0.
        assert!((youden_threshold(&[0.2, 0.8], &[0.1, 0.5]) - 0.15).abs() < 1e-12);
        assert_eq!(youden_threshold(&[-3.0, -2.0], &[-5.0, -4.0]), -3.5);
        assert!((auc(&[0.2, 0.8, 0.9], &[0.1, 0.3]) - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(auc(&[1.0], &[1.0]), 0.5);
    }

    #[test]
    fn judged_understanding_counts_spoken_answers_and_both_controls() {
        let questions = rows(&[
            ("a", "bake bread"),
            ("b", "capital france"),
            ("c", "water boils"),
            ("d", "sky blue"),
            ("e", "not answered at all"),
        ]);
        let text = rows(&[
            ("a", "bake bread flour yeast"),
            ("b", "paris capital france"),
            ("c", "water boils 100 degrees"),
            ("d", "sky blue scattering"),
        ]);
        let spoken = rows(&[
            ("a", "bake bread knead dough"),
            ("b", "capital paris"),
            ("c", "line straight"),
            ("d", "blue light scatters sky blue"),
            ("e", "left out: no text answer"),
        ]);
        let u = judge_answers(&Overlap, &questions, &spoken, &text, 2, false).unwrap();
        assert_eq!(u.judge, "overlap");
        assert_eq!((u.spoken.k, u.spoken.n), (3, 4));
        assert_eq!(u.missed, ["c"]);
        assert_eq!((u.own_text.k, u.other_text.k), (4, 0));
        // Controls: the answer half the list away, never the question's own.
        let others: Vec<&str> = u.rows.iter().map(|r| r.other_id.as_str()).collect();
        assert_eq!(others, ["c", "d", "a", "b"]);
        assert!(u.controls_passed());
        assert!((u.corrected.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(u.controls_auc, 1.0);

        // A judge that leans to "no" (every log-odds below 0) but ranks the same: the threshold
        // moves below 0 and the verdicts are the same.
        struct Shy;
        impl AddressJudge for Shy {
            fn name(&self) -> String {
                "shy".into()
            }
            fn log_odds(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<f64>> {
                Ok(Overlap.log_odds(inputs)?.iter().map(|x| x - 2.0).collect())
            }
        }
        let shy = judge_answers(&Shy, &questions, &spoken, &text, 3, false).unwrap();
        assert!(shy.threshold < -1.0, "{}", shy.threshold);
        assert_eq!(
            (shy.spoken, shy.own_text, shy.other_text, &shy.missed),
            (u.spoken, u.own_text, u.other_text, &u.missed)
        );

        // A judge that calls everything addressing fails its controls, and its rate cannot be
        // corrected (sensitivity + specificity = 1).
        struct Yes;
        impl AddressJudge for Yes {
            fn name(&self) -> String {
                "yes".into()
            }
            fn log_odds(&self, inputs: &[JudgeInput<'_>]) -> Result<Vec<f64>> {
                Ok(vec![1.0; inputs.len()])
            }
        }
        let u = judge_answers(&Yes, &questions, &spoken, &text, 8, false).unwrap();
        assert_eq!(u.spoken.k, u.other_text.k);
        assert!(!u.controls_passed());
        assert_eq!(u.corrected, None);
        assert_eq!(u.controls_auc, 0.5);

        assert!(judge_answers(&Overlap, &questions, &spoken[..1], &text, 2, false).is_err());
        let twice = rows(&[("a", "x"), ("a", "y"), ("b", "z")]);
        assert!(judge_answers(&Overlap, &questions, &twice, &text, 2, false).is_err());
    }

    /// The real judge ranks an answer to the question above an answer to another question, and
    /// above an answer to a similar-sounding one. Needs the real 1.5B model; skipped without it.
    #[test]
    fn the_llm_judge_tells_an_answer_from_an_answer_to_another_question() {
        let Some(path) = crate::judge::default_model_or_skip() else {
            return;
        };
        let judge =
            LlmAddressJudge::load(path.to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
        // (question, answer): an answer to it, then one that is not.
        let cases = [
            (
                "How do I keep basil alive indoors?",
                "Place the pot in a sunny window, water it when the top of the soil is dry, and \
                 pinch off flower buds so the plant keeps producing leaves.",
            ),
            (
                "How do I keep basil alive indoors?",
                "The French Revolution began in 1789 with the storming of the Bastille.",
            ),
            (
                "Name three rivers in Africa.",
                "Three rivers in Africa are the Nile, the Congo and the Niger.",
            ),
            (
                "Name three rivers in Africa.",
                "Three famous livers of Africa: well, the liver is an organ that filters blood",
            ),
        ];
        let inputs: Vec<JudgeInput<'_>> = cases
            .iter()
            .map(|(q, a)| JudgeInput {
                prompt: q,
                response: a,
                refusal_score: None,
            })
            .collect();
        let odds = judge.log_odds(&inputs).unwrap();
        // Each question's answer scores above the other answer to it. (How often the 1.5B judge
        // is right at log-odds 0 is what a run's controls measure: it leans to 0.)
        for pair in odds.chunks(2) {
            assert!(pair[0] > pair[1] + 0.3, "log-odds {odds:?}");
        }
    }
}
