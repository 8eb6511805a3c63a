"""End to end on local Ray (CPU): harness/tune.py runs a real study on `digits` with a tiny
model (search on the proxy task, confirmation on fresh seeds, report), then MLflow, the
Optuna journal, the stage-1 cache, the report, the leaderboard and the export are
checked, and an exported run is re-run bit for bit. Also: Ctrl-C + --resume, and a trial
whose loss goes NaN.

Each study is a `python harness/tune.py` subprocess, as a user runs it.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", exc_type=ImportError)
pytest.importorskip("optuna", exc_type=ImportError)
pytest.importorskip("mlflow", exc_type=ImportError)

from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TUNE = str(REPO / "harness" / "tune.py")
FAST = ["--set", "pretrain.epochs=3", "--set", "model.widths=[8,16,16]", "--set", "model.hidden_dim=32",
        "--set", "model.proj_dim=16"]
MAX_T = 5
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tune_cmd(storage: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, TUNE, "--storage", str(storage), "--name", name, "--max-epochs", str(MAX_T),
            "--grace-period", "1", "--reduction-factor", "3", "--max-concurrent", "2",
            "--cpus-per-trial", "1", "--max-failures", "1", *FAST, *extra]


def run(cmd: list[str], cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


def uri(storage: Path) -> str:
    return f"sqlite:///{storage}/mlflow.db"


def runs_of(storage: Path, name: str):
    c = MlflowClient(uri(storage))
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("crkd.role"), []).append(r)
    return c, by_role


def optuna_trials(storage: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    journal = JournalStorage(JournalFileBackend(str(storage / name / "optuna.log")))
    return optuna.load_study(study_name=name, storage=journal).get_trials(deepcopy=False)


def check_consistent(storage: Path, name: str, n: int, jobs: int) -> dict:
    """What every finished study must satisfy: one parent, n search runs and `jobs`
    confirmation runs, none RUNNING or duplicated, one metric row per epoch, the same trials
    in Optuna with matching states, one outcome vocabulary."""
    c, roles = runs_of(storage, name)
    (parent,) = roles["study"]
    assert parent.info.status == "FINISHED"
    trials, confirm = roles.get("trial", []), roles.get("confirm", []) + roles.get("floors", [])
    assert len(trials) == n and len(confirm) == jobs
    keys = [r.data.tags["crkd.key"] for r in trials + confirm]
    assert len(set(keys)) == len(keys)  # no duplicated run
    outcome = {}
    for r in trials + confirm:
        t, st = r.data.tags, r.info.status
        assert t["mlflow.parentRunId"] == parent.info.run_id
        assert t["crkd.outcome"] in ("finished", "early-stopped", "failed"), (r.info.run_name, t)
        assert st == {"finished": "FINISHED", "early-stopped": "FINISHED", "failed": "FAILED"}[t["crkd.outcome"]]
        if t["crkd.outcome"] != "failed":
            epochs = int(r.data.metrics.get("epoch", 0))
            steps = [m.step for m in c.get_metric_history(r.info.run_id, "epoch")]
            assert sorted(steps) == list(range(1, epochs + 1)), (r.info.run_name, steps)  # every epoch, once
        outcome[t["crkd.key"]] = t["crkd.outcome"]
    for r in trials:
        t = r.data.tags
        assert r.info.run_name.startswith(f"#{t['crkd.optuna_trial']} ")  # a name a person reads
        assert t["crkd.ray_trial"] == t["crkd.key"]
        if t["crkd.outcome"] == "early-stopped":
            assert "(stopped at" in r.info.run_name
    ot = optuna_trials(storage, name)
    assert len(ot) == n
    state = {"finished": "COMPLETE", "early-stopped": "PRUNED", "failed": "FAIL"}
    assert {t.user_attrs["tune_trial_id"]: t.state.name for t in ot} == \
        {r.data.tags["crkd.key"]: state[outcome[r.data.tags["crkd.key"]]] for r in trials}
    assert all(t.user_attrs["outcome"] == outcome[t.user_attrs["tune_trial_id"]] for t in ot)
    return outcome


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 6-trial proxy search with ASHA, the top configuration and both baselines on 2 fresh
    seeds, the transfer runs and the report: run once for the tests below."""
    cwd = tmp_path_factory.mktemp("e2e")
    storage = cwd / "runs"
    scratch = set(Path(tempfile.gettempdir()).glob("crkd-*"))
    start = time.time()
    p = run(tune_cmd(storage, "e2e", "--space", "rkd_weights", "--num-samples", "6", "--confirm-top", "1",
                     "--confirm-seeds", "2"), cwd)
    seconds = time.time() - start
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert set(Path(tempfile.gettempdir()).glob("crkd-*")) <= scratch  # no scratch folder left behind
    selection = json.loads((storage / "e2e" / "selection.json").read_text())
    jobs = json.loads((storage / "e2e" / "confirm" / "jobs.json").read_text())
    return {"cwd": cwd, "storage": storage, "name": "e2e", "stdout": p.stdout, "stderr": p.stderr, "seconds": seconds,
            "selection": selection, "jobs": jobs}


