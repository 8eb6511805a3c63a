"""6. A study on S3: moto's S3 server on 127.0.0.1 as `--storage s3://crkd/studies`, an
`mlflow server` on 127.0.0.1 as `--tracking-uri`.

The endpoint goes through AWS_ENDPOINT_URL, which pyarrow (the harness's storage and Ray
Tune's) reads; `s3://...?endpoint_override=...` does not work, since the study's paths are
appended to the root (harness.storage.check_root says so). The driver's home is the
scenario's own: with object-store storage the tracking journal, the Optuna journal and the
node's mirror of the stage-1 cache live there.

Ctrl-C mid-search, the node's stage-1 mirror deleted (a new machine), --resume: the teachers
come back from S3, none is trained twice; then harness/export.py reads the study from S3.
"""
from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from .support import (EXPORT, PY, MlflowServer, MotoS3, Progress, env, journal_path, resume_cmd, study_cmd,
                      wait_until)
from .test_driver import assert_interrupted, mid_search

pytest.importorskip("ray.tune", exc_type=ImportError)
pytest.importorskip("moto", exc_type=ImportError)
pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRIALS = 4
STAGE1 = "stage1_cache"


def teacher_info(s3: MotoS3, key: str) -> dict | None:
    path = f"{s3.bucket}/studies/{STAGE1}/{key}/teacher.json"
    try:
        with s3.fs().open_input_stream(path) as f:
            return json.loads(f.read())
    except (OSError, FileNotFoundError):
        return None


def test_s3_storage_cache_resume_export(scenario, monkeypatch):
    s = scenario.begin(6, "S3 storage (moto) + mlflow server: stage-1 cache on S3, Ctrl-C + --resume, export")
    s3 = s.server(MotoS3(s.tmp / "s3", s.tmp))
    s3.start()
    server = s.server(MlflowServer(s.tmp / "mlflow", s.tmp))
    server.start()
    home = s.tmp / "home"
    home.mkdir()
    for k, v in s3.env.items():  # this process reads Tune's state and the records from S3 too
        monkeypatch.setenv(k, v)
    driver_env = env(**s3.env, HOME=str(home))
    root, name = f"s3://{s3.bucket}/studies", "ons3"
    driver = s.spawn(study_cmd(root, name, "--tracking-uri", server.uri, samples=TRIALS), "driver", env=driver_env)
    prog = Progress(journal_path(root, name, home))
    wait_until(lambda: mid_search(prog), 400, "mid-search", driver)
    driver.signal(signal.SIGINT)
    assert s.ended(driver, 180) == 130, driver.tail()
    assert_interrupted(driver.output(), name)
    assert f"--storage {root}" in driver.output()
    s.settle(driver)
    s.stopped(server.uri, name)

    mirror = home / ".cache" / "crkd-tune" / "stage1"
    before = {k: teacher_info(s3, k) for k in sorted(p.name for p in mirror.iterdir())}
    assert before and all(before.values()), before  # on S3 already
    shutil.rmtree(mirror)  # a new machine: its stage-1 mirror is empty
    scratch = set(Path(tempfile.gettempdir()).glob("crkd-*"))
    resumed = s.run(resume_cmd(root, name), "resume", timeout=600, env=driver_env)
    assert resumed.rc == 0, resumed.tail()
    # the report is named where it lives, on S3; its local scratch copy is gone
    assert f"report: {root}/{name}/report/report.md" in resumed.output(), resumed.tail()
    assert set(Path(tempfile.gettempdir()).glob("crkd-*")) <= scratch

    out = s.tmp / "exported"
    export = s.run([PY, EXPORT, "--storage", root, "--name", name, "--out", str(out), "--top", "1"], "export",
                   timeout=300, env=driver_env)
    assert export.rc == 0, export.tail()
    assert (out / "confirmed.yaml").is_file() and list(out.glob("search-rank01-*.yaml"))
    assert {"trials.parquet", "histories.parquet", "leaderboard.csv"} <= {p.name for p in out.iterdir()}

    # the stage-1 cache on S3: every recipe's teacher once, trained once, fetched by the others
    files = s3.files(f"studies/{STAGE1}")
    keys = {f.split("/")[2] for f in files if f.endswith("/teacher.pt")}
    assert keys and all(f"studies/{STAGE1}/{k}/teacher.json" in files for k in keys), files
    from mlflow.tracking import MlflowClient

    from .counting import all_runs
    client = MlflowClient(server.uri)
    runs = all_runs(client, client.get_experiment_by_name(name).experiment_id)
    how = Counter(r.data.tags.get("crkd.stage1_cache") for r in runs if r.data.tags.get("crkd.role") == "trial")
    s.notes.append(f"stage-1 on S3: {len(keys)} teachers; search trials got theirs: {dict(how)}")
    assert how["trained"] == 1 and how["retrained"] == 0, how  # the proxy task's teacher, trained once
    assert how["hit"] + how["waited"] >= 1, how  # other trials used the cached one
    for k, info in before.items():  # the new machine fetched the teachers S3 had: none trained again
        assert teacher_info(s3, k) == info, f"teacher {k} was trained again"
        assert json.loads((mirror / k / "teacher.json").read_text()) == info
    assert any(f.startswith(f"studies/{name}/search/") for f in s3.files(f"studies/{name}/search"))  # Tune's state

    s.count(server.uri, name, f"{root}/{name}", str(home / ".cache" / "crkd-tune" / "optuna" / name / "optuna.log"),
            TRIALS)
    s.assert_zeros()
