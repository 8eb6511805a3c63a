"""harness/tune.py, leaderboard.py, export.py: bad options and bad space files stop
before Ray starts, with exit code 2 and one `error: ...` line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", exc_type=ImportError)

from harness import export, leaderboard  # noqa: E402
from harness import tune as tune_script  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def error_of(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    import ray
    assert not ray.is_initialized()
    return lines[0]


BAD_OPTIONS = [
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--max-concurrent", "0"], "--max-concurrent must be >= 1"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    (["--max-epochs", "0"], "--max-epochs must be >= 1"),
    (["--max-epochs", "6", "--grace-period", "7"], "--grace-period must be between 1 and max epochs (6)"),
    (["--reduction-factor", "1"], "--reduction-factor must be > 1"),
    (["--metric", "novel/train/accuracy"], "--metric 'novel/train/accuracy' is not reported"),
    (["--mode", "sideways"], "argument --mode: invalid choice"),
    (["--num-samples", "many"], "argument --num-samples: invalid int value"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--benchmark", "mnist"], "unknown benchmark 'mnist'"),
    (["--space", "sinkhorm"], "--space sinkhorm: unknown space; did you mean 'sinkhorn'?"),
    (["--space", "no/such.yaml"], "no such file"),
    (["--set", "discover.bta=0.2"], "--set discover.bta: unknown trainer field; did you mean 'discover.beta'?"),
    (["--set", "discover.beta"], "needs the form section.key=value"),
    (["--set", "discover.beta=0.2"], "--set discover.beta: this field is searched by rkd_weights.yaml"),
    (["--set", "discover.tau=0"], "discover.tau must be > 0"),
    (["--set", "discover.epochs=5", "--max-epochs", "6"], "both set the discovery epochs"),
    (["--set", "data.benchmark=cifar10-5-5"], "choose the benchmark with --benchmark"),
    (["--benchmark", "cifar10-5-5", "--set", "data.root=/nonexistent"], "cifar10 not found"),
    (["--storage", "s3://bucket/x"], "also give --tracking-uri http://HOST:5000"),
    (["--tracking-uri", "./mlruns"], "MLflow 3 refuses file stores"),
    (["--name", "a b"], "--name 'a b': use letters, digits"),
]


@pytest.mark.parametrize("argv,words", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option(capsys, tmp_path, argv, words):
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), *argv])
    assert words in line, line


def test_gpus_without_a_gpu(capsys, tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--gpus-per-trial", "0.25"])
    assert "no CUDA GPU is visible" in line


def test_bad_space_file(capsys, tmp_path):
    space = tmp_path / "typo.yaml"
    space.write_text("params:\n  beta: {field: discover.beta, dist: loguniform, low: 0, high: 1}\n")
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--space", str(space)])
    assert "typo.yaml: params.beta.low: loguniform needs low > 0" in line


def test_existing_study_needs_resume(capsys, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "harness.json").write_text("{}")
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--name", "old"])
    assert "study 'old' already exists" in line and "--resume" in line


def test_resume_without_a_study(capsys, tmp_path):
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--resume"])
    assert "no study in" in line
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--resume", "--name", "x"])
    assert "no study 'x'" in line


def test_leaderboard_and_export_errors(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path}/none.db"
    assert leaderboard.main(["--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow store")
    assert export.main(["--tracking-uri", uri, "--name", "x", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow store")
    line = error_of(capsys, export.main, ["--name", "x"])
    assert "--out" in line
    line = error_of(capsys, leaderboard.main, ["--top", "0"])
    assert "--top must be >= 1" in line


def test_script_help_and_exit_code():
    p = subprocess.run([sys.executable, str(REPO / "harness" / "tune.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0
    for opt in ("--benchmark", "--space", "--num-samples", "--max-concurrent", "--cpus-per-trial",
                "--gpus-per-trial", "--max-epochs", "--grace-period", "--reduction-factor", "--metric",
                "--mode", "--seed", "--name", "--storage", "--tracking-uri", "--address", "--resume", "--set"):
        assert opt in p.stdout
    p = subprocess.run([sys.executable, str(REPO / "harness" / "tune.py"), "--num-samples", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == "error: --num-samples must be >= 1"
