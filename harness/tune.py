#!/usr/bin/env python
"""Search the trainer's hyperparameters, confirm the winners on fresh seeds, write the report.

    python harness/tune.py --space rkd_weights            # digits on the CPU: about six minutes
    python harness/tune.py --smoke-test                   # a tiny study: checks the wiring in a minute
    python harness/tune.py --resume --name NAME           # continue wherever it stopped

One command, three phases (harness/phases.py): the search (Optuna TPE + ASHA; each
trial is the whole two-stage trainer, by default on a proxy task that hides some known
classes, so no novel label is read), the confirmation (the top configurations and the
baselines retrained on the real split with fresh seeds), and the report. This file
reads top to bottom: options, their validation, the study, the driver.
"""
from __future__ import annotations

import argparse
import sys

import crkd
from crkd.errors import ConfigError, CrkdError

from harness import Parser, cluster, settings, spaces, storage
from harness.driver import Driver, fail
from harness.settings import METRICS, OBJECTIVES, SMOKE, SettingsError, Study

# ---------------------------------------------------------------------------------------
# 1. Options
# ---------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description="Tune the trainer with Ray Tune, Optuna and ASHA, confirm the result on fresh "
                           "seeds, and write the report; tracked in MLflow.",
               epilog="Results: the report in <storage>/<name>/report/, harness/leaderboard.py, "
                      "harness/export.py, and the MLflow command printed at the end. Methods and protocols: "
                      "docs/methods.md and docs/verdicts.md.")
    settings.add_common(p)
    a = p.add_argument
    a("--space", help="search space: a name in search_spaces/ (rkd_weights, temperatures, sinkhorn, full, or "
                      "one per method: crkd, refilled, crcd, ...) or a YAML path (default rkd_weights)")
    a("--objective", choices=list(OBJECTIVES), help="proxy (default): tune on hidden known classes, no novel "
                                                    "label is read; novel: the papers' protocol (label leakage)")
    a("--proxy-folds", type=int, help="average the proxy objective over K disjoint sets of hidden classes (default 1)")
    a("--metric", help="what to optimise, a discovery metric (default novel/train/acc: of the proxy task's "
                       "hidden classes with --objective proxy)")
    a("--mode", choices=["min", "max"], help="default: max for accuracies, min for losses")
    a("--num-samples", type=int, help="trials in the search (digits 12, CIFAR 32, ImageNet 16)")
    a("--grace-period", type=int, help="ASHA: epochs before a trial can be stopped (default max epochs / 10)")
    a("--reduction-factor", type=float, help="ASHA: keep 1/this of trials at each rung (default 3)")
    a("--confirm-top", type=int, help="configurations the confirmation retrains (digits 1, else 3)")
    a("--no-transfer", action="store_true", help="skip re-running the finished search trials on the real split "
                                                 "(the check of the proxy's ranking)")
    a("--smoke-test", action="store_true", help="tiny model, 4 trials of 4 epochs: checks the wiring")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------
# 2. The study: every option checked and every default settled before Ray starts
# ---------------------------------------------------------------------------------------

