"""Command line: `python -m crkd run|pretrain|discover`.

Everything that can be wrong with the input (config, data files, teacher checkpoint)
is checked before training starts and reported as one line with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import PRESETS, Config, load_config
from .errors import ConfigError, CrkdError, NonFiniteLoss

KEY_METRICS = ("novel/train/acc", "test/all/acc", "known/test/acc")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--benchmark", help=f"benchmark preset: {', '.join(PRESETS)} "
                        "(default: the config file's, else digits)")
    common.add_argument("--config", metavar="FILE", help="YAML config (as written to OUT/config.yaml "
                        "or by harness/export.py); the preset fills what it leaves out")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set discover.beta=0.2 (repeatable; values are YAML)")
    common.add_argument("--seed", type=int, help="random seed (overrides the config's)")
    common.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default auto: "
                        "CUDA if visible)")
    common.add_argument("--data-root", help="CIFAR root folder, ImageNet/ImageFolder root or .npz file")
    common.add_argument("--download", action="store_true", help="let torchvision download CIFAR (needs network)")
    common.add_argument("--out", metavar="DIR", help="output folder (default out/<benchmark>-s<seed>)")
    common.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    common.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")

    p = argparse.ArgumentParser(prog="python -m crkd", allow_abbrev=False, description=(
        "Two-stage Cr-KD trainer for Novel Class Discovery: stage 1 supervised pretraining on the "
        "known classes, stage 2 discovery with swapped-prediction self-labeling and class-relation "
        "distillation from the frozen stage-1 model."))
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="both stages; writes OUT/metrics.json",
                   description="Run stage 1 then stage 2. Writes OUT/config.yaml, OUT/teacher.pt, "
                               "OUT/discover.pt, OUT/history.jsonl and OUT/metrics.json.")
    sub.add_parser("pretrain", parents=[common], help="stage 1 only; writes OUT/teacher.pt")
    d = sub.add_parser("discover", parents=[common], help="stage 2 from a stage-1 teacher")
    d.add_argument("--teacher", required=True, metavar="CKPT", help="teacher.pt written by pretrain/run")
    return p


def _config(args) -> Config:
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    if args.download:
        overrides.append("data.download=true")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device:
        overrides.append(f"device={args.device}")
    return load_config(args.config, args.benchmark, overrides)


class Recorder:
    """Per-epoch progress lines and OUT/history.jsonl (one JSON object a line, flushed)."""

    def __init__(self, out: str, quiet: bool, resume: bool):
        self.quiet = quiet
        self.file = open(os.path.join(out, "history.jsonl"), "a" if resume else "w")

    def __call__(self, stage: str, epochs: int, m: dict) -> None:
        self.file.write(json.dumps({"stage": stage, **m}) + "\n")
        self.file.flush()
        if not self.quiet:
            shown = "  ".join(f"{k} {m[k]:.4f}" for k in ("pretrain/loss", "loss/total", *KEY_METRICS) if k in m)
            print(f"{stage:9s} {m['epoch']:4d}/{epochs}  {shown}  {m['time/epoch_s']:.2f}s", flush=True)


def _pretrain(cfg, data, out, rec, resume: bool) -> str:
    from .stages import Pretrain
    teacher = os.path.join(out, "teacher.pt")
    if resume and os.path.exists(teacher):
        print(f"stage 1: reusing {teacher}", flush=True)
        return teacher
    stage = Pretrain(cfg, data)
    ckpt = os.path.join(out, "pretrain.pt")
    if resume and os.path.exists(ckpt):
        stage.load(ckpt)
    for m in stage:
        rec("pretrain", stage.sc.epochs, m)
        stage.save(ckpt)
    stage.save_teacher(teacher)
    os.remove(ckpt)
    return teacher


def _discover(cfg, data, teacher, out, rec, resume: bool) -> dict:
    from .stages import Discover
    ckpt = os.path.join(out, "discover.pt")
    if resume and os.path.exists(ckpt):
        stage = Discover.from_checkpoint(ckpt, data)
    else:
        stage = Discover(cfg, teacher, data)
    for m in stage:
        rec("discover", stage.sc.epochs, m)
        stage.save(ckpt)
    return stage.history[-1]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args)
        from .data import load_data
        data = load_data(cfg.data)
        if args.command == "discover":
            from .stages.common import load_checkpoint
            load_checkpoint(args.teacher)  # fail now, not after the data is on the device
        out = args.out or os.path.join("out", f"{cfg.data.benchmark}-s{cfg.seed}")
        if os.path.exists(out) and not os.path.isdir(out):
            raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out} cannot be created ({e.strerror})") from None
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())
    except CrkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.threads:  # part of what a result depends on bit for bit (exported configs record it)
        import torch
        torch.set_num_threads(cfg.threads)
    rec = Recorder(out, args.quiet, args.resume)
    start = time.perf_counter()
    try:
        if args.command == "pretrain":
            _pretrain(cfg, data, out, rec, args.resume)
            print(f"teacher: {os.path.join(out, 'teacher.pt')}")
            return 0
        teacher = args.teacher if args.command == "discover" else _pretrain(cfg, data, out, rec, args.resume)
        final = _discover(cfg, data, teacher, out, rec, args.resume)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except CrkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; checkpoints in {out} are complete: add --resume to continue", file=sys.stderr)
        return 130
    final = {**final, "time/total_s": time.perf_counter() - start, "seed": cfg.seed}
    path = os.path.join(out, "metrics.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(final, f, indent=2)
    os.replace(tmp, path)
    print("final: " + "  ".join(f"{k} {final[k]:.4f}" for k in KEY_METRICS) + f"  -> {path}")
    return 0
