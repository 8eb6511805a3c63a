"""A study's phases, each resumable: the search, the confirmation, the report.

    search        Optuna TPE + ASHA over the space, on the proxy task (default) or the
                  real split; ends with `selection.json`: every trial's score and the
                  top K, frozen before any run on the real split reads a novel label.
    confirmation  the top K configurations and the baselines (the paper defaults of
                  `crkd`, and `uno`) retrained on the real split with fresh seeds the
                  search never used, the floors of each seed, and (proxy objective) each
                  finished search trial once on the real split to check the proxy's ranking.
    report        report.md, confirmation.parquet and plots, in the study folder and on
                  the MLflow parent run.

`<study>/state.json` says which phases are done; `--resume` continues the first one that
is not, restoring Tune's own state for a phase that was interrupted.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time

import crkd

from . import storage
from .settings import CONFIRM_METRIC, REPORT_METRICS, USES_NOVEL_LABELS, Study
from .trial import record_path

PHASES = ("search", "confirm", "report")


# --- state -------------------------------------------------------------------------------

def state(study: Study) -> dict:
    text = storage.read_text(study.path("state.json"))
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def mark(study: Study, phase: str, status: str) -> None:
    s = state(study)
    s[phase] = status
    storage.write_text(study.path("state.json"), json.dumps(s))


def started(study: Study) -> bool:
    """Has any phase begun running trials? (Before that, a new run may take the name over.)"""
    return any(v in ("running", "done") for v in state(study).values())


# --- resources ------------------------------------------------------------------------------

def resources(study: Study) -> dict:
    return {"cpu": study.cpus_per_trial, "gpu": max(study.gpus_per_trial, 0.0)}


def settle_resources(study: Study) -> None:
    """Defaults that depend on the cluster (Ray is up)."""
    import ray
    res = ray.cluster_resources()
    if study.gpus_per_trial < 0:
        study.gpus_per_trial = 1.0 if study.wants_gpu and res.get("GPU", 0) > 0 else 0.0
    if not study.max_concurrent:
        fits = res.get("CPU", 0) // study.cpus_per_trial
        if study.gpus_per_trial > 0:
            fits = min(fits, res.get("GPU", 0) // study.gpus_per_trial)
        study.max_concurrent = int(fits) if fits >= 1 else 4  # an autoscaling cluster starts empty


def _trainable(study: Study):
    from ray import tune

    from .trial import trainable
    return tune.with_resources(tune.with_parameters(trainable, study=study), resources(study))


def _run_config(study: Study, phase: str, callbacks: list, verbose: bool):
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from .console import silent_reporter
    # Tune's default loggers write every result three times (JSON, CSV, TensorBoard), about
    # half of the driver loop's CPU per result (docs/benchmarks.md, driver). result.json is
    # all that is read back (Tune's ExperimentAnalysis, harness/sync.py).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return tune.RunConfig(
        name=phase, storage_path=study.folder, verbose=1 if verbose else 0,
        callbacks=[*callbacks, JsonLoggerCallback()],
        progress_reporter=None if verbose else silent_reporter(),
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=study.keep_checkpoints))


def trial_dirname(trial) -> str:
    """Short folder names: Tune's default spells out the config (a job's whole YAML)."""
    c = trial.config
    return f"{trial.trial_id}-{c['job']['id']}" if "job" in c else f"{trial.trial_id}-n{c.get('_n', '')}"


def _fit(tuner) -> list:
    """Run (or continue) a phase; Tune's trials as it left them."""
    from .recorder import ACTIVE
    ACTIVE.pop("stopped", None)
    results = tuner.fit()
    return list(results._experiment_analysis.trials)  # Ray 2.60: the Trial objects with their status


def _ended(trials: list) -> bool:
    """Every trial ended. Tune marks the trials it stops at Ctrl-C / SIGTERM TERMINATED too,
    like finished ones: the recorder lists those (Recorder.on_experiment_end)."""
    from .recorder import ACTIVE
    return not ACTIVE.get("stopped") and all(t.status in ("TERMINATED", "ERROR") for t in trials)


# --- the search -------------------------------------------------------------------------------