def test_study_runs_tracks_and_reports(study):
    storage, name = study["storage"], study["name"]
    outcome = check_consistent(storage, name, 6, len(study["jobs"]))
    search = [outcome[t["trial_id"]] for t in study["selection"]["trials"]]
    assert "early-stopped" in search and "finished" in search  # ASHA stopped some
    report = storage / name / "report"
    text = (report / "report.md").read_text()
    for words in ("Protocol", "Paired comparisons", "95% CI", "Floors", "Proxy check", "paper defaults", "uno"):
        assert words in text, words
    import pyarrow.parquet as pq
    rows = pq.read_table(report / "confirmation.parquet").to_pylist()
    trained = [j for j in study["jobs"] if j["kind"] == "train"]
    assert len(rows) == len(trained) and {"label", "seed", "novel/train/acc"} <= set(rows[0])
    for png in ("seeds.png", "paired.png", "proxy_vs_real.png", "curves.png"):
        assert (report / png).stat().st_size > 1000
    c, roles = runs_of(storage, name)
    (parent,) = roles["study"]
    from harness import tracking
    files = set(tracking.list_artifacts(c, parent.info.run_id))
    assert {"report", "study", "plots"} <= files, files
    assert "report/report.md" in tracking.list_artifacts(c, parent.info.run_id, "report")
    assert f"best/{study['selection']['metric']}" in parent.data.metrics
    assert parent.data.tags["mlflow.note.content"].startswith(f"**{name}**")
    assert {"runs/finished", "runs/early-stopped"} <= set(parent.data.metrics)  # outcomes on the parent
    # the printed link opens the leaderboard: a saved view sorted by rank, tuned parameters as columns
    exp = c.get_experiment_by_name(name)
    view = json.loads(exp.tags["mlflow.sharedViewState.leaderboard"])
    assert view["orderByKey"] == "metrics.`rank`" and "params.`tuned.beta`" in view["selectedColumns"]
    assert "viewStateShareKey=leaderboard" in study["stdout"]
    ranks = sorted(int(r.data.metrics["rank"]) for r in roles["trial"])
    assert ranks == list(range(1, 7))
    for r in roles["trial"]:
        assert r.data.params["tuned.beta"] and "objective" in r.data.metrics
    plots = set(tracking.list_artifacts(c, parent.info.run_id, "plots"))
    assert plots == {f"plots/{p}.png" for p in ("history", "intermediate", "parallel", "importances")}
    assert (storage / name / "plots" / "history.png").is_file()
    # the quiet console: no Ray status table, no Tune "performance bottleneck" warning
    console = study["stdout"] + study["stderr"]
    assert "bottleneck" not in console and "Trial status" not in console and "== Status ==" not in console
    print(f"study: {study['seconds']:.0f} s")


