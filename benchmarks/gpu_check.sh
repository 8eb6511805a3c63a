#!/usr/bin/env bash
# One device call: GPU figures for docs/benchmarks.md. Needs the shared CIFAR-10
# subset at $NPZ. Writes logs and JSON to $OUT (or ./gpu-out).
set -uo pipefail
NPZ=${NPZ:-.devcarry/cifar10_12k.npz}
OUT=${OUT:-gpu-out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"
DATA=(--benchmark npz --data-root "$NPZ" --set "data.known=[0,1,2,3,4]")

echo "== (a)+(b) throughput, CIFAR ResNet-18, bf16, batch 512 =="
timeout 150 python3 -m crkd.bench "${DATA[@]}" --device cuda --repeats 20 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"

echo "== two-stage run on the CIFAR-10 subset: Cr-KD (beta 0.1) =="
timeout 200 python3 -m crkd run "${DATA[@]}" --device cuda --out "$OUT/run_crkd" --quiet \
  --set pretrain.epochs=40 --set discover.epochs=40 --set discover.warmup=5 --set pretrain.warmup=5 2>&1 | tail -3 | tee "$OUT/run_crkd.log"

echo "== packing: 1 vs 4 concurrent discovery processes on one GPU (what --gpus-per-trial 0.25 does) =="
T=$OUT/run_crkd/teacher.pt
if [ ! -f "$T" ]; then
  python3 -m crkd pretrain "${DATA[@]}" --device cuda --out "$OUT/run_crkd" --quiet --set pretrain.epochs=5 > /dev/null 2>&1
fi
one() { python3 -m crkd discover "${DATA[@]}" --device cuda --teacher "$T" --quiet --out "$OUT/pack_$1" \
  --set discover.epochs=6 --set discover.eval_every=6 > "$OUT/pack_$1.log" 2>&1; }
if [ -f "$T" ]; then
  s=$(date +%s%N); one 1; e=$(date +%s%N)
  echo "1 process: 6 epochs in $(( (e - s) / 1000000 )) ms" | tee "$OUT/pack.txt"
  s=$(date +%s%N); for i in 2 3 4 5; do one $i & done; wait; e=$(date +%s%N)
  echo "4 processes: 24 epochs in $(( (e - s) / 1000000 )) ms" | tee -a "$OUT/pack.txt"
  grep -h time/epoch_s "$OUT"/pack_*/history.jsonl | python3 -c "import sys, json; [print(json.loads(l)['time/epoch_s']) for l in sys.stdin]" | tr '\n' ' ' >> "$OUT/pack.txt"
fi
rm -rf "$OUT"/run_crkd/*.pt "$OUT"/pack_*
