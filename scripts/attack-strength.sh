#!/usr/bin/env bash
# Evidence for the ablation attack at partial strength (issue: the attack must not erase a
# defense's additions; the seeds' setting is a weakened refusal). Needs the vectors the demo
# fits (out/demo/vectors; run scripts/demo.sh first) and a built earguard.
#
# On N harmful_val + N harmless_val prompts (never used in fitting), text-only, greedy:
#   1. the defense table: none / prompt / sarsteer / ablate / ablate+sarsteer / ablate +
#      SARSteer refitted with λ = 0 (α 0.2);
#   2. a sweep of SARSteer's α under the half-strength attack, to pick the best α;
#   3. ASR against the attack strength s ∈ {0, 0.25, 0.5, 0.75, 1} for none, SARSteer at
#      SPEC defaults (α 0.1) and at the sweep's pick (lowest ASR within 10 ORR points of the
#      attacked baseline; or the α given as the first argument).
# Results: out/strength/{table,sweep,curve}/<run>/report.json; a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${EARGUARD_BIN:-${CARGO_TARGET_DIR:-target}/release/earguard}"
DATA="${EARGUARD_DATA:-../shared/data}"
N="${N:-20}"
TOKENS="${TOKENS:-32}"
ALPHA="${1:-}"
VEC="${VEC:-out/demo/vectors}"
OUT="${OUT:-out/strength}"
RD="$VEC/refusal-direction"; SAR="$VEC/sarsteer"; SAR0="$VEC/sarsteer-lambda0"
for d in "$RD" "$SAR" "$SAR0"; do
  [ -f "$d/meta.json" ] || { echo "missing $d: run scripts/demo.sh first" >&2; exit 1; }
done
common=(--data "$DATA/harmful_val.jsonl" --data "$DATA/harmless_val.jsonl" --limit "$N"
        --max-tokens "$TOKENS" --judge substring --judge refusal-score)
run() { # NAME SPEC
  "$BIN" eval "${common[@]}" --defense "$2" -o "$OUT/$1" >/dev/null
  python3 - "$OUT/$1/report.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pct = lambda k: "–" if r.get(k) is None else f"{100 * r[k]:.0f} %"
d = (r.get("degenerate_rate") or {}).get("value")
print(f"{sys.argv[2]:<72} ASR {pct('asr'):>6}  ORR {pct('orr'):>6}  "
      f"degenerate {'–' if d is None else f'{100 * d:.0f} %'}")
PY
}
echo "== defense table (n = $N + $N, $TOKENS tokens, substring judge)"
run table/none none
run table/prompt prompt
run table/sarsteer "sarsteer=$SAR"
run table/ablate "ablate=$RD"
run table/ablate+sarsteer "ablate=$RD+sarsteer=$SAR"
run table/ablate+sarsteer-lambda0 "ablate=$RD+sarsteer=$SAR0:alpha=0.2"
echo "== sweep of α under the half-strength attack"
"$BIN" sweep "${common[@]}" --vector "$SAR" --alphas 0.1,0.2,0.3,0.5 \
  --under "ablate=$RD:strength=0.5" --max-orr 10 -o "$OUT/sweep" | tail -n 12
if [ -z "$ALPHA" ]; then
  ALPHA=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["picked"]; print(p.split("=")[1] if p else "")' "$OUT/sweep/sweep.json")
  [ -n "$ALPHA" ] || { echo "the sweep picked no α within the ORR limit; pass one" >&2; exit 1; }
fi
echo "== ASR against attack strength (SARSteer α 0.1 and α $ALPHA)"
# s = 0 and s = 1 of the first two curves are the table's none/sarsteer and ablate runs.
for s in 0.25 0.5 0.75; do
  attack="ablate=$RD:strength=$s"
  run "curve/none/s$s" "$attack"
  run "curve/sarsteer-a0.1/s$s" "$attack+sarsteer=$SAR"
done
run "curve/sarsteer-a$ALPHA/s0" "sarsteer=$SAR:alpha=$ALPHA"
for s in 0.25 0.5 0.75; do
  run "curve/sarsteer-a$ALPHA/s$s" "ablate=$RD:strength=$s+sarsteer=$SAR:alpha=$ALPHA"
done
run "curve/sarsteer-a$ALPHA/s1" "ablate=$RD+sarsteer=$SAR:alpha=$ALPHA"
