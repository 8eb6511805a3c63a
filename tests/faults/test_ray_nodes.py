"""7. Two Ray nodes on this machine, and the worker node lost mid-trial.

`ray start --head` on 127.0.0.2 and `ray start --address` on 127.0.0.3 (one CPU each, each
node in a session of its own), the study joins with --address. Trials run on both nodes
(their MLflow runs carry crkd.node_ip). Once a trial on the worker node has checkpointed an
epoch, every process of that node is killed at once: Tune retries the trial (--max-failures)
on the head from its last checkpoint, and nothing is lost or logged twice. ASHA never stops a
trial early here (grace period = max epochs), so every trial runs its six epochs.
"""
from __future__ import annotations

import json

import pytest

from .support import Progress, RayNodes, env, journal_path, study_cmd, wait_until

pytest.importorskip("ray.tune", exc_type=ImportError)
pytestmark = [pytest.mark.faults, pytest.mark.slow]

TRIALS, MAX_T = 4, 6


def test_worker_node_killed_mid_trial(scenario):
    s = scenario.begin(7, "two Ray nodes (head 127.0.0.2, worker 127.0.0.3), the worker killed mid-trial")
    nodes = s.server(RayNodes(s.tmp / "ray", s.tmp))
    nodes.start()
    storage, name = s.tmp / "runs", "nodes"
    driver = s.spawn(study_cmd(storage, name, "--address", nodes.address, "--grace-period", str(MAX_T),
                               "--max-failures", "2", samples=TRIALS, max_t=MAX_T, confirm_seeds=0),
                     "driver", env=env(**nodes.env))
    prog = Progress(journal_path(storage, name))

    def on_worker():
        prog.update()
        return [k for k in prog.running("search", min_step=2)
                if prog.runs[k]["tags"].get("crkd.node_ip") == RayNodes.WORKER_IP]
    victims = wait_until(on_worker, 400, "a trial mid-way on the worker node", driver)
    step = prog.runs[victims[0]]["step"]
    killed = nodes.kill("worker")
    s.notes.append(f"worker node killed ({killed} processes) while trial {victims[0]} was at epoch {step}")
    assert s.ended(driver, 900) == 0, driver.tail()
    assert "Traceback" not in driver.output()

    from ray.tune import ExperimentAnalysis
    trials = {t.trial_id: t for t in ExperimentAnalysis(str(storage / name / "search")).trials}
    victim = trials[victims[0]]
    rows = [json.loads(ln) for ln in open(f"{victim.path}/result.json")]
    on_head = [r["epoch"] for r in rows if r.get("node_ip") == RayNodes.HEAD_IP]
    s.notes.append(f"trial {victim.trial_id}: {victim.run_metadata.num_failures} failure(s); epochs "
                   f"{[r['epoch'] for r in rows]} on nodes {[r.get('node_ip')[-1] for r in rows]}")
    assert victim.run_metadata.num_failures >= 1, "the trial was not retried"
    assert on_head and min(on_head) > 1, "the retry did not start from the trial's checkpoint"

    from mlflow.tracking import MlflowClient

    from .counting import all_runs
    uri = f"sqlite:///{storage}/mlflow.db"
    client = MlflowClient(uri)
    runs = all_runs(client, client.get_experiment_by_name(name).experiment_id)
    ips = {r.data.tags.get("crkd.node_ip") for r in runs if r.data.tags.get("crkd.role") == "trial"}
    assert ips == {RayNodes.HEAD_IP, RayNodes.WORKER_IP}, ips  # trials on both nodes

    s.count(uri, name, str(storage / name), str(storage / name / "optuna.log"), TRIALS)
    s.assert_zeros()
