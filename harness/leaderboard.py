#!/usr/bin/env python
"""The ranked search trials of a study, read from MLflow.

    python harness/leaderboard.py                      # the newest study in ./runs
    python harness/leaderboard.py --name rkd_weights-digits-20260101-120000 --top 5
    python harness/leaderboard.py --tracking-uri http://head:5000 --name my-study --csv board.csv

Finished trials come first, ranked by the study's metric at their last epoch; then
trials ASHA stopped early (their score is from fewer epochs, so it is not comparable);
then failed ones. A search's ranking is one seed per trial: the study's report, which
retrains the top configurations on fresh seeds, is the verdict.
"""
from __future__ import annotations

import os
import sys

from harness import Parser, tracking


def main(argv=None) -> int:
    p = Parser(description="Ranked search trials of a crkd-tune study, from MLflow.")
    p.add_argument("--name", help="study name (default: the newest study in the store)")
    p.add_argument("--top", type=int, help="show only the best N trials")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow store (default {tracking.default_tracking_uri()}, the one tune.py uses)")
    p.add_argument("--csv", help="also write the whole table to this CSV file")
    args = p.parse_args(argv)
    if args.top is not None and args.top < 1:
        p.error("--top must be >= 1")
    uri = args.tracking_uri or tracking.default_tracking_uri()
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        sys.stderr.write(f"error: no MLflow store at {uri}; run harness/tune.py first or pass --tracking-uri\n")
        return 2
    from mlflow.tracking import MlflowClient
    try:
        info, rows = tracking.leaderboard(MlflowClient(uri), args.name)
    except tracking.TrackingError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"] or "running"] = counts.get(r["outcome"] or "running", 0) + 1
    print(f"study {info['study']} ({info['status'].lower()}): {len(rows)} trials, "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"; ranked by {info['metric']} ({info['mode']}) at the last epoch; max epochs {info['max_t']}")
    print(tracking.format_table(info, rows, args.top))
    if info["label_leakage"]:
        print(f"note: {info['metric']} reads the novel classes' labels: selecting by it is label leakage "
              f"(the papers' protocol); the scores are optimistic")
    if args.csv:
        tracking.write_table(rows, csv_path=args.csv)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
