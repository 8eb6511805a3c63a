"""Tracking off Tune's loop: the journal and its writer (batching, back-off while the server is
away, replay after a crash, no duplicates), the saved MLflow views, and a store that moves."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("mlflow", exc_type=ImportError)

from mlflow.tracking import MlflowClient  # noqa: E402

from harness import tracking  # noqa: E402
from harness.journal import Journal, Writer  # noqa: E402


class FlakySink:
    """A sink that refuses every call while `down` is set, like a server that is away."""

    def __init__(self):
        self.down = False
        self.calls: list[tuple] = []
        self.runs: dict[str, str] = {}

    def permanent(self, e):
        return isinstance(e, KeyError)

    def _check(self):
        if self.down:
            raise ConnectionError("server away")

    def find(self, key):
        self._check()
        if key not in self.runs:
            raise KeyError(key)
        return self.runs[key]

    def create_or_find(self, e):
        self._check()
        self.runs.setdefault(e["key"], f"run-{e['key']}")
        self.calls.append(("run", e["key"]))
        return self.runs[e["key"]]

    def last_step(self, run_id):
        self._check()
        return max((c[3] for c in self.calls if c[0] == "metric" and c[1] == run_id), default=0)

    def batch(self, run_id, metrics, params, tags):
        self._check()
        for k, v, ts, step in metrics:
            self.calls.append(("metric", run_id, k, step, v))
        self.calls.append(("batch", run_id, len(metrics)))

    def end(self, run_id, status):
        self._check()
        self.calls.append(("end", run_id, status))

    def files(self, run_id, folder, path=""):
        self._check()
        self.calls.append(("files", run_id, sorted(os.listdir(folder))))


def test_writer_batches_and_keeps_order(tmp_path):
    sink = FlakySink()
    w = Writer(Journal(str(tmp_path)), sink)
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})
    for step in range(1, 6):
        w.put({"op": "metrics", "key": "a", "step": step, "values": {"acc": step / 10}})
    w.put({"op": "end", "key": "a", "status": "FINISHED"})
    assert w.close(timeout=10)
    metrics = [c for c in sink.calls if c[0] == "metric"]
    assert [c[3] for c in metrics] == [1, 2, 3, 4, 5]
    assert sink.calls[-1] == ("end", "run-a", "FINISHED")
    assert sum(c[0] == "batch" for c in sink.calls) <= 2  # merged into few calls
    assert w.stats.applied == 7 and w.stats.waited == 0 and w.stats.append_s < 1


def test_server_away_the_driver_goes_on_and_nothing_is_lost(tmp_path):
    sink = FlakySink()
    w = Writer(Journal(str(tmp_path)), sink, backoff_max_s=0.2)
    sink.down = True
    start = time.perf_counter()
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})
    for step in range(1, 201):
        w.put({"op": "metrics", "key": "a", "step": step, "values": {"acc": 0.5}})
    assert time.perf_counter() - start < 1.0  # appends never wait for the server
    time.sleep(1.5)
    assert w.pending() > 0 or w.stats.applied == 0
    sink.down = False
    assert w.flush(timeout=20)
    assert sorted({c[3] for c in sink.calls if c[0] == "metric"}) == list(range(1, 201))
    assert w.stats.waited > 0 and w.stats.longest_wait_s > 0.5
    w.close(timeout=5)


def test_replay_after_a_crash_applies_the_rest_once(tmp_path):
    sink = FlakySink()
    w = Writer(Journal(str(tmp_path)), sink)
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})
    w.put({"op": "metrics", "key": "a", "step": 1, "values": {"acc": 0.1}})
    assert w.flush(timeout=10)
    sink.down = True  # the driver dies with writes queued
    w.put({"op": "metrics", "key": "a", "step": 2, "values": {"acc": 0.2}})
    w.put({"op": "end", "key": "a", "status": "FINISHED"})
    time.sleep(0.3)
    w._stop.set()
    with open(os.path.join(tmp_path, "journal.jsonl"), "a") as f:
        f.write('{"op": "metrics", "key": "a", "st')  # torn last line of a killed process
    sink.down = False
    again = Writer(Journal(str(tmp_path)), sink)
    assert again.backlog == 2
    assert again.close(timeout=10)
    steps = [c[3] for c in sink.calls if c[0] == "metric"]
    assert steps == [1, 2] and sink.calls[-1] == ("end", "run-a", "FINISHED")


def test_a_restored_trial_does_not_log_an_epoch_twice(tmp_path):
    sink = FlakySink()
    w = Writer(Journal(str(tmp_path)), sink)
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})
    for step in (1, 2, 3):
        w.put({"op": "metrics", "key": "a", "step": step, "values": {"acc": step}})
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})  # Tune restores it at epoch 2
    for step in (3, 4):
        w.put({"op": "metrics", "key": "a", "step": step, "values": {"acc": step}})
    assert w.close(timeout=10)
    assert [c[3] for c in sink.calls if c[0] == "metric"] == [1, 2, 3, 4]


def test_a_failed_try_does_not_drop_its_epochs(tmp_path):
    """The server goes away in the middle of a batch: the retry logs the batch's epochs (they
    are not taken for ones MLflow has, like a restored trial's re-run epochs)."""
    sink = FlakySink()
    w = Writer(Journal(str(tmp_path)), sink, backoff_max_s=0.2)
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})
    assert w.flush(timeout=10)
    batch, refused = sink.batch, []

    def away_once(*args):
        if not refused:
            refused.append(args)
            raise ConnectionError("connection reset")
        return batch(*args)
    sink.batch = away_once
    for step in (1, 2):
        w.put({"op": "metrics", "key": "a", "step": step, "values": {"acc": step}})
    w.put({"op": "end", "key": "a", "status": "FINISHED"})
    assert w.close(timeout=10)
    assert refused and [c[3] for c in sink.calls if c[0] == "metric"] == [1, 2]


