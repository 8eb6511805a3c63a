#!/usr/bin/env python
"""What the driver costs per result: the harness's search machinery (Tune + Optuna TPE
via PruningOptunaSearch + ASHA + the Recorder callback writing a Journal that a Writer
thread applies to MLflow through tracking.Sink), in this process, on a local Ray, with a
stand-in trainable that reports its epochs instantly (no training), so the driver is the
bottleneck.

    python benchmarks/driver_bench.py                                  # sqlite + http, 100/300/1000 trials, sync at 100
    python benchmarks/driver_bench.py --backends sqlite --trials 100 --no-sync
    python benchmarks/driver_bench.py --trials 300 --profile /tmp/prof  # cProfile of Tune's loop (main thread)
    python benchmarks/driver_bench.py --json out.json

Each case is one `tuner.fit()` of its own study (a new MLflow experiment, Optuna journal and
Tune folder under a temporary root), set up like harness/phases.py `search` sets one up
and like harness/driver.py `_open_tracking` opens its tracking. Backends: `sqlite` (a
temporary store, as `--tracking-uri` left empty) and `http` (an `mlflow server` this script
starts on 127.0.0.1 with its own sqlite database and artifact folder, stopped at the end).
`sync` cases are the design before the journal: a Recorder whose writer applies every
event to MLflow inside the callback, on Tune's loop.

Figures per case:
  results/s       results / wall time of fit() (actor start-up included), and "steady":
                  the results between the 10th and 90th percentile of their arrival times
                  over that span (start-up and tail excluded)
  loop ms/result  main-thread CPU time of fit() / results: all the driver's own work per result
  rec ms/result   Recorder.on_trial_result wall time, mean / p99 / max over results; "rec all":
                  every Recorder callback (start, result, complete) / results
  optuna ms/trial PruningOptunaSearch suggest + on_trial_result + on_trial_complete, per trial
  flush s         after fit(): time until the writer has applied every event
  missing / dup   metric rows in MLflow against the results the driver saw: (run, key, step)
                  expected and absent, and present more than once; "open": trial runs that are
                  not FINISHED
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
sys.path.insert(0, ROOT)

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
ARRIVALS: list = []                    # perf_counter of each on_trial_result
_DEPTH: dict = {}                      # (thread, kind prefix) -> depth: only the outermost call is timed


def pc() -> float:
    return time.perf_counter()


# --- the stand-in trainable ------------------------------------------------------------------

def make_trainable(epochs: int, checkpoint: bool):
    def standin(config):
        import math as m

        from ray import tune
        a, b = config["alpha"], config["beta"]
        score = 1.0 / (1.0 + abs(m.log(a)) + 0.5 * abs(m.log(b / 0.1)))   # best at the paper's defaults
        for e in range(1, epochs + 1):
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
        start = pc()
        try:
            return fn(*a, **kw)
        finally:
            depth[0] -= 1
            if outer:
                T[kind].append(pc() - start)

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
            SEEN[trial.trial_id].add(int(result.get("epoch", 0)))
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

    return dict(TimedJournal=TimedJournal, TimedRecorder=TimedRecorder, SyncRecorder=SyncRecorder, SyncWriter=SyncWriter,
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
                 num_samples=trials, max_concurrent=args.concurrent, cpus_per_trial=args.cpus,
                 gpus_per_trial=0.0, max_t=args.epochs, grace_period=args.grace,
                 reduction_factor=args.reduction_factor, keep_checkpoints=5, confirm_seeds=0,
                 command="driver_bench", created=time.strftime("%Y-%m-%dT%H:%M:%S"), git_commit="bench").bind(root)


def open_tracking(study, classes, sync: bool):
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
    sink = classes["TimedSink"](study.tracking, exp_id, parent)
    writer = Writer(classes["TimedJournal"](driver.journal_folder(study)), sink)
    os.makedirs(study.folder, exist_ok=True)
    console = Console(stream=open(os.path.join(study.folder, "console.log"), "w"))
    recorder.ACTIVE.update(writer=writer, console=console, study=study)
    if sync:
        recorder.ACTIVE["sync_writer"] = classes["SyncWriter"](Journal(os.path.join(study.folder, "sync-journal")),
                                                               classes["TimedSink"](study.tracking, exp_id, parent))
    writer.put({"op": "tags", "key": "study", "tags": {"crkd.started": "true"}})
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "study.yaml"), "w") as f:
        f.write(study.to_yaml())
    writer.put({"op": "files", "key": "study", "dir": writer.journal.stash(d), "path": "study"})
    shutil.rmtree(d)
    return exp_id, writer


def build_tuner(study, classes, sync: bool, checkpoint: bool):
    """Like harness/phases.py `search`, with the stand-in trainable."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune

    from harness import phases, spaces
    import warnings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    space = spaces.load_space(study.space_name, study.benchmark, text=study.space_text)
    os.makedirs(os.path.dirname(study.optuna_journal), exist_ok=True)
    searcher = classes["TimedSearch"](
        space=space.distributions(), metric=study.metric, mode=study.mode, max_t=study.max_t,
        points_to_evaluate=[study.default_point] if study.default_point else None,
        sampler=optuna.samplers.TPESampler(seed=study.seed), study_name=study.name,
        storage=JournalStorage(JournalFileBackend(study.optuna_journal)))
    scheduler = classes["TimedASHA"](time_attr="epoch", metric=study.metric, mode=study.mode, max_t=study.max_t,
                                     grace_period=study.grace_period, reduction_factor=study.reduction_factor)
    recorder = classes["SyncRecorder" if sync else "TimedRecorder"]("search", study.metric, study.max_t,
                                                                    study.fields, study.num_samples)
    trainable = tune.with_resources(make_trainable(study.max_t, checkpoint), {"cpu": study.cpus_per_trial})
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

