"""4. Two drivers on one study, and two new studies at once on a fresh storage.

Studies "one" and "two" start at the same moment on an empty storage (the MLflow database,
the stage-1 cache and the run cache are shared: no sqlite migration race, no teacher trained
twice). While "one" runs, a second driver for it is refused with one `error:` line and exit
code 2 twice: the same new-study command (different settings) as soon as "one" has saved its
study.yaml, which it must not overwrite, and `--resume` once its search runs. Both studies
end with exit code 0 and nothing lost.
"""
from __future__ import annotations

import pytest

from .support import Progress, journal_path, resume_cmd, study_cmd, wait_until

pytest.importorskip("ray.tune", exc_type=ImportError)
pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRIALS = 3


def refused(s, cmd, name: str) -> str:
    p = s.run(cmd, name, timeout=180)
    out = p.output()
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert p.rc == 2 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    return errors[0]


def test_two_drivers_on_one_study(scenario):
    s = scenario.begin(4, "two drivers on one study; two new studies at once on a fresh storage")
    storage = s.tmp / "runs"
    one = s.spawn(study_cmd(storage, "one", samples=TRIALS), "driver-one")
    two = s.spawn(study_cmd(storage, "two", samples=TRIALS), "driver-two")
    saved = storage / "one" / "study.yaml"
    wait_until(saved.is_file, 120, "study one saved", one, every=0.02)
    before = saved.read_bytes()
    # the same command again (other settings) while "one" starts: refused, study.yaml untouched
    line = refused(s, study_cmd(storage, "one", samples=TRIALS + 2), "second-new-one")
    assert saved.read_bytes() == before, "a refused driver rewrote the running study's study.yaml"
    prog = Progress(journal_path(storage, "one"))
    wait_until(lambda: prog.update().running("search"), 300, "study one's search runs", one)
    line2 = refused(s, resume_cmd(storage, "one"), "second-resume-one")
    s.notes.append(f"refused: {line} / {line2}")
    assert s.ended(one, 600) == 0, one.tail()
    assert s.ended(two, 600) == 0, two.tail()
    assert saved.read_bytes() == before
    uri = f"sqlite:///{storage}/mlflow.db"
    total: dict = {}
    for name in ("one", "two"):
        counts = s.count(uri, name, str(storage / name), str(storage / name / "optuna.log"), TRIALS)
        for k, v in counts.items():
            total[k] = total.get(k, []) + [f"{name}: {p}" for p in v] if isinstance(v, list) else total.get(k, 0) + v
    s.counts = total
    s.assert_zeros()
