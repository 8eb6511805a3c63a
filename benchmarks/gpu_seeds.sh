#!/usr/bin/env bash
# Third device call: Cr-KD vs the no-term ablation (none) paired by seed (seeds 1, 2) on the CIFAR-10 subset, 40 + 40 epochs.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
D=(--benchmark npz --data-root .devcarry/cifar10_12k.npz --set "data.known=[0,1,2,3,4]" --device cuda --quiet)
for seed in 1 2; do
  python3 -m crkd pretrain "${D[@]}" --seed $seed --out /tmp/t$seed --set pretrain.epochs=40 --set pretrain.warmup=5 > /dev/null
  for r in crkd none; do
    python3 -m crkd discover "${D[@]}" --seed $seed --teacher /tmp/t$seed/teacher.pt --out /tmp/d$seed-$r \
      --set discover.epochs=40 --set discover.warmup=5 --set discover.relation=$r | tail -1 | sed "s/^/seed $seed $r: /" | tee -a "$OUT/seeds.txt"
  done
done