def test_confirmation_seeds_are_fresh_and_the_search_blind(study):
    """Confirmation seeds differ from the search seed; every search run loaded known classes
    only (digits 0-4): no image or label of a real novel class reached the search."""
    storage, name = study["storage"], study["name"]
    seeds = {j["seed"] for j in study["jobs"] if j["role"] in ("candidate", "baseline")}
    assert seeds == {1, 2} and 0 not in seeds
    c, roles = runs_of(storage, name)
    for r in roles["trial"]:
        assert set(r.data.tags["crkd.classes"].split(",")) <= {"0", "1", "2", "3", "4"}
        assert int(r.data.params["data.proxy_fold"]) == 0
    for r in roles["confirm"]:
        assert set(r.data.tags["crkd.classes"].split(",")) == {str(i) for i in range(10)}
        assert r.data.tags["crkd.seed"] in {"0", "1", "2"}
    labels = {r.data.tags["crkd.config"] for r in roles["confirm"]}
    assert any(lbl.startswith("rank1") for lbl in labels) and "uno" in labels
    assert any("paper defaults" in lbl for lbl in labels)


def test_first_trial_is_the_paper_default(study):
    first = min(optuna_trials(study["storage"], study["name"]), key=lambda t: t.number)
    assert first.params == {"alpha": 1.0, "beta": 0.1}


def test_stage1_trained_once_per_recipe(study):
    """One teacher for the proxy task (seed 0), one per confirmation seed on the real split
    (seed 0 again for the transfer runs): every run of a recipe shares it."""
    storage = study["storage"]
    keys = os.listdir(storage / "stage1_cache")
    assert len(keys) == 4, keys  # proxy s0, real s0, real s1, real s2
    for k in keys:
        info = json.loads((storage / "stage1_cache" / k / "teacher.json").read_text())
        assert len(info["sha256"]) == 64
    assert study["stdout"].count("stage-1 cache miss") == 0  # trial logs stay out of the quiet console


