#!/usr/bin/env python
"""What the harness costs: N identical short trials through harness/tune.py (2 at a time,
1 CPU each) against the same trials one after another in a plain process.

    python benchmarks/bench_harness.py                         # CPU: digits, 8 trials x 5 epochs
    python benchmarks/bench_harness.py --trials 4 --epochs 3 --tiny
    python benchmarks/bench_harness.py --gpu-packing --benchmark npz --data-root cifar10_12k.npz \\
        --set "data.known=[0,1,2,3,4]"                        # GPU: 1 trial vs 4 packed (0.25 GPU)

Prints, for the CPU comparison:
  trial-epochs/s    of the plain loop (1 thread) and of the harness (Tune loop only, and
                    from the command's start, with Ray start-up and the MLflow store)
  parallel eff.     plain-loop time / (2 x harness time): 1.0 = two cores fully used
  lost per result   (2 x harness time - plain time) / results, in core-seconds: what
                    Ray, the checkpoints and MLflow cost per reported epoch; split into
                    Ray + checkpoint inside the trial (time_this_iter_s - time/epoch_s)
                    and the driver's tracking time per event on Tune's loop
                    (tracking/append_ms_per_event of the parent run)
Stage 1 is trained once beforehand and shared (the harness finds it in its cache),
so both sides time discovery only. The trials use the preset's values (a one-value
`choice` space), ASHA never stops them (grace period = epochs). Repeats report
mean and spread. Record the machine, commit and command with the figures.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["model.widths=[8,16,16]", "model.hidden_dim=32", "model.proj_dim=16"]
SPACE = ("description: the preset's beta only, so every trial is the same run\n"
         "params:\n  beta: {field: discover.beta, dist: choice, values: [%s]}\n")


def config(args):
    import crkd
    sets = (TINY if args.tiny else []) + args.sets + [f"discover.epochs={args.epochs}"]
    if args.data_root:
        sets.append(f"data.root={json.dumps(os.path.abspath(args.data_root))}")
    return crkd.load_config(benchmark=args.benchmark, overrides=sets), sets


def plain_loop(args, cfg, teacher: str, trials: int) -> dict:
    """Trials one after another in this process, one thread, no Ray, no tracking."""
    import torch

    import crkd
    torch.set_num_threads(1)
    data = crkd.load_data(cfg.data)
    list(crkd.Discover(cfg, teacher, data))  # warm-up: first-call costs stay out of the figure
    start = time.perf_counter()
    epoch_times = []
    for _ in range(trials):
        for m in crkd.Discover(cfg, teacher, data):
            epoch_times.append(m["time/epoch_s"])
    return {"seconds": time.perf_counter() - start, "epoch_s": statistics.median(epoch_times)}


def plain_processes(args, teacher: str, procs: int) -> dict:
    """The trials split over `procs` plain processes started together (no Ray): what the
    machine itself gives for parallel trials. Each process times its own loop."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", teacher, "--benchmark", args.benchmark,
           "--epochs", str(args.epochs), "--trials", str(args.trials // procs)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += [x for s in args.sets for x in ("--set", s)]
    cmd += ["--data-root", args.data_root] if args.data_root else []
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in ps]
    return {"seconds": max(r["seconds"] for r in results), "epoch_s": statistics.median(r["epoch_s"] for r in results)}


def harness(args, storage: str, name: str, space: str, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "harness", "tune.py"), "--storage", storage, "--name", name,
           "--benchmark", args.benchmark, "--space", space, "--num-samples", str(args.trials),
           "--max-epochs", str(args.epochs), "--grace-period", str(args.epochs), "--seed", "0",
           "--objective", "novel", "--confirm-seeds", "0", *extra]  # the plain loop's task, search only
    for s in (TINY if args.tiny else []) + args.sets:
        cmd += ["--set", s]
    if args.data_root:
        cmd += ["--set", f"data.root={json.dumps(os.path.abspath(args.data_root))}"]
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=storage)
    total = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"harness run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    # Inside the trials: Tune's time per result minus crkd's own epoch time; the Tune loop: from
    # the first trial's start to the last result (Tune's timestamps are whole seconds).
    ray_s, starts, ends = [], [], []
    for f in glob.glob(os.path.join(storage, name, "search", "*", "result.json")):
        with open(f) as fh:
            for row in map(json.loads, fh):
                ray_s.append(row["time_this_iter_s"] - row["time/epoch_s"])
                starts.append(row["timestamp"] - row["time_total_s"])
                ends.append(row["timestamp"])
    fit = max(ends) - min(starts)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                "tags.`crkd.role` = 'study'")[0]
    # From the first epoch's start to the last result (MLflow's millisecond timestamps):
    # the Tune loop without the workers' start-up.
    first, last = float("inf"), 0.0
    for run in client.search_runs([parent.info.experiment_id], "tags.`crkd.role` = 'trial'"):
        for m in client.get_metric_history(run.info.run_id, "time/epoch_s"):
            first, last = min(first, m.timestamp / 1000 - m.value), max(last, m.timestamp / 1000)
    return {"fit_s": fit, "total_s": total, "results": len(ray_s), "steady_s": last - first,
            "trial_overhead_ms": 1000 * statistics.mean(ray_s) if ray_s else float("nan"),
            "mlflow_ms": parent.data.metrics.get("tracking/append_ms_per_event", float("nan"))}


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f}" + (f" +- {statistics.pstdev(xs):.2f}" if len(xs) > 1 else "")


