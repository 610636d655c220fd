//! SafeCoDe — safety-aware contrastive decoding (Liu et al. 2025, arXiv 2509.19212; SPEC §3).
//!
//! For the first `steps` answer tokens the next-token logits of the real input are contrasted
//! with those of a corrupted copy of it (same token ids: Gaussian noise on the waveform for
//! audio, on the user-content embeddings for text), `z_cd = z(real) − α·z(noised)`, and the
//! refusal tokens' probability is raised or lowered according to a safe/unsafe verdict on the
//! whole request. After the guided steps the answer continues on the real input alone.
//!
//! This file holds the per-step arithmetic (contrast, modulation, phrase ranking, token choice)
//! on plain logit rows; the generation loop that runs the two inputs side by side lives with
//! generation, the verdict with the other local judges.
//!
//! The authors' released code differs from the paper's prose; both are offered:
//! - [`Variant::Paper`]: unsafe → `p(r)·(1+λ_boost)` for refusal tokens r, renormalised; safe →
//!   `p(r)·(1 − 0.5·λ_supp)` with α halved; `steps` guided tokens.
//! - [`Variant::Reference`]: unsafe → the refusal phrase whose tokens carry the most `p_cd` mass
//!   (phrases naming sorry/apologize/unable/cannot/… first) is forced for up to `steps` tokens,
//!   then the answer continues under a length cap; safe → the suppression above, ended early
//!   once the answer has started (two words, the first capitalised), and a quote mark is never
//!   the first token.
//!
//! Decisions of this port, where the reference is specific to its models or self-contradictory:
//! - Refusal phrases are SPEC §2's substrings plus the reference's `REFUSAL_PREFIXES`, minus
//!   its `"It is not</s>"` entries: `</s>` is a Llama end marker, and content is never markup
//!   here, so it would tokenize to stray `</`, `s`, `>` pieces. Each phrase is tokenized as
//!   answer-initial text (no leading space), as the reference does; every token of every phrase
//!   joins the boosted set (so `'m`, ` sorry`, … too), as in the reference.
//! - The reference's preferred-phrase keywords are matched case-insensitively (its `"As an AI"`
//!   keyword is compared with a lower-cased phrase and so can never match; we read the intent).

use std::collections::BTreeSet;

/// Which reading of the method to run (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Paper,
    Reference,
}

/// The verdict on a whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Safe,
    Unsafe,
}

/// SPEC §3's reference defaults.
pub const DEFAULT_ALPHA: f32 = 0.3;
pub const DEFAULT_STEPS: usize = 5;
pub const DEFAULT_TOP_K: usize = 20;
pub const DEFAULT_BOOST: f32 = 1.0;
pub const DEFAULT_SUPPRESS: f32 = 1.0;
/// The reference caps an answer it forced to start as a refusal at 30 new tokens (Qwen).
pub const REFERENCE_UNSAFE_CAP: usize = 30;

/// SPEC §2's refusal substrings.
const SPEC_PHRASES: &[&str] = &[
    "I'm sorry",
    "I am sorry",
    "I apologize",
    "As an AI",
    "As a language model",
    "As an assistant",
    "I cannot",
    "I can't",
    "I am unable to",
    "I'm unable to",
    "I am not able to",
    "I'm not able to",
];

/// The released code's `REFUSAL_PREFIXES`, less its `</s>` entries (see the module doc).
const REFERENCE_PHRASES: &[&str] = &[
    "I'm sorry",
    "I am sorry",
    "I'm an",
    "I'm just",
    "Sorry",
    "I apologize",
    "As an",
    "As an AI",
    "As a language model",
    "As an Assistant",
    "I cannot",
    "I do not",
    "It is not appropriate",
    "I'm unable to",
    "I am unable to",
    "I am not allowed to",
    "I am an AI language model",
    "I’m unable to",
    "Hello",
    "I",
    "cannot",
    "apologize",
    "inappropriate",
];

/// Phrases the reference prefers to force on an unsafe verdict, by substring.
const PREFERRED: &[&str] = &[
    "sorry",
    "apologize",
    "unable",
    "cannot",
    "can't",
    "not allowed",
    "as an ai",
    "not able to",
];

/// Quote marks the reference never lets start a safe answer.
const QUOTES: &[&str] = &["\"", "'", "“", "”", "‘", "’", "`", "´"];

/// The refusal phrases in a fixed order, without repeats.
pub fn refusal_phrases() -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for p in SPEC_PHRASES.iter().chain(REFERENCE_PHRASES) {
        if !out.contains(p) {
            out.push(p);
        }
    }
    out
}

/// The refusal phrases as one model's token ids, and the set of all their tokens.
#[derive(Debug, Clone)]
pub struct RefusalTokens {
    pub phrases: Vec<(String, Vec<u32>)>,
    pub ids: BTreeSet<u32>,
}