def search(study: Study, recorder_cls, verbose: bool) -> dict | None:
    """The search phase; the selection, or None if it was interrupted."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from . import spaces
    from .search import PruningOptunaSearch, optuna_storage
    import warnings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    path = storage.join(study.folder, "search")
    trainable = _trainable(study)
    space = spaces.load_space(study.space_name, study.benchmark, text=study.space_text,
                              base=crkd.apply_overrides(crkd.preset(study.benchmark),
                                                        {"discover.relation": study.base().discover.relation}))
    if tune.Tuner.can_restore(path):
        tuner = _restore(path, "search", trainable)
    else:
        os.makedirs(os.path.dirname(study.optuna_journal), exist_ok=True)
        searcher = PruningOptunaSearch(
            space=space.distributions(), metric=study.metric, mode=study.mode, max_t=study.max_t,
            points_to_evaluate=[study.default_point] if study.default_point else None,
            sampler=optuna.samplers.TPESampler(seed=study.seed), study_name=study.name,
            storage=optuna_storage(study.optuna_journal))
        scheduler = ASHAScheduler(time_attr="epoch", metric=study.metric, mode=study.mode, max_t=study.max_t,
                                  grace_period=study.grace_period, reduction_factor=study.reduction_factor)
        recorder = recorder_cls("search", study.metric, study.max_t, study.fields, study.num_samples, study.mode)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=study.num_samples,
                                        max_concurrent_trials=study.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=_run_config(study, "search", [recorder, _outcome_markers(study)], verbose))
    mark(study, "search", "running")
    trials = _fit(tuner)
    if len(trials) < study.num_samples or not _ended(trials):
        return None
    selection = select(study, trials)
    storage.write_text(study.path("selection.json"), json.dumps(selection, indent=1))
    mark(study, "search", "done")
    return selection


def _restore(path: str, phase: str, trainable):
    """Tune's state of an interrupted phase, ready to continue it."""
    from ray import tune
    if not storage.is_uri(path):
        from .restore import repair_missing_checkpoints
        repair_missing_checkpoints(path)
    _discard_orphans(path, phase)
    return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)


def _discard_orphans(path: str, phase: str) -> None:
    """Runs that a killed driver started after Tune's last snapshot of the phase: Tune restores
    without them and does their work again as new trials (a search trial's Optuna trial is
    taken over, harness/search.py; a confirmation job is generated again), so their MLflow
    runs would stay RUNNING beside the new ones, twice the same trial. They are deleted
    (MLflow keeps a deleted run until `mlflow gc`)."""
    from ray.tune import ExperimentAnalysis

    from .recorder import ACTIVE
    writer = ACTIVE.get("writer")
    if writer is None:
        return
    try:
        known = {t.trial_id for t in ExperimentAnalysis(path).trials}
    except Exception:  # no readable state: Tune.restore says why
        return
    events = writer.journal.events()
    gone = {e["key"] for e in events if e.get("op") == "discard"}
    started = [e["key"] for e in events if e.get("op") == "run" and e.get("tags", {}).get("crkd.phase") == phase]
    for key in dict.fromkeys(started):
        if key not in known and key not in gone:
            writer.put({"op": "discard", "key": key})


def _outcome_markers(study: Study):
    from .restore import OutcomeMarkers
    return OutcomeMarkers(study.folder)


def outcome(trial, max_t: int) -> str:
    if trial.status == "ERROR":
        return "failed"
    if trial.status != "TERMINATED":
        return "interrupted"
    return "finished" if int((trial.last_result or {}).get("epoch", 0)) >= max_t else "early-stopped"


