#!/usr/bin/env bash
# The test command: install what is needed, fetch the real models, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-models.sh qwen2.5-1.5b-instruct smollm2-135m-instruct whisper-base
EARGUARD_REQUIRE_MODELS=1 EARGUARD_REQUIRE_WHISPER=1 cargo test --workspace --release
