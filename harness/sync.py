#!/usr/bin/env python
"""Bring a study's MLflow runs up to date after its driver died (kill -9, a lost head node)
or while its tracking server was away for longer than the study lasted.

    python harness/sync.py --name rkd_weights-digits-20260101-120000 [--storage runs]

Two sources, both idempotent: the study's tracking journal (every write the driver
queued, applied from where the writer stopped), then Tune's own results of each phase
(every epoch a run reported, logged where MLflow lacks it, and the run's status from
Tune's saved state). `--resume` does the first on its own; this command needs no Ray
cluster and starts no trial.
"""
from __future__ import annotations

import json
import os
import sys

from harness import Parser, storage
from harness.driver import fail, journal_folder
from harness.settings import SettingsError, Study


def from_tune(study: Study, sink, writer) -> int:
    """Epochs and endings Tune recorded that MLflow lacks; returns how many writes were queued."""
    from ray.tune import ExperimentAnalysis

    from harness.phases import outcome
    from harness.recorder import TUNE_KEYS
    from harness.tracking import STATUS
    queued = 0
    for phase in ("search", "confirm"):
        path = storage.join(study.folder, phase)
        if not storage.exists(path):
            continue
        try:
            trials = ExperimentAnalysis(path).trials
        except Exception as e:  # no saved state yet: nothing Tune knows beyond the journal
            print(f"note: {phase}: Tune's state is unreadable ({type(e).__name__}); skipped")
            continue
        for t in trials:
            try:
                run_id = sink.find(t.trial_id)
            except KeyError:
                writer.put({"op": "run", "key": t.trial_id, "name": t.trial_id,
                            "tags": {"crkd.role": "confirm" if "job" in t.config else "trial", "crkd.phase": phase},
                            "params": {}})
                queued += 1
                run_id = None
            last = sink.last_step(run_id) if run_id else 0
            rows = _results(t)
            for r in rows:
                step = int(r.get("epoch", 0))
                if step > last:
                    values = {k: float(v) for k, v in r.items() if k not in TUNE_KEYS
                              and isinstance(v, (int, float)) and not isinstance(v, bool)}
                    writer.put({"op": "metrics", "key": t.trial_id, "step": step, "values": values,
                                "ts": int(r.get("timestamp", 0) * 1000)})
                    queued += 1
            if t.status in ("TERMINATED", "ERROR"):
                o = outcome(t, study.max_t) if "job" not in t.config else ("failed" if t.status == "ERROR" else "finished")
                writer.put({"op": "tags", "key": t.trial_id, "tags": {"crkd.outcome": o}})
                writer.put({"op": "end", "key": t.trial_id, "status": STATUS[o]})
                queued += 2
    return queued


def _results(trial) -> list[dict]:
    """Every result Tune recorded for the trial (its result.json, read where the study's
    storage keeps it: `trial.local_path` would need a running Ray)."""
    import pyarrow.fs as pafs
    fs, path = trial.storage.storage_filesystem, f"{trial.path}/result.json"
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return []
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def main(argv=None) -> int:
    p = Parser(description="Apply a study's pending tracking writes (journal, then Tune's results) to MLflow.")
    p.add_argument("--name", required=True, help="study name")
    p.add_argument("--storage", default="runs", help="where the study lives (default ./runs)")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the server (default 120)")
    args = p.parse_args(argv)
    try:
        study = Study.load(storage.check_root(args.storage), args.name)
        storage.check_tracking(study.tracking_uri, study.root)
    except (SettingsError, storage.StorageError) as e:
        fail(str(e))
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run ... at:" per run
    from mlflow.tracking import MlflowClient

    from harness import tracking
    from harness.journal import Journal, Writer
    client = MlflowClient(study.tracking)
    try:
        exp, parent = tracking.find_study(client, study.name)
    except tracking.TrackingError as e:
        fail(str(e))
    sink = tracking.Sink(study.tracking, exp.experiment_id, parent.info.run_id)
    writer = Writer(Journal(journal_folder(study)), sink)
    backlog = writer.backlog
    done = writer.flush(args.timeout)
    queued = from_tune(study, sink, writer) if done else 0
    done = writer.close(args.timeout)
    print(f"{study.name}: {backlog} journal writes and {queued} from Tune's results applied"
          + ("" if done else f"; {writer.stats.events - writer.stats.applied} still pending (server away?)"))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