def test_leaderboard_is_ordered(study):
    from harness import tracking
    info, rows = tracking.leaderboard(MlflowClient(uri(study["storage"])), study["name"])
    metric = info["metric"]
    assert info["mode"] == "max" and metric == "proxy/novel/train/acc" and not info["label_leakage"]
    order = {"finished": 0, "early-stopped": 1, "failed": 2}
    keys = [(order[r["outcome"]], -r[metric]) for r in rows]
    assert keys == sorted(keys) and [r["rank"] for r in rows] == list(range(1, 7))
    p = run([sys.executable, str(REPO / "harness" / "leaderboard.py"), "--tracking-uri", uri(study["storage"]),
             "--top", "3"], study["cwd"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("study e2e (finished): 6 trials")
    assert lines[1].split()[:5] == ["rank", "trial", "outcome", "epochs", metric]
    assert [int(ln.split()[1]) for ln in lines[3:6]] == [r["trial"] for r in rows[:3]]
    assert lines[6] == "(top 3 of 6)"
    assert "top 10 of" not in study["stdout"]  # 6 trials: the whole table, no cut


def test_export_reruns_bit_for_bit_with_default_settings(study, tmp_path):
    """The exported configuration records threads and device; `crkd run --config` with no
    other option reproduces the confirmation run of the exported seed exactly."""
    import pyarrow.parquet as pq
    out = tmp_path / "exported"
    p = run([sys.executable, str(REPO / "harness" / "export.py"), "--storage", str(study["storage"]),
             "--name", study["name"], "--top", "1", "--out", str(out)], study["cwd"])
    assert p.returncode == 0, p.stderr
    assert (out / "confirmed.yaml").is_file() and list(out.glob("search-rank01-*.yaml"))
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    hist = pq.read_table(out / "histories.parquet").to_pylist()
    assert len(trials) == 6 and {"epoch", "run", "role"} <= set(hist[0])
    header = (out / "confirmed.yaml").read_text().splitlines()
    assert any("threads 1" in ln for ln in header)
    cmd = next(ln for ln in header if ln.startswith("# re-run: ")).split("# re-run: ")[1].split()
    assert cmd[:4] == ["python", "-m", "crkd", "run"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the default, not the trial's
    p = subprocess.run([sys.executable, *cmd[1:], "--quiet"], cwd=out, capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads((out / cmd[-1] / "metrics.json").read_text())
    seed = int(cmd[cmd.index("--seed") + 1])
    label = next(ln for ln in header if ln.startswith('# "')).split('"')[1]
    rec = next(json.loads(f.read_text()) for f in (study["storage"] / "e2e" / "confirm" / "records").glob("*.json")
               if json.loads(f.read_text()).get("label") == label and json.loads(f.read_text())["seed"] == seed)
    assert metrics["novel/train/acc"] == rec["final"]["novel/train/acc"]
    assert metrics["loss/total"] == rec["final"]["loss/total"]

    # and a search trial: its export re-runs the proxy task (one fold) to the trial's own value
    (search,) = out.glob("search-rank01-*.yaml")
    header = search.read_text().splitlines()
    cmd = next(ln for ln in header if ln.startswith("# re-run: ")).split("# re-run: ")[1].split()
    p = subprocess.run([sys.executable, *cmd[1:], "--quiet"], cwd=out, capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    metrics = json.loads((out / cmd[-1] / "metrics.json").read_text())
    (row,) = [t for t in trials if t["rank"] == 1]
    assert metrics["epoch"] == row["epochs"]
    assert metrics["novel/train/acc"] == row[study["selection"]["metric"]]
    assert not [k for k in trials[0] if k.startswith("config/tuned.") or k in ("final/rank", "final/objective")]


def count_outcomes(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from tags where key = 'crkd.outcome'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ctrl_c_then_resume(tmp_path):
    """Ctrl-C in the search: Tune saves its state, every run is closed, the resume hint is
    printed; --resume completes search, confirmation and report without duplicates."""
    storage = tmp_path / "runs"
    cmd = tune_cmd(storage, "res", "--num-samples", "4", "--confirm-top", "1", "--confirm-seeds", "1",
                   "--no-transfer")
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, env=ENV)
    try:
        deadline = time.time() + 240
        while count_outcomes(storage / "mlflow.db") < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the study ended before it could be interrupted"
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, out[-3000:]
    assert "--resume --name res" in out and "Traceback" not in out
    c, roles = runs_of(storage, "res")
    assert roles["study"][0].info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in roles.get("trial", []))

    p = run([sys.executable, TUNE, "--resume", "--name", "res", "--storage", str(storage)], tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    jobs = json.loads((storage / "res" / "confirm" / "jobs.json").read_text())
    check_consistent(storage, "res", 4, len(jobs))
    assert (storage / "res" / "report" / "report.md").is_file()
    params = [tuple(sorted(t.params.items())) for t in optuna_trials(storage, "res")]
    assert len(set(params)) == len(params)  # no configuration drawn twice


def test_nan_loss_fails_the_trial_and_the_study_goes_on(tmp_path):
    space = tmp_path / "lr.yaml"
    space.write_text("description: one learning rate that explodes\n"
                     "params:\n  lr: {field: discover.lr, dist: choice, values: [0.1, 1.0e+12]}\n")
    storage = tmp_path / "runs"
    p = run(tune_cmd(storage, "nan", "--space", str(space), "--num-samples", "3", "--confirm-seeds", "0"), tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    outcome = check_consistent(storage, "nan", 3, 0)
    assert list(outcome.values()).count("failed") >= 1 and "finished" in outcome.values()
    _, roles = runs_of(storage, "nan")
    for r in roles["trial"]:
        if r.info.status == "FAILED":
            assert r.data.params["discover.lr"] == "1000000000000.0"
            assert r.data.tags["crkd.error"].startswith("NonFiniteLoss: discover: loss term")
    assert "failed: NonFiniteLoss" in p.stdout