def resolve(args) -> Study:
    settings._check_numbers(args)
    if args.smoke_test:
        args.benchmark = args.benchmark or "digits"
        args.overrides = SMOKE + args.overrides
        args.num_samples = args.num_samples or 4
        args.grace_period = args.grace_period or 1
        args.reduction_factor = args.reduction_factor or 2
        args.confirm_top = 1 if args.confirm_top is None else args.confirm_top
        args.confirm_seeds = 2 if args.confirm_seeds is None else args.confirm_seeds
    bench = args.benchmark or "digits"
    crkd.preset(bench)
    fam = settings.family(bench)
    pre_sets = [o for o in args.overrides if o.split("=", 1)[0].strip() == "discover.relation"]
    pre = crkd.load_config(benchmark=bench, overrides=pre_sets)  # --set discover.relation decides relation.*
    space = spaces.load_space(args.space or "rkd_weights", bench, base=pre)
    base, _ = settings.base_config(bench, space.fixed, args.overrides, args.seed, args.max_epochs, space.fields,
                                   f"{space.name}.yaml")
    max_t = base.discover.epochs

    objective = args.objective or "proxy"
    name = args.metric or "novel/train/acc"
    if name.startswith("proxy/"):
        name = name[len("proxy/"):]
    if name not in METRICS:
        raise SettingsError(f"--metric {args.metric!r} is not reported by discovery; choose one of {', '.join(METRICS)}")
    metric = f"proxy/{name}" if objective == "proxy" else name
    folds = args.proxy_folds if args.proxy_folds is not None else 1
    if folds < 1:
        raise SettingsError(f"--proxy-folds must be >= 1, got {folds}")
    if args.proxy_folds is not None and objective != "proxy":
        raise SettingsError("--proxy-folds needs --objective proxy")
    grace = args.grace_period if args.grace_period is not None else max(1, max_t // 10)
    rf = args.reduction_factor if args.reduction_factor is not None else 3.0
    settings.finite("--reduction-factor", rf, above=1)
    if args.num_samples is not None and args.num_samples < 1:
        raise SettingsError(f"--num-samples must be >= 1, got {args.num_samples}")
    if not 1 <= grace <= max_t:
        raise SettingsError(f"--grace-period must be between 1 and max epochs ({max_t}), got {grace}")
    if args.confirm_top is not None and args.confirm_top < 0:
        raise SettingsError(f"--confirm-top must be >= 0, got {args.confirm_top}")
    if args.gpus_per_trial and not args.address:
        import torch
        if not torch.cuda.is_available():
            raise SettingsError(f"--gpus-per-trial {args.gpus_per_trial:g} but no CUDA GPU is visible here; "
                                f"use 0 on the CPU")
    root = storage.check_root(args.storage or "runs")
    tracking_uri = storage.check_tracking(args.tracking_uri, root)
    if args.address:
        cluster.check(args.address)
    else:  # fail fast on missing data (on a cluster the data lives on the workers)
        settings.check_data(base, objective, folds)
    default, why = space.default_point(base) if space.default_first else (None, "default_first: false")
    return Study(
        name=args.name or settings.new_name(space.name, bench), kind="study", benchmark=bench,
        tracking_uri=tracking_uri, space_name=space.name, space_text=space.text, fields=space.fields,
        default_point=default, default_skipped=why, base_yaml=base.to_yaml(), overrides=list(args.overrides),
        seed=base.seed, objective=objective, proxy_folds=folds, metric=metric,
        mode=args.mode or METRICS[name], num_samples=args.num_samples or fam["num_samples"],
        max_concurrent=args.max_concurrent or 0, cpus_per_trial=args.cpus_per_trial or fam["cpus"],
        gpus_per_trial=-1.0 if args.gpus_per_trial is None else args.gpus_per_trial, wants_gpu=fam["gpu"],
        max_t=max_t, grace_period=grace, reduction_factor=rf,
        # Tune snapshots the experiment whenever a trial has saved this many checkpoints:
        # with digits' sub-second epochs, 2 would mean a snapshot nearly every result.
        keep_checkpoints=5 if bench == "digits" else 2, checkpoint_every=args.checkpoint_every,
        max_failures=args.max_failures,
        confirm_top=fam["confirm_top"] if args.confirm_top is None else args.confirm_top,
        confirm_seeds=fam["confirm_seeds"] if args.confirm_seeds is None else args.confirm_seeds,
        transfer=not args.no_transfer, command=settings.shell_command(), created=settings.now(),
        git_commit=settings.git_commit()).bind(root)


def open_study(args) -> tuple[Study, bool, storage.DriverLock | None]:
    """The study to run, whether it resumes, and (a new study) its driver lock, taken before
    study.yaml is written: a study another driver runs is never rewritten. A new name, or one
    whose driver died before the first trial started (a fresh run takes it over); --resume:
    the saved study (the driver takes the lock)."""
    root = storage.check_root(args.storage or "runs")
    if args.resume:
        name = args.name or storage.newest_study(root)
        if not name:
            raise SettingsError(f"--resume: no study in {root}; give --name and --storage")
        study = Study.load(root, name)
        ignored = [o for o in ("benchmark", "space", "num_samples", "metric", "max_epochs", "seed",
                               "gpus_per_trial", "cpus_per_trial", "max_concurrent", "grace_period",
                               "reduction_factor", "mode", "tracking_uri", "objective", "proxy_folds",
                               "confirm_top", "confirm_seeds") if getattr(args, o, None) is not None]
        if args.overrides:
            ignored.append("set")
        if ignored:
            print("note: --resume keeps the study's saved settings; ignoring "
                  + ", ".join("--" + o.replace("_", "-") for o in ignored))
        return study, True, None
    study = resolve(args)
    lock = storage.DriverLock(study.folder)
    try:
        lock.acquire()
    except storage.Busy as e:
        raise SettingsError(str(e)) from None
    try:
        if storage.exists(study.path("study.yaml")):
            from harness import phases
            if phases.started(study):
                raise SettingsError(f"study '{study.name}' already exists in {root}; add --resume to continue it "
                                    f"or pick another --name")
            print(f"note: study '{study.name}' never started a run (its driver stopped early); starting it anew")
        study.save()
    except BaseException:
        lock.release()
        raise
    return study, False, lock


# ---------------------------------------------------------------------------------------
# 3. The driver: search, confirmation, report (harness/driver.py, harness/phases.py)
# ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        study, resume, lock = open_study(args)
    except (SettingsError, ConfigError, spaces.SpaceError, CrkdError) as e:
        fail(str(e))
    except storage.StorageError as e:
        fail(str(e))
    return Driver(study, resume, args.address, args.verbose, lock=lock).run()


if __name__ == "__main__":
    sys.exit(main())
