#!/usr/bin/env python
"""Search the Cr-KD trainer's hyperparameters: Ray Tune + Optuna TPE + ASHA, tracked in MLflow.

    python harness/tune.py --space rkd_weights                 # digits, local Ray, CPU: a few minutes
    python harness/tune.py --resume --name rkd_weights-digits-20260101-120000
    python harness/tune.py --smoke-test                        # seconds: CI

Each trial is the whole two-stage trainer: a stage-1 teacher (trained once per
recipe and cached in the storage folder) and a discovery run that reports every
epoch with a checkpoint, so ASHA can stop it and Tune can resume it. The script
reads top to bottom: options, the study (storage, MLflow, Optuna), the trial, the
Tuner, the leaderboard.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python harness/tune.py` from anywhere: import the harness package

import crkd  # noqa: E402
from crkd.errors import ConfigError, CrkdError  # noqa: E402

from harness import Parser, spaces, storage  # noqa: E402
from harness.stage1 import Stage1Cache  # noqa: E402

# ---------------------------------------------------------------------------------------
# 1. Options
# ---------------------------------------------------------------------------------------

# What a discovery epoch reports, and which way is better. Every metric built on the
# novel classes' labels is label leakage when used for tuning (docs/method.md 5).
METRICS = {
    "novel/train/acc": "max", "novel/train/acc_avg": "max", "novel/train/nmi": "max",
    "novel/train/ari": "max", "novel/test/acc": "max", "novel/test/acc_avg": "max",
    "test/all/acc": "max", "test/old/acc": "max", "test/new/acc": "max", "known/test/acc": "max",
    "loss/total": "min", "loss/l": "min", "loss/u": "min", "loss/rel": "min",
}
USES_NOVEL_LABELS = {"novel/train/acc", "novel/train/acc_avg", "novel/train/nmi", "novel/train/ari",
                     "novel/test/acc", "novel/test/acc_avg", "test/all/acc", "test/new/acc"}

# Per benchmark: trials in a study, CPUs per trial, whether trials want a GPU.
# ASHA's max_t is the preset's discovery epochs (digits 40, CIFAR 500, ImageNet 60),
# its grace period a tenth of that, its reduction factor 3.
BENCH_DEFAULTS = {"digits": (12, 1, False), "imagenet": (16, 4, True), "other": (32, 1, True)}

# --smoke-test: a tiny model and a few epochs, so a whole study takes seconds.
SMOKE = ["pretrain.epochs=3", "discover.epochs=4", "model.widths=[8,16,16]",
         "model.hidden_dim=32", "model.proj_dim=16"]


def fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description="Tune the Cr-KD trainer with Ray Tune, Optuna and ASHA; track in MLflow.",
               epilog="Defaults follow the benchmark. Results: harness/leaderboard.py, harness/export.py, "
                      "`mlflow ui --backend-store-uri <tracking uri>`.")
    a = p.add_argument
    a("--benchmark", help="crkd benchmark (default digits: CPU-fast, no downloads)")
    a("--space", help="search space: a name in search_spaces/ (rkd_weights, temperatures, sinkhorn, "
                      "full) or a YAML path (default rkd_weights)")
    a("--num-samples", type=int, help="trials in the study (digits 12, CIFAR 32, ImageNet 16)")
    a("--max-concurrent", type=int, help="trials at once (default: as many as the CPUs/GPUs fit)")
    a("--cpus-per-trial", type=float, help="CPUs per trial; also its torch threads (default 1; ImageNet 4)")
    a("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack trials on one GPU, e.g. 0.25 "
                                           "(default 1 where the cluster has GPUs, 0 for digits)")
    a("--max-epochs", type=int, help="discovery epochs of a full trial = ASHA max_t (default: the preset's)")
    a("--grace-period", type=int, help="ASHA: epochs before a trial can be stopped (default max_epochs/10)")
    a("--reduction-factor", type=float, help="ASHA: keep 1/this of trials at each rung (default 3)")
    a("--metric", help="what to optimise (default novel/train/acc: label leakage, see docs/method.md 5)")
    a("--mode", choices=["min", "max"], help="default: max for accuracies, min for losses")
    a("--seed", type=int, help="seeds the sampler and the trainer (default 0)")
    a("--name", help="study name: Tune experiment, MLflow experiment and Optuna study "
                     "(default <space>-<benchmark>-<time>)")
    a("--storage", help="Tune storage: a local folder or a URI (s3://, gs://, NFS) for clusters "
                        "(default ./runs)")
    a("--tracking-uri", help="MLflow store (default sqlite:///<storage>/mlflow.db; on clusters the "
                             "http:// address of an `mlflow server`)")
    a("--address", help="an existing Ray cluster (e.g. auto); default: start Ray locally")
    a("--resume", action="store_true", help="continue an interrupted study (--name, or the newest in "
                                            "--storage) with its saved settings")
    a("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
      help="fixed trainer setting for every trial, e.g. --set discover.batch_size=128 (repeatable)")
    a("--max-failures", type=int, default=2, help="retries of a trial whose worker died (default 2)")
    a("--smoke-test", action="store_true", help="tiny model, 4 trials of 4 epochs: checks the wiring")
    return p.parse_args(argv)


def resolve(args) -> dict:
    """Validate every option and file, and settle all defaults: the study's settings.
    Runs before Ray starts; every problem exits with one `error:` line."""
    if args.smoke_test:
        args.benchmark = args.benchmark or "digits"
        args.overrides = SMOKE + args.overrides
        args.num_samples = args.num_samples or 4
        args.grace_period = args.grace_period or 1
        args.reduction_factor = args.reduction_factor or 2
    bench = args.benchmark or "digits"
    try:
        crkd.preset(bench)
        space = spaces.load_space(args.space or "rkd_weights", bench)
    except (ConfigError, spaces.SpaceError) as e:
        fail(str(e))
    family = bench if bench == "digits" else ("imagenet" if bench.startswith("imagenet") else "other")
    n_default, cpus_default, wants_gpu = BENCH_DEFAULTS[family]

    # The study's base config: preset, the space's fixed values, --set, --seed, --max-epochs.
    try:
        sets = spaces.parse_sets(args.overrides, bench)
        for key in sets:
            if key in space.fields.values():
                fail(f"--set {key}: this field is searched by {os.path.basename(space.path)}; "
                     f"drop the --set or use a space without it")
            if key == "data.benchmark":
                fail("--set data.benchmark: choose the benchmark with --benchmark")
        if "discover.epochs" in sets and args.max_epochs:
            fail("--set discover.epochs and --max-epochs both set the discovery epochs; keep one")
        base = crkd.load_config(benchmark=bench, overrides={**space.fixed, **sets})
        if args.seed is not None:
            base.seed = args.seed
        if args.max_epochs is not None:
            if args.max_epochs < 1:
                fail(f"--max-epochs must be >= 1, got {args.max_epochs}")
            base.discover.epochs = args.max_epochs
        if base.data.root and not storage.is_uri(base.data.root) and os.path.exists(base.data.root):
            base.data.root = os.path.abspath(base.data.root)  # trials run in other folders
        crkd.validate(base)
    except ConfigError as e:
        fail(str(e))
    max_t = base.discover.epochs

    metric = args.metric or "novel/train/acc"
    if metric not in METRICS:
        fail(f"--metric {metric!r} is not reported by discovery; choose one of {', '.join(METRICS)}")
    grace = args.grace_period or max(1, max_t // 10)
    rf = args.reduction_factor or 3
    checks = [(args.num_samples is not None and args.num_samples < 1, "--num-samples must be >= 1"),
              (args.max_concurrent is not None and args.max_concurrent < 1, "--max-concurrent must be >= 1"),
              (args.cpus_per_trial is not None and args.cpus_per_trial <= 0, "--cpus-per-trial must be > 0"),
              (args.gpus_per_trial is not None and args.gpus_per_trial < 0, "--gpus-per-trial must be >= 0"),
              (args.gpus_per_trial is not None and args.gpus_per_trial > 1 and args.gpus_per_trial % 1,
               "--gpus-per-trial above 1 must be a whole number"),
              (not 1 <= grace <= max_t, f"--grace-period must be between 1 and max epochs ({max_t}), got {grace}"),
              (rf <= 1, f"--reduction-factor must be > 1, got {rf}"),
              (args.max_failures < 0, "--max-failures must be >= 0")]
    for bad, message in checks:
        if bad:
            fail(message)

    if args.gpus_per_trial and not args.address:
        import torch
        if not torch.cuda.is_available():
            fail(f"--gpus-per-trial {args.gpus_per_trial:g} but no CUDA GPU is visible here; use 0 on CPU")
    store = storage.normalize(args.storage or "runs")
    tracking_uri = args.tracking_uri or (
        None if storage.is_uri(store) else f"sqlite:///{os.path.join(store, 'mlflow.db')}")
    if tracking_uri is None:
        fail(f"--storage {store} is shared storage: also give --tracking-uri http://HOST:5000 "
             f"(an `mlflow server` the driver reaches)")
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = "sqlite:///" + os.path.abspath(tracking_uri[len("sqlite:///"):])
    if tracking_uri.startswith(("file:", "./", "/")) or ("://" not in tracking_uri and tracking_uri != "databricks"):
        fail(f"--tracking-uri {tracking_uri}: MLflow 3 refuses file stores; use sqlite:///ABSOLUTE/PATH.db "
             f"or http://HOST:PORT")
    name = args.name or f"{space.name}-{bench}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not all(c.isalnum() or c in "-_." for c in name):
        fail(f"--name {name!r}: use letters, digits, '-', '_' and '.'")
    experiment = storage.join(store, name)
    if storage.exists(storage.join(experiment, "harness.json")):
        fail(f"study '{name}' already exists in {store}; add --resume to continue it or pick another --name")
    if not args.address:  # fail fast on missing data (on a cluster the data lives on the workers)
        try:
            crkd.load_data(base.data)
        except CrkdError as e:
            fail(str(e))

    default, why = space.default_point(base) if space.default_first else (None, "default_first: false")
    return {
        "name": name, "storage": store, "experiment": experiment, "tracking_uri": tracking_uri,
        "optuna_journal": (os.path.join(experiment, "optuna.log") if not storage.is_uri(store)
                           else os.path.join(os.path.expanduser("~"), "crkd-tune-optuna", name, "optuna.log")),
        "stage1_cache": storage.join(store, "stage1_cache"),
        "benchmark": bench, "space_name": space.name, "space_path": space.path, "space_text": space.text,
        "fields": space.fields, "default_point": default, "default_skipped": why,
        "base_yaml": base.to_yaml(), "overrides": list(args.overrides), "seed": base.seed,
        "num_samples": args.num_samples or n_default, "max_concurrent": args.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial or cpus_default, "gpus_per_trial": args.gpus_per_trial,
        "wants_gpu": wants_gpu, "max_t": max_t, "grace_period": grace, "reduction_factor": rf,
        # Tune snapshots the experiment whenever a trial has saved this many checkpoints:
        # with digits' sub-second epochs, 2 would mean a snapshot nearly every result.
        "keep_checkpoints": 5 if bench == "digits" else 2,
        "metric": metric, "mode": args.mode or METRICS[metric], "max_failures": args.max_failures,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def load_saved(args) -> dict:
    """--resume: the study's settings as saved at its start (the other options are ignored)."""
    store = storage.normalize(args.storage or "runs")
    name = args.name
    if not name:
        if storage.is_uri(store):
            fail("--resume with a URI --storage needs --name")
        found = sorted((os.path.getmtime(os.path.join(store, d, "harness.json")), d)
                       for d in (os.listdir(store) if os.path.isdir(store) else [])
                       if os.path.isfile(os.path.join(store, d, "harness.json")))
        if not found:
            fail(f"--resume: no study in {store}; give --name and --storage")
        name = found[-1][1]
    text = storage.read_text(storage.join(store, name, "harness.json"))
    if text is None:
        fail(f"--resume: no study '{name}' in {store} (no harness.json); check --name and --storage")
    study = json.loads(text)
    # The Tuner's callbacks come back pickled with the tracking URI they started with.
    ignored = [o for o in ("benchmark", "space", "num_samples", "metric", "max_epochs", "seed", "gpus_per_trial",
                           "cpus_per_trial", "max_concurrent", "grace_period", "reduction_factor", "mode",
                           "tracking_uri")
               if getattr(args, o) is not None] + (["set"] if args.overrides else [])
    if ignored:
        print(f"note: --resume keeps the study's saved settings; ignoring "
              + ", ".join("--" + o.replace("_", "-") for o in ignored))
    return study


