#!/usr/bin/env bash
# The seeds' table on the speech model (issues: a real speech model; training): defenses fitted
# or trained on *spoken* requests, evaluated on spoken requests never used in training.
#   1. speak the FigStep mirror train set (100 + 100; the head was trained on its renders, which
#      is allowed: it is a train set) and the first PAIRS AdvBench mirror pairs (never trained
#      on) in VOICE (espeak-ng en-us by default; piper:en_US-joe-medium after
#      scripts/fetch-models.sh piper-joe) at 160 wpm;
#   2. undefended: text-only, audio-text and audio-only;
#   3. RRS trained in audio-text mode (the spoken question, then the text instruction, as the
#      paper trains; Whisper and the head frozen, LoRA on the LLM's layers LAYERS, the frozen
#      prefix below them computed once), then evaluated in the three modes;
#      (RRS=0 skips this step: some 80 min on 2 cores);
#   4. SARSteer fitted in audio-text mode (as the paper does), evaluated in both audio modes at
#      each strength of ALPHAS (default 0.1, the SPEC's);
#   5. SafeCoDe (the paper variant, waveform noise at 10 dB) in both audio modes, its verdict
#      threshold calibrated in each mode on the spoken train set (SAFECODE=0 skips this step;
#      SAFECODE_VARIANTS="paper reference" adds the released code's variant; some 50 min per
#      mode on 2 cores).
# Greedy, 32 tokens, substring judge (its agreement with people is in every report); every
# defended run's report compares it (NSI, McNemar) with the undefended run in its mode, and
# OUT_DIR/table.md puts them all side by side (earguard compare).
# Usage: scripts/audio-defenses.sh [OUT_DIR]
#   (MODEL, VOICE, PAIRS, LAYERS, EPOCHS, LR, PENALTY, RRS, ALPHAS, SAFECODE, SAFECODE_VARIANTS
#   override)
# Every step resumes or is skipped when its output exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/audio-defenses}"
MODEL="${MODEL:-speech-qwen2.5-coder-1.5b}"
PAIRS="${PAIRS:-40}"
LAYERS="${LAYERS:-24-27}"
EPOCHS="${EPOCHS:-5}"
LR="${LR:-1e-3}"
PENALTY="${PENALTY:-0.00065}"
VOICE="${VOICE:-en-us}"
ALPHAS="${ALPHAS:-0.1}"
BIN="${EARGUARD_BIN:-target/release/earguard}"
DATA="${DATA:-../shared/data}"
log() { printf '[audio-defenses %s] %s\n' "$(date +%T)" "$*"; }
mkdir -p "$OUT/texts" "$OUT/runs"
# Every later step reuses the renders: one directory speaks in one voice.
if [ -f "$OUT/voice" ] && [ "$(cat "$OUT/voice")" != "$VOICE" ]; then
  echo "audio-defenses: $OUT was spoken by $(cat "$OUT/voice"), not $VOICE; choose another OUT_DIR" >&2
  exit 2
fi
[ -f "$OUT/speech/figstep_mirror_train.jsonl" ] || printf '%s\n' "$VOICE" > "$OUT/voice"

if [ ! -f "$OUT/speech/figstep_mirror_train.jsonl" ]; then
  log "speak the train set"
  "$BIN" -q tts --data "$DATA/figstep_mirror_train.jsonl" -o "$OUT/speech" --voices "$VOICE"
fi
TRAIN="$OUT/speech/figstep_mirror_train.jsonl"
if [ ! -f "$OUT/speech/advbench.jsonl" ]; then
  log "speak the first $PAIRS AdvBench mirror pairs"
  head -n "$((2 * PAIRS))" "$DATA/advbench_mirror.jsonl" > "$OUT/texts/advbench.jsonl"
  "$BIN" -q tts --data "$OUT/texts/advbench.jsonl" -o "$OUT/speech" --voices "$VOICE"
fi
TEST="$OUT/speech/advbench.jsonl"

run() { # NAME MODE [eval args...]
  local name="$1" mode="$2"; shift 2
  [ -f "$OUT/runs/$name/report.json" ] && return 0
  log "eval $name"
  "$BIN" -q eval --model "$MODEL" --data "$TEST" --mode "$mode" --max-tokens 32 --judge substring \
    "$@" -o "$OUT/runs/$name"
}
for mode in text-only audio-text audio-only; do run "none-$mode" "$mode"; done

if [ "${RRS:-1}" != 0 ]; then
  ADAPTER="$OUT/lora/rrs"
  if ! grep -qs '"finished": true' "$ADAPTER/train.json"; then
    log "train rrs (audio-text)"
    "$BIN" train rrs --model "$MODEL" --mode audio-text --data "$TRAIN" -o "$ADAPTER" \
      --layers "$LAYERS" --penalty "$PENALTY" --instructions fixed --epochs "$EPOCHS" --lr "$LR" \
      --batch-size 8 --seed 0 --probe-pairs 30 --checkpoint-every 5
  fi
  for mode in text-only audio-text audio-only; do
    run "rrs-$mode" "$mode" --adapter "$ADAPTER" --baseline "$OUT/runs/none-$mode"
  done
fi

if [ ! -f "$OUT/vec/sar/meta.json" ]; then
  log "fit sarsteer (audio-text)"
  "$BIN" -q fit sarsteer --model "$MODEL" --mode audio-text --data "$TRAIN" -o "$OUT/vec/sar"
fi
for alpha in $ALPHAS; do
  # The SPEC's strength keeps its old run name, so earlier outputs are resumed.
  suffix=""; [ "$alpha" = 0.1 ] || suffix="-a$alpha"
  for mode in audio-text audio-only; do
    run "sarsteer$suffix-$mode" "$mode" --defense "sarsteer=$OUT/vec/sar:alpha=$alpha" \
      --baseline "$OUT/runs/none-$mode"
  done
done

if [ "${SAFECODE:-1}" != 0 ]; then
  for mode in audio-text audio-only; do
    CAL="$OUT/cal-safecode-$mode"
    if [ ! -f "$CAL/calibration.json" ]; then
      log "calibrate safecode ($mode)"
      "$BIN" -q fit safecode -m "$MODEL" --mode "$mode" --data "$TRAIN" -o "$CAL"
    fi
    for variant in ${SAFECODE_VARIANTS:-paper}; do
      # The paper variant is SafeCoDe's default: plain run name and spec.
      name="safecode" spec="safecode:calibration=$CAL"
      if [ "$variant" != paper ]; then
        name="safecode-variant=$variant" spec="safecode:variant=$variant,calibration=$CAL"
      fi
      run "$name-$mode" "$mode" --defense "$spec" --baseline "$OUT/runs/none-$mode"
    done
  done
fi
# The table: every run here, each defended one paired with the undefended run in its mode.
"$BIN" compare "$OUT"/runs/*/ > "$OUT/table.md"
log "done: $OUT/table.md"
