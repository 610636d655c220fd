//! Word error rate: word-level Levenshtein distance (substitutions + deletions + insertions)
//! over the reference's word count, after normalising both texts the same way, as
//! speech-recognition evaluations score transcripts: lower case; punctuation removed, except
//! apostrophes inside a word; hyphens and slashes split words ("high-profile" is "high
//! profile"); number words below a hundred written as digits ("three" is "3", "twenty-one" is
//! "21"), since a recogniser may write either. A small rule after the number part of Whisper's
//! English normaliser (openai/whisper, `whisper/normalizers/english.py`), which does more (it
//! also reads "twenty twenty" as 2020, "oh" as 0, hundreds and ordinals); its spelling and
//! filler-word rules are not ported.

/// The words of `text`, normalised for scoring.
pub fn normalise(text: &str) -> Vec<String> {
    let words = text
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || c == '-' || c == '/')
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    // A tens word not yet written out: "twenty one" is 21, a unit after it joins it.
    let mut tens: Option<u32> = None;
    for w in words {
        match (number_word(&w), tens.take()) {
            (Some(unit @ 1..=9), Some(t)) => out.push((t + unit).to_string()),
            (value, pending) => {
                out.extend(pending.map(|t| t.to_string()));
                match value {
                    Some(v) if v >= 20 => tens = Some(v),
                    Some(v) => out.push(v.to_string()),
                    None => out.push(w),
                }
            }
        }
    }
    out.extend(tens.map(|t| t.to_string()));
    out
}

/// The value of a number word below a hundred.
fn number_word(w: &str) -> Option<u32> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 8] = [
        "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    if let Some(i) = UNITS.iter().position(|u| *u == w) {
        return Some(i as u32);
    }
    TENS.iter()
        .position(|t| *t == w)
        .map(|i| 20 + 10 * i as u32)
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
            ["don't", "stop", "well", "known"]
        );
        let r = wer([("Name three colors.", "name three colours"), ("Hi", "hi")]).unwrap();
        assert!((r - 0.25).abs() < 1e-12);
        assert_eq!(wer([("", "x")]), None);
    }

    #[test]
    fn writes_number_words_as_digits() {
        assert_eq!(normalise("Find three sites"), ["find", "3", "sites"]);
        assert_eq!(normalise("Find 3 sites."), normalise("Find three sites"));
        assert_eq!(normalise("twenty-one, forty two"), ["21", "42"]);
        assert_eq!(normalise("twenty twenty"), ["20", "20"]);
        assert_eq!(normalise("ninety ten"), ["90", "10"]);
        assert_eq!(normalise("11, 9, 5"), ["11", "9", "5"]);
        assert_eq!(normalise("high-profile / low"), ["high", "profile", "low"]);
        assert_eq!(wer([("List five items", "list 5 items.")]), Some(0.0));
    }
}
