"""Tracking that never blocks Tune and never loses a write.

The driver appends every tracking event (create a run, log metrics, set tags, end a
run, attach files) to a journal, a JSON-lines file in the study folder, and returns.
A writer thread applies the events to MLflow in batches, in order, and records how far
it got. While the tracking server is unreachable the writer backs off and retries; the
driver goes on at full speed and the journal keeps growing. When the driver dies, the
next `--resume` (or `harness/sync.py`) replays whatever the writer had not applied.

Replaying is safe: runs are found again by their `crkd.key` tag before one is created,
MLflow ignores a metric logged twice with the same key, step, timestamp and value,
and tags, params and statuses are idempotent.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

KEY = "crkd.key"          # tag that names a run within its experiment (study, trial, job)
MAX_METRICS = 1000        # MLflow's log_batch limits
MAX_PARAMS = 100
MAX_TAGS = 100


@dataclass
class Stats:
    events: int = 0          # appended by the driver
    applied: int = 0         # written to MLflow
    waited: int = 0          # events that had to wait for the server at least once
    longest_wait_s: float = 0.0
    append_s: float = 0.0    # driver time spent appending (the only cost on Tune's loop)
    errors: list = field(default_factory=list)


class Journal:
    """Append-only event log of one study, with its applied-up-to marker."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(os.path.join(folder, "files"), exist_ok=True)
        self.path = os.path.join(folder, "journal.jsonl")
        self.mark = os.path.join(folder, "applied")
        self._file = open(self.path, "a", buffering=1)
        self._lock = threading.Lock()
        self._synced = time.monotonic()

    def append(self, event: dict) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")  # line-buffered: in the OS once written, safe from a crash

    def sync(self, every_s: float = 1.0) -> None:
        """On disk, safe from a power cut, at most `every_s` after the append: the writer's
        thread calls it, so an fsync never lands on Tune's loop."""
        now = time.monotonic()
        if now - self._synced > every_s:
            try:  # not under the append lock: an append never waits for the disk
                os.fsync(self._file.fileno())
            except ValueError:  # closed: the driver is ending, close() synced it
                return
            self._synced = now

    def applied(self) -> int:
        try:
            with open(self.mark) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def set_applied(self, n: int) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            f.write(str(n))
        os.replace(tmp, self.mark)

    def events(self, start: int = 0) -> list[dict]:
        """The events from index `start` on; a torn last line (a crash mid-write) is skipped."""
        out = []
        with open(self.path) as f:
            for i, line in enumerate(f):
                if i < start:
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    break
        return out

    def stash_text(self, name: str, text: str) -> str:
        """A folder in the journal holding one file `name` with `text` (no temporary copy)."""
        dst = os.path.join(self.folder, "files", uuid.uuid4().hex)
        os.makedirs(dst)
        with open(os.path.join(dst, name), "w") as f:
            f.write(text)
        return dst

    def stash(self, src: str) -> str:
        """Copy a file or folder into the journal now (the source may be temporary)."""
        dst = os.path.join(self.folder, "files", uuid.uuid4().hex)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            os.makedirs(dst)
            shutil.copy2(src, dst)
        return dst

    def close(self) -> None:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class Writer:
    """Applies a journal's events to MLflow from a background thread.

    `sink` is what talks to MLflow (harness.tracking.Sink): create_or_find(event) ->
    run_id, batch(run_id, metrics, params, tags), end(run_id, status), files(run_id, dir,
    path), discard(run_id). Any exception from it is taken as "the server is away": the same
    events are retried with back-off, never dropped."""

    def __init__(self, journal: Journal, sink, backoff_max_s: float = 30.0):
        self.journal, self.sink = journal, sink
        self.stats = Stats()
        self._queue: queue.Queue = queue.Queue()
        self._runs: dict[str, str] = {}
        self._steps: dict[str, int] = {}   # run key -> last epoch in MLflow (a restored trial re-reports)
        self._done = self.journal.applied()
        self._backoff_max = backoff_max_s
        self._stop = threading.Event()
        self._idle = threading.Event()
        # Events appended before this writer existed (a killed driver's) go first.
        backlog = self.journal.events(self._done)
        for e in backlog:
            self._queue.put(e)
        self.stats.events = len(backlog)
        self.backlog = len(backlog)
        self._thread = threading.Thread(target=self._loop, name="crkd-tracking", daemon=True)
        self._thread.start()

    # --- the driver's side: cheap, never blocks on MLflow ---------------------------------

    def put(self, event: dict) -> None:
        start = time.perf_counter()
        event.setdefault("ts", int(time.time() * 1000))
        self.journal.append(event)
        self._queue.put(event)
        self.stats.events += 1
        self.stats.append_s += time.perf_counter() - start

    def pending(self) -> int:
        return self._queue.qsize()

    def flush(self, timeout: float) -> bool:
        """Wait until every event so far is applied, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float) -> bool:
        done = self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=5)
        self.journal.close()
        return done

    # --- the writer's side ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self.journal.sync()  # the last appends, on disk within a second even when idle
                continue
            batch = [first]
            while len(batch) < 500:  # whatever else is waiting goes in the same round
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.journal.sync()
            self._apply_with_backoff(batch)
            for _ in batch:
                self._queue.task_done()

    def _apply_with_backoff(self, batch: list[dict]) -> None:
        delay, waited_since = 1.0, None
        while True:
            try:
                try:
                    self._apply(batch)
                except Exception as e:
                    if not self.sink.permanent(e):
                        raise
                    self._apply_each(batch)  # one bad event must not hold the others back
                break
            except Exception as e:  # the server is away (or a transient store error): wait, retry
                if waited_since is None:
                    waited_since = time.monotonic()
                    self.stats.waited += len(batch)
                    logger.warning("MLflow unreachable (%s); %d tracking writes wait, the study goes on",
                                   " ".join(str(e).split())[:200], len(batch) + self._queue.qsize())
                if self._stop.wait(delay):
                    return  # stopping: the journal keeps the rest for --resume / sync.py
                delay = min(delay * 2, self._backoff_max)
        if waited_since is not None:
            self.stats.longest_wait_s = max(self.stats.longest_wait_s, time.monotonic() - waited_since)
            logger.warning("MLflow is back; the waiting writes are in")
        self._done += len(batch)
        self.journal.set_applied(self._done)
        self.stats.applied += len(batch)

    def _apply_each(self, batch: list[dict]) -> None:
        for e in batch:
            try:
                self._apply([e])
            except Exception as exc:
                if not self.sink.permanent(exc):
                    raise
                message = f"{e.get('op')} {e.get('key')}: {' '.join(str(exc).split())[:300]}"
                self.stats.errors.append(message)
                logger.warning("MLflow refused a tracking write (%s); skipped", message)

    def _apply(self, batch: list[dict]) -> None:
        steps = dict(self._steps)
        try:
            self._apply_batch(batch)
        except BaseException:
            # A failed try: the epochs it meant to log are not in MLflow. Left counted, the
            # retry would skip them as logged already (a restored trial's re-run epochs).
            self._steps = steps
            raise

    def _apply_batch(self, batch: list[dict]) -> None:
        """Events in order; consecutive metric/tag events of one run merge into one call."""
        pending: dict[str, dict] = {}
        order: list[str] = []

        def push():
            for key in order:
                p = pending[key]
                self._batches(self._runs[key], p["metrics"], p["params"], p["tags"])
            pending.clear()
            order.clear()

        for e in batch:
            op, key = e["op"], e.get("key")
            if op == "discard":  # a run superseded by a new one (harness/phases.py)
                push()
                run_id = self._runs.pop(key, None)
                if run_id is None:
                    try:
                        run_id = self.sink.find(key)
                    except KeyError:
                        continue  # already gone (a replay)
                self.sink.discard(run_id)
                continue
            if op == "run":
                push()
                self._runs[key] = run_id = self.sink.create_or_find(e)
                self._steps[key] = self.sink.last_step(run_id)
                continue
            if key not in self._runs:
                self._runs[key] = self.sink.find(key)
                self._steps[key] = self.sink.last_step(self._runs[key])
            if op in ("metrics", "tags", "params"):
                if op == "metrics" and 0 < e["step"] <= self._steps.get(key, 0):
                    continue  # an epoch MLflow has: a trial restored from an older checkpoint re-ran it
                p = pending.setdefault(key, {"metrics": [], "params": {}, "tags": {}})
                if key not in order:
                    order.append(key)
                if op == "metrics":
                    p["metrics"] += [(k, v, e["ts"], e["step"]) for k, v in e["values"].items()]
                    self._steps[key] = max(self._steps.get(key, 0), e["step"])
                else:
                    p[op].update(e[op])
            elif op == "end":
                push()
                self.sink.end(self._runs[key], e["status"])
            elif op == "files":
                push()
                self.sink.files(self._runs[key], e["dir"], e.get("path", ""))
            else:
                raise ValueError(f"unknown tracking event {op!r}")
        push()

    def _batches(self, run_id: str, metrics: list, params: dict, tags: dict) -> None:
        params, tags = list(params.items()), list(tags.items())
        while metrics or params or tags:
            self.sink.batch(run_id, metrics[:MAX_METRICS], dict(params[:MAX_PARAMS]), dict(tags[:MAX_TAGS]))
            metrics, params, tags = metrics[MAX_METRICS:], params[MAX_PARAMS:], tags[MAX_TAGS:]
