#!/usr/bin/env python
"""Export a study: its best configurations as runnable YAML, and every result as Parquet.

    python harness/export.py --name rkd_weights-digits-20260101-120000 --top 3 --out exported/

writes
    OUT/rank01-<trial>.yaml   the trial's resolved config (seed included):
                              `python -m crkd run --config OUT/rank01-<trial>.yaml --out DIR`
                              re-runs it as it is
    OUT/trials.parquet        one row per trial: rank, status, epochs, params, final metrics, config
    OUT/histories.parquet     one row per trial and epoch: every metric the trial reported
    OUT/leaderboard.csv       the ranked table
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import Parser, tracking  # noqa: E402


def main(argv=None) -> int:
    p = Parser(description="Export a crkd-tune study's best configs (YAML) and all results (Parquet).")
    p.add_argument("--name", required=True, help="study name")
    p.add_argument("--top", type=int, default=3, help="how many best configurations to write (default 3)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow store (default {tracking.default_tracking_uri()}, the one tune.py uses)")
    args = p.parse_args(argv)
    if args.top < 0:
        p.error("--top must be >= 0")
    uri = args.tracking_uri or tracking.default_tracking_uri()
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        sys.stderr.write(f"error: no MLflow store at {uri}; pass --tracking-uri\n")
        return 2
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    try:
        info, rows = tracking.leaderboard(client, args.name)
    except tracking.TrackingError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    os.makedirs(args.out, exist_ok=True)
    metric = info["metric"]

    # The best configurations: finished trials first (the leaderboard's order).
    best = [r for r in rows if r["status"] == "FINISHED"][:args.top]
    if len(best) < args.top:
        print(f"note: only {len(best)} finished trials; early-stopped and failed ones are not exported as configs")
    for r in best:
        with tempfile.TemporaryDirectory() as d:
            text = open(client.download_artifacts(r["run_id"], "config.yaml", d)).read()
        seed = client.get_run(r["run_id"]).data.params.get("seed", "0")
        fname = f"rank{r['rank']:02d}-{r['trial_id']}.yaml"
        header = (f"# crkd-tune study {info['study']}, trial {r['trial_id']} (rank {r['rank']}, {r['status'].lower()} "
                  f"after {r['epochs']} epochs)\n"
                  f"# {metric} = {r[metric]!r}"
                  + ("  (uses novel labels: label leakage, docs/method.md 5)" if info["label_leakage"] else "") + "\n"
                  + "".join(f"# {k} = {r[k]!r}  ({f})\n" for k, f in info["fields"].items())
                  + f"# MLflow run {r['run_id']}\n"
                  f"# re-run: python -m crkd run --config {fname} --seed {seed} --out out/{fname[:-5]}\n")
        with open(os.path.join(args.out, fname), "w") as f:
            f.write(header + text)
        print(f"wrote {os.path.join(args.out, fname)}  ({metric}={r[metric]})")

    # All trials and their epoch histories.
    trial_rows, hist_rows = [], []
    for r in rows:
        run = client.get_run(r["run_id"])
        row = {k: v for k, v in r.items()}
        row.update({f"final/{k}": v for k, v in sorted(run.data.metrics.items())})
        row.update({f"config/{k}": v for k, v in sorted(run.data.params.items())})
        trial_rows.append(row)
        by_epoch: dict[int, dict] = {}
        for key in sorted(run.data.metrics):
            for m in client.get_metric_history(r["run_id"], key):
                by_epoch.setdefault(m.step, {})[key] = m.value  # a re-logged epoch keeps its last value
        for epoch in sorted(by_epoch):
            hist_rows.append({"trial_id": r["trial_id"], "run_id": r["run_id"], "status": r["status"],
                              **{k: v for k, v in r.items() if k in info["fields"]},
                              "epoch": epoch, **by_epoch[epoch]})
    # Columns can differ between trials (a failed trial lacks some): unify the schemas.
    for name, data in (("trials.parquet", trial_rows), ("histories.parquet", hist_rows)):
        cols = list(dict.fromkeys(k for row in data for k in row))
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in cols} for row in data]),
                       os.path.join(args.out, name))
    tracking.write_table(rows, csv_path=os.path.join(args.out, "leaderboard.csv"))
    print(f"wrote {args.out}/trials.parquet ({len(trial_rows)} trials), histories.parquet "
          f"({len(hist_rows)} trial-epochs), leaderboard.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
