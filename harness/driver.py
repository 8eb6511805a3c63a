"""The driver of a study: one per study, it holds the lock, starts Ray, keeps MLflow
(through the journal), runs the phases and ends cleanly whatever stops it.

Exit codes: 0 the study ended; 1 every run failed; 2 bad input; 3 more than half of the
runs failed; 130 interrupted (Ctrl-C, SIGTERM): `--resume` continues.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
import time

from . import phases, storage
from .console import Console, duration, quiet_ray
from .settings import Study

EXIT_OK, EXIT_ALL_FAILED, EXIT_BAD_INPUT, EXIT_MOST_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
logger = logging.getLogger(__name__)


def fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(EXIT_BAD_INPUT)


def journal_folder(study: Study) -> str:
    if storage.is_uri(study.root):
        return os.path.join(os.path.expanduser("~"), ".cache", "crkd-tune", "tracking", study.name)
    return study.path("tracking")


def description(study: Study, counts: dict | None = None, summary: dict | None = None) -> str:
    """The MLflow note of the study's experiment and parent run (markdown)."""
    lines = [f"**{study.name}**: {study.kind} on `{study.benchmark}`"]
    if study.kind == "study":
        how = ("proxy task (hidden known classes; no novel label read)" if study.objective == "proxy"
               else "**novel labels (the papers' protocol: LEAKY, scores optimistic)**")
        lines.append(f"Search: space `{study.space_name}`, {study.num_samples} trials, objective "
                     f"`{study.metric}` ({study.mode}) on the {how}; ASHA up to {study.max_t} epochs.")
    if study.confirm_seeds:
        lines.append(f"Confirmation: top {study.confirm_top} + baselines on the real split, seeds "
                     f"{study.confirmation_seeds} (the search used {study.seed}).")
    if counts:
        lines.append("Runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".")
    if summary and summary.get("supported"):
        lines.append(f"The confirmation supports **{summary['supported']}** (report/report.md).")
    return "\n\n".join(lines)


class Driver:
    def __init__(self, study: Study, resume: bool, address: str | None, verbose: bool,
                 lock: storage.DriverLock | None = None):
        self.study, self.resume, self.address, self.verbose = study, resume, address, verbose
        self.console = Console()
        self.lock = lock or storage.DriverLock(study.folder)  # `lock`: taken already (a new study)
        self.writer = None
        self.report_files = None  # the report, stashed in the tracking journal for the parent run
        self.interrupted = False

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> int:
        try:
            if not self.lock.held:
                self.lock.acquire()
        except storage.Busy as e:
            fail(str(e))
        start = time.time()
        code = EXIT_OK
        previous = signal.signal(signal.SIGTERM, _term_as_interrupt)
        try:
            self._open_tracking()
            self._start_ray()
            # ray.init replaces the SIGTERM handler (its core worker's crashes the process with a
            # stack dump): ours again, so SIGTERM still ends the study like Ctrl-C.
            signal.signal(signal.SIGTERM, _term_as_interrupt)
            code = self._phases()
        except KeyboardInterrupt:
            self.interrupted = True
            code = EXIT_INTERRUPTED
        finally:
            # Whatever stops us: no more signals until the runs are closed and the journal is on disk.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._close(code, time.time() - start)
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return code

    def _open_tracking(self) -> None:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # "Creating initial MLflow database tables..."
        # an http:// store: no "View run ... at:" lines (and their extra request) for every run ended
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient
        logging.getLogger("mlflow").setLevel(logging.WARNING)

        from . import recorder, tracking
        from .journal import Journal, Writer
        study = self.study
        with tracking.store_lock(study.tracking):  # the client creates (migrates) a new sqlite store
            client = MlflowClient(study.tracking)
        tags = {"crkd.command": study.command, "crkd.git_commit": study.git_commit, "crkd.benchmark": study.benchmark,
                "crkd.kind": study.kind, "crkd.space": study.space_name, "crkd.space_fields": json.dumps(study.fields),
                "crkd.metric": study.metric, "crkd.mode": study.mode, "crkd.objective": study.objective,
                "crkd.max_t": str(study.max_t), "crkd.label_leakage": str(study.leaky).lower(),
                "crkd.optuna_journal": study.optuna_journal}
        params = {"benchmark": study.benchmark, "space": study.space_name, "objective": study.objective,
                  "num_samples": study.num_samples, "max_t": study.max_t, "grace_period": study.grace_period,
                  "reduction_factor": study.reduction_factor, "metric": study.metric, "mode": study.mode,
                  "seed": study.seed, "confirm_top": study.confirm_top, "confirm_seeds": study.confirm_seeds,
                  "overrides": study.overrides}
        try:
            self.experiment_id, self.parent_id = tracking.open_study(
                client, study.name, self.resume or not phases.started(study), tags, params, description(study),
                tracking.views(list(study.fields), study.metric))
        except tracking.TrackingError as e:
            fail(str(e))
        except Exception as e:  # the store itself: unreachable server, broken database
            fail(f"MLflow store {study.tracking} is not usable: {' '.join(str(e).split())[:300]}")
        self.writer = Writer(Journal(journal_folder(study)), tracking.Sink(study.tracking, self.experiment_id,
                                                                          self.parent_id))
        if self.writer.backlog:
            self.console.line(f"tracking: {self.writer.backlog} writes from the last driver are being applied")
        recorder.ACTIVE.update(writer=self.writer, console=self.console, study=study)
        self.writer.put({"op": "tags", "key": "study", "tags": {"crkd.started": "true"}})
        with tempfile.TemporaryDirectory() as d:
            for name, text in (("study.yaml", study.to_yaml()), ("base_config.yaml", study.base_yaml),
                               (f"space/{study.space_name or 'none'}.yaml", study.space_text)):
                os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
                with open(os.path.join(d, name), "w") as f:
                    f.write(text)
            self.writer.put({"op": "files", "key": "study", "dir": self.writer.journal.stash(d), "path": "study"})

    def _start_ray(self) -> None:
        import ray
        quiet_ray(self.verbose)
        if self.address:
            from .cluster import connect
            connect(self.address)
        else:
            # A new local Ray on the loopback interface, never a leftover cluster that Ray's
            # temp folder still names (address="local"), and no dashboard to expose.
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     logging_level=logging.WARNING if self.verbose else logging.ERROR,
                     log_to_driver=self.verbose, configure_logging=True)
        phases.settle_resources(self.study)

    def _phases(self) -> int:
        from .recorder import Recorder
        study, c = self.study, self.console
        done = phases.state(study)
        selection = None
        if study.kind == "study":
            if done.get("search") != "done":
                c.line(f"search: {study.num_samples} trials of up to {study.max_t} epochs on {study.benchmark} "
                       f"({'proxy task, ' + str(study.proxy_folds) + ' fold(s)' if study.objective == 'proxy' else 'real split: LEAKY'}), "
                       f"{study.max_concurrent} at a time; optimising {study.metric} ({study.mode})")
                if study.leaky:
                    c.line(f"note: {study.metric} reads the novel classes' labels: the search's choice is label "
                           f"leakage (the papers' protocol); its scores are optimistic. --objective proxy avoids it")
                selection = phases.search(study, Recorder, self.verbose)
                if selection is None:
                    raise KeyboardInterrupt
                self._search_summary(selection)
            else:
                selection = json.loads(storage.read_text(study.path("selection.json")))
        if study.confirm_seeds == 0:
            c.line("confirmation skipped (--confirm-seeds 0)")
            return self._exit_code(selection, [])
        job_list = self.jobs(selection)
        if done.get("confirm") != "done":
            c.line(f"confirmation: {len(job_list)} runs on the real split, seeds {study.confirmation_seeds} "
                   f"(the search used {study.seed})")
            if not phases.confirm(study, job_list, Recorder, self.verbose):
                raise KeyboardInterrupt
        recs = phases.records(study, job_list)
        self.summary = phases.report(study, job_list)
        # into the journal now (the parent run gets it at the end), so no scratch copy outlives this
        self.report_files = self.writer.journal.stash(self.summary["folder"]) if self.writer else None
        phases.drop_scratch(self.summary)
        self._report_summary()
        return self._exit_code(selection, recs)

    def jobs(self, selection: dict | None) -> list[dict]:
        text = storage.read_text(self.study.path("confirm", "jobs.json"))
        return json.loads(text) if text else phases.jobs(self.study, selection)

    # --- what the console says -----------------------------------------------------------------

    def _search_summary(self, selection: dict) -> None:
        from .tracking import format_table
        sign = -1 if self.study.mode == "max" else 1
        rows = sorted(selection["trials"], key=lambda r: (r["outcome"] != "finished", r["outcome"] != "early-stopped",
                                                          sign * r["score"] if r["score"] is not None else math.inf))
        for i, r in enumerate(rows, 1):  # the MLflow leaderboard view sorts by this
            self.writer.put({"op": "metrics", "key": r["trial_id"], "step": 0, "values": {"rank": float(i)}})
        table = [{"rank": i, "trial": r["number"], "outcome": r["outcome"], "epochs": r["epochs"],
                  self.study.metric: r["score"], **r["params"]} for i, r in enumerate(rows, 1)]
        info = {"metric": self.study.metric, "fields": self.study.fields}
        self.console.line(format_table(info, table, top=10))
        self.console.line("selected for confirmation: "
                          + (", ".join(f"#{next(r['number'] for r in rows if r['trial_id'] == t)}" for t in selection["top"])
                             or "none (no trial finished)"))

    def _report_summary(self) -> None:
        s = self.summary
        self.console.line(f"report: {storage.join(s['where'], 'report.md')}")
        if s.get("supported"):
            self.console.line(f"the confirmation supports: {s['supported']}")
        for baseline, winners in (s.get("beats") or {}).items():
            self.console.line(f"  beats {baseline}: {', '.join(winners) if winners else 'none'}")

    def _exit_code(self, selection: dict | None, recs: list[dict]) -> int:
        outcomes = [r["outcome"] for r in (selection or {}).get("trials", [])] + [r["outcome"] for r in recs]
        failed = sum(o == "failed" for o in outcomes)
        self.counts = {o: outcomes.count(o) for o in ("finished", "early-stopped", "failed") if o in outcomes}
        if outcomes and failed == len(outcomes):
            self.console.line("every run failed (exit code 1)")
            return EXIT_ALL_FAILED
        if outcomes and failed * 2 > len(outcomes):
            self.console.line(f"{failed} of {len(outcomes)} runs failed (exit code 3)")
            return EXIT_MOST_FAILED
        return EXIT_OK

    # --- the end -----------------------------------------------------------------------------------

    def _close(self, code: int, seconds: float) -> None:
        study = self.study
        if self.writer is not None:
            counts = getattr(self, "counts", None)
            summary = getattr(self, "summary", None)
            status = "KILLED" if code == EXIT_INTERRUPTED else "FAILED" if code in (EXIT_ALL_FAILED,) else "FINISHED"
            tags = {"crkd.exit_code": str(code), "mlflow.note.content": description(study, counts, summary)}
            if counts:
                tags["crkd.outcomes"] = json.dumps(counts)
            metrics = {f"runs/{k}": float(v) for k, v in (counts or {}).items()}
            best = _best(study)
            if best is not None:
                metrics[f"best/{study.metric}"] = best
            st = self.writer.stats  # what tracking cost Tune's loop, and how much of it had to wait
            metrics["tracking/append_ms_per_event"] = 1000 * st.append_s / max(st.events, 1)
            metrics["tracking/waited"] = float(st.waited)
            for key in open_runs(self.writer.journal.events()):
                # started and never ended: a second Ctrl-C cut Tune's own ending (the recorder's) short
                self.writer.put({"op": "tags", "key": key, "tags": {"crkd.outcome": "interrupted"}})
                self.writer.put({"op": "end", "key": key, "status": "KILLED"})
            if self.report_files:
                self.writer.put({"op": "files", "key": "study", "dir": self.report_files, "path": "report"})
            self.writer.put({"op": "tags", "key": "study", "tags": tags})
            if metrics:
                self.writer.put({"op": "metrics", "key": "study", "step": 0, "values": metrics})
            self.writer.put({"op": "end", "key": "study", "status": status})
            self._plots()
            done = self.writer.close(timeout=30)
            st = self.writer.stats
            waited = f", {st.waited} waited for the server (longest {st.longest_wait_s:.0f} s)" if st.waited else ""
            self.console.line(f"tracking: {st.applied} writes{waited}"
                              + ("" if done else f"; {st.events - st.applied} still in the journal: "
                                 f"python harness/sync.py --name {study.name}"))
        self.lock.release()
        try:
            import ray
            if ray.is_initialized():
                ray.shutdown()
        except Exception:
            pass
        self._where(code, seconds)

    def _plots(self) -> None:
        """The study's plots (all search trials, pruned ones included) on the parent run."""
        if self.study.kind != "study" or not os.path.exists(self.study.optuna_journal):
            return
        try:
            from .plots import study_plots
            with tempfile.TemporaryDirectory(prefix="crkd-plots-") as folder:
                study_plots(self.study, folder)
                storage.copy_dir(folder, self.study.path("plots"))  # beside the report, and on the parent run
                self.writer.put({"op": "files", "key": "study", "dir": self.writer.journal.stash(folder),
                                 "path": "plots"})
        except Exception as e:  # plots must not cost a study its ending
            logger.warning("study plots failed: %s", e)

    def _where(self, code: int, seconds: float) -> None:
        from .tracking import ui_command, ui_link
        study, c = self.study, self.console
        flag = "" if study.root == storage.normalize("runs") else f" --storage {study.root}"
        c.line(f"\nstudy {study.name}: {duration(seconds)}")
        if getattr(self, "experiment_id", None):
            c.line(f"browse:   {ui_command(study.tracking)}")
            if study.kind == "study":
                c.line(f"          leaderboard   {ui_link(study.tracking, self.experiment_id, 'leaderboard')}")
            if study.confirm_seeds:
                c.line(f"          confirmation  {ui_link(study.tracking, self.experiment_id, 'confirmation')}")
        if study.kind == "study":
            c.line(f"optuna:   optuna-dashboard {study.optuna_journal}   (pip install -e '.[dashboard]')")
            c.line(f"table:    python harness/leaderboard.py --name {study.name}{flag}")
        c.line(f"export:   python harness/export.py --name {study.name}{flag} --out exported/{study.name}")
        if code == EXIT_INTERRUPTED:
            c.line(f"\ninterrupted; continue with:\n  python harness/tune.py --resume --name {study.name}{flag}")


def _best(study: Study) -> float | None:
    text = storage.read_text(study.path("selection.json"))
    if not text:
        return None
    scores = [r["score"] for r in json.loads(text)["trials"] if r["outcome"] == "finished" and r["score"] is not None]
    if not scores:
        return None
    return max(scores) if study.mode == "max" else min(scores)


def open_runs(events: list[dict]) -> list[str]:
    """The runs a journal started and never ended (or discarded)."""
    started: dict[str, None] = {}
    for e in events:
        key = e.get("key")
        if key == "study":
            continue
        if e.get("op") == "run":
            started[key] = None
        elif e.get("op") in ("end", "discard"):
            started.pop(key, None)
    return list(started)


def _term_as_interrupt(signum, frame):
    """SIGTERM (a timeout, docker stop, Kubernetes, Slurm) ends the study like Ctrl-C."""
    os.kill(os.getpid(), signal.SIGINT)


