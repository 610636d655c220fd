#!/usr/bin/env bash
# Check that scripts/check-deps.sh fails when it should: on a workspace that builds two
# tokenizers versions (ours pinned to 0.22, candle's 0.23), and on one with an unused
# dependency; and passes on a clean one. Temp workspaces start from this repository's
# Cargo.lock, so resolving them fetches little or nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail() { echo "check-deps-test: FAIL: $*" >&2; exit 1; }

# workspace NAME DEPS LIB_RS: a one-crate workspace with these [dependencies] and this lib.rs.
workspace() {
  local ws="$TMP/$1"
  mkdir -p "$ws/c/src"
  cp "$ROOT/Cargo.lock" "$ws/"
  printf '[workspace]\nresolver = "2"\nmembers = ["c"]\n' > "$ws/Cargo.toml"
  printf '[package]\nname = "c"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n%s\n' \
    "$2" > "$ws/c/Cargo.toml"
  printf '%s\n' "$3" > "$ws/c/src/lib.rs"
  echo "$ws"
}

# expect NAME WANT_STATUS NEEDLE WS: run the check, compare exit status, look for NEEDLE.
expect() {
  local status=0
  bash "$ROOT/scripts/check-deps.sh" "$4" > "$TMP/$1.out" 2>&1 || status=$?
  [ "$status" -eq "$2" ] || { cat "$TMP/$1.out" >&2; fail "$1: exit $status, want $2"; }
  grep -q -- "$3" "$TMP/$1.out" || { cat "$TMP/$1.out" >&2; fail "$1: no '$3' in the output"; }
  echo "check-deps-test: $1 ok (exit $status)" >&2
}

clean=$(workspace clean 'candle-core = "0.11"' 'pub use candle_core::Tensor;')
expect clean 0 "check-deps: ok" "$clean"

dup=$(workspace dup 'candle-core = "0.11"
tokenizers = { version = "=0.22.2", default-features = false, features = ["onig"] }' \
  'pub use candle_core::Tensor;
pub use tokenizers::Tokenizer;')
expect dup 1 "two or more versions of tokenizers" "$dup"

unused=$(workspace unused 'candle-core = "0.11"
anyhow = "1"' 'pub use candle_core::Tensor;')
expect unused 1 "anyhow" "$unused"