# ---------------------------------------------------------------------------------------
# 2. The trial: stage 1 from the cache, stage 2 epoch by epoch with a checkpoint each
# ---------------------------------------------------------------------------------------

def trial(config: dict, study: dict) -> None:
    import torch
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "Checkpoint created" line per epoch
    torch.set_num_threads(max(1, int(study["cpus_per_trial"])))
    trial_id = tune.get_context().get_trial_id()
    marker = storage.failure_marker(study["experiment"], trial_id)
    earlier = storage.read_text(marker)
    if earlier:  # a retry of a deterministic failure: fail the same way, at once
        raise storage.RepeatedFailure(earlier)
    from harness.restore import ended_before
    ended = ended_before(study["experiment"], trial_id)
    if ended:  # restarted from a killed driver's stale state: end as it ended (harness/restore.py)
        tune.report(ended)
        return
    try:
        cfg = spaces.trial_config(study["base_yaml"], study["fields"], config)
        data = crkd.load_data(cfg.data)
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                run = crkd.Discover.from_checkpoint(os.path.join(d, "discover.pt"), data)
            stage1 = "checkpoint"
            print(f"[crkd-tune] {trial_id}: resuming discovery after epoch {run.epoch}", flush=True)
            if run.epoch >= cfg.discover.epochs and run.history:  # finished before a killed driver saved it
                tune.report({**run.history[-1], "stage1_cache": stage1})
                return
        else:
            log = lambda msg: print(f"[crkd-tune] {trial_id}: {msg}", flush=True)  # noqa: E731
            teacher, stage1 = Stage1Cache(study["stage1_cache"]).teacher(cfg, data, who=trial_id, log=log)
            run = crkd.Discover(cfg, teacher, data)
        for metrics in run:
            if study["metric"] not in metrics:  # no evaluation this epoch (discover.eval_every > 1)
                continue
            with tempfile.TemporaryDirectory() as d:
                run.save(os.path.join(d, "discover.pt"))
                tune.report({**metrics, "stage1_cache": stage1},
                            checkpoint=tune.Checkpoint.from_directory(d))
    except CrkdError as e:  # NaN/inf loss, bad config or data: retrying would fail the same way
        reason = f"{type(e).__name__}: {e}"
        storage.write_text(marker, reason)
        raise storage.TrialFailed(reason) from None


