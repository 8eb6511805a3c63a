"""The counted columns of a study after a fault, from its three records: the MLflow store,
the Optuna journal and Tune's saved state (plus the confirmation's records). Counts, never
asserts: the tests assert zeros, the table shows what was counted.

Every check of tests/test_harness.py's `check_consistent` is here, as a count:

    trials lost        a search trial (Tune's) or a confirmation job (jobs.json) that did not
                       end with a result: Tune's trial not TERMINATED, no MLflow run for it,
                       its MLflow outcome not finished / early-stopped, a job without a
                       finished record; and trials Tune never created (fewer than asked for)
    duplicated runs    extra MLflow runs of one crkd.key (the parent included), and MLflow runs
                       of a trial or job that Tune's final state does not know (work done twice)
    runs left RUNNING  MLflow runs still RUNNING at the end, plus those RUNNING just after a
                       driver that was stopped gracefully (Ctrl-C, SIGTERM) had exited
    epochs missing     epochs 1..E (E: the last epoch Tune recorded for the run) without an
                       `epoch` row in MLflow
    epochs twice       an epoch with more than one `epoch` row in MLflow
    Optuna/MLflow      Optuna trials without or with a duplicated tune_trial_id, an Optuna trial
    mismatches         without an MLflow run or the reverse, a state that does not match the
                       MLflow outcome (COMPLETE/finished, PRUNED/early-stopped, FAIL/failed), a
                       user attribute `outcome` or tag `crkd.optuna_trial` that differs, a
                       COMPLETE value that differs from the run's final metric, intermediate
                       values (epoch -> metric) that differ from the run's history of the
                       metric, a trial still RUNNING or WAITING
    other              the rest of check_consistent: one parent and FINISHED, every run a child
                       of it, a status that matches the outcome, run names, tag vocabulary
"""
from __future__ import annotations

import json
import math

from harness import storage

COLUMNS = ("trials_lost", "duplicated_runs", "runs_left_running", "epochs_missing", "epochs_twice",
           "optuna_mlflow_mismatches", "other")
OUTCOME_STATUS = {"finished": "FINISHED", "early-stopped": "FINISHED", "failed": "FAILED"}
OPTUNA_STATE = {"finished": "COMPLETE", "early-stopped": "PRUNED", "failed": "FAIL"}


def all_runs(client, experiment_id: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def running_runs(tracking_uri: str, name: str) -> list[str]:
    """Names of the study's MLflow runs that are RUNNING now (the parent included)."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return [r.info.run_name for r in all_runs(client, exp.experiment_id) if r.info.status == "RUNNING"]


def tune_trials(folder: str, phase: str) -> list | None:
    """Tune's trials of a phase as its saved state has them (None: no state)."""
    path = storage.join(folder, phase)
    if not storage.exists(path):
        return None
    from ray.tune import ExperimentAnalysis
    try:
        return list(ExperimentAnalysis(path).trials)
    except Exception:
        return None


def optuna_trials(journal: str, name: str) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(journal)))
    except Exception:
        return []
    return study.get_trials(deepcopy=False)


