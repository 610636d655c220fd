#!/usr/bin/env python3
"""Did a speech model understand spoken questions? A judge-free check from two eval runs.

For each question, its answer from spoken input (audio-only run) is compared with the answers
the same model gave to every question as text (text-only run), by word-overlap F1. The spoken
answer "addresses its question" when it is closest to its own question's text answer: a
retrieval test whose chance level is 1/N. It also reports the mean F1 to the own answer against
the mean F1 to other questions' answers (the control: what unrelated answers share).

Usage: speech_understanding.py TEXT_RUN/results.jsonl AUDIO_RUN/results.jsonl
Prints one JSON object.
"""

import json
import re
import sys


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def f1(a, b):
    a, b = words(a), words(b)
    if not a or not b:
        return 0.0
    counts = {}
    for w in b:
        counts[w] = counts.get(w, 0) + 1
    common = 0
    for w in a:
        if counts.get(w, 0) > 0:
            common += 1
            counts[w] -= 1
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def load(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        # Audio manifests name renderings ID@VOICE; the question is the id before '@'.
        out[r["id"].split("@")[0]] = r["response"]
    return out


def main():
    text, audio = load(sys.argv[1]), load(sys.argv[2])
    ids = sorted(set(text) & set(audio))
    if len(ids) < 2:
        sys.exit("need at least two questions answered in both runs")
    hits, own, other = 0, [], []
    for i in ids:
        scores = {j: f1(audio[i], text[j]) for j in ids}
        best = max(scores.values())
        # Ties with the own answer count as misses unless the own answer is the unique best.
        if scores[i] == best and sum(1 for s in scores.values() if s == best) == 1:
            hits += 1
        own.append(scores[i])
        other.extend(s for j, s in scores.items() if j != i)
    n = len(ids)
    print(json.dumps({
        "questions": n,
        "understood": hits / n,
        "chance": 1 / n,
        "mean_f1_own_text_answer": sum(own) / n,
        "mean_f1_other_text_answers": sum(other) / len(other),
    }))


if __name__ == "__main__":
    main()
