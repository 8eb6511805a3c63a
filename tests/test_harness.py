"""End to end on local Ray (CPU): harness/tune.py runs real studies on `digits` with a
tiny model, then MLflow, the Optuna storage, the stage-1 cache, the leaderboard and the
export are checked. Also: interrupt + --resume, and a trial whose loss goes NaN.

Each study is a `python harness/tune.py` subprocess, as a user runs it.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", exc_type=ImportError)
pytest.importorskip("optuna", exc_type=ImportError)
pytest.importorskip("mlflow", exc_type=ImportError)

from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TUNE = str(REPO / "harness" / "tune.py")
FAST = ["--set", "pretrain.epochs=3", "--set", "model.widths=[8,16,16]", "--set", "model.hidden_dim=32",
        "--set", "model.proj_dim=16"]
MAX_T = 6


def tune_cmd(storage: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, TUNE, "--storage", str(storage), "--name", name, "--max-epochs", str(MAX_T),
            "--grace-period", "1", "--reduction-factor", "3", "--max-concurrent", "2",
            "--cpus-per-trial", "1", "--max-failures", "1", *FAST, *extra]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return p


def uri(storage: Path) -> str:
    return f"sqlite:///{storage}/mlflow.db"


def runs_of(storage: Path, name: str):
    c = MlflowClient(uri(storage))
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("crkd.role") == "study"]
    children = [r for r in runs if r.data.tags.get("crkd.role") == "trial"]
    return c, parents, children


def optuna_trials(storage: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    journal = JournalStorage(JournalFileBackend(str(storage / name / "optuna.log")))
    return optuna.load_study(study_name=name, storage=journal).get_trials(deepcopy=False)


def check_consistent(storage: Path, name: str, n: int) -> dict:
    """What every finished study must satisfy: one parent, n children (plus any that
    a kill -9 hid from Tune after they finished), none RUNNING, one metric row per
    epoch, the same trials in Optuna with the matching states."""
    c, parents, children = runs_of(storage, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert sum(r.data.tags.get("crkd.lost_by_tune") != "true" for r in children) == n
    ids = [r.data.tags["trial_id"] for r in children]
    assert len(set(ids)) == len(ids)
    status = {}
    for r in children:
        tid, st = r.data.tags["trial_id"], r.info.status
        assert r.data.tags["mlflow.parentRunId"] == parent_id
        assert st in ("FINISHED", "KILLED", "FAILED"), (tid, st)
        assert "crkd.interrupted" not in r.data.tags
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "novel/train/acc")]
        epochs = int(r.data.metrics.get("epoch", 0))
        assert sorted(steps) == list(range(1, epochs + 1)), (tid, steps)  # every epoch, once
        if st == "FINISHED":
            assert epochs == MAX_T and r.data.tags["crkd.outcome"] == "completed"
        elif st == "KILLED":
            assert epochs < MAX_T and r.data.tags["crkd.outcome"] == "early_stopped"
        else:
            assert r.data.tags["crkd.outcome"] == "failed" and r.data.tags["crkd.error"]
        status[tid] = st
    trials = optuna_trials(storage, name)
    assert len(trials) == len(children)
    expected = {"FINISHED": "COMPLETE", "KILLED": "PRUNED", "FAILED": "FAIL"}
    assert {t.user_attrs["tune_trial_id"]: t.state.name for t in trials} == \
        {tid: expected[st] for tid, st in status.items()}
    return status


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 6-trial study with ASHA, run once for the tests below."""
    cwd = tmp_path_factory.mktemp("e2e")
    storage = cwd / "runs"
    start = time.time()
    p = run(tune_cmd(storage, "e2e", "--space", "rkd_weights", "--num-samples", "6"), cwd)
    seconds = time.time() - start
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return {"cwd": cwd, "storage": storage, "name": "e2e", "stdout": p.stdout, "seconds": seconds}


