"""The Tune callback that tracks every trial in MLflow, from the driver.

Why the driver and not the trials: one writer keeps a sqlite store safe, trials
need no route to the tracking server, and the driver sees every trial's fate
(finished, stopped by ASHA, failed, interrupted), so it can close every run.
Ray's MLflowLoggerCallback is not used: it logs one key per call, logs the config
twice and creates duplicate runs on `Tuner.restore` (docs/stack.md).
"""
from __future__ import annotations

import logging
import os
import re
import time

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from .spaces import trial_config
from .tracking import ROLE, _param_str, children, find_child

logger = logging.getLogger(__name__)

# Result keys that Tune adds; everything else numeric that a trial reports is logged.
TUNE_KEYS = {"training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "date", "pid",
             "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
             "timesteps_since_restore", "timesteps_total", "episodes_total", "done", "trial_id",
             "experiment_id", "experiment_tag", "checkpoint_dir_name", "should_checkpoint", "config"}


class MlflowTracking(tune.Callback):
    """Child run per trial: params (flattened resolved config), config.yaml, every result
    as one log_batch with step = epoch, and a terminal status:
    FINISHED (reached max_t), KILLED (stopped early by ASHA, or interrupted), FAILED
    (with the error as the tag crkd.error). Tracking problems are logged as warnings and
    never stop the study."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, base_yaml: str,
                 fields: dict[str, str], metric: str, max_t: int, time_attr: str = "epoch"):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.base_yaml, self.fields, self.metric, self.max_t = base_yaml, fields, metric, max_t
        self.time_attr = time_attr
        self._reset()

    def _reset(self):
        self._client = None
        self._runs: dict[str, str] = {}       # trial_id -> run_id
        self._logged: dict[str, int] = {}     # trial_id -> last epoch logged
        self._tagged: set[str] = set()        # trials whose stage-1 outcome is tagged
        self.seconds, self.results = 0.0, 0   # time spent logging results, and how many

    # The Tuner pickles its callbacks for Tuner.restore: keep only the settings.
    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_client", "_runs", "_logged", "_tagged", "seconds", "results"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _safe(self, what: str, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # tracking must not end a study
            logger.warning("MLflow: %s failed: %s", what, " ".join(str(e).split())[:300])
            return None

    # --- runs ---------------------------------------------------------------------------

    def _attach(self, trial) -> str:
        """The child run of `trial`: found by its trial_id tag (resume) or created."""
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        c = self.client
        run = find_child(c, self.experiment_id, tid)
        if run is not None:
            run_id = run.info.run_id
            if run.info.status != "RUNNING":
                c.update_run(run_id, status="RUNNING")
            if "crkd.interrupted" in run.data.tags:
                c.delete_tag(run_id, "crkd.interrupted")
            steps = [m.step for m in c.get_metric_history(run_id, self.time_attr)]
            self._logged[tid] = max(steps, default=0)
            if "crkd.stage1_cache" in run.data.tags:  # keep how stage 1 was first obtained
                self._tagged.add(tid)
        else:
            cfg = trial_config(self.base_yaml, self.fields, trial.config)
            run_id = c.create_run(self.experiment_id, run_name=trial.trial_id, tags={
                ROLE: "trial", "trial_id": tid, "mlflow.parentRunId": self.parent_run_id,
                "crkd.trial_name": str(trial), "crkd.stage1_key": _stage1_key(cfg)}).info.run_id
            params = [Param(k, _param_str(v)) for k, v in cfg.flat().items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                c.log_batch(run_id, params=params[i:i + 100])
            c.log_text(run_id, cfg.to_yaml(), "config.yaml")
            self._logged[tid] = 0
        self._runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safe(f"starting the run of {trial.trial_id}", self._attach, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        start = time.perf_counter()
        self._safe(f"logging a result of {trial.trial_id}", self._log_result, trial, result)
        self.seconds += time.perf_counter() - start
        self.results += 1

    def _log_result(self, trial, result: dict) -> None:
        run_id = self._attach(trial)
        step = int(result.get(self.time_attr, 0))
        tags = []
        if "stage1_cache" in result and trial.trial_id not in self._tagged:
            tags = [RunTag("crkd.stage1_cache", str(result["stage1_cache"]))]
            self._tagged.add(trial.trial_id)
        if step <= self._logged.get(trial.trial_id, 0):  # already logged before a restore
            if tags:
                self.client.log_batch(run_id, tags=tags)
            return
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._logged[trial.trial_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        reached = int(last.get(self.time_attr, 0))
        value = last.get(self.metric)
        if reached >= self.max_t:
            status, outcome, note = "FINISHED", "completed", f"finished: {self.metric}={_fmt(value)}"
        else:
            status, outcome = "KILLED", "early_stopped"
            note = f"stopped early by ASHA at epoch {reached}: {self.metric}={_fmt(value)}"
        print(f"[crkd-tune] trial {trial.trial_id} {note}", flush=True)
        self._safe(f"closing the run of {trial.trial_id}", self._close, trial, status,
                   {"crkd.outcome": outcome, "crkd.epochs_reached": str(reached)})

    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_line(trial)
        print(f"[crkd-tune] trial {trial.trial_id} failed: {error}", flush=True)
        self._safe(f"closing the run of {trial.trial_id}", self._close, trial, "FAILED",
                   {"crkd.outcome": "failed", "crkd.error": error[:5000]})

    def _close(self, trial, status: str, tags: dict) -> None:
        # Learning curves are drawn after the study (tune.py): drawing here would hold up
        # the driver loop, and with it every running trial, which waits for its next step.
        run_id = self._attach(trial)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=status)

    def on_experiment_end(self, trials, **info):
        self._safe("closing runs at the end", self._sweep, trials)

    def _sweep(self, trials) -> None:
        """No run stays RUNNING. Trials Tune did not finish (an interrupted study) are
        KILLED and tagged crkd.interrupted; `--resume` sets them RUNNING again. Runs of
        trials Tune does not know (the driver was killed before saving their state): a
        finished one stays, closed per its outcome; an unfinished one is deleted (soft),
        as its configuration is rerun by a new trial (harness.search adopts it)."""
        c = self.client
        known = {t.trial_id for t in trials}
        closing = {"completed": "FINISHED", "early_stopped": "KILLED", "failed": "FAILED"}
        for run in children(c, self.experiment_id):
            tid, run_id, tags = run.data.tags.get("trial_id", ""), run.info.run_id, run.data.tags
            if tid not in known:
                if tags.get("crkd.outcome") in closing:
                    if "crkd.lost_by_tune" not in tags:
                        c.set_tag(run_id, "crkd.lost_by_tune", "true")
                    if run.info.status == "RUNNING":
                        c.set_terminated(run_id, status=closing[tags["crkd.outcome"]])
                else:
                    logger.warning("deleting the MLflow run %s of trial %s: Tune lost the trial when its "
                                   "driver was killed, and a new trial reruns its configuration", run_id, tid)
                    c.delete_run(run_id)
            elif run.info.status == "RUNNING":
                c.set_tag(run_id, "crkd.interrupted", "true")
                c.set_terminated(run_id, status="KILLED")
        if self.results:
            c.log_batch(self.parent_run_id, metrics=[
                Metric("harness/mlflow_ms_per_result", 1000 * self.seconds / self.results, int(time.time() * 1000), 0)])


EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Loss|Failure|Failed|Interrupt|Exit)):\s*(.*)$")


def error_line(trial) -> str:
    """The last 'Type: message' line of the trial's error (Tune's error.txt holds the
    whole remote traceback): e.g. "NonFiniteLoss: discover: loss term 'loss/u' is nan ..."."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        with open(path, errors="replace") as f:
            text = f.read()
    if not text and getattr(trial, "error_msg", None):
        text = str(trial.error_msg)
    last_block = text.split("Failure # ")[-1]
    for line in reversed(last_block.splitlines()):
        m = EXCEPTION_LINE.match(line.strip())
        if m:  # a retry that repeated a deterministic failure carries the original line
            wrapped = m.group(1) in ("TrialFailed", "RepeatedFailure")
            return m.group(2).strip() if wrapped else f"{m.group(1)}: {m.group(2)}".strip()
    lines = [ln.strip() for ln in last_block.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error (see the trial's error.txt)"


def _stage1_key(cfg) -> str:
    import crkd
    return crkd.stage1_key(cfg)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
