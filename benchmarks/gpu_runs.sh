#!/usr/bin/env bash
# Second device call: Cr-KD vs the no-term ablation (none) on one shared teacher, then 1 vs 4 packed processes.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
D=(--benchmark npz --data-root .devcarry/cifar10_12k.npz --set "data.known=[0,1,2,3,4]" --device cuda --quiet)
s=$(date +%s%N)
python3 -m crkd pretrain "${D[@]}" --out /tmp/t --set pretrain.epochs=40 --set pretrain.warmup=5 | tail -1
echo "pretrain 40 epochs: $(( ($(date +%s%N) - s) / 1000000 )) ms" | tee "$OUT/runs.txt"
for r in crkd none; do
  python3 -m crkd discover "${D[@]}" --teacher /tmp/t/teacher.pt --out /tmp/d$r --set discover.epochs=40 \
    --set discover.warmup=5 --set discover.relation=$r | tail -1 | tee -a "$OUT/runs.txt"
  cp /tmp/d$r/metrics.json "$OUT/discover_$r.json"
done
one() { python3 -m crkd discover "${D[@]}" --teacher /tmp/t/teacher.pt --out /tmp/p$1 \
  --set discover.epochs=6 --set discover.eval_every=6 > /dev/null 2>&1; }
s=$(date +%s%N); one 1; e=$(date +%s%N)
echo "1 process: 6 epochs in $(( (e - s) / 1000000 )) ms" | tee "$OUT/pack.txt"
s=$(date +%s%N); for i in 2 3 4 5; do one $i & done; wait; e=$(date +%s%N)
echo "4 processes: 24 epochs in $(( (e - s) / 1000000 )) ms" | tee -a "$OUT/pack.txt"
for i in 1 2 3 4 5; do python3 -c "import json,sys; h=[json.loads(l) for l in open('/tmp/p$i/history.jsonl')]; print('p$i epoch s', [round(x['time/epoch_s'],2) for x in h])"; done | tee -a "$OUT/pack.txt"
