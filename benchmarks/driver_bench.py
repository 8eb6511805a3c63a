#!/usr/bin/env python
"""What the driver costs per result: the harness's search machinery (Tune + Optuna TPE
via PruningOptunaSearch + ASHA + the Recorder callback writing a Journal that a Writer
thread applies to MLflow through tracking.Sink), in this process, on a local Ray, with a
stand-in trainable that reports its epochs instantly (no training).

    python benchmarks/driver_bench.py                 # sqlite 100/300/1000, http 100/300, sync (sqlite) at 100
    python benchmarks/driver_bench.py --backends sqlite,none --trials 100,300 --sync-trials 100 --json a.json
    python benchmarks/driver_bench.py --backends http --trials 100,300 --sync-backends http --json b.json
    python benchmarks/driver_bench.py --backends none --trials 100 --no-sync --profile /tmp/prof
    python benchmarks/driver_bench.py --pending 16 --warmup-s 60 ...   # keep 16 actors alive (see below)

Each case is one `tuner.fit()` of its own study (a new MLflow experiment, Optuna journal and
Tune folder under a temporary root), set up like harness/phases.py `search` sets one up
(PruningOptunaSearch with TPE on a JournalFileBackend, ASHA on "epoch", max_concurrent_trials,
reuse_actors, phases._run_config, OutcomeMarkers) and like harness/driver.py `_open_tracking`
opens its tracking (tracking.open_study, Journal + Writer + Sink, recorder.ACTIVE). The space is
search_spaces/rkd_weights.yaml on the digits preset. Backends: `sqlite` (a temporary store, as
`--tracking-uri` left empty), `http` (an `mlflow server` this script starts on 127.0.0.1 with its
own sqlite database and --artifacts-destination, stopped at the end) and `none` (a sink that
writes nothing: the driver without MLflow's work in its process). `sync` cases are the design
before the journal: a Recorder whose writer applies every event to MLflow inside the callback,
on Tune's loop.

Callbacks, searcher, scheduler and sink are subclasses that time each call (wall and the
calling thread's CPU); the loop's CPU is the main thread's thread_time() over fit(), which
does not count time spent waiting for a core, the GIL or the disk: on a busy machine it is
the figure that carries over, wall-clock rates are what this machine gave.

Figures per case:
  res/s           results / wall time of fit() (actor start-up included); "steady": the results
                  between the 10th and 90th percentile of arrival over that span; "after warm":
                  from the last warm-up trial's first result on (--warmup-s)
  loop cpu ms/res main-thread CPU of fit() / results: all the driver's own work per result;
                  "max res/s 1 core" = its inverse; "loop busy" = loop CPU / fit wall
  rec ms          Recorder.on_trial_result wall time, mean / p99 over results; "rec all ms/res":
                  every Recorder callback (start, result, complete, end) / results
  optuna ms/trial PruningOptunaSearch suggest + on_trial_result + on_trial_complete (wall), per trial
  flush s         after fit(): time until the writer has applied every event; "backlog max": the
                  writer's queue, sampled every 0.25 s
  missing / dup   metric rows in MLflow (read from its sqlite database) against the results the
                  driver saw, per (run, key, step): expected and absent, present more than once;
                  "open": trial runs that are not FINISHED
Below the table: each Sink call (the writer thread; Tune's loop in sync mode), Optuna's parts,
the loop's CPU by part, and Journal.append split into plain writes and the once-a-second fsync.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import pstats
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METRIC = "proxy/novel/train/acc"
# What a proxy trial reports per epoch: ~25 numbers (and two strings, as the real trial).
NAMES = ["novel/train/acc", "novel/train/acc_avg", "novel/train/nmi", "novel/train/ari", "novel/test/acc",
         "novel/test/acc_avg", "test/all/acc", "test/all/acc_avg", "test/old/acc", "test/old/acc_avg",
         "test/new/acc", "test/new/acc_avg", "known/test/acc", "loss/total", "loss/l", "loss/u", "loss/rel",
         "time/epoch_s", "time/eval_s", "grad_norm", "lr_head", "entropy", "temperature"]
KEYS = ["epoch", "lr"] + ["proxy/" + n for n in NAMES]          # 25 numeric keys
LOGGED = set(KEYS) | {"objective"}                               # what the Recorder logs per result

# Timings, kept out of the objects Tune pickles with its experiment state.
T: dict = defaultdict(list)
SEEN: dict = defaultdict(set)          # trial_id -> epochs the driver's callback saw
PIDS: set = set()                      # actors (worker processes) whose results arrived
ARRIVALS: list = []                    # perf_counter of each on_trial_result
ORDER: list = []                       # (trial_id, Optuna number) of each on_trial_result
WARM: set = set()                      # trials of the warm-up wave
WARM_N = [0]
SERVER: dict = {}                      # the running mlflow server's session id
_DEPTH: dict = {}                      # (thread, kind prefix) -> depth: only the outermost call is timed


def pc() -> float:
    return time.perf_counter()


# --- the stand-in trainable ------------------------------------------------------------------

def make_trainable(epochs: int, checkpoint: bool, epoch_s: float, warm_n: int, warm_s: float):
    def standin(config):
        import math as m
        import time as t

        from ray import tune
        a, b = config["alpha"], config["beta"]
        score = 1.0 / (1.0 + abs(m.log(a)) + 0.5 * abs(m.log(b / 0.1)))   # best at the paper's defaults
        if config.get("_n", warm_n) < warm_n:
            t.sleep(warm_s)  # the first wave holds its actors until all of them are up (see --warmup-s)
        for e in range(1, epochs + 1):
            if epoch_s:
                t.sleep(epoch_s)
            acc = score * (1 - 0.6 ** e)
            values = {"epoch": e, "lr": 0.1 * 0.9 ** e}
            for i, n in enumerate(NAMES):
                values["proxy/" + n] = acc * (1 - 0.01 * i) if "acc" in n or n.endswith(("nmi", "ari")) \
                    else (1 - acc) * (1 + 0.1 * i)
            values[METRIC] = acc
            values["stage1_cache"] = "cache hit"
            values["data_classes"] = "0,1,2,3,4"
            if checkpoint:
                import tempfile as tf
                with tf.TemporaryDirectory() as d:
                    with open(os.path.join(d, "meta.json"), "w") as f:
                        f.write('{"epoch": %d}' % e)
                    tune.report(values, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(values)
    return standin


# --- timed variants of the harness's pieces ------------------------------------------------------

def timed_classes():
    from ray.tune.schedulers import ASHAScheduler

    from harness import recorder as rec_mod
    from harness import restore, tracking
    from harness.journal import Journal, Writer
    from harness.search import PruningOptunaSearch

    def timed(kind, fn, *a, **kw):
        prefix = kind.split(".")[0]
        depth = _DEPTH.setdefault((threading.get_ident(), prefix), [0])
        outer = depth[0] == 0
        depth[0] += 1
        start, cpu = pc(), time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            depth[0] -= 1
            if outer:
                T[kind].append(pc() - start)
                T[kind + "#cpu"].append(time.thread_time() - cpu)

    class TimedJournal(Journal):
        """Journal.append timed in the caller, split by whether it fsynced."""

        def append(self, event):
            before, start = self._synced, pc()
            super().append(event)
            T["journal.fsync" if self._synced != before else "journal.write"].append(pc() - start)

    class TimedRecorder(rec_mod.Recorder):
        def on_trial_start(self, iteration, trials, trial, **info):
            return timed("rec.start", super().on_trial_start, iteration, trials, trial, **info)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            ARRIVALS.append(pc())
            ORDER.append((trial.trial_id, trial.config.get("_n")))
            if trial.config.get("_n", 1 << 30) < WARM_N[0]:
                WARM.add(trial.trial_id)
            SEEN[trial.trial_id].add(int(result.get("epoch", 0)))
            actor = getattr(getattr(trial, "temporary_state", None), "ray_actor", None)
            PIDS.add(actor._actor_id.hex() if actor is not None else None)
            return timed("rec.result", super().on_trial_result, iteration, trials, trial, result, **info)

        def on_trial_complete(self, iteration, trials, trial, **info):
            return timed("rec.complete", super().on_trial_complete, iteration, trials, trial, **info)

        def on_experiment_end(self, trials, **info):
            return timed("rec.end", super().on_experiment_end, trials, **info)

    class SyncWriter(Writer):
        """The design before the journal: every event applied to MLflow in the caller."""

        def put(self, event: dict) -> None:
            start = pc()
            event.setdefault("ts", int(time.time() * 1000))
            self._apply([event])
            self.stats.events += 1
            self.stats.applied += 1
            self.stats.append_s += pc() - start

    class SyncRecorder(TimedRecorder):
        """Recorder whose writer applies each event immediately, on Tune's loop."""

        @property
        def writer(self):
            return rec_mod.ACTIVE["sync_writer"]

    class TimedSearch(PruningOptunaSearch):
        def suggest(self, trial_id):
            return timed("optuna.suggest", super().suggest, trial_id)

        def on_trial_result(self, trial_id, result):
            return timed("optuna.result", super().on_trial_result, trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            return timed("optuna.complete", super().on_trial_complete, trial_id, result, error)

    class TimedASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            return timed("asha.result", super().on_trial_result, tune_controller, trial, result)

    class TimedMarkers(restore.OutcomeMarkers):
        def on_trial_complete(self, iteration, trials, trial, **info):
            return timed("markers.complete", super().on_trial_complete, iteration, trials, trial, **info)

    class TimedSink(tracking.Sink):
        def create_or_find(self, e):
            return timed("sink.run", super().create_or_find, e)

        def batch(self, run_id, metrics, params, tags):
            return timed("sink.batch", super().batch, run_id, metrics, params, tags)

        def end(self, run_id, status):
            return timed("sink.end", super().end, run_id, status)

        def files(self, run_id, folder, path=""):
            return timed("sink.files", super().files, run_id, folder, path)

        def last_step(self, run_id):
            return timed("sink.last_step", super().last_step, run_id)

    class NullSink(TimedSink):
        """MLflow replaced by nothing: what the driver costs with the writer thread idle."""

        def __init__(self, uri, experiment_id, parent_id):
            self.uri, self.experiment_id, self.parent_id, self.client = uri, experiment_id, parent_id, None
            self._n = 0

        def create_or_find(self, e):
            self._n += 1
            return f"run-{self._n}"

        def find(self, key):
            if key == "study":
                return self.parent_id
            raise KeyError(key)

        def last_step(self, run_id):
            return 0

        def batch(self, run_id, metrics, params, tags):
            pass

        def end(self, run_id, status):
            pass

        def files(self, run_id, folder, path=""):
            pass

    return dict(NullSink=NullSink, TimedJournal=TimedJournal, TimedRecorder=TimedRecorder, SyncRecorder=SyncRecorder, SyncWriter=SyncWriter,
                TimedSearch=TimedSearch, TimedASHA=TimedASHA, TimedMarkers=TimedMarkers, TimedSink=TimedSink)


# --- a study ---------------------------------------------------------------------------------------

def make_study(name: str, root: str, uri: str, args, trials: int):
    import crkd

    from harness import spaces
    from harness.settings import Study
    base = crkd.preset("digits")
    base.discover.epochs = args.epochs
    base = crkd.validate(base)
    space = spaces.load_space("rkd_weights", "digits")
    default, why = space.default_point(base)
    return Study(name=name, kind="study", benchmark="digits", tracking_uri=uri, space_name=space.name,
                 space_text=space.text, fields=space.fields, default_point=default, default_skipped=why,
                 base_yaml=base.to_yaml(), seed=0, objective="proxy", proxy_folds=1, metric=METRIC, mode="max",
                 num_samples=trials, max_concurrent=args.concurrent + args.pending, cpus_per_trial=args.cpus,
                 gpus_per_trial=0.0, max_t=args.epochs, grace_period=args.grace,
                 reduction_factor=args.reduction_factor, keep_checkpoints=5, confirm_seeds=0,
                 command="driver_bench", created=time.strftime("%Y-%m-%dT%H:%M:%S"), git_commit="bench").bind(root)


def open_tracking(study, classes, sync: bool, null: bool = False):
    """Like harness/driver.py Driver._open_tracking: the study's experiment and parent run,
    a Journal + Writer (+ Sink), and recorder.ACTIVE."""
    from mlflow.tracking import MlflowClient

    from harness import driver, recorder, tracking
    from harness.console import Console
    from harness.journal import Journal, Writer
    client = MlflowClient(study.tracking)
    tags = {"crkd.kind": study.kind, "crkd.space": study.space_name, "crkd.space_fields": json.dumps(study.fields),
            "crkd.metric": study.metric, "crkd.mode": study.mode, "crkd.objective": study.objective,
            "crkd.max_t": str(study.max_t), "crkd.label_leakage": "false", "crkd.optuna_journal": study.optuna_journal}
    params = {"benchmark": study.benchmark, "space": study.space_name, "num_samples": study.num_samples,
              "max_t": study.max_t, "metric": study.metric, "mode": study.mode}
    exp_id, parent = tracking.open_study(client, study.name, False, tags, params, driver.description(study),
                                         tracking.views(list(study.fields), study.metric))
    sink_cls = classes["NullSink" if null else "TimedSink"]
    sink = sink_cls(study.tracking, exp_id, parent)
    writer = Writer(classes["TimedJournal"](driver.journal_folder(study)), sink)
    os.makedirs(study.folder, exist_ok=True)
    console = Console(stream=open(os.path.join(study.folder, "console.log"), "w"))
    recorder.ACTIVE.update(writer=writer, console=console, study=study)
    if sync:
        recorder.ACTIVE["sync_writer"] = classes["SyncWriter"](Journal(os.path.join(study.folder, "sync-journal")),
                                                               sink_cls(study.tracking, exp_id, parent))
    writer.put({"op": "tags", "key": "study", "tags": {"crkd.started": "true"}})
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "study.yaml"), "w") as f:
        f.write(study.to_yaml())
    writer.put({"op": "files", "key": "study", "dir": writer.journal.stash(d), "path": "study"})
    shutil.rmtree(d)
    return exp_id, writer


