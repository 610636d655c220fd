#!/usr/bin/env bash
# The test command: install what is needed, fetch the real models, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Dependency hygiene: one tokenizers / candle-* version, no unused dependencies; and that the
# check itself fails when it should.
bash scripts/check-deps.sh
bash scripts/check-deps-test.sh
bash scripts/fetch-models.sh qwen2.5-coder-1.5b-instruct smollm2-135m-instruct whisper-base human-labels piper-joe
EARGUARD_REQUIRE_MODELS=1 EARGUARD_REQUIRE_WHISPER=1 cargo test --workspace --release
