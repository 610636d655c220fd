//! Word error rate: word-level Levenshtein distance (substitutions + deletions + insertions)
//! over the reference's word count, after normalising both texts the same way (lower case,
//! punctuation other than in-word apostrophes and hyphens removed, whitespace collapsed), as
//! speech-recognition evaluations usually score transcripts.

/// The words of `text`, normalised for scoring.
pub fn normalise(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Edits (substitutions, deletions, insertions) turning `reference` into `hypothesis`.
pub fn word_edits(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut cur = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hypothesis.len()]
}

/// Corpus WER of (reference, hypothesis) pairs: total edits over total reference words (None
/// when the references hold no words).
pub fn wer<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<f64> {
    let (mut edits, mut words) = (0usize, 0usize);
    for (r, h) in pairs {
        let (r, h) = (normalise(r), normalise(h));
        edits += word_edits(&r, &h);
        words += r.len();
    }
    (words > 0).then(|| edits as f64 / words as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_kind_of_edit() {
        let w = |s: &str| normalise(s);
        assert_eq!(word_edits(&w("a b c"), &w("a b c")), 0);
        assert_eq!(word_edits(&w("a b c"), &w("a x c")), 1);
        assert_eq!(word_edits(&w("a b c"), &w("a c")), 1);
        assert_eq!(word_edits(&w("a b c"), &w("a b c d")), 1);
        assert_eq!(word_edits(&w("a b c"), &w("")), 3);
        assert_eq!(word_edits(&w("kitten sat"), &w("sitting sat on")), 2);
    }

    #[test]
    fn normalises_case_and_punctuation() {
        assert_eq!(
            normalise("Don't  STOP, well-known!"),
            ["don't", "stop", "well-known"]
        );
        let r = wer([("Name three colors.", "name three colours"), ("Hi", "hi")]).unwrap();
        assert!((r - 0.25).abs() < 1e-12);
        assert_eq!(wer([("", "x")]), None);
    }
}
