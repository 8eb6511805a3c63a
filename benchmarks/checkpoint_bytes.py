#!/usr/bin/env python
"""Bytes a trial writes per discovery epoch: its checkpoint with the teacher inside (as
before) and without it (the harness's checkpoint refers to the stage-1 cache by key and
sha256), for the digits preset and the CIFAR ResNet-18 recipe.

    python benchmarks/checkpoint_bytes.py [--npz cifar10_12k.npz]   (default: $CRKD_CIFAR_NPZ)
"""
from __future__ import annotations

import argparse
import os
import tempfile

import crkd


def sizes(cfg: crkd.Config) -> tuple[int, int]:
    data = crkd.load_data(cfg.data)
    teacher = crkd.Pretrain(cfg, data).teacher_checkpoint()  # untrained: the size is what counts
    run = crkd.Discover(cfg, teacher, data)
    x, idx = next(run.images.batches(32, shuffle=True, drop_last=True))
    run.step(x, idx, 0)  # one update: SGD's momentum buffers exist from then on, as in every saved epoch
    with tempfile.TemporaryDirectory() as d:
        run.save(os.path.join(d, "with.pt"), teacher=True)
        run.save(os.path.join(d, "without.pt"), teacher=False)
        return os.path.getsize(os.path.join(d, "with.pt")), os.path.getsize(os.path.join(d, "without.pt"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--npz", default=os.environ.get("CRKD_CIFAR_NPZ", "cifar10_12k.npz"),
                   help="the CIFAR-10 subset (benchmarks/make_cifar_subset.py builds it)")
    args = p.parse_args()
    cases = {"digits preset (small ResNet, over-clustering heads)": crkd.load_config(benchmark="digits")}
    if os.path.exists(args.npz):
        cases["CIFAR ResNet-18, 4 heads (cifar10 recipe on the shared subset)"] = crkd.load_config(
            benchmark="npz", overrides=[f"data.root={os.path.abspath(args.npz)}", "data.known=[0,1,2,3,4]",
                                        "device=cpu"])
    print(f"{'case':66s} {'with teacher':>14s} {'without':>12s} {'saved':>7s}")
    for name, cfg in cases.items():
        a, b = sizes(cfg)
        print(f"{name:66s} {a / 2**20:11.2f} MB {b / 2**20:9.2f} MB {1 - b / a:6.0%}")
    print("per trial-epoch: these sizes with --checkpoint-every 1; divide by N with --checkpoint-every N")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