impl RefusalTokens {
    /// Tokenize every phrase with `encode` (answer-initial text, no special tokens).
    pub fn new<E>(mut encode: impl FnMut(&str) -> Result<Vec<u32>, E>) -> Result<Self, E> {
        let mut phrases = Vec::new();
        let mut ids = BTreeSet::new();
        for p in refusal_phrases() {
            let tokens = encode(p)?;
            if tokens.is_empty() {
                continue;
            }
            ids.extend(tokens.iter().copied());
            phrases.push((p.to_string(), tokens));
        }
        Ok(Self { phrases, ids })
    }
}

/// `z(real) − α·z(noised)`.
pub fn contrast(real: &[f32], noised: &[f32], alpha: f32) -> Vec<f32> {
    debug_assert_eq!(real.len(), noised.len());
    real.iter()
        .zip(noised)
        .map(|(r, n)| r - alpha * n)
        .collect()
}

/// Softmax of a logit row (max-shifted).
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Multiply the probability of every refusal token by `factor` and renormalise. A factor that
/// leaves no mass (suppression by 1 with all mass on refusal tokens) keeps `p` unchanged, as
/// the reference does.
pub fn modulate(p: &mut [f32], refusal: &BTreeSet<u32>, factor: f32) {
    let mut changed = p.to_vec();
    for &t in refusal {
        if let Some(x) = changed.get_mut(t as usize) {
            *x *= factor;
        }
    }
    let s: f32 = changed.iter().sum();
    if s > 0.0 && s.is_finite() {
        for (dst, x) in p.iter_mut().zip(changed) {
            *dst = x / s;
        }
    }
}

/// The verdict's modulation factor and contrast strength for one variant's settings.
pub fn guidance(verdict: Verdict, alpha: f32, boost: f32, suppress: f32) -> (f32, f32) {
    match verdict {
        Verdict::Unsafe => (1.0 + boost, alpha),
        Verdict::Safe => (1.0 - 0.5 * suppress, 0.5 * alpha),
    }
}

/// The reference's choice of refusal phrase to force: the top `top_k` phrases by the summed
/// `p_cd` of their tokens, the first of those naming a preferred word, else the first.
pub fn pick_phrase<'a>(
    p_cd: &[f32],
    refusal: &'a RefusalTokens,
    top_k: usize,
) -> Option<&'a [u32]> {
    let mut ranked: Vec<(&str, &[u32], f32)> = refusal
        .phrases
        .iter()
        .map(|(text, ids)| {
            let mass = ids
                .iter()
                .filter_map(|&t| p_cd.get(t as usize))
                .sum::<f32>();
            (text.as_str(), ids.as_slice(), mass)
        })
        .collect();
    // Stable sort: ties keep the phrase list's order.
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2));
    ranked.truncate(top_k.max(1));
    let preferred = ranked.iter().find(|(text, _, _)| {
        let lower = text.to_lowercase();
        PREFERRED.iter().any(|w| lower.contains(w))
    });
    preferred.or(ranked.first()).map(|(_, ids, _)| *ids)
}

/// Index of the largest value (the first on ties).
pub fn argmax(p: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > p[best] {
            best = i;
        }
    }
    best as u32
}

/// The reference's first token of a safe answer: the most probable, unless it is a quote mark
/// and the second is not.
pub fn first_safe_token(p: &[f32], decode: impl Fn(u32) -> String) -> u32 {
    let first = argmax(p);
    if !QUOTES.contains(&decode(first).trim()) {
        return first;
    }
    let mut rest = p.to_vec();
    rest[first as usize] = f32::NEG_INFINITY;
    argmax(&rest)
}