def cpu(args) -> dict:
    from harness.stage1 import Stage1Cache
    cfg, _ = config(args)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = os.path.join(tmp, "runs")
        teacher, _ = Stage1Cache(os.path.join(storage, "stage1_cache")).teacher(cfg, log=lambda m: None)
        space = os.path.join(tmp, "same.yaml")
        with open(space, "w") as f:
            f.write(SPACE % cfg.discover.beta)
        plain, par, runs = [], [], []
        for r in range(args.repeats):
            plain.append(plain_processes(args, teacher, 1))
            par.append(plain_processes(args, teacher, 2))
            runs.append(harness(args, storage, f"bench{r}", space,
                                ["--max-concurrent", "2", "--cpus-per-trial", "1"]))
            print(f"repeat {r + 1}: plain {plain[-1]['seconds']:.1f} s, 2 plain processes {par[-1]['seconds']:.1f} s, "
                  f"harness {runs[-1]['fit_s']:.1f} s (command {runs[-1]['total_s']:.1f} s)", flush=True)
    n = args.trials * args.epochs
    t_plain = [p["seconds"] for p in plain]
    t_par = [p["seconds"] for p in par]
    t_fit = [r["fit_s"] for r in runs]
    t_total = [r["total_s"] for r in runs]
    t_steady = [r["steady_s"] for r in runs]
    out = {
        "trial_epochs": n,
        "plain_epochs_per_s": [n / t for t in t_plain],
        "two_plain_processes_epochs_per_s": [n / t for t in t_par],
        "machine_parallel_efficiency": [tp / (2 * tq) for tp, tq in zip(t_plain, t_par)],
        "harness_epochs_per_s": [n / t for t in t_fit],
        "harness_epochs_per_s_with_startup": [n / t for t in t_total],
        "parallel_efficiency": [tp / (2 * tf) for tp, tf in zip(t_plain, t_fit)],
        "parallel_efficiency_with_startup": [tp / (2 * tt) for tp, tt in zip(t_plain, t_total)],
        "parallel_efficiency_steady": [tp / (2 * ts) for tp, ts in zip(t_plain, t_steady)],
        "harness_vs_two_plain_processes": [tq / tf for tq, tf in zip(t_par, t_fit)],
        "lost_per_result_core_ms": [1000 * (2 * tf - tp) / n for tp, tf in zip(t_plain, t_fit)],
        "trial_overhead_ms": [r["trial_overhead_ms"] for r in runs],
        "mlflow_driver_ms": [r["mlflow_ms"] for r in runs],
        "epoch_s": [p["epoch_s"] for p in plain],
        "epoch_s_two_processes": [p["epoch_s"] for p in par],
    }
    print(f"\n{args.trials} trials x {args.epochs} epochs of {args.benchmark}"
          f"{' (tiny model)' if args.tiny else ''}, median epoch {spread(out['epoch_s'])} s on one thread")
    rows = [("plain loop, 1 thread: trial-epochs/s", out["plain_epochs_per_s"]),
            ("2 plain processes, 1 thread each: trial-epochs/s", out["two_plain_processes_epochs_per_s"]),
            ("  machine's parallel efficiency (no Ray)", out["machine_parallel_efficiency"]),
            ("  median epoch in 2 plain processes, s", out["epoch_s_two_processes"]),
            ("harness, 2 x 1 CPU: trial-epochs/s (Tune loop)", out["harness_epochs_per_s"]),
            ("harness: trial-epochs/s (whole command)", out["harness_epochs_per_s_with_startup"]),
            ("parallel efficiency (first epoch to last result)", out["parallel_efficiency_steady"]),
            ("parallel efficiency (Tune loop)", out["parallel_efficiency"]),
            ("parallel efficiency (whole command)", out["parallel_efficiency_with_startup"]),
            ("harness / 2 plain processes (Tune loop)", out["harness_vs_two_plain_processes"]),
            ("lost per result, core-ms", out["lost_per_result_core_ms"]),
            ("  of which in the trial: report + checkpoint, ms", out["trial_overhead_ms"]),
            ("  of which in the driver: MLflow log_batch, ms", out["mlflow_driver_ms"])]
    for label, xs in rows:
        print(f"{label:<52} {spread(xs)}")
    return out


def gpu_packing(args) -> dict:
    """1 trial on a whole GPU against 4 trials packed on it (--gpus-per-trial 0.25)."""
    import torch
    if not torch.cuda.is_available():
        sys.exit("--gpu-packing needs a CUDA GPU")
    from harness.stage1 import Stage1Cache
    cfg, _ = config(args)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = os.path.join(tmp, "runs")
        Stage1Cache(os.path.join(storage, "stage1_cache")).teacher(cfg, log=lambda m: None)
        space = os.path.join(tmp, "same.yaml")
        with open(space, "w") as f:
            f.write(SPACE % cfg.discover.beta)
        for label, gpus, conc in (("1 trial per GPU", "1", "1"), ("4 trials per GPU", "0.25", "4")):
            r = harness(args, storage, f"pack{gpus.replace('.', '')}", space,
                        ["--gpus-per-trial", gpus, "--max-concurrent", conc, "--cpus-per-trial", "1"])
            r["epochs_per_s"] = args.trials * args.epochs / r["fit_s"]
            out[label] = r
            print(f"{label}: {r['epochs_per_s']:.3f} trial-epochs/s ({r['fit_s']:.1f} s Tune loop, "
                  f"{r['total_s']:.1f} s command)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny model: overheads dominate")
    p.add_argument("--gpu-packing", action="store_true", help="1 vs 4 trials on one GPU instead")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--worker", metavar="TEACHER", help=argparse.SUPPRESS)  # one plain process
    args = p.parse_args()
    if args.worker:
        print(json.dumps(plain_loop(args, config(args)[0], args.worker, args.trials)))
        return
    import torch
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "none"
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "commit": commit,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "command": " ".join(sys.argv)}
    print(json.dumps(machine))
    figures = gpu_packing(args) if args.gpu_packing else cpu(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "figures": figures}, f, indent=1)


if __name__ == "__main__":
    main()