def pct(xs: list, q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(math.ceil(q * len(s))) - 1)]


def ms(x: float) -> float:
    return round(1000 * x, 3)


def run_case(backend: str, uri: str, db: str, trials: int, sync: bool, args, classes, root: str) -> dict:
    for d in (T, SEEN):
        d.clear()
    ARRIVALS.clear()
    from harness import recorder
    name = f"bench-{backend}-{'sync' if sync else 'journal'}-{trials}-{int(time.time())}"
    study = make_study(name, root, uri, args, trials)
    exp_id, writer = open_tracking(study, classes, sync)
    tuner = build_tuner(study, classes, sync, args.checkpoint)

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
        prof = cProfile.Profile()
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
    rr = T["rec.result"]
    rec_all = sum(sum(T[k]) for k in ("rec.start", "rec.result", "rec.complete", "rec.end"))
    opt = {k: T[f"optuna.{k}"] for k in ("suggest", "result", "complete")}
    sug = opt["suggest"]
    tenth = max(1, len(sug) // 10)
    store = check_store(db, exp_id, args.epochs)
    timed_total = rec_all + sum(sum(v) for v in opt.values()) + sum(T["asha.result"]) + sum(T["markers.complete"])
    case = {
        "backend": backend, "mode": "sync" if sync else "journal", "trials": trials, "errors": errors,
        "results": n, "results_per_trial": round(n / max(1, trials), 2),
        "results_seen_by_tune": sum(reached), "fit_s": round(fit_s, 2),
        "first_result_s": round(ARRIVALS[0] - start, 2) if n else None,
        "results_per_s": round(n / fit_s, 1), "results_per_s_steady": round(steady, 1),
        "loop_cpu_ms_per_result": ms(loop_cpu / max(1, n)),
        "process_cpu_s": round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 2),
        "loop_cpu_s": round(loop_cpu, 2),
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
        "sink_ms": {k[5:]: {"calls": len(v), "mean_ms": ms(statistics.fmean(v)), "total_s": round(sum(v), 2)}
                    for k, v in sorted(T.items()) if k.startswith("sink.") and v},
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


# --- the table ------------------------------------------------------------------------------------------

COLUMNS = [("backend", "backend", "{}"), ("mode", "mode", "{}"), ("trials", "trials", "{}"),
           ("results", "results", "{}"), ("fit s", "fit_s", "{:.1f}"), ("res/s", "results_per_s", "{:.0f}"),
           ("res/s steady", "results_per_s_steady", "{:.0f}"), ("loop cpu ms/res", "loop_cpu_ms_per_result", "{:.2f}"),
           ("rec ms mean", "rec_result_ms_mean", "{:.3f}"), ("rec ms p99", "rec_result_ms_p99", "{:.3f}"),
           ("rec ms max", "rec_result_ms_max", "{:.1f}"), ("rec all ms/res", "rec_all_ms_per_result", "{:.3f}"),
           ("optuna ms/trial", "optuna_ms_per_trial", "{:.1f}"), ("tune other ms/res", "tune_other_ms_per_result", "{:.2f}"),
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
    p.add_argument("--backends", default="sqlite,http", help="sqlite, http or both (default both)")
    p.add_argument("--sync-trials", default="100", help="sizes of the synchronous (pre-journal) comparison, "
                                                        "per backend in --sync-backends (default 100)")
    p.add_argument("--sync-backends", default="sqlite", help="backends of the synchronous comparison (default sqlite)")
    p.add_argument("--no-sync", action="store_true", help="skip the synchronous comparison")
    p.add_argument("--epochs", type=int, default=10, help="epochs of a trial that ASHA lets finish (default 10)")
    p.add_argument("--grace", type=int, default=1, help="ASHA grace period (default 1 = max_t/10, the harness's)")
    p.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor (default 3)")
    p.add_argument("--concurrent", type=int, default=16, help="max_concurrent_trials (default 16)")
    p.add_argument("--cpus", type=float, default=0.05, help="CPUs per trial (default 0.05)")
    p.add_argument("--checkpoint", action="store_true", help="report a tiny checkpoint every epoch, as real trials do")
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
    import ray
    root = tempfile.mkdtemp(prefix="driver-bench-")
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg'][0]:.1f}; python {info['python']}, "
          f"ray {info['ray']}, optuna {info['optuna']}, mlflow {info['mlflow']}; commit {info['commit']}")
    print(f"trials of up to {args.epochs} epochs (ASHA grace {args.grace}, rf {args.reduction_factor:g}), "
          f"{args.concurrent} at a time, {args.cpus:g} CPU each, {len(KEYS)} numbers per result"
          f"{', a checkpoint per epoch' if args.checkpoint else ''}; studies in {root}", flush=True)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
             logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    classes = timed_classes()
    cases = []

    def run(backend, uri, db, n, sync):
        case = run_case(backend, uri, db, n, sync, args, classes, root)
        cases.append(case)
        print(f"{backend} {case['mode']} {n} trials: {case['results']} results in {case['fit_s']} s, "
              f"{case['results_per_s']}/s ({case['results_per_s_steady']}/s steady); on_trial_result "
              f"{case['rec_result_ms_mean']} ms mean, {case['rec_result_ms_p99']} ms p99; flush {case['flush_s']} s; "
              f"missing {case['missing']}, dup {case['duplicates']}, open runs {case['open_runs']}", flush=True)

    try:
        for backend in backends:
            todo = [(n, False) for n in (sizes if backend == "sqlite" else http_sizes)]
            todo += [(n, True) for n in sync_sizes if backend in sync_backends]
            if backend == "sqlite":
                db = os.path.join(root, "sqlite-store", "mlflow.db")
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