def build_tuner(study, classes, sync: bool, checkpoint: bool, epoch_s: float, warm_n: int, warm_s: float):
    """Like harness/phases.py `search`, with the stand-in trainable."""
    import optuna
    from ray import tune

    from harness import phases, spaces
    from harness.search import optuna_storage
    import warnings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = spaces.load_space(study.space_name, study.benchmark, text=study.space_text)
    os.makedirs(os.path.dirname(study.optuna_journal), exist_ok=True)
    searcher = classes["TimedSearch"](
        space=space.distributions(), metric=study.metric, mode=study.mode, max_t=study.max_t,
        points_to_evaluate=[study.default_point] if study.default_point else None,
        sampler=optuna.samplers.TPESampler(seed=study.seed), study_name=study.name,
        storage=optuna_storage(study.optuna_journal))
    scheduler = classes["TimedASHA"](time_attr="epoch", metric=study.metric, mode=study.mode, max_t=study.max_t,
                                     grace_period=study.grace_period, reduction_factor=study.reduction_factor)
    recorder = classes["SyncRecorder" if sync else "TimedRecorder"]("search", study.metric, study.max_t,
                                                                    study.fields, study.num_samples)
    trainable = tune.with_resources(make_trainable(study.max_t, checkpoint, epoch_s, warm_n, warm_s), {"cpu": study.cpus_per_trial})
    extra = {}
    if hasattr(phases, "trial_dirname"):
        extra["trial_dirname_creator"] = phases.trial_dirname
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=study.num_samples,
                                    max_concurrent_trials=study.max_concurrent, reuse_actors=True, **extra),
        run_config=phases._run_config(study, "search", [recorder, classes["TimedMarkers"](study.folder)], False))


