"""The Tune callback that records a phase: tracking events into the study's journal
(applied to MLflow off Tune's loop, harness.journal), and the console.

One outcome vocabulary everywhere (console, MLflow tag crkd.outcome, Optuna user
attribute "outcome", leaderboard, exports): finished (reached the last epoch),
early-stopped (stopped by ASHA), failed, interrupted (the study was stopped). In
MLflow's default view finished and early-stopped runs are FINISHED (a green tick:
early stopping is the scheduler working, not a failure; the outcome tag and the
"stopped at" in the run name tell them apart), failed runs FAILED, interrupted ones
KILLED.
"""
from __future__ import annotations

import os
import re
import socket
import time

from ray import tune

from .tracking import ROLE, STATUS, VIEW_PARAMS

# Result keys that Tune adds; everything else numeric that a run reports is logged.
TUNE_KEYS = {"training_iteration", "time_total_s", "time_this_iter_s", "timestamp", "date", "pid",
             "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
             "timesteps_since_restore", "timesteps_total", "episodes_total", "done", "trial_id",
             "experiment_id", "experiment_tag", "checkpoint_dir_name", "should_checkpoint", "config"}

# The driver's tracking writer and console of the phase that is running. Tune pickles its
# callbacks with the experiment state; these stay out of the pickle and are set again.
ACTIVE: dict = {}


