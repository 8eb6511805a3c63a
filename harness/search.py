"""OptunaSearch that tells Optuna the truth about early-stopped trials.

Ray's OptunaSearch reports a trial that ASHA stopped at epoch 2 as COMPLETE with
its epoch-2 score, so TPE models truncated scores as final ones. Here a trial
that ends before `max_t` is told as PRUNED (its intermediate values, one per
epoch, stay in the study), an errored one as FAIL, and only trials that reached
`max_t` as COMPLETE.

Restore: Ray saves this searcher with the experiment state, but Optuna's storage
is written at once. If the driver was killed (kill -9) after `study.ask()` and
before the next state snapshot, the storage holds trials that no Tune trial knows.
RUNNING ones are adopted by the next trials Tune asks for (same parameters), so
none stays RUNNING; finished ones stay as the results they are; and the sampler is
reseeded, since its saved random state would draw their parameters again.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterable, Iterator

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class HeldJournal(BaseJournalBackend):
    """Optuna's journal file, whose appends can be held and written as one.

    Every Optuna storage call is one append: a file lock, a write and an fsync (1-80 ms). A
    trial's end is ~100 of them (its curve, two attributes); under `hold()` they become one
    append, one lock, one fsync, written before the `tell` that follows. Held lines are
    invisible to reads until written, so only writes that nothing reads before the `tell`
    are held."""

    def __init__(self, path: str):
        self.file = JournalFileBackend(path)
        self._held: list[dict[str, Any]] | None = None

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self.file.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if self._held is not None:
            self._held.extend(logs)
        else:
            self.file.append_logs(logs)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._held = []
        try:
            yield
        finally:  # written even if a later write raised: what was told stays told
            held, self._held = self._held, None
            if held:
                self.file.append_logs(held)


def optuna_storage(path: str) -> JournalStorage:
    """The study's Optuna storage: a journal file (`HeldJournal`) that optuna-dashboard reads."""
    return JournalStorage(HeldJournal(path))


class PruningOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_t: int, time_attr: str = "epoch", **kwargs):
        self.max_t, self.time_attr = max_t, time_attr
        # trial_id -> {epoch: value}: intermediate values are written to the Optuna journal when
        # the trial ends, in one go. Each write is an fsync and a file lock (12-80 ms), and
        # Optuna needs them only for plots: ASHA, not Optuna, stops trials.
        self._values: dict[str, dict[int, float]] = {}
        super().__init__(*args, **kwargs)
        if self._ot_study is not None and self._metric:
            import warnings
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what dashboards read
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([self._metric])  # its name, not "Objective 0"

    def restore_from_dir(self, checkpoint_dir: str):
        super().restore_from_dir(checkpoint_dir)
        lost = self._lost()
        if lost:
            # The sampler's random state is from the snapshot, taken before these trials
            # were drawn: unchanged, it would draw their parameters again.
            self._ot_study.sampler.reseed_rng()
            logger.warning("%d Optuna trial(s) started after the last saved Tune state: running ones are "
                           "taken over by new Tune trials, finished ones stay in the study", len(lost))

    # --- suggestions -----------------------------------------------------------------

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials and not callable(self._space):
            orphan = next((t for t in self._lost() if t.state == TrialState.RUNNING), None)
            if orphan is not None:
                logger.warning("Optuna trial %d was left RUNNING by an interrupted driver; "
                               "Tune trial %s takes it over", orphan.number, trial_id)
                self._ot_trials[trial_id] = ot_trial = optuna.Trial(self._ot_study, orphan._trial_id)
                for name, dist in self._space.items():
                    _suggest(ot_trial, name, dist)  # returns the stored value if already drawn
        params = super().suggest(trial_id)
        if params is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            params = {**params, "_n": ot_trial.number}  # the Optuna number names the run everywhere
        return params

    def _lost(self) -> list:
        """Trials in the storage that the (restored) searcher does not know."""
        known = {t.number for t in self._ot_trials.values()}
        return [t for t in self._ot_study.get_trials(deepcopy=False)
                if t.number not in known and t.state != TrialState.WAITING]

    # --- results -----------------------------------------------------------------------

    def on_trial_result(self, trial_id: str, result: dict):
        # Intermediate values by discovery epoch (Ray uses training_iteration, which
        # restarts from the checkpoint's count on resume).
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, step = result.get(self._metric), result.get(self.time_attr)
        if value is None or step is None or not math.isfinite(float(value)):
            return
        self._values.setdefault(trial_id, {})[int(step)] = float(value)

    def _held(self):
        backend = getattr(self._ot_study._storage, "_backend", None)
        return backend.hold() if isinstance(backend, HeldJournal) else contextlib.nullcontext()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            # Told before a killed driver's state was saved, and re-run since: the study keeps
            # the first ending. Writing this one would put updates of a finished trial in the
            # journal, which Optuna replays as errors at the next read (the held writes are
            # appended unchecked), so nothing is written.
            self._values.pop(trial_id, None)
            self._completed_trials.add(trial_id)
            return
        value = result.get(self._metric) if result else None
        reached = int(result.get(self.time_attr, 0)) if result else 0
        if error:
            state, values, outcome = TrialState.FAIL, None, "failed"
        elif value is None or not math.isfinite(float(value)):
            state, values, outcome = TrialState.FAIL, None, "failed"
        elif reached < self.max_t:
            state, values, outcome = TrialState.PRUNED, None, "early-stopped"
        else:
            state, values, outcome = TrialState.COMPLETE, float(value), "finished"
        curve = self._values.pop(trial_id, {})
        if value is not None and math.isfinite(float(value)) and reached:
            # Ray passes the stopping result here and not to on_trial_result: without it a
            # PRUNED trial's last value would be its second-to-last epoch's.
            curve[reached] = float(value)
        try:
            with self._held():  # the curve and attributes in one append, before the tell
                ot_trial.set_user_attr("epochs_reached", reached)
                ot_trial.set_user_attr("outcome", outcome)  # the harness's word for Optuna's state
                for step in sorted(curve):
                    ot_trial.report(curve[step], step)
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as exc:
            logger.warning("Optuna tell for trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def _suggest(trial: optuna.Trial, name: str, dist) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if isinstance(dist, FloatDistribution):
        trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    elif isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(name, dist.choices)