def test_a_refused_write_is_skipped_not_retried_forever(tmp_path):
    sink = FlakySink()
    w = Writer(Journal(str(tmp_path)), sink)
    w.put({"op": "metrics", "key": "ghost", "step": 1, "values": {"acc": 1}})  # no such run: permanent
    w.put({"op": "run", "key": "a", "name": "#0", "tags": {}, "params": {}})
    w.put({"op": "end", "key": "a", "status": "FINISHED"})
    assert w.close(timeout=10)
    assert ("end", "run-a", "FINISHED") in sink.calls and len(w.stats.errors) == 1


# --- against a real MLflow store ----------------------------------------------------------------

def test_saved_views_and_rank_column(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id, parent = tracking.open_study(client, "s", False, {"crkd.metric": "m", "crkd.mode": "max"}, {}, "note",
                                         tracking.views(["alpha", "beta"], "proxy/novel/train/acc"))
    exp = client.get_experiment(exp_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens in the model-training view
    view = json.loads(exp.tags["mlflow.sharedViewState.leaderboard"])
    assert view["orderByKey"] == "metrics.`rank`" and view["orderByAsc"] is True
    assert {"params.`tuned.alpha`", "params.`tuned.beta`", "metrics.`objective`"} <= set(view["selectedColumns"])
    assert "viewStateShareKey=leaderboard" in tracking.ui_link(uri, exp_id)
    assert "workflowType=machine_learning" in tracking.ui_link(uri, exp_id)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_moved_store_still_serves_its_artifacts(tmp_path):
    """Write a run with an artifact through the harness's sink, move the whole store, serve
    it with the printed command's flags, read the artifact back over HTTP."""
    store = tmp_path / "runs"
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)
    exp_id, parent = tracking.open_study(client, "moving", False, {}, {}, "note")
    src = tmp_path / "files"
    src.mkdir()
    (src / "report.md").write_text("# the verdict\n")
    sink = tracking.Sink(uri, exp_id, parent)
    sink.files(parent, str(src), "report")
    assert (store / "mlartifacts" / "moving").is_dir()
    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    shutil.move(str(store), str(moved))
    new_uri = f"sqlite:///{moved}/mlflow.db"
    # the harness's own readers follow the move
    assert tracking.list_artifacts(MlflowClient(new_uri), parent, "report") == ["report/report.md"]
    port = _free_port()
    cmd = tracking.ui_command(new_uri, port).split()
    assert "--artifacts-destination" in cmd and str(moved / "mlartifacts") in cmd
    server = subprocess.Popen([sys.executable, "-m", *cmd, "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/get-artifact?path=report/report.md&run_uuid={parent}"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.read().decode() == "# the verdict\n"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