def short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class Recorder(tune.Callback):
    """Tracks a phase's runs. `phase`: "search" (trials named by their Optuna number and
    parameters) or "confirm" (jobs named by configuration and seed)."""

    def __init__(self, phase: str, metric: str, max_t: int, fields: dict, total: int, mode: str = "max"):
        self.phase, self.metric, self.max_t, self.fields, self.total = phase, metric, max_t, fields, total
        self.mode = mode
        self._reset()

    def _reset(self):
        self._logged: dict[str, int] = {}    # trial_id -> last epoch logged
        self._ended: set[str] = set()
        self._best: tuple[float, str] | None = None
        self._epochs = 0                     # trial-epochs seen (for the ETA)
        self._start = time.time()
        self._last_line = 0.0
        self.results = 0

    def __getstate__(self):
        return {k: self.__dict__[k] for k in ("phase", "metric", "max_t", "fields", "total", "mode")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    @property
    def writer(self):
        return ACTIVE["writer"]

    @property
    def console(self):
        return ACTIVE["console"]

    # --- naming --------------------------------------------------------------------------

    def _name(self, trial) -> str:
        c = trial.config
        if "job" in c:
            j = c["job"]
            return f"floors seed {j['seed']}" if j["kind"] == "floors" else f"{j['label']} seed {j['seed']}"
        params = " ".join(f"{n}={short(c[n])}" for n in self.fields if n in c)
        return f"#{c.get('_n', '?')} {params}".strip()

    def _tags(self, trial) -> dict:
        c = trial.config
        tags = {ROLE: "trial", "crkd.phase": self.phase, "crkd.ray_trial": trial.trial_id}
        if "job" in c:
            j = c["job"]
            tags.update({ROLE: "floors" if j["kind"] == "floors" else "confirm", "crkd.config": j.get("label", ""),
                         "crkd.config_role": j.get("role", ""), "crkd.seed": str(j["seed"])})
            if j.get("trial_id"):
                tags["crkd.from_trial"] = j["trial_id"]
        else:
            tags["crkd.optuna_trial"] = str(c.get("_n", ""))
        return tags

    # --- Tune events ----------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self._logged:
            return
        self._logged[trial.trial_id] = self._logged.get(trial.trial_id, 0)
        study = ACTIVE["study"]
        cfg = _config_of(trial.config, study)
        # The tuned values again, rounded, as the leaderboard's columns (the config's own are exact).
        tuned = {f"{VIEW_PARAMS}{n}": short(trial.config[n]) for n in self.fields if n in trial.config}
        self.writer.put({"op": "run", "key": trial.trial_id, "name": self._name(trial), "tags": self._tags(trial),
                         "params": {**cfg.flat(), **tuned}})
        self.writer.put({"op": "files", "key": trial.trial_id,
                         "dir": self.writer.journal.stash_text("config.yaml", cfg.to_yaml())})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results += 1
        tid = trial.trial_id
        step = int(result.get("epoch", 0))
        if tid not in self._logged:
            self.on_trial_start(iteration, trials, trial)
        if self._logged.get(tid, 0) == 0 and "stage1_cache" in result:
            tags = {"crkd.stage1_cache": str(result["stage1_cache"]), "crkd.classes": str(result.get("data_classes", "")),
                    "crkd.node": str(result.get("hostname") or result.get("node_ip") or socket.gethostname()),
                    "crkd.node_ip": str(result.get("node_ip", ""))}
            if result["stage1_cache"] == "checkpoint":  # resumed: its first start said how it got its teacher
                del tags["crkd.stage1_cache"]
            self.writer.put({"op": "tags", "key": tid, "tags": tags})
        if step > self._logged.get(tid, 0):  # a restored trial re-reports its last epochs
            values = {k: float(v) for k, v in result.items()
                      if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if self.metric in values:  # rounded, for the MLflow views' columns (the metric itself is exact)
                values["objective"] = round(values[self.metric], 4)
            self.writer.put({"op": "metrics", "key": tid, "step": step, "values": values})
            self._logged[tid] = step
            self._epochs += 1
        value = result.get(self.metric)
        if self.phase == "search" and step >= self.max_t and isinstance(value, (int, float)):
            sign = 1 if self.mode == "max" else -1
            if self._best is None or sign * value > sign * self._best[0]:
                self._best = (float(value), self._name(trial).split(" ")[0])
        self.console.progress(self, trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        reached = int(last.get("epoch", 0))
        outcome = "finished" if reached >= self.max_t or "job" in trial.config else "early-stopped"
        value = last.get(self.metric)
        name = self._name(trial)
        if outcome == "early-stopped":
            self.writer.put({"op": "run", "key": trial.trial_id, "name": f"{name} (stopped at {reached})",
                             "tags": {}, "params": {}})
        self._end(trial, outcome, {"crkd.epochs_reached": str(reached)})
        score = f": {self.metric} {value:.4f}" if isinstance(value, float) else ""
        what = f"stopped early at epoch {reached}" if outcome == "early-stopped" else "finished"
        self.console.line(f"{self.phase} {name}: {what}{score}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        error = error_line(trial)
        self.console.line(f"{self.phase} {self._name(trial)}: stopped ({error[:150]}{'...' if len(error) > 150 else ''}); "
                          f"Tune retries it from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = error_line(trial)
        self._end(trial, "failed", {"crkd.error": error[:5000]})
        self.console.line(f"{self.phase} {self._name(trial)}: failed: {error}")

    def _end(self, trial, outcome: str, tags: dict) -> None:
        if trial.trial_id in self._ended:
            return
        self._ended.add(trial.trial_id)
        self.writer.put({"op": "tags", "key": trial.trial_id, "tags": {"crkd.outcome": outcome, **tags}})
        self.writer.put({"op": "end", "key": trial.trial_id, "status": STATUS[outcome]})

    def on_experiment_end(self, trials, **info):
        stopped = []
        for t in trials:  # started, never ended: stopped by Ctrl-C or SIGTERM (Tune stops them first)
            if t.trial_id in self._logged and t.trial_id not in self._ended:
                self.writer.put({"op": "tags", "key": t.trial_id, "tags": {"crkd.outcome": "interrupted"}})
                self.writer.put({"op": "end", "key": t.trial_id, "status": STATUS["interrupted"]})
                stopped.append(t.trial_id)
        ACTIVE["stopped"] = stopped  # Tune says TERMINATED for these too (harness.phases._ended)


def _config_of(config: dict, study):
    """What the run trains (a proxy trial: its first fold), as logged and exported."""
    from .trial import _configs_of_job, _configs_of_trial
    return (_configs_of_job(config["job"], study) if "job" in config else _configs_of_trial(config, study))[0]


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
