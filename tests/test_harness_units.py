"""Harness parts without Ray: the stage-1 cache (locking, object stores), the PRUNED
bookkeeping of the Optuna searcher, and the error line shown for failed trials."""
from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

pytest.importorskip("optuna", exc_type=ImportError)
pytest.importorskip("ray.tune", exc_type=ImportError)

import crkd  # noqa: E402
from harness.stage1 import Stage1Cache  # noqa: E402

FAST = ["pretrain.epochs=3", "discover.epochs=2", "model.widths=[8,16,16]", "model.hidden_dim=32",
        "model.proj_dim=16"]


def tiny_config(**extra):
    return crkd.load_config(benchmark="digits", overrides=FAST + [f"{k}={v}" for k, v in extra.items()])


def _get_teacher(root, barrier, queue):
    import torch
    torch.set_num_threads(1)
    cfg = tiny_config()
    barrier.wait()  # both processes ask at the same moment
    path, how = Stage1Cache(root).teacher(cfg, who=str(os.getpid()), log=lambda m: None)
    queue.put((how, path))


def test_stage1_cache_trains_once_under_contention(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_get_teacher, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(how for how, _ in results) == ["trained", "waited"]
    (path,) = {p for _, p in results}
    key = crkd.stage1_key(tiny_config())
    assert path == str(tmp_path / key / "teacher.pt")
    info = json.loads((tmp_path / key / "teacher.json").read_text())
    assert info["key"] == key and info["epochs"] == 3
    assert sorted(os.listdir(tmp_path / key)) == [".lock", "teacher.json", "teacher.pt"]  # no temp files left

    # stage-2 values do not change the key: a hit; a stage-1 value does: another teacher
    assert Stage1Cache(str(tmp_path)).teacher(tiny_config(**{"discover.beta": 0.5}), log=lambda m: None)[1] == "hit"
    assert crkd.stage1_key(tiny_config(**{"pretrain.lr": 0.05})) != key
    crkd.Discover(tiny_config(), path)  # a usable teacher


def test_stage1_cache_object_store(tmp_path):
    import pyarrow.fs as pafs
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    fs = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())
    cfg = tiny_config()
    first = Stage1Cache("cache", filesystem=fs, mirror=str(tmp_path / "node1"))
    path1, how1 = first.teacher(cfg, log=lambda m: None)
    key = crkd.stage1_key(cfg)
    assert how1 == "trained" and (bucket / "cache" / key / "teacher.pt").is_file()
    assert (bucket / "cache" / key / "teacher.json").is_file()
    other_node = Stage1Cache("cache", filesystem=fs, mirror=str(tmp_path / "node2"))
    path2, how2 = other_node.teacher(cfg, log=lambda m: None)
    assert how2 == "hit" and path2 != path1
    assert open(path1, "rb").read() == open(path2, "rb").read()


# --- the searcher ------------------------------------------------------------------------

def make_searcher(storage, max_t=4, points=None):
    from optuna.distributions import FloatDistribution
    from optuna.samplers import TPESampler
    from harness.search import PruningOptunaSearch
    return PruningOptunaSearch(space={"x": FloatDistribution(0.0, 1.0)}, metric="acc", mode="max", max_t=max_t,
                               points_to_evaluate=points, sampler=TPESampler(seed=0), study_name="s",
                               storage=storage)


def test_searcher_marks_early_stopped_trials_pruned():
    import optuna
    from optuna.trial import TrialState
    storage = optuna.storages.InMemoryStorage()
    s = make_searcher(storage, points=[{"x": 0.5}])
    assert s.suggest("a") == {"x": 0.5, "_n": 0}  # the enqueued default comes first, numbered
    s.suggest("b"), s.suggest("c"), s.suggest("d")
    s.on_trial_result("a", {"acc": 0.1, "epoch": 1, "training_iteration": 1})
    s.on_trial_complete("a", {"acc": 0.3, "epoch": 2})          # ASHA stop at epoch 2
    for e in (1, 2, 3):
        s.on_trial_result("b", {"acc": 0.1 * e, "epoch": e})
    s.on_trial_complete("b", {"acc": 0.6, "epoch": 4})          # reached max_t
    s.on_trial_complete("c", None, error=True)                  # NaN loss
    s.on_trial_complete("d", {"acc": float("nan"), "epoch": 4})  # a NaN score is no score
    trials = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert trials["a"].state == TrialState.PRUNED and trials["a"].intermediate_values == {1: 0.1, 2: 0.3}
    assert trials["a"].user_attrs["epochs_reached"] == 2 and trials["a"].user_attrs["outcome"] == "early-stopped"
    assert trials["b"].user_attrs["outcome"] == "finished" and trials["c"].user_attrs["outcome"] == "failed"
    assert trials["b"].state == TrialState.COMPLETE and trials["b"].value == 0.6
    assert trials["c"].state == TrialState.FAIL and trials["d"].state == TrialState.FAIL
    s.on_trial_complete("a", {"acc": 0.9, "epoch": 4})  # a repeat is ignored
    assert optuna.load_study(study_name="s", storage=storage).trials[0].state == TrialState.PRUNED


