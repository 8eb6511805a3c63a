"""The two stages end to end on digits: accuracy, resume, reproducibility, failures."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from sklearn.cluster import KMeans

from crkd import Discover, NonFiniteLoss, Pretrain, apply_overrides, preset
from crkd.cli import main
from crkd.metrics import cluster_acc
from crkd.relations import RELATIONS, Relation
from tiny import fast, resumed_after, untimed

FAST = fast(4)


@pytest.fixture(scope="module")
def fast_teacher(digits):
    cfg = apply_overrides(preset("digits"), FAST)
    stage = Pretrain(cfg, digits)
    stage.run()
    return cfg, stage.teacher_checkpoint()


def test_full_digits_run_beats_kmeans(digits):
    # Seeds spread widely on digits: the preset gave 0.855, 0.899 and 0.976 for seeds
    # 0, 1, 2 (docs/benchmarks.md; docs/methods.md reports +-4 points). One pinned seed keeps
    # the test deterministic (seed 2, one thread: 0.969); a regression shows as a drop on it.
    cfg = apply_overrides(preset("digits"), ["seed=2"])
    start = time.perf_counter()
    pre = Pretrain(cfg, digits)
    known = pre.run()["known/test/acc"]
    final = Discover(cfg, pre.teacher_checkpoint(), digits).run()
    elapsed = time.perf_counter() - start
    novel = ~digits.train_lab
    x = digits.train.x[novel].reshape(int(novel.sum()), -1).float().numpy()
    y = digits.train_y[novel].numpy()
    kmeans = cluster_acc(y, KMeans(5, n_init=10, random_state=0).fit_predict(x))
    print(f"digits: novel/train/acc {final['novel/train/acc']:.3f} vs k-means {kmeans:.3f}, "
          f"known {known:.3f}, {elapsed:.1f}s")
    assert final["novel/train/acc"] > kmeans
    assert final["known/test/acc"] > 0.95
    for key in ("novel/train/acc_avg", "novel/train/nmi", "novel/train/ari", "novel/test/acc", "test/all/acc",
                "test/old/acc", "test/new/acc", "loss/rel", "rkd/weight_mean", "rkd/weight_std"):
        assert key in final


def test_resume_gives_identical_metrics(digits, fast_teacher, tmp_path):
    cfg, teacher = fast_teacher
    full = list(Discover(cfg, teacher, digits))
    first = Discover(cfg, teacher, digits)
    rest = resumed_after(first, digits, str(tmp_path / "d.pt"), 2)
    assert [m["epoch"] for m in rest] == [3, 4]
    assert untimed(rest[-1]) == untimed(full[-1])


def test_same_seed_same_metrics(digits, fast_teacher):
    cfg, teacher = fast_teacher
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}
    a, b = Discover(cfg, teacher, digits).run(), Discover(cfg, teacher, digits).run()
    assert strip(a) == strip(b)
    c = Discover(apply_overrides(cfg, ["seed=1"]), teacher, digits).run()
    assert strip(c) != strip(a)


def test_nan_loss_stops_with_term_and_epoch(digits, fast_teacher, monkeypatch):
    class Broken(Relation):
        def forward(self, ctx):
            return ctx.targets.sum() * float("nan"), {}
    monkeypatch.setitem(RELATIONS, "broken", Broken)
    cfg, teacher = fast_teacher
    stage = Discover(apply_overrides(cfg, ["discover.relation=broken"]), teacher, digits)
    with pytest.raises(NonFiniteLoss, match=r"discover: loss term 'loss/rel' is nan at epoch 1, step 0"):
        next(iter(stage))
    assert all(torch.isfinite(p).all() for p in stage.model.parameters())  # no NaN step was taken


def test_uno_baseline_skips_teacher(digits, fast_teacher):
    cfg, teacher = fast_teacher
    stage = Discover(apply_overrides(cfg, ["discover.relation=none"]), teacher, digits)
    assert stage.teacher is None
    assert next(iter(stage))["loss/rel"] == 0.0


# --- command line --------------------------------------------------------------

def _one_line_error(capsys, argv, needle, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err


@pytest.mark.parametrize("argv,needle", [
    (["run", "--set", "discover.tau=0"], "discover.tau must be > 0"),
    (["run", "--set", "relation.t=-2"], "relation.t must be > 0"),
    (["run", "--set", "discover.sk_epsilon=-0.05"], "discover.sk_epsilon must be > 0"),
    (["run", "--set", "discover.beta=-1"], "discover.beta must be >= 0"),
    (["run", "--set", "data.num_novel=4"], "data.num_novel=4 but digits has 5"),
    (["run", "--benchmark", "cifar10-5-5", "--data-root", "/nonexistent"], "cifar10 not found"),
    (["discover", "--teacher", "/nonexistent.pt"], "checkpoint /nonexistent.pt does not exist"),
])
def test_cli_bad_input(capsys, tmp_path, argv, needle):
    _one_line_error(capsys, argv + ["--out", str(tmp_path)], needle)


def test_cli_out_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    _one_line_error(capsys, ["run", "--out", str(tmp_path / "f")], "is a file; give a folder")


def test_cli_unknown_benchmark_exit_2():
    r = subprocess.run([sys.executable, "-m", "crkd", "run", "--benchmark", "mnist"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown benchmark 'mnist'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_run_writes_metrics_and_resumes(tmp_path, capsys):
    argv = ["run", "--out", str(tmp_path), "--seed", "3", *sum((["--set", o] for o in FAST), [])]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["seed"] == 3 and 0 <= metrics["novel/train/acc"] <= 1
    lines = [json.loads(l) for l in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [l["stage"] for l in lines] == ["pretrain"] * 2 + ["discover"] * 4
    out = capsys.readouterr().out
    assert "discover     4/4" in out
    assert main(["run", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["novel/train/acc"] == metrics["novel/train/acc"]
    # a finished run resumes to the same place
    assert main(argv + ["--resume", "--quiet"]) == 0
    assert not os.path.exists(tmp_path / "pretrain.pt")
