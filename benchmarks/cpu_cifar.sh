#!/usr/bin/env bash
# CPU: Cr-KD (beta 0.1) vs the same trainer without its term (discover.relation=none, no
# over-clustering heads: not the UNO baseline, which is discover.relation=uno) on the CIFAR-10 subset
# (classes 0-4 known) with the small ResNet, one shared stage-1 teacher.
set -euo pipefail
NPZ=${CRKD_CIFAR_NPZ:?set CRKD_CIFAR_NPZ to the CIFAR-10 subset (benchmarks/make_cifar_subset.py)}
OUT=${OUT:-out/cpu_cifar}
PY=${PY:-.venv/bin/python}
COMMON=(--benchmark npz --data-root "$NPZ" --set "data.known=[0,1,2,3,4]" --device cpu --quiet
        --set model.arch=small --set "model.widths=[32,64,128]" --set model.stem_stride=2
        --set model.hidden_dim=512 --set model.proj_dim=128 --set aug.num_small=0
        --set pretrain.epochs=15 --set pretrain.warmup=2 --set discover.epochs=30 --set discover.warmup=3)
s=$(date +%s); $PY -m crkd pretrain "${COMMON[@]}" --out "$OUT/teacher"; echo "stage 1: $(( $(date +%s) - s )) s"
for r in crkd none; do
  s=$(date +%s)
  $PY -m crkd discover "${COMMON[@]}" --teacher "$OUT/teacher/teacher.pt" --out "$OUT/$r" --set discover.relation=$r
  echo "stage 2 $r: $(( $(date +%s) - s )) s"
done
$PY - "$NPZ" <<'PY'
import sys, numpy as np
from sklearn.cluster import KMeans
from crkd.metrics import cluster_acc
z = np.load(sys.argv[1]); m = z["y_train"] >= 5
x = z["x_train"][m].reshape(int(m.sum()), -1).astype(np.float32) / 255
print("k-means raw pixels, novel train:", round(cluster_acc(z["y_train"][m], KMeans(5, n_init=10, random_state=0).fit_predict(x)), 3))
PY
