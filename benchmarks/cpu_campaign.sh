#!/usr/bin/env bash
# CPU measurements on the shared CIFAR-10 subset for docs/benchmarks.md, with the small-model
# recipe (15 + 30 epochs, small ResNet 32/64/128, no multi-crop), one thread per run, two at a time.
# EPOCHS, WARMUP, TRIALS and TAG (a suffix of the study names) shorten it for a smaller budget:
#   1. every method over 3 seeds, paired against uno (harness/benchmark.py);
#   2. a novel-objective and a proxy-objective study of equal budget over rkd_weights: 6 trials
#      each (TRIALS), no early stopping (grace = max epochs), top 1 confirmed on 3 fresh seeds.
# With one TPE seed and fewer trials than TPE's 10 random start-up draws, both studies try the
# same 6 configurations: the novel study's trials are the proxy study's transfer runs, and the
# baselines are the benchmark's runs, replayed from the run cache (same configuration, seed, code).
set -euo pipefail
NPZ=$(realpath "${CRKD_CIFAR_NPZ:?set CRKD_CIFAR_NPZ to the CIFAR-10 subset (benchmarks/make_cifar_subset.py)}")
STORE=${STORE:-runs-campaign}
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-30}; WARMUP=${WARMUP:-3}; TRIALS=${TRIALS:-6}; TAG=${TAG:-}
RECIPE=(--benchmark npz --set "data.root=$NPZ" --set "data.known=[0,1,2,3,4]" --set model.arch=small
        --set "model.widths=[32,64,128]" --set model.stem_stride=2 --set model.hidden_dim=512
        --set model.proj_dim=128 --set aug.num_small=0 --set pretrain.epochs=15 --set pretrain.warmup=2
        --set discover.epochs=$EPOCHS --set discover.warmup=$WARMUP --storage "$STORE" --cpus-per-trial 1 --max-concurrent 2)
# run SCRIPT NAME ARGS...: start the study, or resume it if an earlier call was interrupted
run() { local script=$1 name=$2; shift 2
        if [ -f "$STORE/$name/study.yaml" ]; then "$PY" "$script" --resume --name "$name" --storage "$STORE"
        else "$PY" "$script" "$@"; fi; }
run harness/benchmark.py "methods$TAG" "${RECIPE[@]}" --name "methods$TAG" --methods uno,none,crkd,crkd-code,refilled,crcd,rkd,sp,pkt --seeds 3
for objective in novel proxy; do
  run harness/tune.py "study-$objective$TAG" "${RECIPE[@]}" --name "study-$objective$TAG" --space rkd_weights \
    --objective "$objective" --num-samples "$TRIALS" --grace-period "$EPOCHS" --confirm-top 1 --confirm-seeds 3
done
