#!/usr/bin/env bash
# Every relation method through the trainer's own CLI on the full digits preset (no
# shortened recipe): `python -m crkd run --benchmark digits --set discover.relation=NAME`,
# seed 0, one thread per run, two runs at a time. Prints each run's wall time and final
# novel/train/acc, test new/acc and known/test/acc.
set -euo pipefail
OUT=${OUT:-out/digits_methods}
PY=${PY:-.venv/bin/python}
SEED=${SEED:-0}
METHODS=${METHODS:-"uno none crkd crkd-code refilled crcd rkd sp pkt"}
mkdir -p "$OUT"
run() {
  local m=$1 s
  s=$(date +%s)
  OMP_NUM_THREADS=1 $PY -m crkd run --benchmark digits --set discover.relation="$m" --seed "$SEED" \
    --device cpu --quiet --out "$OUT/$m" > "$OUT/$m.log" 2>&1
  echo "$m $(( $(date +%s) - s ))" > "$OUT/$m.seconds"
}
set -- $METHODS
while [ $# -gt 0 ]; do
  run "$1" & a=$!
  if [ $# -gt 1 ]; then run "$2" & b=$!; wait $b; shift; fi
  wait $a; shift
done
$PY - "$OUT" $METHODS <<'PY'
import json, sys
out, methods = sys.argv[1], sys.argv[2:]
print(f"{'method':10s} {'wall s':>7s} {'novel/train/acc':>16s} {'test/new/acc':>13s} {'known/test/acc':>15s}")
for m in methods:
    r = json.load(open(f"{out}/{m}/metrics.json"))
    s = open(f"{out}/{m}.seconds").read().split()[1]
    print(f"{m:10s} {s:>7s} {r['novel/train/acc']:16.3f} {r['test/new/acc']:13.3f} {r['known/test/acc']:15.3f}")
PY