def select(study: Study, trials: list) -> dict:
    """Every trial's score and the top K finished ones, ranked by the search metric."""
    rows = []
    for t in trials:
        last = t.last_result or {}
        score = last.get(study.metric)
        rows.append({"trial_id": t.trial_id, "number": t.config.get("_n"),
                     "params": {n: t.config[n] for n in study.fields if n in t.config},
                     "score": float(score) if isinstance(score, (int, float)) else None,
                     "epochs": int(last.get("epoch", 0)), "outcome": outcome(t, study.max_t)})
    sign = -1 if study.mode == "max" else 1
    finished = sorted((r for r in rows if r["outcome"] == "finished" and r["score"] is not None),
                      key=lambda r: (sign * r["score"], r["number"] or 0))
    top, seen = [], set()
    for r in finished:
        key = json.dumps(r["params"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            top.append(r["trial_id"])
        if len(top) == study.confirm_top:
            break
    return {"metric": study.metric, "mode": study.mode, "objective": study.objective, "leaky": study.leaky,
            "trials": rows, "top": top, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}


# --- the confirmation ----------------------------------------------------------------------

def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()


def baselines(study: Study) -> list[tuple[str, crkd.Config]]:
    """The paper defaults of `crkd` and UNO, in the study's recipe (its --set, epochs and
    fixed values), with the searched fields back at the preset's values."""
    preset = crkd.preset(study.benchmark).flat()
    out = []
    for label, relation in (("paper defaults", "crkd"), ("uno", "uno")):
        cfg = study.base()
        crkd.apply_overrides(cfg, {"discover.relation": relation})
        flat = cfg.flat()
        crkd.apply_overrides(cfg, {f: preset[f] for f in study.fields.values() if f in preset and f in flat
                                   and not f.startswith("relation.")})
        out.append((label, crkd.validate(cfg)))
    return out


def jobs(study: Study, selection: dict | None, extra: list[tuple[str, str, crkd.Config]] = ()) -> list[dict]:
    """Every confirmation run: (candidates, baselines, extra) x fresh seeds, the floors of
    each seed, and the transfer runs. `extra`: (label, role, config) a benchmark adds."""
    from .spaces import trial_config
    configs: list[dict] = []
    by_id = {r["trial_id"]: r for r in (selection or {}).get("trials", [])}
    for rank, tid in enumerate((selection or {}).get("top", []), 1):
        r = by_id[tid]
        cfg = trial_config(study.base_yaml, study.fields, r["params"])
        configs.append({"label": f"rank{rank} #{r['number']}", "role": "candidate", "cfg": cfg, "trial_id": tid,
                        "score": r["score"], "params": r["params"]})
    if study.kind == "study":
        for label, cfg in baselines(study):
            same = next((c for c in configs if c["cfg"].flat() == cfg.flat()), None)
            if same is not None:  # the paper defaults won: one run set, both labels
                same["label"] += f" (= {label})"
                same["also"] = label
                continue
            configs.append({"label": label, "role": "baseline", "cfg": cfg, "trial_id": None, "score": None,
                            "params": {}})
    for label, role, cfg in extra:
        configs.append({"label": label, "role": role, "cfg": cfg, "trial_id": None, "score": None, "params": {}})
    out = []
    seeds = study.confirmation_seeds
    if study.seed in seeds:
        raise ValueError("confirmation seeds must differ from the search seed")
    for seed in seeds:
        floor_cfg = copy.deepcopy(configs[0]["cfg"] if configs else study.base())
        floor_cfg.seed = seed
        out.append(_job(f"floors-s{seed}", "floors", "floors", "floors", seed, floor_cfg))
    for seed in seeds:
        for c in configs:
            cfg = copy.deepcopy(c["cfg"])
            cfg.seed = seed
            out.append(_job(f"{_slug(c['label'].split(' (')[0])}-s{seed}", "train", c["label"], c["role"], seed, cfg,
                            trial_id=c["trial_id"], score=c["score"], params=c["params"], also=c.get("also")))
    if study.kind == "study" and study.transfer and study.objective == "proxy" and selection:
        for r in selection["trials"]:
            if r["outcome"] != "finished":
                continue
            cfg = trial_config(study.base_yaml, study.fields, r["params"])
            out.append(_job(f"transfer-{r['trial_id']}", "train", f"transfer #{r['number']}", "transfer", study.seed, cfg,
                            trial_id=r["trial_id"], score=r["score"], params=r["params"]))
    return out


def _job(job_id: str, kind: str, label: str, role: str, seed: int, cfg: crkd.Config, **extra) -> dict:
    cfg.data.proxy_fold = -1  # the real split: confirmation reads novel labels, after the choice
    return {"id": job_id, "kind": kind, "label": label, "role": role, "seed": seed, "config": cfg.to_yaml(),
            **{k: v for k, v in extra.items() if v is not None}}


def confirm(study: Study, job_list: list[dict], recorder_cls, verbose: bool) -> bool:
    """Run every job not yet recorded; True when all ended."""
    from ray import tune
    path = storage.join(study.folder, "confirm")
    trainable = _trainable(study)
    storage.write_text(study.path("confirm", "jobs.json"), json.dumps(job_list))
    if tune.Tuner.can_restore(path):
        tuner = _restore(path, "confirm", trainable)
    else:
        recorder = recorder_cls("confirm", CONFIRM_METRIC, study.max_t, {}, len(job_list))
        tuner = tune.Tuner(
            trainable, param_space={"job": tune.grid_search(job_list)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=study.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=_run_config(study, "confirm", [recorder, _outcome_markers(study)], verbose))
    mark(study, "confirm", "running")
    trials = _fit(tuner)
    if len(trials) < len(job_list) or not _ended(trials):
        return False
    mark(study, "confirm", "done")
    return True


def records(study: Study, job_list: list[dict]) -> list[dict]:
    out = []
    unfinished = state(study).get("confirm") != "done"  # a report of a confirmation still under way
    for j in job_list:
        text = storage.read_text(record_path(study, j["id"]))
        if text:
            out.append(json.loads(text))
        elif unfinished:
            out.append({**{k: v for k, v in j.items() if k != "config"}, "outcome": "not run yet",
                        "error": "the confirmation is unfinished (--resume continues it)", "final": {}, "history": []})
        else:  # a job Tune ended without a record: it failed outside the trainer
            out.append({**{k: v for k, v in j.items() if k != "config"}, "outcome": "failed",
                        "error": "no result recorded (see the run's error in MLflow)", "final": {}, "history": []})
    return out


# --- the report ---------------------------------------------------------------------------------

def report(study: Study, job_list: list[dict]) -> dict:
    """Write the report into <study>/report/ and return its summary (and where its files are)."""
    from .reporting import write_report
    selection = json.loads(storage.read_text(study.path("selection.json")) or "{}")
    info = {"study": study.name, "kind": study.kind, "benchmark": study.benchmark,
            "objective": study.objective if study.kind == "study" else "none",
            "search_metric": study.metric, "leaky": study.leaky if study.kind == "study" else False,
            "metric": CONFIRM_METRIC, "metrics": REPORT_METRICS,
            "search_seed": study.seed if study.kind == "study" else None, "seeds": study.confirmation_seeds,
            "max_epochs": study.max_t,
            "baselines": (["paper defaults", "uno"] if study.kind == "study"
                          else ["uno"] if "uno" in study.methods else []),
            "protocol": protocol(), "command": study.command, "created": study.created}
    trials = selection.get("trials", [])
    recs = records(study, job_list)
    # An object store gets the files from a local scratch folder; the caller drops it (drop_scratch).
    scratch = storage.is_uri(study.root)
    local = tempfile.mkdtemp(prefix="crkd-report-") if scratch else study.path("report")
    os.makedirs(local, exist_ok=True)
    summary = write_report(local, info, trials, recs)
    with open(os.path.join(local, "summary.json"), "w") as f:  # what export.py reads
        json.dump({k: v for k, v in summary.items() if k != "files"}, f, indent=1, default=str)
    if scratch:
        storage.copy_dir(local, study.path("report"))
    summary.update(folder=local, where=study.path("report"), scratch=scratch)
    mark(study, "report", "done")
    return summary


def drop_scratch(summary: dict) -> None:
    """Remove the local copy of a report written to an object store (see `report`)."""
    if summary.get("scratch"):
        shutil.rmtree(summary["folder"], ignore_errors=True)


def protocol() -> str:
    leaky = ", ".join(sorted(m for m in REPORT_METRICS if m in USES_NOVEL_LABELS))
    return ("Each number is the final epoch of one run (no checkpoint selection). The best head is the one "
            "with the lowest self-labeling loss in that epoch: no label picks it. novel/train/acc is the "
            "Hungarian accuracy of the best head on the unlabeled training images (the NCD headline, "
            "task-aware); test/all|old|new are task-agnostic (one matching over all classes). Metrics read "
            f"with novel labels, after the choice and never by it: {leaky}.")
