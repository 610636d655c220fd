#!/usr/bin/env bash
# The main command: install what is needed, fetch the default model, build, run the demo
# (fit SARSteer on the default model and compare defenses; report in out/demo/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-models.sh qwen2.5-coder-1.5b-instruct
# --audio: the spoken setting on the speech model built from parts, which needs Whisper-base
# and (its default voice, or any piper:NAME) Piper with its voice.
for a in "$@"; do
  case "$a" in
    --audio) bash scripts/fetch-models.sh whisper-base piper-joe ;;
  esac
done
cargo build --release --bin earguard
OUT=()
if [ -n "${EARGUARD_DEMO_OUT:-}" ]; then OUT=(--out "$EARGUARD_DEMO_OUT"); fi
exec "${CARGO_TARGET_DIR:-target}/release/earguard" demo --data-dir "${EARGUARD_DATA:-../shared/data}" ${OUT[@]+"${OUT[@]}"} "$@"
