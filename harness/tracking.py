"""MLflow side of a study: one experiment per study, a parent run for the study, a child
run per search trial and per confirmation run; the sink the journal writes through,
and the leaderboard read back. No Ray import: leaderboard.py, export.py and report.py
use this.

Runs are found again by tags, never created twice:
    parent:        crkd.role=study, crkd.key=study
    search trial:  crkd.role=trial, crkd.key=<Tune trial id>, mlflow.parentRunId=<parent>
    confirmation:  crkd.role=confirm (or floors), crkd.key=<job id>, crkd.config=<label>

A store that moves: with a local sqlite store, artifacts live in `mlartifacts/` beside
the database and runs refer to them as `mlflow-artifacts:/<study>/...`, a location
relative to whatever `--artifacts-destination` serves them (see `ui_command`), so a
`runs/` folder copied elsewhere still shows every artifact. With an `mlflow server`,
the server decides.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from contextlib import contextmanager
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .journal import KEY

ROLE = "crkd.role"
OUTCOMES = ("finished", "early-stopped", "failed", "interrupted")  # one vocabulary everywhere
STATUS = {"finished": "FINISHED", "early-stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
ARTIFACTS = "mlartifacts"


class TrackingError(RuntimeError):
    """A one-line problem with the tracking store."""


def default_storage() -> str:
    return os.path.abspath("runs")


def default_tracking_uri(storage: str | None = None) -> str:
    return f"sqlite:///{os.path.join(storage or default_storage(), 'mlflow.db')}"


def sqlite_path(uri: str) -> str | None:
    return os.path.abspath(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """The local folder behind `mlflow-artifacts:/` for a sqlite store (None for a server)."""
    db = sqlite_path(uri)
    return os.path.join(os.path.dirname(db), ARTIFACTS) if db else None


def local_artifacts(uri: str, artifact_uri: str) -> str | None:
    """Where a run's `mlflow-artifacts:/...` artifacts are on disk, for a sqlite store."""
    root = artifact_root(uri)
    if root and artifact_uri.startswith("mlflow-artifacts:"):
        return os.path.join(root, artifact_uri[len("mlflow-artifacts:"):].lstrip("/"))
    return None


def q(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:6000]


@contextmanager
def store_lock(uri: str):
    """Serialise the first use of a sqlite store: two drivers creating one database at once
    race in MLflow's schema migrations (one crashes)."""
    db = sqlite_path(uri)
    if not db:
        yield
        return
    os.makedirs(os.path.dirname(db), exist_ok=True)
    with open(db + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- the study (driver, before and after Tune) ---------------------------------------

def open_study(client: MlflowClient, name: str, resume: bool, tags: dict, params: dict,
               description: str, experiment_tags: dict | None = None) -> tuple[str, str]:
    """Create (or, with resume, find) the experiment and its parent run. Returns
    (experiment_id, parent_run_id). Done by the driver before any run starts."""
    with store_lock(client.tracking_uri):
        exp = client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment '{name}' was deleted but still exists in the store; "
                                f"restore it in the MLflow UI, run `mlflow gc`, or pick another --name")
        if exp is None:
            local = artifact_root(client.tracking_uri) is not None
            exp_id = client.create_experiment(name, artifact_location=f"mlflow-artifacts:/{name}" if local else None)
        else:
            exp_id = exp.experiment_id
        # The model-training view (not the GenAI one), the study's note, its saved views.
        for k, v in {"mlflow.experimentKind": "custom_model_development", "mlflow.note.content": description,
                     **(experiment_tags or {})}.items():
            client.set_experiment_tag(exp_id, k, v)
        parent = find_parent(client, exp_id)
        if parent is not None and not resume and parent.data.tags.get("crkd.started") == "true":
            raise TrackingError(f"MLflow already holds a study named '{name}' ({client.tracking_uri}); "
                                f"add --resume to continue it or pick another --name")
        if parent is None:
            parent = client.create_run(exp_id, run_name=name, tags={ROLE: "study", KEY: "study", **tags})
            client.log_batch(parent.info.run_id, params=[Param(k, param_str(v)) for k, v in params.items()])
        run_id = parent.info.run_id
        client.log_batch(run_id, tags=[RunTag("mlflow.note.content", description)])
        if parent.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return exp_id, run_id


def find_parent(client: MlflowClient, exp_id: str):
    runs = client.search_runs([exp_id], f"tags.`{ROLE}` = 'study'", max_results=1)
    return runs[0] if runs else None


