#!/usr/bin/env python
"""Build the 12,000-image CIFAR-10 subset the CPU benchmarks of docs/benchmarks.md use, as an
.npz for `--benchmark npz`: the first 1,000 training and 200 test images of each class, in
the original order, then shuffled (seed 0).

    python benchmarks/make_cifar_subset.py --root ~/data --out cifar10_12k.npz [--download]

Arrays: x_train (10000, 32, 32, 3) uint8, y_train (10000,), x_test (2000, 32, 32, 3),
y_test (2000,), class_names (10,). The figures in docs/benchmarks.md were measured on a copy
taken from a public JPEG version of CIFAR-10 (pixels about 6/255 off the originals), so
accuracies from this exact file differ slightly. Benchmarks and tests find the file through
the CRKD_CIFAR_NPZ environment variable.
"""
from __future__ import annotations

import argparse

import numpy as np


def take(x, y, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    order = rng.permutation(len(keep))
    return x[keep][order], y[keep][order]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder holding (or to receive) cifar-10-batches-py/")
    p.add_argument("--out", required=True)
    p.add_argument("--download", action="store_true")
    args = p.parse_args()
    from torchvision.datasets import CIFAR10
    tr, te = CIFAR10(args.root, train=True, download=args.download), CIFAR10(args.root, train=False, download=args.download)
    rng = np.random.default_rng(0)
    x_train, y_train = take(tr.data, np.asarray(tr.targets), 1000, rng)
    x_test, y_test = take(te.data, np.asarray(te.targets), 200, rng)
    np.savez(args.out, x_train=x_train, y_train=y_train.astype(np.int64), x_test=x_test,
             y_test=y_test.astype(np.int64), class_names=np.array(tr.classes))
    print(f"wrote {args.out}: {len(x_train)} train, {len(x_test)} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
