"""A quiet console: one progress line per interval and one line per run that ends.

Ray's own table (with its temporary-folder paths and IP:pid columns) appears only with
--verbose; see `quiet_ray`.
"""
from __future__ import annotations

import logging
import os
import sys
import time


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Console:
    def __init__(self, interval_s: float = 15.0, stream=None):
        self.interval = interval_s
        self.stream = stream or sys.stdout
        self._last = 0.0

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def progress(self, rec, trials, force: bool = False) -> None:
        """`rec`: the phase's Recorder (counts, best, start); `trials`: Tune's trial list."""
        now = time.time()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        failed = sum(t.status == "ERROR" for t in ended)
        stopped = sum(1 for t in ended if t.status == "TERMINATED" and "job" not in t.config
                      and int((t.last_result or {}).get("epoch", 0)) < rec.max_t)
        running = [t for t in trials if t.status == "RUNNING"]
        parts = [f"{rec.phase}: {len(ended)}/{rec.total} done"]
        if ended:
            parts[-1] += f" ({len(ended) - stopped - failed} finished"
            parts[-1] += f", {stopped} early-stopped" if stopped else ""
            parts[-1] += f", {failed} failed)" if failed else ")"
        parts.append(f"{len(running)} running")
        if rec._best is not None:
            parts.append(f"best {rec.metric} {rec._best[0]:.4f} ({rec._best[1]})")
        elapsed = now - rec._start
        parts.append(f"{duration(elapsed)} elapsed")
        eta = _eta(rec, trials, ended, running, elapsed)
        if eta is not None:
            parts.append(f"~{duration(eta)} left")
        self.line(" | ".join(parts))


def _eta(rec, trials, ended, running, elapsed: float) -> float | None:
    """Remaining trial-epochs at the observed rate; ended runs say how long a run lasts."""
    if rec._epochs < 2 or elapsed <= 0:
        return None
    # A search's ended trials say how long ASHA lets a trial run; a confirmation runs them all to the end.
    search = [t for t in ended if "job" not in t.config]
    per_run = (sum(int((t.last_result or {}).get("epoch", 0)) for t in search) / len(search)) if search else rec.max_t
    left = (rec.total - len(ended)) * per_run - sum(int((t.last_result or {}).get("epoch", 0)) for t in running)
    return max(0.0, left) / (rec._epochs / elapsed)


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's status table, paths and INFO logs out of the console unless --verbose."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:
        # the driver's own per-result work is now a queue append: Tune's "bottleneck"
        # heuristic would only repeat what the progress line says
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "60")
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # "Trial task failed" and the remote traceback: the recorder says it in one line (a
        # failed run, or a lost worker whose run Tune retries); error.txt keeps the traceback
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)


def silent_reporter():
    """A Tune progress reporter that prints nothing: the Recorder and Console speak instead."""
    from ray.tune import ProgressReporter

    class Silent(ProgressReporter):
        def should_report(self, trials, done=False):
            return False

        def report(self, trials, done, *sys_info):
            pass
    return Silent()
