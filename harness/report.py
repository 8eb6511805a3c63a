#!/usr/bin/env python
"""Write (or rewrite) a study's report from what its runs recorded.

    python harness/report.py --name rkd_weights-digits-20260101-120000 [--storage runs]

writes <storage>/<name>/report/: report.md (the confirmation table with paired
differences, 95% intervals and p-values against each baseline, the floors, the proxy's
ranking check, the protocol), confirmation.parquet (one row per configuration x seed)
and the plots, and attaches them to the study's MLflow parent run. tune.py and
benchmark.py run it at the end of every study; run it by hand after `--confirm-seeds`
runs were added, or to render an old study with a newer harness.
"""
from __future__ import annotations

import json
import sys

from harness import Parser, phases, storage
from harness.driver import fail
from harness.settings import SettingsError, Study


def main(argv=None) -> int:
    p = Parser(description="Write a crkd-tune study's report (report.md, confirmation.parquet, plots).")
    p.add_argument("--name", required=True, help="study name")
    p.add_argument("--storage", default="runs", help="where the study lives (default ./runs)")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the files to the MLflow parent run")
    args = p.parse_args(argv)
    try:
        study = Study.load(storage.check_root(args.storage), args.name)
    except (SettingsError, storage.StorageError) as e:
        fail(str(e))
    text = storage.read_text(study.path("confirm", "jobs.json"))
    if not text:
        fail(f"study {args.name} has no confirmation runs yet (its confirmation never started); "
             f"continue it with python harness/tune.py --resume --name {args.name}")
    summary = phases.report(study, json.loads(text))
    print(f"wrote {summary['where']}: " + ", ".join(sorted(f.rsplit('/', 1)[-1] for f in summary["files"])))
    if summary.get("supported"):
        print(f"the confirmation supports: {summary['supported']}")
    if not args.no_mlflow:
        from mlflow.tracking import MlflowClient

        from harness import tracking
        client = MlflowClient(study.tracking)
        try:
            _, parent = tracking.find_study(client, study.name)
            tracking.Sink(study.tracking, parent.info.experiment_id, parent.info.run_id).files(
                parent.info.run_id, summary["folder"], "report")
        except Exception as e:  # the files are on disk either way
            print(f"note: not attached to MLflow ({' '.join(str(e).split())[:200]})")
    phases.drop_scratch(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
