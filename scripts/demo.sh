#!/usr/bin/env bash
# The main command: install what is needed, fetch the default model, build, run the demo
# (fit SARSteer on the default model and compare defenses; report in out/demo/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-models.sh qwen2.5-coder-1.5b-instruct
cargo build --release --bin earguard
exec "${CARGO_TARGET_DIR:-target}/release/earguard" demo --data-dir "${EARGUARD_DATA:-../shared/data}" --out "${EARGUARD_DEMO_OUT:-out/demo}" "$@"
