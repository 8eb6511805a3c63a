"""benchmarks/driver_bench.py end to end, tiny: a few stand-in trials through the harness's
driver machinery (Tune + PruningOptunaSearch + ASHA + Recorder -> Journal -> Writer -> sqlite
MLflow) and the synchronous variant; every metric row arrives once. In the fault suite
(`make faults`) beside the other scale checks, to keep `make test` under ten minutes."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_driver_bench_sqlite_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "driver_bench.py"), "--backends", "sqlite",
           "--trials", "8", "--sync-trials", "4", "--epochs", "3", "--concurrent", "4", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert [(c["mode"], c["trials"]) for c in cases] == [("journal", 8), ("sync", 4)]
    for c in cases:
        assert c["errors"] == 0
        assert c["results"] >= c["trials"]          # every trial reports at least its first epoch
        assert c["results"] == c["results_seen_by_tune"]
        assert c["expected_rows"] == c["rows"] > 0
        assert c["missing"] == c["duplicates"] == c["open_runs"] == 0
        assert c["flushed"]
