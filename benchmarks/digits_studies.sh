#!/usr/bin/env bash
# Proxy against novel objective on digits (the CPU-sized stand-in for benchmarks/cpu_campaign.sh's
# CIFAR studies): two studies of equal budget over rkd_weights, TRIALS trials each (default 12),
# no early stopping (grace = max epochs, so every trial has a proxy score and a transfer run),
# top 1 confirmed on 3 fresh seeds against the paper defaults and uno. With one TPE seed, both
# studies draw the same first 10 configurations (TPE's random start-up); the novel study's
# trials are then the proxy study's transfer runs, replayed from the run cache.
set -euo pipefail
STORE=${STORE:-runs-campaign}
PY=${PY:-.venv/bin/python}
TRIALS=${TRIALS:-12}
for objective in novel proxy; do
  name="digits-$objective"
  if [ -f "$STORE/$name/study.yaml" ]; then "$PY" harness/tune.py --resume --name "$name" --storage "$STORE"
  else "$PY" harness/tune.py --benchmark digits --name "$name" --storage "$STORE" --space rkd_weights \
         --objective "$objective" --num-samples "$TRIALS" --grace-period 60 --confirm-top 1 --confirm-seeds 3 \
         --cpus-per-trial 1 --max-concurrent 2; fi
done