def test_held_journal_writes_a_trials_end_in_one_append(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState
    from harness.search import optuna_storage
    path = str(tmp_path / "optuna.log")
    storage = optuna_storage(path)
    appends = []
    write = storage._backend.file.append_logs
    storage._backend.file.append_logs = lambda logs: (appends.append(len(logs)), write(logs))
    s = make_searcher(storage, max_t=30)
    s.suggest("a"), s.suggest("b")
    for e in range(1, 30):
        s.on_trial_result("a", {"acc": e / 100, "epoch": e})
    appends.clear()
    s.on_trial_complete("a", {"acc": 0.3, "epoch": 30})
    s.on_trial_complete("b", {"acc": 0.05, "epoch": 5})
    # per trial: its curve and two attributes in one append, then the tell (state, value)
    assert appends[0] == 2 + 30 and appends[2] == 2 + 1, appends
    assert len(appends) <= 6, appends
    # an independent reader (as optuna-dashboard opens the file) sees every value, in order
    trials = {t.user_attrs["tune_trial_id"]: t for t in
              optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path))).trials}
    assert trials["a"].state == TrialState.COMPLETE and trials["a"].value == 0.3
    assert trials["a"].intermediate_values == {e: e / 100 for e in range(1, 31)}
    assert trials["b"].state == TrialState.PRUNED and trials["b"].intermediate_values == {5: 0.05}
    assert trials["b"].user_attrs == {"tune_trial_id": "b", "epochs_reached": 5, "outcome": "early-stopped"}