def count(tracking_uri: str, name: str, folder: str, optuna_journal: str | None, n_trials: int,
          running_after_stops: int = 0) -> dict:
    """The counted columns of study `name` (its folder `folder`, local or URI), expected to have
    `n_trials` search trials (0: no search) and the jobs of its confirm/jobs.json. `problems`
    says what each count is."""
    from mlflow.tracking import MlflowClient
    c = {k: 0 for k in COLUMNS}
    problems: list[str] = []

    def bad(column: str, what: str, n: int = 1) -> None:
        if n > 0:
            c[column] += n
            problems.append(f"{column}: {what}" + (f" (x{n})" if n > 1 else ""))

    state = json.loads(storage.read_text(storage.join(folder, "state.json")) or "{}")
    study = _study(folder)
    max_t, metric = study.max_t, study.metric
    jobs = json.loads(storage.read_text(storage.join(folder, "confirm", "jobs.json")) or "[]")

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = all_runs(client, exp.experiment_id) if exp is not None else []
    by_key: dict[str, list] = {}
    for r in runs:
        by_key.setdefault(r.data.tags.get("crkd.key", f"(no key) {r.info.run_id}"), []).append(r)
    for key, rs in by_key.items():
        bad("duplicated_runs", f"{len(rs)} MLflow runs of {key}", len(rs) - 1)
    run_of = {k: rs[-1] for k, rs in by_key.items()}

    # --- the parent -------------------------------------------------------------------------
    parents = by_key.get("study", [])
    parent = parents[0] if parents else None
    if parent is None:
        bad("other", "no parent run")
    elif parent.info.status != "FINISHED":
        bad("other", f"parent run is {parent.info.status}")
    needed = (["search"] if n_trials else []) + (["confirm", "report"] if study.confirm_seeds else [])
    if any(state.get(p) != "done" for p in needed):
        bad("other", f"phases not all done: {state}")

    # --- Tune's trials, the search ----------------------------------------------------------
    search = (tune_trials(folder, "search") or []) if n_trials else []
    confirm = (tune_trials(folder, "confirm") or []) if jobs else []
    tune_ids = {t.trial_id: t for t in search + confirm}
    bad("trials_lost", f"Tune created {len(search)} of {n_trials} search trials", n_trials - len(search))
    for t in search:
        r = run_of.get(t.trial_id)
        outcome = r.data.tags.get("crkd.outcome") if r else None
        if t.status != "TERMINATED":
            bad("trials_lost", f"search trial {t.trial_id} is {t.status} in Tune")
        elif r is None:
            bad("trials_lost", f"search trial {t.trial_id} has no MLflow run")
        elif outcome not in ("finished", "early-stopped"):
            bad("trials_lost", f"search trial {t.trial_id} ended {outcome!r} in MLflow")

    # --- the confirmation ---------------------------------------------------------------------
    by_job = {t.config["job"]["id"]: t for t in confirm if "job" in t.config}
    for j in jobs:
        t = by_job.get(j["id"])
        r = run_of.get(t.trial_id) if t else None
        rec = json.loads(storage.read_text(storage.join(folder, "confirm", "records", f"{j['id']}.json")) or "{}")
        if t is None:
            bad("trials_lost", f"job {j['id']} has no Tune trial")
        elif t.status != "TERMINATED":
            bad("trials_lost", f"job {j['id']} is {t.status} in Tune")
        elif r is None:
            bad("trials_lost", f"job {j['id']} has no MLflow run")
        elif r.data.tags.get("crkd.outcome") != "finished":
            bad("trials_lost", f"job {j['id']} ended {r.data.tags.get('crkd.outcome')!r} in MLflow")
        elif rec.get("outcome") != "finished":
            bad("trials_lost", f"job {j['id']} has no finished record")
    bad("trials_lost", f"{len(confirm)} Tune trials for {len(jobs)} jobs", len(jobs) - len(confirm) if jobs else 0)

    # --- every child run --------------------------------------------------------------------
    children = [r for r in runs if r.data.tags.get("crkd.role") != "study"]
    for r in children:
        t, key = r.data.tags, r.data.tags.get("crkd.key", "")
        label = f"{r.info.run_name} ({key})"
        if key not in tune_ids:
            bad("duplicated_runs", f"MLflow run {label} is of no trial in Tune's state")
        if r.info.status == "RUNNING":
            bad("runs_left_running", f"{label} is RUNNING")
        if parent is not None and t.get("mlflow.parentRunId") != parent.info.run_id:
            bad("other", f"{label} is not a child of the parent run")
        outcome = t.get("crkd.outcome")
        if outcome not in OUTCOME_STATUS:
            bad("other", f"{label} has outcome {outcome!r}")
        elif r.info.status != OUTCOME_STATUS[outcome] and r.info.status != "RUNNING":
            bad("other", f"{label} is {r.info.status} with outcome {outcome}")
        if t.get("crkd.role") == "trial":
            if not r.info.run_name.startswith(f"#{t.get('crkd.optuna_trial')} "):
                bad("other", f"{label}: run name does not start with its Optuna number")
            if t.get("crkd.ray_trial") != key:
                bad("other", f"{label}: crkd.ray_trial {t.get('crkd.ray_trial')} != crkd.key")
            if outcome == "early-stopped" and "(stopped at" not in r.info.run_name:
                bad("other", f"{label}: early-stopped without '(stopped at' in its name")
        elif t.get("crkd.role") not in ("confirm", "floors"):
            bad("other", f"{label}: role {t.get('crkd.role')!r}")
        # epochs: every one Tune recorded, once
        tr = tune_ids.get(key)
        if tr is not None and outcome in ("finished", "early-stopped"):
            last = int((tr.last_result or {}).get("epoch", 0))
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
            bad("epochs_missing", f"{label}: epochs {sorted(set(range(1, last + 1)) - set(steps))} of 1..{last} "
                                  f"not in MLflow", len(set(range(1, last + 1)) - set(steps)))
            bad("epochs_twice", f"{label}: {len(steps) - len(set(steps))} epochs logged twice",
                len(steps) - len(set(steps)))
            if t.get("crkd.role") == "trial" and outcome == "finished" and last != max_t:
                bad("other", f"{label}: finished at epoch {last}, not {max_t}")
    if parent is not None and parent.info.status == "RUNNING":
        bad("runs_left_running", "the parent run is RUNNING")
    bad("runs_left_running", "runs RUNNING just after a stopped driver exited", running_after_stops)
    trial_runs = [r for r in children if r.data.tags.get("crkd.role") == "trial"]
    conf_runs = [r for r in children if r.data.tags.get("crkd.role") in ("confirm", "floors")]
    if len(trial_runs) != n_trials and not c["trials_lost"] and not c["duplicated_runs"]:
        bad("other", f"{len(trial_runs)} MLflow trial runs for {n_trials} trials")
    if len(conf_runs) != len(jobs) and not c["trials_lost"] and not c["duplicated_runs"]:
        bad("other", f"{len(conf_runs)} MLflow confirmation runs for {len(jobs)} jobs")

    # --- Optuna against MLflow ----------------------------------------------------------------
    if n_trials:
        ot = optuna_trials(optuna_journal, name) if optuna_journal else []
        by_tid: dict[str, list] = {}
        for o in ot:
            tid = o.user_attrs.get("tune_trial_id")
            if tid is None:
                bad("optuna_mlflow_mismatches", f"Optuna trial {o.number} ({o.state.name}) has no tune_trial_id")
                continue
            by_tid.setdefault(tid, []).append(o)
        for tid, os_ in by_tid.items():
            bad("optuna_mlflow_mismatches", f"{len(os_)} Optuna trials for {tid}", len(os_) - 1)
        for r in trial_runs:
            t, key = r.data.tags, r.data.tags.get("crkd.key")
            o = (by_tid.get(key) or [None])[0]
            if o is None:
                bad("optuna_mlflow_mismatches", f"MLflow run {r.info.run_name} has no Optuna trial")
                continue
            outcome = t.get("crkd.outcome")
            if outcome in ("finished", "early-stopped"):  # the curve: the same epochs, the same values
                curve = {m.step: m.value for m in client.get_metric_history(r.info.run_id, metric)}
                ours = dict(o.intermediate_values)
                differ = sorted(k for k in set(curve) | set(ours) if k not in curve or k not in ours
                                or not math.isclose(curve[k], ours[k], rel_tol=1e-9, abs_tol=1e-12))
                if differ:
                    bad("optuna_mlflow_mismatches", f"trial {o.number}: intermediate values at epochs {differ} "
                                                    f"differ (Optuna {sorted(ours)}, MLflow {sorted(curve)})")
            if OPTUNA_STATE.get(outcome) != o.state.name:
                bad("optuna_mlflow_mismatches", f"trial {o.number}: Optuna {o.state.name}, MLflow {outcome}")
            elif o.user_attrs.get("outcome") != outcome:
                bad("optuna_mlflow_mismatches", f"trial {o.number}: Optuna outcome {o.user_attrs.get('outcome')!r}, "
                                                f"MLflow {outcome}")
            if t.get("crkd.optuna_trial") != str(o.number):
                bad("optuna_mlflow_mismatches", f"trial {o.number}: crkd.optuna_trial {t.get('crkd.optuna_trial')}")
            final = r.data.metrics.get(metric)
            if o.state.name == "COMPLETE" and (final is None or o.value is None
                                               or not math.isclose(o.value, final, rel_tol=1e-9, abs_tol=1e-12)):
                bad("optuna_mlflow_mismatches", f"trial {o.number}: Optuna value {o.value}, MLflow {metric} {final}")
        keys = {r.data.tags.get("crkd.key") for r in trial_runs}
        for tid, os_ in by_tid.items():
            if tid not in keys:
                bad("optuna_mlflow_mismatches", f"Optuna trial {os_[0].number} ({tid}) has no MLflow run")
        for o in ot:
            if o.state.name in ("RUNNING", "WAITING"):
                bad("optuna_mlflow_mismatches", f"Optuna trial {o.number} is {o.state.name}")
    if exp is not None:  # runs the driver deleted (harness.phases._discard_orphans): not counted, shown
        from mlflow.entities import ViewType
        deleted = client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY, max_results=1000)
        c["deleted_runs"] = [f"{r.info.run_name} ({r.data.tags.get('crkd.key')})" for r in deleted]
    c["problems"] = problems
    return c


def _study(folder: str):
    from harness.settings import Study
    root, name = folder.rstrip("/").rsplit("/", 1)
    return Study.load(root, name)
