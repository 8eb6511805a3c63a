"""5. The tracking server goes away mid-study, for longer than MLflow's own retries last.

An `mlflow server` on 127.0.0.1 (its own sqlite store, --artifacts-destination, one worker)
is the study's --tracking-uri. MLflow's HTTP client would retry a request for about four
minutes before it raises; the harness sets nothing there (its journal's writer retries with
its own back-off, up to 30 s between tries), so the driver here runs with MLflow's retries cut
to a few seconds (support.SHORT_MLFLOW_RETRIES) and each outage is several times longer.

  outage 1: the server is killed while search trials run and restarted AWAY_S later: the
            study goes on meanwhile (epochs keep coming), and the writer applies writes again
            after the restart (the journal's applied mark moves; on this 2-core machine a
            one-worker server takes about a second a request, so the backlog drains slowly);
  outage 2: killed again as soon as writes arrive after the restart and kept away until the
            driver has ended, so it spans what is left of the confirmation and all of the
            report, whatever the machine's speed (on a fast one this tiny study's confirmation
            takes seconds, so no test can promise to catch its start): the driver ends normally
            and names harness/sync.py for the writes left in the journal; with the server
            back, sync.py applies them.
Then every run, epoch and outcome is in MLflow once.
"""
from __future__ import annotations

import time

import pytest

from .support import (PY, SHORT_MLFLOW_RETRIES, SYNC, MlflowServer, Progress, applied, env, events, journal_path,
                      study_cmd, wait_until)

pytest.importorskip("ray.tune", exc_type=ImportError)
pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRIALS = 8
AWAY_S = 12
# Confirmation runs go the whole MAX_T: 9 of them (top 1 + 2 baselines, 3 seeds) outlast the
# writer's next try after the restart (its back-off is at most 30 s, ~20 s here), so the second
# outage always lands before the report however fast the machine.
MAX_T = 16


def test_mlflow_server_away_mid_study(scenario):
    s = scenario.begin(5, f"mlflow server killed {AWAY_S} s mid-search, then again from just after the "
                          f"restart to the end (sync.py)")
    server = s.server(MlflowServer(s.tmp / "mlflow", s.tmp))
    server.start()
    storage, name = s.tmp / "runs", "away"
    journal = journal_path(storage, name)
    driver_env = env(**SHORT_MLFLOW_RETRIES)
    driver = s.spawn(study_cmd(storage, name, "--tracking-uri", server.uri, samples=TRIALS, max_t=MAX_T,
                               confirm_seeds=3), "driver", env=driver_env)
    prog = Progress(journal)
    at = lambda: f"{time.time() - driver.started:.0f} s"  # noqa: E731
    wait_until(lambda: prog.update().running("search"), 300, "search trials running", driver)
    t0 = time.time()
    server.stop()
    timeline = [f"server killed at {at()}"]
    time.sleep(AWAY_S)
    t1 = time.time()
    assert driver.alive(), "the study ended during the first outage"
    server.start()
    t2, done = time.time(), applied(journal)
    timeline.append(f"back at {at()} with {events(journal) - done} writes waiting")
    wait_until(lambda: applied(journal) > done, 120, "the writer resumes after the restart", driver, every=0.5)
    timeline.append(f"writes arriving again {time.time() - t2:.0f} s after the restart")
    during = prog.update().epochs_between(t0, t1)
    assert during > 0, "the study stood still while the server was away"

    server.stop()
    state = (storage / name / "state.json").read_text() if (storage / name / "state.json").is_file() else "{}"
    timeline.append(f"killed again at {at()} (phases {state}; {prog.update().ended('confirm')} confirmation "
                    f"runs ended)")
    assert driver.alive() and '"report": "done"' not in state, "the study ended before the second outage"
    assert s.ended(driver, 600) == 0, driver.tail()
    timeline.append(f"driver ended at {at()}")
    out = driver.output()
    assert "Traceback" not in out, out[-4000:]
    assert f"python harness/sync.py --name {name}" in out, out[-3000:]
    times = sorted(prog.update().epoch_times)
    s.notes += ["; ".join(timeline),
                f"epochs: {during / (t1 - t0):.2f}/s during outage 1, {len(times) / (times[-1] - times[0]):.2f}/s "
                f"over the whole study",
                "driver: " + next(ln for ln in out.splitlines() if ln.startswith("tracking:"))]
    server.start()
    sync = s.run([PY, SYNC, "--name", name, "--storage", str(storage)], "sync", timeout=300, env=driver_env)
    assert sync.rc == 0, sync.tail()
    s.notes.append("sync.py: " + sync.output().strip().splitlines()[-1])
    s.count(server.uri, name, str(storage / name), str(storage / name / "optuna.log"), TRIALS)
    s.assert_zeros()
