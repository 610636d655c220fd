//! Did a speech model understand spoken questions? A judge-free check from two sets of
//! answers by the same model: to each question spoken, and to every question as text.
//!
//! A spoken answer "addresses its question" when, by word-overlap F1 (SQuAD's token F1 over
//! [`earguard_data::wer::normalise`]'s words), it is closer to the text answer of its own
//! question than to any other question's: a retrieval test whose chance level is 1/N. Beside
//! it, the mean F1 to the own text answer against the mean F1 to the others' (what unrelated
//! answers share). The measure `scripts/speech_understanding.py` computed for the README's
//! gate, in the product (the script's words have no number rule).

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{EvalError, Result};

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
    for (rows, what) in [(spoken, "spoken"), (text, "text")] {
        let mut seen = std::collections::HashSet::new();
        if let Some((id, _)) = rows.iter().find(|(i, _)| !seen.insert(i.as_str())) {
            return Err(EvalError::Invalid(format!(
                "question {id} has two {what} answers: compare one answer per question"
            )));
        }
    }
    let text: HashMap<&str, &str> = text.iter().map(|(i, a)| (i.as_str(), a.as_str())).collect();
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
    })
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
        assert!((u.rate - 2.0 / 3.0).abs() < 1e-12);
        assert!(u.mean_f1_own > u.mean_f1_other);
        // A tie at the top is a miss: identical text answers cannot tell questions apart.
        let same = rows(&[("a", "yes"), ("b", "yes")]);
        let u = closest_answers(&rows(&[("a", "yes"), ("b", "yes")]), &same).unwrap();
        assert_eq!(u.addressed, 0);
        assert!(closest_answers(&rows(&[("a", "x")]), &text).is_err());
        assert!(closest_answers(&rows(&[("a", "x"), ("a", "y"), ("b", "z")]), &text).is_err());
    }
}