def runs_of(client: MlflowClient, exp_id: str, role: str = "trial") -> list:
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.`{ROLE}` = {q(role)}", max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


class Sink:
    """What the journal's writer calls: MLflow writes of one study, each idempotent."""

    PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                 "INVALID_STATE", "BAD_REQUEST"}

    def __init__(self, uri: str, experiment_id: str, parent_id: str):
        self.uri, self.experiment_id, self.parent_id = uri, experiment_id, parent_id
        self.client = MlflowClient(uri)

    def permanent(self, e: Exception) -> bool:
        from mlflow.exceptions import MlflowException
        return isinstance(e, (MlflowException, KeyError)) and getattr(e, "error_code", "BAD_REQUEST") in self.PERMANENT

    def find(self, key: str) -> str:
        if key == "study":
            return self.parent_id
        runs = self.client.search_runs([self.experiment_id], f"tags.`{KEY}` = {q(key)}", max_results=1)
        if not runs:
            raise KeyError(f"no MLflow run for {key}")
        return runs[0].info.run_id

    def create_or_find(self, e: dict) -> str:
        try:
            run_id = self.find(e["key"])
        except KeyError:
            run = self.client.create_run(self.experiment_id, run_name=e.get("name"), start_time=e["ts"],
                                         tags={KEY: e["key"], "mlflow.parentRunId": self.parent_id, **e.get("tags", {})})
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING", name=e.get("name"))
        params = list(e.get("params", {}).items())
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=[Param(k, param_str(v)) for k, v in params[i:i + 100]])
        if e.get("tags"):
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in e["tags"].items()])
        return run_id

    def last_step(self, run_id: str) -> int:
        """The last epoch logged to a run (0 if none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, "epoch")), default=0)

    def batch(self, run_id: str, metrics: list, params: dict, tags: dict) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v, ts, step in metrics],
                              params=[Param(k, param_str(v)) for k, v in params.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def discard(self, run_id: str) -> None:
        """A run whose trial Tune does again under a new id: ended KILLED, then deleted."""
        self.client.set_terminated(run_id, status="KILLED")
        self.client.delete_run(run_id)

    def files(self, run_id: str, folder: str, path: str = "") -> None:
        run = self.client.get_run(run_id)
        local = local_artifacts(self.uri, run.info.artifact_uri)
        if local is not None:  # a portable sqlite store: write beside the database ourselves
            shutil.copytree(folder, os.path.join(local, path), dirs_exist_ok=True)
        else:
            self.client.log_artifacts(run_id, folder, path or None)


def read_artifact(client: MlflowClient, run_id: str, path: str, dest: str) -> str:
    """A run's artifact as a local file (copied into `dest`)."""
    run = client.get_run(run_id)
    local = local_artifacts(client.tracking_uri, run.info.artifact_uri)
    if local is not None:
        src = os.path.join(local, path)
        if not os.path.exists(src):
            raise TrackingError(f"artifact {path} of run {run_id} is missing from {local}")
        out = os.path.join(dest, os.path.basename(path))
        shutil.copy2(src, out)
        return out
    return client.download_artifacts(run_id, path, dest)


def list_artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    run = client.get_run(run_id)
    local = local_artifacts(client.tracking_uri, run.info.artifact_uri)
    if local is not None:
        folder = os.path.join(local, path)
        return sorted(os.path.join(path, f) if path else f for f in os.listdir(folder)) if os.path.isdir(folder) else []
    return [a.path for a in client.list_artifacts(run_id, path or None)]


# --- browsing ------------------------------------------------------------------------

def ui_command(uri: str, port: int = 5000) -> str:
    """The command that serves this store in a browser, artifacts included."""
    root = artifact_root(uri)
    if root is None:
        return f"open {uri} (the MLflow server)"
    return (f"mlflow server --backend-store-uri {uri} --artifacts-destination {root} "
            f"--host 127.0.0.1 --port {port}")


VIEW = "mlflow.sharedViewState."  # an experiment tag the UI reads as a saved view (?viewStateShareKey=)
# What runs log only as the views' columns (exports leave them out: the exact values are there too)
VIEW_METRICS = {"rank", "objective"}
VIEW_PARAMS = "tuned."  # prefix of the tuned values, rounded