# --- MLflow: did everything arrive --------------------------------------------------------------

def check_store(db: str, exp_id: str, max_t: int) -> dict:
    con = sqlite3.connect(db, timeout=60)
    try:
        runs = dict(con.execute(
            "SELECT t.value, r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'crkd.key' "
            "JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = 'crkd.role' AND role.value = 'trial' "
            "WHERE r.experiment_id = ?", (int(exp_id),)).fetchall())
        status = dict(con.execute("SELECT run_uuid, status FROM runs WHERE experiment_id = ?", (int(exp_id),)))
        rows = con.execute(
            "SELECT m.run_uuid, m.key, m.step, COUNT(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE r.experiment_id = ? GROUP BY m.run_uuid, m.key, m.step", (int(exp_id),)).fetchall()
    finally:
        con.close()
    have = {(r, k, s): n for r, k, s, n in rows}
    expected = {(runs.get(tid), k, e) for tid, epochs in SEEN.items() for e in epochs if e > 0 for k in LOGGED}
    missing = sum(1 for x in expected if x not in have)
    dup = sum(1 for x, n in have.items() if n > 1 and x in expected)
    extra = sum(1 for x in have if x not in expected)
    open_runs = sum(1 for tid in SEEN if status.get(runs.get(tid)) != "FINISHED")
    return {"expected_rows": len(expected), "rows": len(have), "missing": missing, "duplicates": dup,
            "extra_rows": extra, "runs": len(runs), "runs_missing": sum(1 for t in SEEN if t not in runs),
            "open_runs": open_runs}