def test_a_trial_told_before_a_kill_is_not_told_again(tmp_path):
    """kill -9 after a trial's tell and before Tune saved its state: the resumed driver re-runs
    the trial and ends it again. Nothing of that second ending may reach the journal (Optuna
    replays a finished trial's update from its own process as an error, at the next read)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState
    from harness.search import optuna_storage
    path = str(tmp_path / "optuna.log")
    s1 = make_searcher(optuna_storage(path))
    s1.suggest("a")
    for e in (1, 2, 3):
        s1.on_trial_result("a", {"acc": e / 10, "epoch": e})
    s1.on_trial_complete("a", {"acc": 0.4, "epoch": 4})  # told; then the driver is killed
    number = s1._ot_trials["a"].number
    s2 = make_searcher(optuna_storage(path))  # the resumed driver: its snapshot has "a" running
    s2._ot_trials = {"a": optuna.Trial(s2._ot_study, s1._ot_trials["a"]._trial_id)}
    for e in (1, 2, 3):
        s2.on_trial_result("a", {"acc": e / 20, "epoch": e})
    s2.on_trial_complete("a", {"acc": 0.2, "epoch": 4})
    assert s2.suggest("b")["_n"] == number + 1  # reads the journal: no error
    trials = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path))).trials
    assert trials[number].state == TrialState.COMPLETE and trials[number].value == 0.4
    assert trials[number].intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}


def test_searcher_adopts_trials_an_interrupted_driver_left_running():
    import optuna
    from optuna.trial import TrialState
    storage = optuna.storages.InMemoryStorage()
    s1 = make_searcher(storage)
    s1.suggest("a")
    s1.on_trial_complete("a", {"acc": 0.5, "epoch": 4})
    s1.suggest("b")  # asked, then the driver died before Tune saved it
    orphan = s1._ot_trials["b"]
    s2 = make_searcher(storage)  # the restored searcher knows "a" only
    s2._ot_trials = {"a": s1._ot_trials["a"]}
    s2._completed_trials = {"a"}
    assert s2.suggest("c") == {"x": orphan.params["x"], "_n": orphan.number}
    s2.on_trial_complete("c", {"acc": 0.7, "epoch": 4})
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[1].user_attrs["tune_trial_id"] == "c"


def test_error_line_picks_the_exception(tmp_path):
    from harness.recorder import error_line

    class T:
        error_file = str(tmp_path / "error.txt")
    (tmp_path / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-01-01)\nray::ImplicitFunc.train() (pid=1)\n  File \"x.py\", line 3\n"
        "    raise NonFiniteLoss(...)\ncrkd.errors.NonFiniteLoss: discover: loss term 'loss/total' is nan at "
        "epoch 2, step 1; lower the learning rate or check the term's settings\n"
        "Failure # 2 (occurred at 2026-01-01)\nray::ImplicitFunc.train()\n"
        "harness.storage.RepeatedFailure: NonFiniteLoss: discover: loss term 'loss/total' is nan at epoch 2\n")
    assert error_line(T()).startswith("NonFiniteLoss: discover: loss term 'loss/total' is nan at epoch 2")


def test_stage1_cache_heals_a_corrupt_teacher(tmp_path):
    cache = Stage1Cache(str(tmp_path))
    cfg = tiny_config()
    path, how = cache.teacher(cfg, log=lambda m: None)
    import torch
    good = torch.load(path, weights_only=True)["model"]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # truncated, as a full disk or a killed copy leaves it
        f.truncate(size // 2)
    logs = []
    path2, how2 = cache.teacher(cfg, log=logs.append)
    assert how2 == "retrained" and any("does not match its sha256" in m for m in logs)
    again = torch.load(path2, weights_only=True)["model"]
    assert all(torch.equal(good[k], again[k]) for k in good)  # stage 1 is seeded: the same weights again
    assert cache.teacher(cfg, log=lambda m: None)[1] == "hit"


def test_stage1_failure_is_recorded_once(tmp_path):
    from harness.stage1 import StageOneFailed
    cache = Stage1Cache(str(tmp_path))
    cfg = tiny_config(**{"pretrain.lr": 1e12})
    with pytest.raises(crkd.NonFiniteLoss):
        cache.teacher(cfg, log=lambda m: None)
    key = crkd.stage1_key(cfg)
    failed = json.loads((tmp_path / key / "failed.json").read_text())
    assert failed["error"].startswith("NonFiniteLoss: pretrain: loss term")
    with pytest.raises(StageOneFailed, match="stage 1 of .* failed in run"):  # at once, no second training
        cache.teacher(cfg, log=lambda m: None)


def _fake_trial(tid: str, n: int, alpha: float):
    """What the Recorder and Console read of a running Tune trial."""
    from types import SimpleNamespace
    return SimpleNamespace(trial_id=tid, config={"_n": n, "alpha": alpha}, status="RUNNING", last_result={})


@pytest.mark.parametrize("mode, best", [("max", "0.7000 (#2)"), ("min", "0.3000 (#1)")])
def test_console_progress_and_outcome_lines(mode, best):
    """The quiet console's lines, read as a person would: counts by outcome, the best trial so
    far in the study's direction, and one line per ended trial in the shared vocabulary."""
    import io
    from harness import recorder as rec_mod
    from harness.console import Console

    class Writer:
        def __init__(self):
            self.ops = []

        def put(self, op):
            self.ops.append(op)

    out, writer = io.StringIO(), Writer()
    rec_mod.ACTIVE.update(writer=writer, console=Console(interval_s=0, stream=out))
    try:
        rec = rec_mod.Recorder("search", "loss", max_t=3, fields={"alpha": "discover.alpha"}, total=4, mode=mode)
        a, b, c = _fake_trial("a", 1, 0.5), _fake_trial("b", 2, 1.25), _fake_trial("c", 3, 2.0)
        trials = [a, b, c]
        for t in trials:
            rec._logged[t.trial_id] = 0  # started (the run's creation needs a real study)
        for epoch in (1, 2, 3):
            rec.on_trial_result(0, trials, a, {"epoch": epoch, "loss": 0.3})
            rec.on_trial_result(0, trials, b, {"epoch": epoch, "loss": 0.7})
        rec.on_trial_result(0, trials, c, {"epoch": 1, "loss": 0.1})
        for t in (a, b):
            t.status, t.last_result = "TERMINATED", {"epoch": 3, "loss": 0.3 if t is a else 0.7}
            rec.on_trial_complete(0, trials, t)
        c.status, c.last_result = "TERMINATED", {"epoch": 1, "loss": 0.1}
        rec.on_trial_complete(0, trials, c)
        rec_mod.ACTIVE["console"].progress(rec, trials, force=True)
    finally:
        for k in ("writer", "console"):
            rec_mod.ACTIVE.pop(k, None)
    lines = out.getvalue().splitlines()
    assert "search #1 alpha=0.5: finished: loss 0.3000" in lines
    assert "search #3 alpha=2: stopped early at epoch 1: loss 0.1000" in lines
    last = lines[-1]
    # an early-stopped trial's value is not a finished trial's: it never becomes "best"
    assert last.startswith(f"search: 3/4 done (2 finished, 1 early-stopped) | 0 running | best loss {best} | ")
    ends = {op["key"]: op["status"] for op in writer.ops if op["op"] == "end"}
    outcomes = {op["key"]: op["tags"]["crkd.outcome"] for op in writer.ops
                if op["op"] == "tags" and "crkd.outcome" in op["tags"]}
    assert outcomes == {"a": "finished", "b": "finished", "c": "early-stopped"}
    assert ends == {"a": "FINISHED", "b": "FINISHED", "c": "FINISHED"}  # stopped early is not a failure


