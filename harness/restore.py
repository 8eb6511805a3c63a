"""Resuming a study whose driver was killed (kill -9, a lost head node).

Tune's experiment state is a snapshot taken every few seconds; a killed driver
leaves one that is behind the trials, MLflow and Optuna. Two things bridge the gap.

Outcome markers: when a trial ends, the driver writes its final result to
`<experiment>/trial_outcomes/<trial_id>.json`. A trial that the snapshot still shows
as running is restarted by `Tuner.restore`; trial() finds its marker and reports that
result again instead of training, so the trial ends as it did (finished or stopped
by ASHA) rather than meeting ASHA again with other trials around it.

Missing checkpoints: Tune deletes a trial's oldest checkpoint as soon as it
registers one more than `CheckpointConfig(num_to_keep)`, and forces a snapshot only
on the following step. A driver killed in between leaves a snapshot that points at
a deleted checkpoint, and `Tuner.restore` fails that trial ("Could not recover from
checkpoint as it does not exist on storage anymore"). The checkpoints written after
the snapshot are still there: the newest takes the missing one's place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil

from ray import tune

from .storage import outcome_marker, write_text

logger = logging.getLogger(__name__)


def repair_missing_checkpoints(experiment: str) -> list[str]:
    """For local storage: the trial ids whose checkpoint was put back."""
    from ray.tune import ExperimentAnalysis
    repaired = []
    for trial in ExperimentAnalysis(experiment).trials:
        cp = trial.checkpoint
        if cp is None or os.path.exists(cp.path) or not os.path.isdir(trial.path):
            continue
        missing = os.path.basename(cp.path)
        newer = sorted(d for d in os.listdir(trial.path) if d.startswith("checkpoint_") and d > missing)
        if not newer:
            continue
        os.rename(os.path.join(trial.path, newer[-1]), cp.path)
        for d in newer[:-1]:  # unknown to the snapshot, so Tune would never delete them
            shutil.rmtree(os.path.join(trial.path, d), ignore_errors=True)
        logger.warning("trial %s: its saved checkpoint %s was deleted after the last snapshot; "
                       "resuming from the newer %s instead", trial.trial_id, missing, newer[-1])
        repaired.append(trial.trial_id)
    return repaired


class OutcomeMarkers(tune.Callback):
    """Writes each ended trial's final result (see the module docstring)."""

    def __init__(self, experiment: str):
        self.experiment = experiment

    def on_trial_complete(self, iteration, trials, trial, **info):
        from .recorder import TUNE_KEYS
        last = {k: v for k, v in (trial.last_result or {}).items()
                if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in TUNE_KEYS}
        try:
            write_text(outcome_marker(self.experiment, trial.trial_id), json.dumps(last))
        except OSError as e:
            logger.warning("could not write the outcome of trial %s: %s", trial.trial_id, e)


def ended_before(experiment: str, trial_id: str) -> dict | None:
    """The final result of a trial that had already ended, if a killed driver's Tune
    state restarted it."""
    from .storage import read_text
    text = read_text(outcome_marker(experiment, trial_id))
    return json.loads(text) if text else None
