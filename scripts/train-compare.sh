#!/usr/bin/env bash
# Fine-tuned defenses beside inference-time ones on one model (issue: training, RRS and the SFT
# baselines). On MODEL (default smollm2-135m-instruct: a real instruct model that answers most
# harmful requests, so a defense has room to show; the 1.5B refuses almost all of them
# unattacked), trained on the FigStep mirror train set (100 + 100), evaluated on the first
# PAIRS AdvBench mirror pairs (never trained on), greedy, 32 tokens, substring judge:
#   1. the refusal direction and a SARSteer vector, fitted on the same train set;
#   2. eval: none, prompt, sarsteer, and the half-strength refusal-direction ablation (attack);
#   3. train rrs, shallow-mirror, shallow-parallel, sft and deep (LoRA r 16, α 4, dropout 0.1 on
#      every layer's 7 linears; EPOCHS epochs, batch 8, LR: about the paper's lr × steps, since
#      its 1,400 samples give 6.7× our steps at batch 16);
#   4. eval each adapter, alone and under the attack.
# Usage: scripts/train-compare.sh [OUT_DIR]   (MODEL, PAIRS, EPOCHS, LR, METHODS override;
#   METHODS="" runs step 1–2 only; TRAIN_ARGS adds train options, e.g. "--penalty 0", and TAG
#   names such a variant: its adapter and runs are METHOD$TAG)
# Every step resumes or is skipped when its output exists.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/train-compare}"
MODEL="${MODEL:-smollm2-135m-instruct}"
PAIRS="${PAIRS:-20}"
EPOCHS="${EPOCHS:-10}"
LR="${LR:-2e-4}"
METHODS="${METHODS-rrs shallow-mirror shallow-parallel sft deep}"
TAG="${TAG:-}"
read -r -a TRAIN_EXTRA <<< "${TRAIN_ARGS:-}"
BIN="${EARGUARD_BIN:-target/release/earguard}"
DATA="${DATA:-../shared/data}"
TRAIN="$DATA/figstep_mirror_train.jsonl"
TEST="$DATA/advbench_mirror.jsonl"
EVAL=(--model "$MODEL" --data "$TEST" --limit "$PAIRS" --max-tokens 32 --judge substring)
mkdir -p "$OUT/vec" "$OUT/runs" "$OUT/lora"
log() { printf '[train-compare %s] %s\n' "$(date +%T)" "$*"; }

[ -f "$OUT/vec/rd/meta.json" ] || { log "fit refusal-direction"; "$BIN" fit refusal-direction --model "$MODEL" --data "$TRAIN" -o "$OUT/vec/rd"; }
[ -f "$OUT/vec/sar/meta.json" ] || { log "fit sarsteer"; "$BIN" fit sarsteer --model "$MODEL" --data "$TRAIN" -o "$OUT/vec/sar"; }
ATTACK="ablate=$OUT/vec/rd:strength=0.5"

run() { # NAME [eval args...]
  local name="$1"; shift
  [ -f "$OUT/runs/$name/report.json" ] && return 0
  log "eval $name"
  "$BIN" eval "${EVAL[@]}" "$@" -o "$OUT/runs/$name"
}
run none
run prompt --defense prompt
run sarsteer --defense "sarsteer=$OUT/vec/sar"
run attack --defense "$ATTACK"

for m in $METHODS; do
  extra=()
  case "$m" in
    shallow-parallel) extra=(--benign "$DATA/harmless_train.jsonl") ;;
    deep) extra=(--attack "ablate=$OUT/vec/rd") ;;
  esac
  name="$m$TAG"
  if ! grep -qs '"finished": true' "$OUT/lora/$name/train.json"; then
    log "train $name"
    "$BIN" train "$m" --model "$MODEL" --data "$TRAIN" -o "$OUT/lora/$name" \
      --epochs "$EPOCHS" --lr "$LR" --batch-size 8 --seed 0 --probe-pairs 30 --checkpoint-every 5 \
      "${extra[@]}" "${TRAIN_EXTRA[@]}"
  fi
  run "$name" --adapter "$OUT/lora/$name"
  run "$name+attack" --adapter "$OUT/lora/$name" --defense "$ATTACK"
done
log "done"
