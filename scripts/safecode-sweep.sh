#!/usr/bin/env bash
# SafeCoDe's corruption strength, measured (issue: SafeCoDe). Two sweeps, each eval run resumable:
#   audio-only, on the speech model built from parts (scripts/speech-eval.sh makes it): the
#   waveform noise's SNR (0, 10, 30 dB) with the verdict threshold calibrated on spoken
#   training prompts, the reference variant at 10 dB, and a control: the paper variant with a
#   boost of 100 (does boosting refusal tokens turn the answers at all?);
#   text-only, on the default model: the embedding noise's sigma (0.01, 0.1, 1 × each
#   embedding's RMS) with the threshold calibrated on text training prompts; then the other
#   defenses on the same pairs (prompt, SARSteer) and SafeCoDe under the ablation attack at
#   half strength (VEC: the demo's vectors).
# Every run is compared (--baseline) with the undefended run on the same prompts.
# Usage: scripts/safecode-sweep.sh [OUT_DIR]
#   SPEECH_MODEL (default out/speech-eval/model-tau1), SPEECH (default out/speech-eval/speech:
#   advbench40.jsonl, the first 40 AdvBench mirror pairs spoken), DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/safecode-sweep}"
BIN="${EARGUARD_BIN:-target/release/earguard}"
SPEECH_MODEL="${SPEECH_MODEL:-out/speech-eval/model-tau1}"
SPEECH="${SPEECH:-out/speech-eval/speech}"
DATA="${DATA:-../shared/data}"
LLM="${LLM:-qwen2.5-coder-1.5b-instruct}"
mkdir -p "$OUT/texts"

# Calibration sets: the first 100 harmful_train and harmless_train prompts (spoken for audio);
# never the prompts reported.
head -n 100 "$DATA/harmful_train.jsonl" > "$OUT/texts/harmful_train100.jsonl"
head -n 100 "$DATA/harmless_train.jsonl" > "$OUT/texts/harmless_train100.jsonl"
for set in harmful_train100 harmless_train100; do
  [ -f "$OUT/speech/$set.jsonl" ] || "$BIN" -q tts --data "$OUT/texts/$set.jsonl" -o "$OUT/speech"
done
cal() { # MODEL MODE DIR SET1 SET2
  [ -f "$3/calibration.json" ] || "$BIN" -q fit safecode -m "$1" --mode "$2" --data "$4" --data "$5" -o "$3"
}
cal "$SPEECH_MODEL" audio-only "$OUT/cal-audio" "$OUT/speech/harmful_train100.jsonl" "$OUT/speech/harmless_train100.jsonl"
cal "$LLM" text-only "$OUT/cal-text" "$OUT/texts/harmful_train100.jsonl" "$OUT/texts/harmless_train100.jsonl"

echo "== audio-only: the speech model, 40 + 40 spoken AdvBench mirror pairs, 32 tokens"
AUDIO=(-m "$SPEECH_MODEL" --mode audio-only --data "$SPEECH/advbench40.jsonl" --max-tokens 32 --judge substring)
"$BIN" -q eval "${AUDIO[@]}" -o "$OUT/audio-none"
for spec in snr=0 snr=10 snr=30 variant=reference,snr=10 boost=100,snr=10; do
  "$BIN" -q eval "${AUDIO[@]}" --defense "safecode:$spec,calibration=$OUT/cal-audio" \
    --baseline "$OUT/audio-none" -o "$OUT/audio-${spec//[=,]/-}"
done

echo "== text-only: the default model, 40 + 40 AdvBench mirror pairs, 16 tokens"
TEXT=(-m "$LLM" --mode text-only --data "$DATA/advbench_mirror.jsonl" --limit 40 --max-tokens 16 --judge substring)
"$BIN" -q eval "${TEXT[@]}" -o "$OUT/text-none"
for spec in sigma=0.01 sigma=0.1 sigma=1; do
  "$BIN" -q eval "${TEXT[@]}" --defense "safecode:$spec,calibration=$OUT/cal-text" \
    --baseline "$OUT/text-none" -o "$OUT/text-${spec//[=,]/-}"
done

echo "== text-only: the other defenses on the same pairs, and SafeCoDe under the attack at half strength"
# The demo's vectors (scripts/demo.sh writes them): the refusal direction (the attack) and SARSteer.
VEC="${VEC:-out/demo/vectors}"
CLEAN="judge=$LLM,calibration=$OUT/cal-text"   # the verdict put to the unattacked model
run_text() { # NAME SPEC
  "$BIN" -q eval "${TEXT[@]}" --defense "$2" --baseline "$OUT/text-none" -o "$OUT/text-$1"
}
run_text prompt prompt
run_text sarsteer "sarsteer=$VEC/sarsteer"
run_text ablate-0.5 "ablate=$VEC/refusal-direction:strength=0.5"
run_text ablate-0.5+safecode "ablate=$VEC/refusal-direction:strength=0.5+safecode:$CLEAN"
run_text ablate-0.5+safecode-reference "ablate=$VEC/refusal-direction:strength=0.5+safecode:variant=reference,$CLEAN"