def test_study_runs_and_tracks(study):
    storage, name = study["storage"], study["name"]
    status = check_consistent(storage, name, 6)
    assert "KILLED" in status.values() and "FINISHED" in status.values()  # ASHA stopped some
    c, (parent,), children = runs_of(storage, name)
    tags = parent.data.tags
    assert tags["crkd.benchmark"] == "digits" and tags["crkd.space"] == "rkd_weights"
    assert "tune.py" in tags["crkd.command"] and tags["crkd.git_commit"]
    top = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.parquet", "optuna", "space", "study"} <= top
    assert {os.path.basename(a.path) for a in c.list_artifacts(parent.info.run_id, "optuna")} == \
        {"history.html", "parallel_coordinate.html", "param_importances.html"}
    child = children[0]
    assert child.data.params["discover.epochs"] == str(MAX_T) and "discover.beta" in child.data.params
    assert {a.path for a in c.list_artifacts(child.info.run_id)} >= {"config.yaml", "curves"}
    assert {os.path.basename(a.path) for a in c.list_artifacts(child.info.run_id, "curves")} == \
        {"curves.png", "history.csv"}
    print(f"6-trial study: {study['seconds']:.0f} s")


def test_first_trial_is_the_paper_default(study):
    first = min(optuna_trials(study["storage"], study["name"]), key=lambda t: t.number)
    assert first.params == {"alpha": 1.0, "beta": 0.1}


def test_stage1_trained_once(study):
    _, _, children = runs_of(study["storage"], study["name"])
    how = sorted(r.data.tags["crkd.stage1_cache"] for r in children)
    assert how.count("trained") == 1 and set(how) <= {"trained", "waited", "hit"}, how
    keys = os.listdir(study["storage"] / "stage1_cache")
    assert len(keys) == 1
    info = json.loads((study["storage"] / "stage1_cache" / keys[0] / "teacher.json").read_text())
    assert info["trained_by"] in {r.data.tags["trial_id"] for r in children}
    assert study["stdout"].count("stage-1 cache miss") == 1


