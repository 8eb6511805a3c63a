#!/usr/bin/env python
"""Cost of each relation term: discovery step time and peak memory, relative to crkd.

    python benchmarks/methods_cost.py [--npz cifar10_12k.npz] [--rounds 2] [--device cpu]

Each method runs in its own process (peak memory is a per-process figure): one discovery
step of the CPU small-model recipe on the CIFAR-10 subset (batch 512, 2 large views),
timed over `--repeats` steps after a warm-up, median and spread. Rounds alternate the
methods, so a load that comes and goes weighs on all of them alike; ratios to crkd are
taken within a round. On CUDA the memory is torch's peak allocation, on the CPU the
process's peak resident set (model, data and all).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ["uno", "none", "crkd", "crkd-code", "refilled", "crcd", "rkd", "sp", "pkt"]
RECIPE = ["data.known=[0,1,2,3,4]", "model.arch=small", "model.widths=[32,64,128]", "model.stem_stride=2",
          "model.hidden_dim=512", "model.proj_dim=128", "aug.num_small=0", "pretrain.epochs=1"]


def one(method: str, npz: str, device: str, repeats: int, batch: int) -> dict:
    """In a child process: the step of one method."""
    import resource

    import torch

    import crkd
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    cfg = crkd.load_config(benchmark="npz", overrides=[f"data.root={npz}", f"device={device}",
                                                       f"discover.relation={method}", *RECIPE])
    data = crkd.load_data(cfg.data)
    pre = crkd.Pretrain(cfg, data)
    stage = crkd.Discover(cfg, pre.teacher_checkpoint(), data)
    x, idx = next(stage.images.batches(batch, shuffle=True, drop_last=True))
    sync = (lambda: torch.cuda.synchronize()) if stage.device.type == "cuda" else (lambda: None)
    for _ in range(3):
        stage.step(x, idx, 0)
    sync()
    if stage.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        stage.step(x, idx, 0)
        sync()
        times.append(time.perf_counter() - start)
    mem = (torch.cuda.max_memory_allocated() if stage.device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": method, "step_s": statistics.median(times), "sd_s": statistics.pstdev(times),
            "peak_mb": mem / 2**20, "batch": int(x.shape[0])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--npz", default=os.environ.get("CRKD_CIFAR_NPZ", "cifar10_12k.npz"),
                   help="the CIFAR-10 subset (benchmarks/make_cifar_subset.py builds it; default $CRKD_CIFAR_NPZ)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    npz = os.path.abspath(args.npz)
    if args.child:
        print(json.dumps(one(args.child, npz, args.device, args.repeats, args.batch)))
        return 0
    methods = args.methods.split(",")
    rounds = []
    for r in range(args.rounds):
        order = methods if r % 2 == 0 else methods[::-1]
        res = {}
        for m in order:
            out = subprocess.run([sys.executable, __file__, "--child", m, "--npz", npz, "--device", args.device,
                                  "--repeats", str(args.repeats), "--batch", str(args.batch)],
                                 capture_output=True, text=True, check=True)
            res[m] = json.loads(out.stdout.strip().splitlines()[-1])
        rounds.append(res)
    print(f"device {args.device}, batch {args.batch}, {args.repeats} steps after 3 warm-up, {args.rounds} rounds; "
          f"ratios to crkd within a round, then the median over rounds")
    print(f"{'method':10s} {'step ms':>10s} {'x crkd':>7s} {'peak MB':>9s} {'x crkd':>7s}")
    rows = []
    for m in methods:
        step = statistics.median(r[m]["step_s"] for r in rounds) * 1e3
        t_ratio = statistics.median(r[m]["step_s"] / r["crkd"]["step_s"] for r in rounds)
        mem = statistics.median(r[m]["peak_mb"] for r in rounds)
        m_ratio = statistics.median(r[m]["peak_mb"] / r["crkd"]["peak_mb"] for r in rounds)
        rows.append({"method": m, "step_ms": step, "time_vs_crkd": t_ratio, "peak_mb": mem, "mem_vs_crkd": m_ratio})
        print(f"{m:10s} {step:10.1f} {t_ratio:7.2f} {mem:9.0f} {m_ratio:7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds, "summary": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