# ---------------------------------------------------------------------------------------
# 3. The study: Ray, MLflow, Optuna, ASHA, the Tuner
# ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    study = load_saved(args) if args.resume else resolve(args)
    name, metric, mode = study["name"], study["metric"], study["mode"]
    if metric in USES_NOVEL_LABELS:
        print(f"note: tuning on {metric} selects hyperparameters with the novel classes' labels: "
              f"label leakage (docs/method.md 5); treat the scores as optimistic, or tune on a proxy split")

    import optuna
    import ray
    from mlflow.tracking import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from harness import mlflow_callback, tracking
    from harness.restore import OutcomeMarkers, repair_missing_checkpoints
    from harness.search import PruningOptunaSearch

    # MLflow: the store, the experiment and the parent run exist before any trial starts.
    # A new sqlite store takes seconds to create (schema migrations), so it is opened in
    # a thread while Ray starts.
    client = MlflowClient(study["tracking_uri"])
    if not storage.is_uri(study["storage"]):
        os.makedirs(study["experiment"], exist_ok=True)
    pool = ThreadPoolExecutor(1)
    opening = pool.submit(
        tracking.open_study, client, name, resume=args.resume,
        tags={"crkd.command": study["command"], "crkd.git_commit": git_commit(),
              "crkd.benchmark": study["benchmark"], "crkd.space": study["space_name"],
              "crkd.space_fields": json.dumps(study["fields"]), "crkd.metric": metric,
              "crkd.mode": mode, "crkd.max_t": str(study["max_t"]),
              "crkd.label_leakage": str(metric in USES_NOVEL_LABELS).lower(),
              "crkd.storage": study["experiment"], "crkd.optuna_journal": study["optuna_journal"]},
        params={k: study[k] for k in ("benchmark", "space_name", "num_samples", "max_t", "grace_period",
                                      "reduction_factor", "metric", "mode", "seed", "cpus_per_trial")}
        | {"overrides": study["overrides"]},
        texts={"space/" + os.path.basename(study["space_path"]): study["space_text"],
               "study/base_config.yaml": study["base_yaml"]})

    # Ray: local unless --address. Local workers inherit this environment and so can
    # import `harness` (on a cluster, `ray job submit --working-dir .` does that).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact table of CLIReporter below
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(address=args.address, logging_level=logging.WARNING)
    try:
        exp_id, parent_id = opening.result()
        pool.shutdown()
    except Exception as e:
        ray.shutdown()
        fail(str(e) if isinstance(e, tracking.TrackingError) else
             f"MLflow store {study['tracking_uri']} is not usable: {' '.join(str(e).split())[:300]}")

    # Defaults that depend on the cluster's resources.
    res = ray.cluster_resources()
    if study["gpus_per_trial"] is None:
        study["gpus_per_trial"] = 1.0 if study["wants_gpu"] and res.get("GPU", 0) > 0 else 0.0
    if study["max_concurrent"] is None:
        fits = res.get("CPU", 0) // study["cpus_per_trial"]
        if study["gpus_per_trial"] > 0:
            fits = min(fits, res.get("GPU", 0) // study["gpus_per_trial"])
        study["max_concurrent"] = int(fits) if fits >= 1 else 4  # an autoscaling cluster starts empty
    if not args.resume:
        storage.write_text(storage.join(study["experiment"], "harness.json"), json.dumps(study, indent=1))
        client.log_text(parent_id, json.dumps(study, indent=1), "study/harness.json")

    # The saved space text, not the file as it is now: a resumed study keeps its space.
    space = spaces.load_space(study["space_path"], study["benchmark"], text=study["space_text"])
    os.makedirs(os.path.dirname(study["optuna_journal"]), exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainable = tune.with_resources(
        tune.with_parameters(trial, study=study),
        {"cpu": study["cpus_per_trial"], "gpu": study["gpus_per_trial"]})

    print(f"study {name}: {study['num_samples']} trials of up to {study['max_t']} epochs on {study['benchmark']}, "
          f"space {study['space_name']} ({', '.join(p.describe() for p in space.params.values())}), "
          f"{study['max_concurrent']} at a time, {study['cpus_per_trial']:g} CPU / "
          f"{study['gpus_per_trial']:g} GPU each; ASHA grace {study['grace_period']}, "
          f"factor {study['reduction_factor']:g}; optimising {metric} ({mode})", flush=True)
    if not study["default_point"]:
        print(f"note: the preset values are not the first trial ({study['default_skipped']})")

    path = study["experiment"]
    if args.resume:  # searcher, scheduler and callbacks come back from the experiment state
        if not tune.Tuner.can_restore(path):
            fail(f"--resume: {path} holds no Tune experiment state to restore")
        if not storage.is_uri(path):
            repair_missing_checkpoints(path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        # Optuna TPE, seeded, its study in a journal file beside the Tune experiment;
        # the preset's values (the paper defaults) are the first trial.
        searcher = PruningOptunaSearch(
            space=space.distributions(), metric=metric, mode=mode, max_t=study["max_t"],
            points_to_evaluate=[study["default_point"]] if study["default_point"] else None,
            sampler=optuna.samplers.TPESampler(seed=study["seed"]), study_name=name,
            storage=JournalStorage(JournalFileBackend(study["optuna_journal"])))
        scheduler = ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=study["max_t"],
                                  grace_period=study["grace_period"], reduction_factor=study["reduction_factor"])
        tracker = mlflow_callback.MlflowTracking(study["tracking_uri"], exp_id, parent_id, study["base_yaml"],
                                                 study["fields"], metric, study["max_t"])
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=study["num_samples"],
                                        max_concurrent_trials=study["max_concurrent"], reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=study["storage"], verbose=1,
                callbacks=[tracker, OutcomeMarkers(study["experiment"])],
                progress_reporter=tune.CLIReporter(
                    metric_columns={"epoch": "epoch", metric: metric}, parameter_columns=list(space.params),
                    max_report_frequency=15, sort_by_metric=True, metric=metric, mode=mode),
                failure_config=tune.FailureConfig(max_failures=study["max_failures"]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=study["keep_checkpoints"])))
    start = time.time()
    tuner.fit()
    elapsed = time.time() - start

    # ---------------------------------------------------------------------------------
    # 4. The leaderboard, the study's artifacts, where to look
    # ---------------------------------------------------------------------------------
    info, rows = tracking.leaderboard(client, name)
    for r in rows:  # learning curves of the trials that ended since they were last drawn
        if r["outcome"] and client.get_run(r["run_id"]).data.tags.get("crkd.curves") != str(r["epochs"]):
            tracking.learning_curves(client, r["run_id"], metric)
    done = sum(1 for r in rows if r["outcome"] and not r["lost"])  # finished, stopped by ASHA or failed
    interrupted = done < study["num_samples"]
    ot_study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(study["optuna_journal"])))
    states = {}
    for t in ot_study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    with tempfile.TemporaryDirectory() as d:
        tracking.write_table(rows, os.path.join(d, "leaderboard.csv"), os.path.join(d, "leaderboard.parquet"))
        plots = os.path.join(d, "optuna")
        os.makedirs(plots)
        from harness.plots import optuna_plots
        optuna_plots(ot_study, plots)
        client.log_artifacts(parent_id, d)
    client.set_tag(parent_id, "crkd.optuna_states", json.dumps(states))
    client.set_terminated(parent_id, status="KILLED" if interrupted else "FINISHED")

    print(f"\nstudy {name}: {len(rows)} trials in {elapsed:.0f} s; Optuna: "
          + ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items())))
    print(tracking.format_table(info, rows, top=10))
    if info["label_leakage"]:
        print(f"(ranked by {metric}, which uses novel labels: optimistic)")
    uri = study["tracking_uri"]
    browse = f"open {uri} (the MLflow server)" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    print(f"\nbrowse:   {browse}")
    print(f"optuna:   optuna-dashboard {study['optuna_journal']}")
    flag = "" if uri == tracking.default_tracking_uri() else f" --tracking-uri {uri}"
    print(f"table:    python harness/leaderboard.py --name {name}{flag}")
    print(f"export:   python harness/export.py --name {name} --top 3 --out exported/{name}{flag}")
    if interrupted:
        print(f"\ninterrupted after {done} of {study['num_samples']} trials; continue with:\n"
              f"  python harness/tune.py --resume --name {name}"
              + ("" if study["storage"] == storage.normalize("runs") else f" --storage {study['storage']}"))
        return 130
    return 0


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (out.stdout.strip() or "none") + ("+dirty" if dirty else "") if out.returncode == 0 else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


if __name__ == "__main__":
    sys.exit(main())