def test_leaderboard_is_ordered(study):
    from harness import tracking
    info, rows = tracking.leaderboard(MlflowClient(uri(study["storage"])), study["name"])
    metric = info["metric"]
    assert info["mode"] == "max" and metric == "novel/train/acc" and info["label_leakage"]
    order = {"FINISHED": 0, "KILLED": 1, "FAILED": 2}
    keys = [(order[r["status"]], -r[metric]) for r in rows]
    assert keys == sorted(keys) and [r["rank"] for r in rows] == list(range(1, 7))
    p = run([sys.executable, str(REPO / "harness" / "leaderboard.py"), "--tracking-uri", uri(study["storage"]),
             "--top", "3"], study["cwd"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("study e2e (finished): 6 trials")
    assert lines[1].split()[:5] == ["rank", "trial_id", "status", "epochs", metric]
    assert [ln.split()[1] for ln in lines[3:6]] == [r["trial_id"] for r in rows[:3]]
    assert "rank" in study["stdout"] and "mlflow ui --backend-store-uri sqlite:///" in study["stdout"]


def test_export_round_trip(study, tmp_path):
    import pyarrow.parquet as pq
    import torch

    import crkd
    out = tmp_path / "exported"
    p = run([sys.executable, str(REPO / "harness" / "export.py"), "--tracking-uri", uri(study["storage"]),
             "--name", study["name"], "--top", "2", "--out", str(out)], study["cwd"])
    assert p.returncode == 0, p.stderr
    configs = sorted(out.glob("rank*.yaml"))
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    finished = sum(t["status"] == "FINISHED" for t in trials)
    assert len(configs) == min(2, finished) and configs[0].name.startswith("rank01-")
    hist = pq.read_table(out / "histories.parquet").to_pylist()
    assert len(trials) == 6 and len(hist) == sum(t["epochs"] for t in trials)
    assert {"trial_id", "epoch", "novel/train/acc", "loss/total", "alpha", "beta"} <= set(hist[0])

    # Re-running the best exported config with its seed on CPU gives the trial's final metric.
    best = trials[0]
    assert best["rank"] == 1 and configs[0].name == f"rank01-{best['trial_id']}.yaml"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (--cpus-per-trial 1)
    try:
        cfg = crkd.load_config(str(configs[0]))
        pre = crkd.Pretrain(cfg)
        for _ in pre:
            pass
        last = list(crkd.Discover(cfg, pre.teacher_checkpoint()))[-1]
    finally:
        torch.set_num_threads(threads)
    assert last["epoch"] == MAX_T
    assert last["novel/train/acc"] == pytest.approx(best["novel/train/acc"], abs=1e-9)


def test_export_runs_with_the_crkd_cli(study, tmp_path):
    pytest.importorskip("crkd.cli", exc_type=ImportError)
    out = tmp_path / "exported"
    run([sys.executable, str(REPO / "harness" / "export.py"), "--tracking-uri", uri(study["storage"]),
         "--name", study["name"], "--top", "1", "--out", str(out)], study["cwd"])
    (config,) = out.glob("rank01-*.yaml")
    header = config.read_text().splitlines()
    cmd = next(ln for ln in header if ln.startswith("# re-run: ")).split("# re-run: ")[1].split()
    assert cmd[:4] == ["python", "-m", "crkd", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, *cmd[1:]], cwd=out, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads((out / cmd[-1] / "metrics.json").read_text())
    from harness import tracking
    _, rows = tracking.leaderboard(MlflowClient(uri(study["storage"])), study["name"])
    assert metrics["novel/train/acc"] == pytest.approx(rows[0]["novel/train/acc"], abs=1e-9)


def count_outcomes(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from tags where key = 'crkd.outcome'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupt_and_resume(tmp_path, sig):
    """Ctrl-C: Tune saves its state, every run is closed (KILLED, tagged interrupted).
    kill -9 of the driver and its Ray processes: the saved state is older than MLflow
    and Optuna. Either way --resume completes the study without duplicates."""
    storage = tmp_path / "runs"
    cmd = tune_cmd(storage, "res", "--space", "rkd_weights", "--num-samples", "6")
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 240
        while count_outcomes(storage / "mlflow.db") < 2 and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the study ended before it could be interrupted"
        if sig == signal.SIGINT:
            first.send_signal(sig)  # Tune saves its state and stops
        else:
            os.killpg(first.pid, sig)  # the driver and the Ray processes it started
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    _, (parent,), children = runs_of(storage, "res")
    assert sum(r.data.tags.get("crkd.outcome") is not None for r in children) < 6
    if sig == signal.SIGINT:
        assert first.returncode == 130, out[-3000:]
        assert "--resume --name res" in out
        assert parent.info.status == "KILLED"
        assert all(r.info.status != "RUNNING" for r in children)

    p = run([sys.executable, TUNE, "--resume", "--name", "res", "--storage", str(storage)], tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    check_consistent(storage, "res", 6)
    _, (parent,), _ = runs_of(storage, "res")
    assert "crkd.resumed_at" in parent.data.tags
    params = [tuple(sorted(t.params.items())) for t in optuna_trials(storage, "res")]
    assert len(set(params)) == len(params)  # no configuration drawn twice


def test_nan_loss_fails_the_trial_and_the_study_goes_on(tmp_path):
    space = tmp_path / "lr.yaml"
    space.write_text("description: one learning rate that explodes\n"
                     "params:\n  lr: {field: discover.lr, dist: choice, values: [0.1, 1.0e+12]}\n")
    storage = tmp_path / "runs"
    p = run(tune_cmd(storage, "nan", "--space", str(space), "--num-samples", "3"), tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    status = check_consistent(storage, "nan", 3)
    assert sorted(status.values()).count("FAILED") >= 1 and "FINISHED" in status.values()
    _, _, children = runs_of(storage, "nan")
    for r in children:
        if r.info.status == "FAILED":
            assert r.data.params["discover.lr"] == "1000000000000.0"
            assert r.data.tags["crkd.error"].startswith("NonFiniteLoss: discover: loss term")
    assert "failed: NonFiniteLoss" in p.stdout
