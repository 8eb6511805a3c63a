"""MLflow side of a study: one experiment per study name, a parent run for the study
and one child run per Tune trial (written by `harness.mlflow_callback`), and the
leaderboard read back from them. No Ray import: leaderboard.py and export.py use this.

Runs are found again by tags, never created twice:
    parent:  crkd.role=study
    child:   crkd.role=trial, trial_id=<Tune trial id>, mlflow.parentRunId=<parent>
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

ROLE = "crkd.role"
STATUS_ORDER = {"FINISHED": 0, "KILLED": 1, "RUNNING": 2, "SCHEDULED": 2, "FAILED": 3}


def default_storage() -> str:
    return os.path.abspath("runs")


def default_tracking_uri(storage: str | None = None) -> str:
    return f"sqlite:///{os.path.join(storage or default_storage(), 'mlflow.db')}"


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a sqlite store: artifacts beside the database, as an absolute file URI (MLflow's
    default is ./mlruns under whatever directory the process happens to run in)."""
    if tracking_uri.startswith("sqlite:///"):
        db = os.path.abspath(tracking_uri[len("sqlite:///"):])  # sqlite:////abs or sqlite:///relative
        return "file://" + os.path.join(os.path.dirname(db), "mlartifacts")
    return None


def q(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


# --- the study (driver, before and after Tune) ---------------------------------------

class TrackingError(RuntimeError):
    """A one-line problem with the tracking store."""


def open_study(client: MlflowClient, name: str, resume: bool, tags: dict, params: dict,
               texts: dict[str, str]) -> tuple[str, str]:
    """Create (or, with resume, find) the experiment and its parent run. Returns
    (experiment_id, parent_run_id). Creating them here, before any trial starts, also
    creates a fresh sqlite database once, from one process."""
    exp = client.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment '{name}' was deleted but still exists in the store; "
                            f"restore it in the MLflow UI, run `mlflow gc`, or pick another --name")
    if exp is None:
        art = local_artifact_root(client.tracking_uri)
        exp_id = client.create_experiment(name, artifact_location=art and f"{art}/{name}")
    else:
        exp_id = exp.experiment_id
    parent = find_parent(client, exp_id)
    if resume and parent is not None:
        client.update_run(parent.info.run_id, status="RUNNING")
        client.set_tag(parent.info.run_id, "crkd.resumed_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        return exp_id, parent.info.run_id
    if parent is not None:
        raise TrackingError(f"MLflow already holds a study named '{name}' ({client.tracking_uri}); "
                            f"add --resume to continue it or pick another --name")
    run = client.create_run(exp_id, run_name=name, tags={ROLE: "study", **tags})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, _param_str(v)) for k, v in params.items()])
    for path, text in texts.items():
        client.log_text(run_id, text, path)
    return exp_id, run_id


def find_parent(client: MlflowClient, exp_id: str):
    runs = client.search_runs([exp_id], f"tags.`{ROLE}` = 'study'", max_results=1)
    return runs[0] if runs else None


def find_child(client: MlflowClient, exp_id: str, trial_id: str):
    runs = client.search_runs([exp_id], f"tags.`{ROLE}` = 'trial' and tags.trial_id = {q(trial_id)}",
                              max_results=1)
    return runs[0] if runs else None


def children(client: MlflowClient, exp_id: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.`{ROLE}` = 'trial'", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def find_study(client: MlflowClient, name: str | None):
    """(experiment, parent run) of the named study, or of the newest one."""
    if name:
        exp = client.get_experiment_by_name(name)
        parent = find_parent(client, exp.experiment_id) if exp else None
        if parent is None:
            known = [e.name for e in client.search_experiments() if e.name != "Default"]
            raise TrackingError(f"no study named '{name}' in {client.tracking_uri}; "
                                f"studies: {', '.join(known) or '(none)'}")
        return exp, parent
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`{ROLE}` = 'study'", max_results=1,
                              order_by=["attributes.start_time DESC"]) if exps else []
    if not runs:
        raise TrackingError(f"no studies in {client.tracking_uri}; run harness/tune.py first "
                            f"or pass --tracking-uri")
    return client.get_experiment(runs[0].info.experiment_id), runs[0]


def leaderboard(client: MlflowClient, name: str | None = None) -> tuple[dict, list[dict]]:
    """The study's trials, best first: finished trials ranked by the study's metric, then
    trials stopped early by ASHA (their score is from fewer epochs), then failed ones."""
    exp, parent = find_study(client, name)
    tags = parent.data.tags
    metric, mode = tags["crkd.metric"], tags["crkd.mode"]
    fields = json.loads(tags.get("crkd.space_fields", "{}"))
    info = {"study": exp.name, "experiment_id": exp.experiment_id, "parent_run_id": parent.info.run_id,
            "metric": metric, "mode": mode, "fields": fields, "max_t": int(tags.get("crkd.max_t", 0)),
            "status": parent.info.status, "label_leakage": tags.get("crkd.label_leakage") == "true"}
    rows = []
    for run in children(client, exp.experiment_id):
        m, p = run.data.metrics, run.data.params
        value = m.get(metric)
        row = {"trial_id": run.data.tags.get("trial_id", ""), "status": run.info.status,
               "epochs": int(m.get("epoch", 0)), metric: value}
        for pname, fname in fields.items():
            row[pname] = _parse(p.get(fname))
        row["error"] = run.data.tags.get("crkd.error", "")
        row["outcome"] = run.data.tags.get("crkd.outcome", "")
        row["lost"] = run.data.tags.get("crkd.lost_by_tune") == "true"
        row["run_id"] = run.info.run_id
        rows.append(row)
    sign = -1 if mode == "max" else 1

    def key(r):
        v = r[metric]
        bad = v is None or (isinstance(v, float) and math.isnan(v))
        return (STATUS_ORDER.get(r["status"], 2), bad, sign * v if not bad else 0.0, r["trial_id"])
    rows.sort(key=key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return info, [{"rank": r.pop("rank"), **r} for r in rows]


def _parse(v: str | None):
    if v is None:
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def _param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:6000]


def format_table(info: dict, rows: list[dict], top: int | None = None) -> str:
    metric = info["metric"]
    cols = ["rank", "trial_id", "status", "epochs", metric, *info["fields"]]
    shown = rows[:top] if top else rows

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if (abs(v) >= 1e-3 or v == 0) else f"{v:.3e}"
        return "" if v is None else str(v)
    table = [cols] + [[cell(r.get(c)) for c in cols] for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) if j in (0, 3, 4) or j > 4 else v.ljust(w)
                       for j, (v, w) in enumerate(zip(row, widths))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_table(rows: list[dict], csv_path: str | None = None, parquet_path: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    if not rows:
        return
    table = pa.Table.from_pylist(rows)
    if csv_path:
        pacsv.write_csv(table, csv_path)
    if parquet_path:
        pq.write_table(table, parquet_path)


def learning_curves(client: MlflowClient, run_id: str, metric: str) -> None:
    """curves/curves.png and curves/history.csv on a trial's run, from its metric history."""
    import tempfile

    from .plots import learning_curves as draw
    keys = list(dict.fromkeys([metric, "novel/train/acc", "test/all/acc", "known/test/acc", "loss/total"]))
    hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}
    hist = {k: v for k, v in hist.items() if v}
    if hist:
        with tempfile.TemporaryDirectory() as d:
            draw(hist, d)
            client.log_artifacts(run_id, d, "curves")
    client.set_tag(run_id, "crkd.curves", str(max(s for v in hist.values() for s, _ in v) if hist else 0))