def views(fields: list[str], objective: str) -> dict[str, str]:
    """The study's saved views, as experiment tags: `leaderboard` (the search trials in the
    leaderboard's order, `rank`, logged when the search ends: finished trials by objective,
    then early-stopped ones, then failed; the objective, the tuned parameters, epochs and
    outcome as columns) and
    `confirmation` (the confirmation runs, best novel/train/acc first: `objective` is that
    metric rounded)."""
    def col(kind, key):
        return f"{kind}.`{key}`"
    leaderboard = {
        "searchFilter": "tags.`crkd.role` = 'trial'", "orderByKey": col("metrics", "rank"), "orderByAsc": True,
        "selectedColumns": [col("metrics", "rank"), col("metrics", "objective"),
                            *(col("params", f"{VIEW_PARAMS}{f}") for f in fields),
                            col("metrics", "epoch"), col("tags", "crkd.outcome"), col("tags", "crkd.optuna_trial")]}
    confirmation = {
        "searchFilter": "tags.`crkd.role` = 'confirm'", "orderByKey": col("metrics", "objective"),
        "orderByAsc": False,
        "selectedColumns": [col("metrics", "objective"), col("tags", "crkd.config"), col("tags", "crkd.seed"),
                            col("tags", "crkd.outcome")]
                           + [col("metrics", m) for m in ("novel/test/acc", "test/all/acc", "known/test/acc")]}
    return {VIEW + "leaderboard": json.dumps(leaderboard), VIEW + "confirmation": json.dumps(confirmation)}


def ui_link(uri: str, experiment_id: str, view: str = "leaderboard", port: int = 5000) -> str:
    """A saved view of the experiment's runs, in the model-training view."""
    base = uri.rstrip("/") if uri.startswith("http") else f"http://127.0.0.1:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view}"


# --- the leaderboard ------------------------------------------------------------------

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


OUTCOME_ORDER = {"finished": 0, "early-stopped": 1, "": 2, "interrupted": 2, "failed": 3}


def leaderboard(client: MlflowClient, name: str | None = None) -> tuple[dict, list[dict]]:
    """The study's search trials, best first: finished trials ranked by the study's metric,
    then trials stopped early (their score is from fewer epochs), then failed ones."""
    exp, parent = find_study(client, name)
    tags = parent.data.tags
    metric, mode = tags["crkd.metric"], tags["crkd.mode"]
    fields = json.loads(tags.get("crkd.space_fields", "{}"))
    info = {"study": exp.name, "experiment_id": exp.experiment_id, "parent_run_id": parent.info.run_id,
            "metric": metric, "mode": mode, "fields": fields, "max_t": int(tags.get("crkd.max_t", 0)),
            "status": parent.info.status, "label_leakage": tags.get("crkd.label_leakage") == "true",
            "objective": tags.get("crkd.objective", "novel")}
    rows = []
    for run in runs_of(client, exp.experiment_id, "trial"):
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        row = {"trial": int(t.get("crkd.optuna_trial", -1)), "trial_id": t.get(KEY, ""),
               "outcome": t.get("crkd.outcome", ""), "epochs": int(m.get("epoch", 0)), metric: m.get(metric)}
        for pname, fname in fields.items():
            row[pname] = _parse(p.get(fname))
        row["error"] = t.get("crkd.error", "")
        row["run_id"] = run.info.run_id
        rows.append(row)
    sign = -1 if mode == "max" else 1

    def key(r):
        v = r[metric]
        bad = v is None or (isinstance(v, float) and math.isnan(v))
        return (OUTCOME_ORDER.get(r["outcome"], 2), bad, sign * v if not bad else 0.0, r["trial"])
    rows.sort(key=key)
    return info, [{"rank": i, **r} for i, r in enumerate(rows, 1)]


def _parse(v: str | None):
    if v is None:
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def format_table(info: dict, rows: list[dict], top: int | None = None) -> str:
    metric = info["metric"]
    cols = ["rank", "trial", "outcome", "epochs", metric, *info["fields"]]
    shown = rows[:top] if top else rows

    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}" if (abs(v) >= 1e-3 or v == 0) else f"{v:.3e}"
        return "" if v is None else str(v)
    table = [cols] + [[cell(r.get(c)) for c in cols] for r in shown]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) if j == 2 else v.rjust(w) for j, (v, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if top and len(rows) > top:
        lines.append(f"(top {top} of {len(rows)})")
    return "\n".join(lines)


def write_table(rows: list[dict], csv_path: str | None = None, parquet_path: str | None = None) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    if csv_path:
        pacsv.write_csv(table, csv_path)
    if parquet_path:
        pq.write_table(table, parquet_path)
