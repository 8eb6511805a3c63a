#!/usr/bin/env python
"""Export a study: the configuration its confirmation supports, as a runnable config, and
every result as tables.

    python harness/export.py --name rkd_weights-digits-20260101-120000 [--out exported/NAME] [--top 3]

writes
    OUT/confirmed.yaml        the configuration with the highest confirmed mean (a top search
                              configuration or a baseline), with the seeds it was confirmed on and
                              its paired differences against each baseline in the header;
                              `python -m crkd run --config OUT/confirmed.yaml --seed S` re-runs
                              the confirmation run of seed S bit for bit on the same kind of machine
    OUT/search-rankNN-#T.yaml with --top N: the N best search trials as they ran (proxy task fold 0
                              when the search used the proxy objective)
    OUT/trials.parquet        one row per search trial: rank, outcome, params, final metrics, config
    OUT/histories.parquet     one row per run and epoch (search and confirmation): every metric
    OUT/confirmation.parquet  one row per confirmed configuration x seed (from the report)
    OUT/leaderboard.csv       the ranked search trials

A config records what its result depends on beyond the trainer's settings: `threads`
(torch CPU threads; `crkd run` sets them), `device` and `amp`. The torch version and the
machine kind are in the header.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from harness import Parser, phases, storage, tracking
from harness.driver import fail
from harness.settings import CONFIRM_METRIC, SettingsError, Study


def _header(study: Study, lines: list[str], rerun: str) -> str:
    import platform

    import torch
    env = (f"torch {torch.__version__}, {platform.machine()}, written by crkd-tune (git {study.git_commit})")
    return "".join(f"# {ln}\n" for ln in [*lines, f"environment: {env}", rerun]) + "\n"


def confirmed(study: Study, out: str) -> str | None:
    """confirmed.yaml: the configuration the confirmation supports (None if there is none)."""
    text = storage.read_text(study.path("report", "summary.json"))
    jobs = json.loads(storage.read_text(study.path("confirm", "jobs.json")) or "[]")
    if not text or not jobs:
        return None
    summary = json.loads(text)
    label = summary.get("supported")
    if not label:
        return None
    recs = [r for r in phases.records(study, jobs) if r.get("label") == label and r.get("kind") == "train"
            and r.get("role") != "transfer"]
    mine = [j for j in jobs if j["label"] == label and j["kind"] == "train" and j["role"] != "transfer"]
    job = min(mine, key=lambda j: j["seed"])
    import crkd
    cfg = crkd.Config.from_yaml(job["config"], "job")
    from harness.trial import device, threads
    cfg.threads, cfg.device = threads(study), device(study)  # as the run had them: results depend on them
    per_seed = ", ".join(f"seed {r['seed']}: {r['final'].get(CONFIRM_METRIC, float('nan')):.4f}"
                         for r in sorted(recs, key=lambda r: r["seed"]) if r.get("final"))
    lines = [f"crkd-tune study {study.name}: the configuration its confirmation supports",
             f'"{label}" ({job["role"]}): the highest mean {CONFIRM_METRIC} over the confirmation seeds',
             f"{CONFIRM_METRIC} per seed: {per_seed}"]
    for c in summary.get("comparisons", []):
        if c["label"] == label:
            lines.append(f"vs {c['baseline']}: mean difference {c['mean_diff']:+.4f}, 95% CI "
                         f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], paired t-test p {c['p_t']:.3g}, "
                         f"n {c['n']}: {c['verdict']}")
    for baseline, winners in (summary.get("beats") or {}).items():
        if not winners:
            lines.append(f"No configuration beats the {baseline} baseline on these seeds.")
    lines.append(f"depends on beyond the trainer's settings: threads {cfg.threads} (torch CPU threads, set by "
                 f"crkd run), device {cfg.device}, amp {cfg.amp} (bf16 autocast, CUDA only)")
    path = os.path.join(out, "confirmed.yaml")
    with open(path, "w") as f:
        f.write(_header(study, lines, f"re-run: python -m crkd run --config confirmed.yaml --seed {job['seed']} "
                                      f"--out out/{study.name}-s{job['seed']}") + cfg.to_yaml())
    return path


def main(argv=None) -> int:
    p = Parser(description="Export a crkd-tune study: its confirmed configuration (YAML) and all results (Parquet).")
    p.add_argument("--name", required=True, help="study name")
    p.add_argument("--storage", default="runs", help="where the study lives (default ./runs)")
    p.add_argument("--out", help="output folder (default exported/<name>)")
    p.add_argument("--top", type=int, default=0, help="also the N best search trials' configs (default 0)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: the study's)")
    args = p.parse_args(argv)
    if args.top < 0:
        p.error("--top must be >= 0")
    try:
        study = Study.load(storage.check_root(args.storage), args.name)
    except (SettingsError, storage.StorageError) as e:
        fail(str(e))
    out = args.out or os.path.join("exported", study.name)
    os.makedirs(out, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(args.tracking_uri or study.tracking)

    path = confirmed(study, out)
    if path:
        print(f"wrote {path}")
        for line in open(path):
            if line.startswith("# No configuration beats"):
                print(line[2:].strip())
    else:
        print("note: no confirmation to export (run with --confirm-seeds > 0); see --top for search trials")

    try:
        info, rows = tracking.leaderboard(client, study.name)
    except tracking.TrackingError as e:
        fail(str(e))
    best = [r for r in rows if r["outcome"] == "finished"][:args.top]
    for r in best:
        with tempfile.TemporaryDirectory() as d:
            text = open(tracking.read_artifact(client, r["run_id"], "config.yaml", d)).read()
        fname = f"search-rank{r['rank']:02d}-#{r['trial']}.yaml"
        lines = [f"crkd-tune study {info['study']}, search trial #{r['trial']} (rank {r['rank']}, {r['outcome']} "
                 f"after {r['epochs']} epochs, one seed)",
                 f"{info['metric']} = {r[info['metric']]!r}"
                 + ("  (reads novel labels: label leakage)" if info["label_leakage"] else ""),
                 *(f"{k} = {r[k]!r}  ({f})" for k, f in info["fields"].items())]
        if info.get("objective") == "proxy":
            lines.append("this is the proxy task (data.proxy_fold); --set data.proxy_fold=-1 runs it on the real split")
        with open(os.path.join(out, fname), "w") as f:
            f.write(_header(study, lines, f"re-run: python -m crkd run --config {fname} --out out/{fname[:-5]}") + text)
        print(f"wrote {os.path.join(out, fname)}  ({info['metric']}={r[info['metric']]})")

    # Every search trial and every run's epochs.
    import pyarrow as pa
    import pyarrow.parquet as pq
    trial_rows, hist_rows = [], []
    by_run = {r["run_id"]: r for r in rows}
    for run in tracking.runs_of(client, info["experiment_id"], "trial") + tracking.runs_of(
            client, info["experiment_id"], "confirm"):
        t = run.data.tags
        r = by_run.get(run.info.run_id)
        if r is not None:
            # without the MLflow views' columns (rank, the rounded objective, tuned.*): the row has them exact
            trial_rows.append({**r, **{f"final/{k}": v for k, v in sorted(run.data.metrics.items())
                                       if k not in tracking.VIEW_METRICS},
                               **{f"config/{k}": v for k, v in sorted(run.data.params.items())
                                  if not k.startswith(tracking.VIEW_PARAMS)}})
        by_epoch: dict[int, dict] = {}
        for key in sorted(set(run.data.metrics) - tracking.VIEW_METRICS):
            for m in client.get_metric_history(run.info.run_id, key):
                by_epoch.setdefault(m.step, {})[key] = m.value  # a re-logged epoch keeps its last value
        for epoch in sorted(by_epoch):
            hist_rows.append({"run": run.info.run_name, "role": t.get("crkd.role"), "key": t.get("crkd.key"),
                              "config": t.get("crkd.config", ""), "seed": t.get("crkd.seed", ""),
                              "outcome": t.get("crkd.outcome", ""), "run_id": run.info.run_id, "epoch": epoch,
                              **by_epoch[epoch]})
    for name, data in (("trials.parquet", trial_rows), ("histories.parquet", hist_rows)):
        cols = list(dict.fromkeys(k for row in data for k in row))
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in cols} for row in data]),
                       os.path.join(out, name))
    tracking.write_table(rows, csv_path=os.path.join(out, "leaderboard.csv"))
    report = study.path("report", "confirmation.parquet")
    if not storage.is_uri(report) and os.path.isfile(report):
        shutil.copy2(report, os.path.join(out, "confirmation.parquet"))
    print(f"wrote {out}/trials.parquet ({len(trial_rows)} trials), histories.parquet ({len(hist_rows)} run-epochs), "
          f"leaderboard.csv" + (", confirmation.parquet" if os.path.exists(os.path.join(out, "confirmation.parquet")) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
