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


@pytest.fixture(autouse=True)
def no_driver(monkeypatch):
    """A bad option must stop before the study runs: reaching the driver fails the test at once."""
    from harness import driver

    def refuse(self):
        raise AssertionError("a bad option reached the driver")
    monkeypatch.setattr(driver.Driver, "run", refuse)


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
    (["--set", "relation.t=2", "--set", "discover.relation=uno"], "--set relation.t: unknown trainer field"),
    (["--set", "data.proxy_fold=1"], "the harness builds the proxy task itself"),
    (["--objective", "novel", "--proxy-folds", "2"], "--proxy-folds needs --objective proxy"),
    (["--proxy-folds", "3"], "give 2 disjoint fold"),
    (["--proxy-folds", "0"], "--proxy-folds must be >= 1"),
    (["--confirm-seeds", "-1"], "--confirm-seeds must be >= 0"),
    (["--confirm-top", "-1"], "--confirm-top must be >= 0"),
    (["--reduction-factor", "nan"], "--reduction-factor must be a finite number"),
    (["--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number"),
    (["--grace-period", "0"], "--grace-period must be between 1"),
    (["--name", ""], "--name is empty"),
    (["--num", "3"], "unrecognized arguments: --num"),
    (["--tracking-uri", "ftp://x/y"], "unknown scheme ftp:"),
    (["--tracking-uri", "postgresql://u@127.0.0.1/db"], "the postgresql driver is not installed"),
    (["--tracking-uri", "http://127.0.0.1:9"], "no MLflow server answers"),
    (["--storage", "gopher://x"], "unknown scheme gopher://"),
    (["--address", "127.0.0.1:9"], "no Ray cluster answers at 127.0.0.1:9"),
    (["--set", "discover.tau=0"], "discover.tau must be > 0"),
    (["--set", "discover.epochs=5", "--max-epochs", "6"], "both set the discovery epochs"),
    (["--set", "data.benchmark=cifar10-5-5"], "choose it with --benchmark"),
    (["--benchmark", "cifar10-5-5", "--set", "data.root=/nonexistent"], "cifar10 not found"),
    (["--storage", "s3://bucket/x"], "also give --tracking-uri http://HOST:5000"),
    (["--storage", "s3://bucket/x?endpoint_override=127.0.0.1:9000&scheme=http"], "set AWS_ENDPOINT_URL"),
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
    (tmp_path / "old" / "study.yaml").write_text("name: old\n")
    (tmp_path / "old" / "state.json").write_text('{"search": "running"}')
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--name", "old"])
    assert "study 'old' already exists" in line and "--resume" in line


def test_storage_and_store_files(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path / "afile")])
    assert "is a file; give a folder" in line
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mlflow.db").write_text("not a database")
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path / "s")])
    assert "is not an SQLite database" in line
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "bad").mkdir()
    (tmp_path / "r" / "bad" / "study.yaml").write_bytes(b"\x00\xff\x00 binary")
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path / "r"), "--resume", "--name", "bad"])
    assert "is not a study file" in line
    space = tmp_path / "bin.yaml"
    space.write_bytes(bytes(range(256)))
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--space", str(space)])
    assert "bin.yaml" in line


def test_resume_without_a_study(capsys, tmp_path):
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--resume"])
    assert "no study in" in line
    line = error_of(capsys, tune_script.main, ["--storage", str(tmp_path), "--resume", "--name", "x"])
    assert "no study 'x'" in line


def test_leaderboard_export_report_errors(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path}/none.db"
    assert leaderboard.main(["--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.startswith("error: no MLflow store")
    line = error_of(capsys, export.main, ["--storage", str(tmp_path), "--name", "x"])
    assert "no study 'x'" in line
    line = error_of(capsys, export.main, [])
    assert "--name" in line
    line = error_of(capsys, leaderboard.main, ["--top", "0"])
    assert "--top must be >= 1" in line
    from harness import report
    line = error_of(capsys, report.main, ["--storage", str(tmp_path), "--name", "x"])
    assert "no study 'x'" in line


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
    assert p.returncode == 2 and p.stderr.strip() == "error: --num-samples must be >= 1, got 0"
