#!/usr/bin/env bash
# Dependency hygiene: fail when the dependency tree holds two versions of a crate that must be
# single (tokenizers, candle-*), or when a manifest declares a dependency its crate never uses
# (cargo machete, installed by scripts/install-deps.sh).
# Usage: scripts/check-deps.sh [WORKSPACE_DIR]   (default: this repository)
# Exit status: 0 clean, 1 a problem found (each one printed), 2 a tool missing or failing.
set -euo pipefail
DIR="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$DIR"
# Crates of which exactly one version may be built (an extended regex on the crate name).
SINGLE='^(tokenizers|candle-[a-z-]+)$'
status=0

command -v cargo >/dev/null 2>&1 || { echo "check-deps: cargo is required" >&2; exit 2; }
# Every edge kind (normal, build, dev), for this host: a duplicate there is built.
if ! tree="$(cargo tree --workspace --duplicates --depth 0 --prefix none --format '{p}')"; then
  echo "check-deps: cargo tree failed (above)" >&2
  exit 2
fi
dups="$(awk 'NF >= 2 { print $1, $2 }' <<< "$tree" | sort -u)"
while read -r name version; do
  [ -n "$name" ] || continue
  if [[ "$name" =~ $SINGLE ]]; then
    status=1
    echo "check-deps: two or more versions of $name; $version is pulled in by:" >&2
    cargo tree --workspace --invert "$name@${version#v}" --depth 3 >&2 || true
  fi
done <<< "$dups"

if ! command -v cargo-machete >/dev/null 2>&1; then
  echo "check-deps: cargo-machete is missing (run scripts/install-deps.sh)" >&2
  exit 2
fi
if ! cargo machete "$DIR" >&2; then
  status=1
  echo "check-deps: unused dependencies (above): remove them from the manifest, or list a" \
    "false positive under [package.metadata.cargo-machete] ignored" >&2
fi
[ "$status" -eq 0 ] && echo "check-deps: ok (one version of each of tokenizers, candle-*; no unused dependencies)" >&2
exit "$status"
