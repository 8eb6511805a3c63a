#!/usr/bin/env python
"""Compare methods over seeds: each method's preset (or a study's confirmed configuration)
trained on the real split with the same seeds, paired against the UNO baseline, through the
same machinery and report as a study's confirmation.

    python harness/benchmark.py --methods uno,crkd,refilled --benchmark digits --seeds 5
    python harness/benchmark.py --methods uno,crkd --from-study rkd_weights-digits-20260101-120000

writes <storage>/<name>/report/ (report.md: the methods x metrics table with 95% intervals,
paired differences against uno, the floors; confirmation.parquet; plots), one MLflow run
per method and seed, and a parent run with the report.
"""
from __future__ import annotations

import json
import sys

import crkd
from crkd.errors import ConfigError, CrkdError
from crkd.relations import RELATIONS

from harness import Parser, cluster, settings, storage
from harness.driver import Driver, fail
from harness.settings import SettingsError, Study


def parse_args(argv=None):
    p = Parser(description="Benchmark relation-distillation methods over seeds on the real split, paired "
                           "against the UNO baseline, with the floors and the report of a study's confirmation.")
    settings.add_common(p)
    p.add_argument("--methods", help=f"comma-separated discover.relation names (default: all: {','.join(RELATIONS)})")
    p.add_argument("--seeds", type=int, help="seeds per method (default: the family's, digits 3, else 5)")
    p.add_argument("--from-study", help="also the configuration a study's confirmation supports")
    return p.parse_args(argv)


def resolve(args) -> tuple[Study, list]:
    settings._check_numbers(args)
    bench = args.benchmark or "digits"
    crkd.preset(bench)
    fam = settings.family(bench)
    methods = [m.strip() for m in (args.methods or ",".join(RELATIONS)).split(",") if m.strip()]
    unknown = [m for m in methods if m not in RELATIONS]
    if unknown or not methods:
        raise SettingsError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(RELATIONS)}")
    if len(set(methods)) != len(methods):
        raise SettingsError(f"--methods names a method twice: {args.methods}")
    if any(o.split("=", 1)[0].strip() == "discover.relation" for o in args.overrides):
        raise SettingsError("--set discover.relation: the methods are chosen with --methods")
    if args.seeds is not None and args.seeds < 1:
        raise SettingsError(f"--seeds must be >= 1, got {args.seeds}")
    base, _ = settings.base_config(bench, {}, args.overrides, args.seed, args.max_epochs, {})
    root = storage.check_root(args.storage or "runs")
    tracking_uri = storage.check_tracking(args.tracking_uri, root)
    extra = []
    for m in methods:
        cfg = crkd.apply_overrides(crkd.Config.from_dict(base.to_dict()), {"discover.relation": m})
        extra.append((m, "method", crkd.validate(cfg)))
    if args.from_study:
        other = Study.load(root, args.from_study)
        summary = json.loads(storage.read_text(other.path("report", "summary.json")) or "{}")
        jobs = json.loads(storage.read_text(other.path("confirm", "jobs.json")) or "[]")
        label = summary.get("supported")
        job = next((j for j in jobs if j["label"] == label and j["kind"] == "train"), None)
        if job is None:
            raise SettingsError(f"--from-study {args.from_study}: it has no confirmed configuration (no report yet)")
        cfg = crkd.Config.from_yaml(job["config"], args.from_study)
        if cfg.data.benchmark != bench:
            raise SettingsError(f"--from-study {args.from_study} ran on {cfg.data.benchmark}, not {bench}")
        extra.append((f"{args.from_study}: {label}", "method", cfg))
    if args.address:
        cluster.check(args.address)
    else:
        settings.check_data(base, "novel", 1)
    seeds = args.seeds or args.confirm_seeds or fam["confirm_seeds"]
    name = args.name or f"bench-{bench}-{settings.now().replace(':', '').replace('-', '')}"
    study = Study(name=name, kind="benchmark", benchmark=bench, tracking_uri=tracking_uri, base_yaml=base.to_yaml(),
                  overrides=list(args.overrides), seed=base.seed, objective="none", metric=settings.CONFIRM_METRIC,
                  max_t=base.discover.epochs, max_concurrent=args.max_concurrent or 0,
                  cpus_per_trial=args.cpus_per_trial or fam["cpus"],
                  gpus_per_trial=-1.0 if args.gpus_per_trial is None else args.gpus_per_trial, wants_gpu=fam["gpu"],
                  checkpoint_every=args.checkpoint_every, max_failures=args.max_failures, confirm_top=0,
                  confirm_seeds=seeds, transfer=False, methods=[lbl for lbl, _, _ in extra],
                  from_study=args.from_study or "", command=settings.shell_command(), created=settings.now(),
                  git_commit=settings.git_commit()).bind(root)
    return study, extra


def main(argv=None) -> int:
    args = parse_args(argv)
    lock = None
    try:
        if args.resume:
            if not args.name:
                raise SettingsError("--resume needs --name (the benchmark's name)")
            study = Study.load(storage.check_root(args.storage or "runs"), args.name)
            extra = None
        else:
            study, extra = resolve(args)
            lock = storage.DriverLock(study.folder)  # before study.yaml is written (harness/tune.py)
            try:
                lock.acquire()
            except storage.Busy as e:
                raise SettingsError(str(e)) from None
            try:
                from harness import phases
                if storage.exists(study.path("study.yaml")) and phases.started(study):
                    raise SettingsError(f"benchmark '{study.name}' already exists; add --resume or pick another --name")
                study.save()
                storage.write_text(study.path("confirm", "jobs.json"), json.dumps(phases.jobs(study, None, extra)))
            except BaseException:
                lock.release()
                raise
    except (SettingsError, ConfigError, CrkdError, storage.StorageError) as e:
        fail(str(e))
    return Driver(study, args.resume, args.address, args.verbose, lock=lock).run()


if __name__ == "__main__":
    sys.exit(main())
