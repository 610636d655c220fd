#!/usr/bin/env bash
# Install the system packages earguard's scripts and tests need (idempotent; Debian).
set -euo pipefail
need=()
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
# A venv for Piper's program (scripts/fetch-models.sh piper-joe).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# Offline speech for audio prompt sets (earguard tts) and the audio tests.
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
# Unused-dependency check of scripts/check-deps.sh, pinned (built from the crate registry).
MACHETE_VERSION=0.9.2
if ! cargo machete --version 2>/dev/null | grep -qF "$MACHETE_VERSION"; then
  cargo install --locked cargo-machete --version "$MACHETE_VERSION"
fi