# --- one case ----------------------------------------------------------------------------------------

def session_cpu(sid: int) -> float:
    """CPU seconds of the live processes of a session (this driver and its Ray, or the server)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:   # fields after the name: state ppid pgrp session ... utime(11) stime(12)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pct(xs: list, q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(math.ceil(q * len(s))) - 1)]


def ms(x: float) -> float:
    return round(1000 * x, 3)


def run_case(backend: str, uri: str, db: str, trials: int, sync: bool, args, classes, root: str) -> dict:
    for d in (T, SEEN, PIDS, WARM):
        d.clear()
    ARRIVALS.clear()
    ORDER.clear()
    WARM_N[0] = args.concurrent if args.warmup_s else 0
    from harness import recorder
    name = f"bench-{backend}-{'sync' if sync else 'journal'}-{trials}-{int(time.time())}"
    study = make_study(name, root, uri, args, trials)
    exp_id, writer = open_tracking(study, classes, sync, null=backend == "none")
    tuner = build_tuner(study, classes, sync, args.checkpoint, args.epoch_s,
                        args.concurrent if args.warmup_s else 0, args.warmup_s)

    pending = [0]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.25):
            pending[0] = max(pending[0], writer.pending())
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    prof = None
    if args.profile:
        import cProfile
        prof = cProfile.Profile(time.thread_time)  # CPU time: what the loop itself spends, not waits
    sid = os.getsid(0)
    server_sid = SERVER.get("sid")
    s0, v0 = session_cpu(sid), (session_cpu(server_sid) if server_sid else 0.0)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = time.thread_time()
    start = pc()
    if prof:
        prof.enable()
    results = tuner.fit()
    if prof:
        prof.disable()
    fit_s = pc() - start
    loop_cpu = time.thread_time() - cpu0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    s1, v1 = session_cpu(sid), (session_cpu(server_sid) if server_sid else 0.0)
    left = writer.pending()
    f0 = pc()
    flushed = writer.flush(timeout=args.flush_timeout)
    flush_s = pc() - f0
    stop.set()
    watcher.join()
    stats = writer.stats
    sync_stats = recorder.ACTIVE.get("sync_writer").stats if sync else None
    writer.close(timeout=5)
    if sync:
        recorder.ACTIVE.pop("sync_writer").close(timeout=5)

    n = len(ARRIVALS)
    trial_objs = list(results._experiment_analysis.trials)
    errors = sum(t.status == "ERROR" for t in trial_objs)
    reached = [int((t.last_result or {}).get("epoch", 0)) for t in trial_objs]
    steady = float("nan")
    if n >= 20:
        lo, hi = ARRIVALS[int(0.1 * n)], ARRIVALS[int(0.9 * n)]
        steady = (int(0.9 * n) - int(0.1 * n)) / (hi - lo) if hi > lo else float("nan")
    warm = [min(i for i, (tid, _) in enumerate(ORDER) if tid == w) for w in WARM] if WARM else []
    after = float("nan")
    if warm and max(warm) < n - 1:
        k = max(warm)
        after = (n - 1 - k) / (ARRIVALS[-1] - ARRIVALS[k]) if ARRIVALS[-1] > ARRIVALS[k] else float("nan")
    rr = T["rec.result"]
    rec_all = sum(sum(T[k]) for k in ("rec.start", "rec.result", "rec.complete", "rec.end"))
    opt = {k: T[f"optuna.{k}"] for k in ("suggest", "result", "complete")}
    sug = opt["suggest"]
    tenth = max(1, len(sug) // 10)
    store = check_store(db, exp_id, args.epochs) if backend != "none" else {}
    timed_total = rec_all + sum(sum(v) for v in opt.values()) + sum(T["asha.result"]) + sum(T["markers.complete"])
    cpu = lambda *kinds: sum(sum(T[k + "#cpu"]) for k in kinds)  # noqa: E731
    rec_cpu = cpu("rec.start", "rec.result", "rec.complete", "rec.end")
    opt_cpu = cpu("optuna.suggest", "optuna.result", "optuna.complete")
    other_cpu = cpu("asha.result", "markers.complete")
    per = lambda x: ms(x / max(1, n))  # noqa: E731
    case = {
        "backend": backend, "mode": "sync" if sync else "journal", "trials": trials, "errors": errors,
        "results": n, "results_per_trial": round(n / max(1, trials), 2),
        "results_seen_by_tune": sum(reached), "actor_processes": len(PIDS), "fit_s": round(fit_s, 2),
        "first_result_s": round(ARRIVALS[0] - start, 2) if n else None,
        "results_per_s": round(n / fit_s, 1), "results_per_s_steady": round(steady, 1),
        "results_per_s_after_warmup": round(after, 1),
        "loop_cpu_ms_per_result": ms(loop_cpu / max(1, n)),
        "max_results_per_s_one_core": round(n / loop_cpu, 1) if loop_cpu else None,
        "cpu_ms_per_result": {"recorder": per(rec_cpu), "recorder.on_trial_result": per(cpu("rec.result")),
                              "recorder.on_trial_start": per(cpu("rec.start")), "optuna": per(opt_cpu),
                              "asha+markers": per(other_cpu),
                              "tune+ray (the rest of the loop)": per(loop_cpu - rec_cpu - opt_cpu - other_cpu)},
        "session_cpu_s": round(s1 - s0, 1), "server_cpu_s": round(v1 - v0, 1) if server_sid else None,
        "process_cpu_s": round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 2),
        "loop_cpu_s": round(loop_cpu, 2), "loop_busy": round(loop_cpu / fit_s, 3),
        "rec_result_ms_mean": ms(statistics.fmean(rr)) if rr else None,
        "rec_result_ms_p50": ms(pct(rr, 0.5)), "rec_result_ms_p99": ms(pct(rr, 0.99)), "rec_result_ms_max": ms(max(rr or [0])),
        "rec_all_ms_per_result": ms(rec_all / max(1, n)),
        "rec_start_ms_mean": ms(statistics.fmean(T["rec.start"])) if T["rec.start"] else None,
        "rec_complete_ms_mean": ms(statistics.fmean(T["rec.complete"])) if T["rec.complete"] else None,
        "append_ms_per_result": ms((sync_stats or stats).append_s / max(1, n)),
        "optuna_ms_per_trial": ms(sum(sum(v) for v in opt.values()) / max(1, trials)),
        "optuna_suggest_ms_mean": ms(statistics.fmean(sug)) if sug else None,
        "optuna_suggest_ms_first10pct": ms(statistics.fmean(sug[:tenth])) if sug else None,
        "optuna_suggest_ms_last10pct": ms(statistics.fmean(sug[-tenth:])) if sug else None,
        "optuna_report_ms_mean": ms(statistics.fmean(opt["result"])) if opt["result"] else None,
        "optuna_tell_ms_mean": ms(statistics.fmean(opt["complete"])) if opt["complete"] else None,
        "asha_ms_per_result": ms(sum(T["asha.result"]) / max(1, n)),
        "markers_ms_per_trial": ms(sum(T["markers.complete"]) / max(1, trials)),
        "tune_other_ms_per_result": ms((fit_s - timed_total) / max(1, n)),
        "journal_write_ms_mean": ms(statistics.fmean(T["journal.write"])) if T["journal.write"] else None,
        "journal_write_ms_p99": ms(pct(T["journal.write"], 0.99)),
        "journal_fsyncs": len(T["journal.fsync"]),
        "journal_fsync_ms_mean": ms(statistics.fmean(T["journal.fsync"])) if T["journal.fsync"] else None,
        "journal_fsync_ms_max": ms(max(T["journal.fsync"] or [0])),
        "pending_at_fit_end": left, "pending_max": max(pending[0], left), "flush_s": round(flush_s, 2),
        "flushed": flushed, "events": stats.events + (sync_stats.events if sync_stats else 0),
        "writer_errors": len(stats.errors),
        "timings": {k: {"n": len(v), "mean_ms": ms(statistics.fmean(v)), "p99_ms": ms(pct(v, 0.99)),
                        "max_ms": ms(max(v)), "cpu_mean_ms": ms(statistics.fmean(T[k + "#cpu"])) if T[k + "#cpu"] else None}
                    for k, v in sorted(T.items()) if v and not k.endswith("#cpu")},
        "sink_ms": {k[5:]: {"calls": len(v), "mean_ms": ms(statistics.fmean(v)), "total_s": round(sum(v), 2)}
                    for k, v in sorted(T.items()) if k.startswith("sink.") and not k.endswith("#cpu") and v},
        **store,
    }
    if prof:
        os.makedirs(args.profile, exist_ok=True)
        path = os.path.join(args.profile, f"{backend}-{case['mode']}-{trials}.prof")
        prof.dump_stats(path)
        buf = io.StringIO()
        pstats.Stats(path, stream=buf).sort_stats("tottime").print_stats(25)
        case["profile"] = path
        print(buf.getvalue())
    return case


# --- the HTTP server ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: str, workers: int):
    os.makedirs(folder, exist_ok=True)
    port = free_port()
    db = os.path.join(folder, "server.db")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", os.path.join(folder, "artifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]
    log = open(os.path.join(folder, "server.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    SERVER["sid"] = proc.pid
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer in 180 s; see {log.name}")
            time.sleep(0.5)
        yield url, db
    finally:
        try:
            os.killpg(proc.pid, 15)  # its own session: the server and its workers
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        log.close()
        SERVER.clear()


# --- the table ------------------------------------------------------------------------------------------

COLUMNS = [("backend", "backend", "{}"), ("mode", "mode", "{}"), ("trials", "trials", "{}"),
           ("results", "results", "{}"), ("actors", "actor_processes", "{}"), ("fit s", "fit_s", "{:.1f}"), ("res/s", "results_per_s", "{:.0f}"),
           ("res/s steady", "results_per_s_steady", "{:.0f}"), ("res/s after warm", "results_per_s_after_warmup", "{:.0f}"), ("loop cpu ms/res", "loop_cpu_ms_per_result", "{:.2f}"), ("loop busy", "loop_busy", "{:.2f}"),
           ("max res/s 1 core", "max_results_per_s_one_core", "{:.0f}"),
           ("rec ms mean", "rec_result_ms_mean", "{:.3f}"), ("rec ms p99", "rec_result_ms_p99", "{:.3f}"),
("rec all ms/res", "rec_all_ms_per_result", "{:.3f}"),
           ("optuna ms/trial", "optuna_ms_per_trial", "{:.1f}"),
           ("flush s", "flush_s", "{:.2f}"), ("backlog max", "pending_max", "{}"), ("missing", "missing", "{}"),
           ("dup", "duplicates", "{}"), ("open", "open_runs", "{}")]


def table(cases: list[dict]) -> str:
    head = [c[0] for c in COLUMNS]
    rows = [[fmt.format(c[k]) if c.get(k) is not None else "-" for _, k, fmt in COLUMNS] for c in cases]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(x.rjust(w) for x, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def machine() -> dict:
    import mlflow
    import optuna
    import ray
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg(),
            "python": platform.python_version(), "ray": ray.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__, "commit": commit, "command": " ".join([sys.executable, *sys.argv])}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", default="100,300,1000", help="comma-separated sizes (default 100,300,1000)")
    p.add_argument("--http-trials", help="sizes for the http backend (default: --trials without 1000)")
    p.add_argument("--backends", default="sqlite,http",
                   help="sqlite, http, none (a sink that writes nothing: the driver without MLflow's work in "
                        "its process) (default sqlite,http)")
    p.add_argument("--sync-trials", default="100", help="sizes of the synchronous (pre-journal) comparison, "
                                                        "per backend in --sync-backends (default 100)")
    p.add_argument("--sync-backends", default="sqlite", help="backends of the synchronous comparison (default sqlite)")
    p.add_argument("--no-sync", action="store_true", help="skip the synchronous comparison")
    p.add_argument("--epochs", type=int, default=10, help="epochs of a trial that ASHA lets finish (default 10)")
    p.add_argument("--grace", type=int, default=1, help="ASHA grace period (default 1 = max_t/10, the harness's)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    p.add_argument("--concurrent", type=int, default=16,
                   help="trials that fit at once: max_concurrent_trials (plus --pending) (default 16)")
    p.add_argument("--cpus", type=float, help="CPUs per trial (default: Ray's CPUs / --concurrent, so that the trials "
                                              "fill the node as the harness's do; with room to spare, Tune starts a "
                                              "worker process for every new trial even when it then hands the trial "
                                              "a cached actor)")
    p.add_argument("--epoch-s", type=float, default=0.0,
                   help="seconds each stand-in epoch sleeps before it reports (default 0: instant)")
    p.add_argument("--pending", type=int, default=0,
                   help="trials in flight beyond those that fit (max_concurrent_trials = --concurrent + this; "
                        "default 0). With 0, as in the harness, Tune caches a stopped trial's actor only "
                        "while no other is cached: two trials that stop in one step cost an actor, and the next "
                        "trial a new worker process; with staged trials every stopped actor is kept for them")
    p.add_argument("--warmup-s", type=float, default=0.0,
                   help="the first --concurrent trials wait this long before their first epoch, so that all their "
                        "actors are up before trials start ending (default 0: none; e.g. 60 on a busy 2-core machine). Without it, Tune hands each "
                        "new trial the actor of one that just ended before any other actor has started, and instant "
                        "trials run one or two at a time")
    p.add_argument("--checkpoint", action="store_true", help="report a tiny checkpoint every epoch, as real trials do")
    p.add_argument("--worker-niceness", type=int, default=0,
                   help="niceness of Ray's workers (Ray's default is 15; 0: the trial actors run at normal priority "
                        "like this driver, not starved by other normal-priority work on a small machine)")
    p.add_argument("--no-tune-loggers", action="store_true",
                   help="TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1: without Tune's JSON/CSV/TensorBoard result files")
    p.add_argument("--workers", type=int, default=1, help="mlflow server --workers (default 1)")
    p.add_argument("--flush-timeout", type=float, default=600.0, help="seconds to wait for the writer after fit()")
    p.add_argument("--profile", metavar="DIR", help="cProfile Tune's loop (the main thread) of each case into DIR")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary studies and stores")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in args.trials.split(",") if x]
    http_sizes = [int(x) for x in args.http_trials.split(",")] if args.http_trials else [s for s in sizes if s < 1000] or sizes
    sync_sizes = [] if args.no_sync else [int(x) for x in args.sync_trials.split(",") if x]
    backends = [b for b in args.backends.split(",") if b]
    sync_backends = [b for b in args.sync_backends.split(",") if b]

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from harness.console import quiet_ray
    quiet_ray(False)
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    if args.no_tune_loggers:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    import ray
    root = tempfile.mkdtemp(prefix="driver-bench-")
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg'][0]:.1f}; python {info['python']}, "
          f"ray {info['ray']}, optuna {info['optuna']}, mlflow {info['mlflow']}; commit {info['commit']}")
    print(f"trials of up to {args.epochs} epochs (ASHA grace {args.grace}, rf {args.reduction_factor:g}), "
          f"{args.concurrent} at a time (+{args.pending or 0} pending, warm-up {args.warmup_s:g} s), {args.epoch_s:g} s per epoch, {len(KEYS)} numbers per result, Ray workers at nice "
          f"{args.worker_niceness}{', no Tune result loggers' if args.no_tune_loggers else ''}"
          f"{', a checkpoint per epoch' if args.checkpoint else ''}; studies in {root}", flush=True)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    if args.cpus is None:
        args.cpus = ray.cluster_resources().get("CPU", 1) / args.concurrent
        print(f"{args.cpus:g} CPU per trial: {args.concurrent} trials fill Ray's {ray.cluster_resources().get('CPU')} CPUs")
    classes = timed_classes()
    cases = []

    def run(backend, uri, db, n, sync):
        case = run_case(backend, uri, db, n, sync, args, classes, root)
        cases.append(case)
        print(f"{backend} {case['mode']} {n} trials: {case['results']} results in {case['fit_s']} s, "
              f"{case['results_per_s']}/s ({case['results_per_s_steady']}/s steady); on_trial_result "
              f"{case['rec_result_ms_mean']} ms mean, {case['rec_result_ms_p99']} ms p99; flush {case['flush_s']} s; "
              f"missing {case.get('missing')}, dup {case.get('duplicates')}, open runs {case.get('open_runs')}", flush=True)

    try:
        for backend in backends:
            todo = [(n, False) for n in (http_sizes if backend == "http" else sizes)]
            todo += [(n, True) for n in sync_sizes if backend in sync_backends]
            if backend == "sqlite":
                db = os.path.join(root, "sqlite-store", "mlflow.db")
                os.makedirs(os.path.dirname(db), exist_ok=True)
                for n, sync in todo:
                    run(backend, f"sqlite:///{db}", db, n, sync)
            elif backend == "none":  # the study's parent run in sqlite, every trial write to a null sink
                db = os.path.join(root, "none-store", "mlflow.db")
                os.makedirs(os.path.dirname(db), exist_ok=True)
                for n, sync in todo:
                    run(backend, f"sqlite:///{db}", db, n, sync)
            elif backend == "http":
                with mlflow_server(os.path.join(root, "http-store"), args.workers) as (url, db):
                    for n, sync in todo:
                        run(backend, url, db, n, sync)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
    finally:
        ray.shutdown()
        print()
        if cases:
            print(table(cases))
            print("\nsink (writer thread, or Tune's loop in sync mode), ms per call:")
            for c in cases:
                print(f"  {c['backend']} {c['mode']} {c['trials']}: " + ", ".join(
                    f"{k} {v['mean_ms']:.1f} x{v['calls']}" for k, v in c["sink_ms"].items()))
            print("\noptuna ms: suggest mean (first 10% / last 10% of trials), report per result, tell per trial:")
            for c in cases:
                print(f"  {c['backend']} {c['mode']} {c['trials']}: suggest {c['optuna_suggest_ms_mean']} "
                      f"({c['optuna_suggest_ms_first10pct']} / {c['optuna_suggest_ms_last10pct']}), report "
                      f"{c['optuna_report_ms_mean']}, tell {c['optuna_tell_ms_mean']}; asha {c['asha_ms_per_result']} "
                      f"ms/result; loop cpu {c['loop_cpu_s']} s of {c['fit_s']} s fit, process cpu {c['process_cpu_s']} s")
            print("\nthe loop's CPU (main thread, thread_time) per result, by part:")
            for c in cases:
                print(f"  {c['backend']} {c['mode']} {c['trials']}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in c["cpu_ms_per_result"].items())
                    + f"; session CPU {c['session_cpu_s']} s" + (f", server CPU {c['server_cpu_s']} s" if c.get("server_cpu_s") is not None else ""))
            print("\njournal.append in the driver: write ms mean / p99, fsyncs (once a second) ms mean / max; first result at:")
            for c in cases:
                print(f"  {c['backend']} {c['mode']} {c['trials']}: write {c['journal_write_ms_mean']} / "
                      f"{c['journal_write_ms_p99']}, {c['journal_fsyncs']} fsyncs {c['journal_fsync_ms_mean']} / "
                      f"{c['journal_fsync_ms_max']}; first result {c['first_result_s']} s after fit() began")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": info, "settings": vars(args), "cases": cases}, f, indent=1)
            print(f"\nfigures: {args.json}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