def test_plots_draw_every_trial_with_log_axes(monkeypatch):
    """The study plots count pruned trials (at their last epoch) beside finished ones, put a
    log-scale parameter on a log axis and draw the best *finished* score so far."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from harness import plots
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path, tight=True: figures.__setitem__(path, fig))
    dist = {"alpha": FloatDistribution(0.01, 100.0, log=True), "beta": FloatDistribution(0.0, 1.0)}
    study = optuna.create_study(direction="maximize")
    for alpha, beta, state, curve in [(1.0, 0.5, TrialState.COMPLETE, [0.2, 0.4, 0.6]),
                                      (0.01, 0.0, TrialState.PRUNED, [0.9]),
                                      (100.0, 1.0, TrialState.PRUNED, [0.1, 0.3]),
                                      (10.0, 0.2, TrialState.FAIL, [])]:
        study.add_trial(create_trial(state=state, params={"alpha": alpha, "beta": beta}, distributions=dist,
                                     value=curve[-1] if state == TrialState.COMPLETE else None,
                                     intermediate_values=dict(enumerate(curve, 1))))
    rows = plots._rows(study)
    assert [(r["kind"], r["last"], r["epochs"]) for r in rows] == [
        ("finished", 0.6, 3), ("early-stopped", 0.9, 1), ("early-stopped", 0.3, 2), ("failed", None, 0)]

    plots.parallel(rows, "acc", "parallel")
    (ax,) = figures["parallel"].axes
    lines = ax.get_lines()[:3]  # one per scored trial (the rest are the axes' verticals)
    ys = [list(ln.get_ydata()[:2]) for ln in lines]  # alpha (log axis), beta
    assert ys == [pytest.approx(y) for y in ([0.5, 0.5], [0.0, 0.0], [1.0, 1.0])]  # alpha 1 mid-axis, as 0.5 is
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", "--"]
    assert "log" in ax.get_xticklabels()[0].get_text()

    plots.history(rows, "acc", "max", "history")
    (ax,) = figures["history"].axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["finished (1)", "early-stopped (2)", "failed (1)", "best finished so far"]
    best = [ln for ln in ax.get_lines()][-1]
    assert list(best.get_ydata()) == [0.6, 0.6, 0.6, 0.6]  # the pruned 0.9 is not "best"

    plots.intermediate(rows, "acc", "intermediate")
    assert len(figures["intermediate"].axes[0].get_lines()) == 3
    plots.importances(study, rows, "importances")
    assert "from 3 trials (1 finished, 2 early-stopped" in figures["importances"].axes[0].get_title()
