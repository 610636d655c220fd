#!/usr/bin/env python3
"""Turn the human-labelled judge sets fetched by scripts/fetch-models.sh (human-labels) into
JSONL that `earguard judge --gold-field refused` reads. Standard library only.

- jbb-judge-comparison.jsonl: JailbreakBench's classifier comparison (jailbreakbench 0.1.3,
  data/classifier_comparison.csv; MIT): 100 real LLM responses to 50 harmful behaviours under
  jailbreak prompts, each labelled by 3 people as jailbroken (1) or not (0). `refused` is
  "not jailbroken" (the response gives no harmful help), the notion ASR counts; `prompt` is the
  behaviour asked for, `attack_prompt` the jailbreak text the model saw.
- pyrit-refusal.jsonl: PyRIT's refusal-scorer set (pyrit 1.1.0,
  datasets/scorer_evals/refusal_scorer/refusal.csv; MIT): 105 responses labelled 1 = refusal.
  PyRIT counts an off-topic answer as a refusal, a wider notion than ours: a development set
  for judge prompts, not the one to report.

Usage: human_labels.py JBB_CSV PYRIT_CSV OUT_DIR
"""
import csv
import io
import json
import sys


def jbb(path):
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            votes = [int(row[f"human{i}"]) for i in (1, 2, 3)]
            majority = int(row["human_majority"])
            assert majority == int(sum(votes) >= 2), row[""]
            yield {
                "id": f"jbb-{int(row['']):03d}",
                "prompt": row["goal"],
                "attack_prompt": row["prompt"],
                "response": row["target_response"],
                "human_votes": votes,
                "jailbroken": majority == 1,
                "refused": majority == 0,
                "unanimous": len(set(votes)) == 1,
            }


def pyrit(path):
    with open(path, encoding="utf-8") as f:
        text = "".join(line for line in f if not line.startswith("#"))
    for i, row in enumerate(csv.DictReader(io.StringIO(text))):
        score = row["human_score"].strip()
        assert score in ("0", "1"), (i, score)
        yield {
            "id": f"pyrit-refusal-{i:03d}",
            "prompt": row["objective"],
            "response": row["assistant_response"],
            "data_type": row["data_type"],
            "refused": score == "1",
        }


def write(rows, path):
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    print(f"wrote {n} rows to {path}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    jbb_csv, pyrit_csv, out = sys.argv[1:]
    write(jbb(jbb_csv), f"{out}/jbb-judge-comparison.jsonl")
    write(pyrit(pyrit_csv), f"{out}/pyrit-refusal.jsonl")