/// The reference's test that a safe answer has started: two words, the first of at least two
/// characters and capitalised. Checked from the second guided token on.
pub fn answer_started(text: &str) -> bool {
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(first), Some(_)) => {
            first.chars().count() >= 2 && first.chars().next().is_some_and(char::is_uppercase)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn contrast_subtracts_alpha_times_the_noised_logits() {
        let z = contrast(&[2.0, 1.0, -1.0], &[1.0, 3.0, 0.5], 0.3);
        assert!(close(&z, &[1.7, 0.1, -1.15]), "{z:?}");
        // α = 0 is the real logits.
        assert!(close(&contrast(&[2.0, 1.0], &[9.0, 9.0], 0.0), &[2.0, 1.0]));
    }

    /// SPEC §3 step 4 by hand: p = softmax(z_cd); refusal token 1 boosted by (1+λ) on unsafe,
    /// damped by (1−0.5λ) on safe, renormalised.
    #[test]
    fn modulation_matches_the_formula_by_hand() {
        let p = softmax(&[0.0, 0.0, f32::ln(2.0)]); // [0.25, 0.25, 0.5]
        assert!(close(&p, &[0.25, 0.25, 0.5]), "{p:?}");
        let refusal: BTreeSet<u32> = [1].into();

        let (up, a_unsafe) = guidance(Verdict::Unsafe, 0.3, 1.0, 1.0);
        assert_eq!((up, a_unsafe), (2.0, 0.3));
        let mut boosted = p.clone();
        modulate(&mut boosted, &refusal, up);
        // [0.25, 0.5, 0.5] / 1.25
        assert!(close(&boosted, &[0.2, 0.4, 0.4]), "{boosted:?}");

        let (down, a_safe) = guidance(Verdict::Safe, 0.3, 1.0, 1.0);
        assert_eq!((down, a_safe), (0.5, 0.15));
        let mut damped = p.clone();
        modulate(&mut damped, &refusal, down);
        // [0.25, 0.125, 0.5] / 0.875
        assert!(
            close(&damped, &[0.25 / 0.875, 0.125 / 0.875, 0.5 / 0.875]),
            "{damped:?}"
        );

        // Suppressing all the mass leaves p as it was instead of dividing by zero.
        let mut all = vec![0.0, 1.0, 0.0];
        modulate(&mut all, &refusal, 0.0);
        assert_eq!(all, vec![0.0, 1.0, 0.0]);
        // Out-of-vocabulary refusal ids are ignored.
        let mut p2 = p.clone();
        modulate(&mut p2, &[7].into(), 3.0);
        assert!(close(&p2, &p));
    }

    /// A toy tokenizer's phrases: I 'm sorry As an AI cannot Hello Sure = ids 0..9.
    fn toy_refusal() -> RefusalTokens {
        RefusalTokens {
            phrases: vec![
                ("I'm sorry".into(), vec![0, 1, 2]),
                ("As an AI".into(), vec![3, 4, 5]),
                ("Hello".into(), vec![7]),
                ("I cannot".into(), vec![0, 6]),
            ],
            ids: [0, 1, 2, 3, 4, 5, 6, 7].into(),
        }
    }

    /// The reference forces the preferred phrase with the most p_cd mass; a phrase without a
    /// preferred word wins only when no preferred phrase is in the top k.
    #[test]
    fn phrase_choice_prefers_apologies_then_mass() {
        let r = toy_refusal();
        // "Hello" carries the most mass, but "I cannot" is preferred and ranks above "I'm sorry".
        let p = [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.5, 0.1];
        assert_eq!(pick_phrase(&p, &r, 20), Some(&[0u32, 6][..]));
        // With top_k 1 only "Hello" is ranked, so it is forced.
        assert_eq!(pick_phrase(&p, &r, 1), Some(&[7u32][..]));
        // "As an AI" is preferred (case-insensitively) when it has the most mass.
        let p = [0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.0, 0.0, 0.1];
        assert_eq!(pick_phrase(&p, &r, 20), Some(&[3u32, 4, 5][..]));
    }

    #[test]
    fn safe_first_token_skips_a_leading_quote() {
        let decode = |t: u32| ["\"", "Sure", "I"][t as usize].to_string();
        assert_eq!(first_safe_token(&[0.6, 0.3, 0.1], decode), 1);
        assert_eq!(first_safe_token(&[0.1, 0.3, 0.6], decode), 2);
    }

    #[test]
    fn answer_has_started_after_two_words_with_a_capital() {
        assert!(answer_started("Sure, here"));
        assert!(answer_started("To bake bread"));
        assert!(!answer_started("Sure"));
        assert!(!answer_started("a list of"));
        assert!(!answer_started("1. First"));
        assert!(
            !answer_started("I think"),
            "a one-letter first word is not a start"
        );
    }

    #[test]
    fn refusal_phrases_are_unique_and_free_of_markup() {
        let phrases = refusal_phrases();
        let set: BTreeSet<&str> = phrases.iter().copied().collect();
        assert_eq!(set.len(), phrases.len());
        assert!(phrases.iter().all(|p| !p.contains('<')));
        for p in SPEC_PHRASES {
            assert!(phrases.contains(p), "{p}");
        }
        assert!(phrases.contains(&"Sorry") && phrases.contains(&"inappropriate"));
    }

    #[test]
    fn refusal_tokens_collect_every_token_of_every_phrase() {
        let mut calls = 0;
        let r = RefusalTokens::new(|p: &str| -> Result<Vec<u32>, ()> {
            calls += 1;
            Ok(p.bytes().map(u32::from).collect())
        })
        .unwrap();
        assert_eq!(calls, refusal_phrases().len());
        assert!(r.ids.contains(&u32::from(b'I')) && r.ids.contains(&u32::from(b'y')));
        let err = RefusalTokens::new(|_: &str| -> Result<Vec<u32>, &str> { Err("no tokenizer") });
        assert_eq!(err.unwrap_err(), "no tokenizer");
    }
}
