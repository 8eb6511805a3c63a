"""A driver that dies or is stopped mid-study, then `--resume`: nothing lost, nothing twice.

    1. SIGKILL mid-search (no chance to close anything), then --resume to the end
    2. SIGTERM mid-confirmation: ends like Ctrl-C (exit 130, the resume hint, no run left
       RUNNING), then --resume
    3. a second Ctrl-C while the first one's shutdown is under way: still no traceback,
       exit 130, nothing left RUNNING, and --resume ends the study
"""
from __future__ import annotations

import signal
import time

import pytest

from .support import Progress, journal_path, resume_cmd, study_cmd, wait_until

pytest.importorskip("ray.tune", exc_type=ImportError)
pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRIALS = 4


def local(storage, name):
    """(tracking uri, study folder, Optuna journal) of a study in a local folder."""
    return f"sqlite:///{storage}/mlflow.db", str(storage / name), str(storage / name / "optuna.log")


def mid_search(prog: Progress):
    """One search trial ended and another is between its epochs (a checkpoint written)."""
    prog.update()
    return prog.ended("search") >= 1 and prog.running("search", min_step=2)


def assert_interrupted(out: str, name: str) -> None:
    assert "Traceback" not in out, out[-4000:]
    assert f"--resume --name {name}" in out, out[-4000:]


def interrupted_then_resumed(s, driver, storage, name: str, n_trials: int) -> None:
    """A driver stopped gracefully: exit 130 with the resume hint, no run left RUNNING; then
    --resume finishes the study with every column zero."""
    assert s.ended(driver, 120) == 130, driver.tail()
    assert_interrupted(driver.output(), name)
    s.settle(driver)
    uri, folder, journal = local(storage, name)
    s.stopped(uri, name)
    resumed = s.run(resume_cmd(storage, name), "resume", timeout=480)
    assert resumed.rc == 0, resumed.tail()
    s.count(uri, name, folder, journal, n_trials)
    s.assert_zeros()


def test_sigkill_mid_search_then_resume(scenario):
    s = scenario.begin(1, "driver SIGKILL mid-search, then --resume")
    storage, name = s.tmp / "runs", "kill9"
    driver = s.spawn(study_cmd(storage, name, samples=TRIALS), "driver")
    prog = Progress(journal_path(storage, name))
    wait_until(lambda: mid_search(prog), 300, "mid-search", driver)
    driver.signal(signal.SIGKILL)
    s.ended(driver, 30)
    s.settle(driver)
    resumed = s.run(resume_cmd(storage, name), "resume", timeout=480)
    assert resumed.rc == 0, resumed.tail()
    uri, folder, journal = local(storage, name)
    s.count(uri, name, folder, journal, TRIALS)
    s.assert_zeros()


def test_sigterm_mid_confirmation_then_resume(scenario):
    s = scenario.begin(2, "driver SIGTERM mid-confirmation, then --resume")
    storage, name = s.tmp / "runs", "term"
    driver = s.spawn(study_cmd(storage, name, samples=3), "driver")
    prog = Progress(journal_path(storage, name))
    wait_until(lambda: prog.update().running("confirm", min_step=2, role="confirm"), 400, "mid-confirmation",
               driver)
    driver.signal(signal.SIGTERM)
    interrupted_then_resumed(s, driver, storage, name, 3)


@pytest.mark.parametrize("delay", [0.5])
def test_second_ctrl_c_during_shutdown(scenario, delay):
    s = scenario.begin(3, f"second Ctrl-C {delay:g} s into the first one's shutdown, then --resume")
    storage, name = s.tmp / "runs", "ctrlc2"
    driver = s.spawn(study_cmd(storage, name, samples=TRIALS), "driver")
    prog = Progress(journal_path(storage, name))
    wait_until(lambda: mid_search(prog), 300, "mid-search", driver)
    driver.signal(signal.SIGINT)
    time.sleep(delay)
    assert driver.alive(), "the driver ended before the second Ctrl-C"
    driver.signal(signal.SIGINT)
    interrupted_then_resumed(s, driver, storage, name, TRIALS)
