"""What Ray Tune runs: a search trial, or a confirmation job.

A search trial is the whole two-stage trainer for one sampled configuration: on the
proxy task (one run per proxy fold, stepped together, metrics averaged under
"proxy/"), or on the real split with --objective novel. A confirmation job is one
configuration with one fresh seed on the real split, or the floors of one seed.

Both report every discovery epoch (the scheduler's time unit) and checkpoint every
`checkpoint_every` epochs; a checkpoint holds the discovery runs without their
teachers, which the stage-1 cache keeps (the checkpoint names each by key and sha256).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile

import crkd
from crkd.errors import CrkdError

from . import storage
from .settings import Study
from .stage1 import Stage1Cache

# Keys a proxy trial reports as they are (not averaged under "proxy/").
PLAIN = {"epoch", "lr"}


def trainable(config: dict, study: Study) -> None:
    """The Tune function: a confirmation job if the config carries one, else a search trial."""
    import torch
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "Checkpoint created" line per epoch
    torch.set_num_threads(threads(study))
    trial_id = tune.get_context().get_trial_id()
    marker = storage.failure_marker(study.folder, trial_id)
    earlier = storage.read_text(marker)
    if earlier:  # a retry of a deterministic failure: fail the same way, at once
        raise storage.RepeatedFailure(earlier)
    from .restore import ended_before
    ended = ended_before(study.folder, trial_id)
    if ended:  # restarted from a killed driver's stale state: end as it ended (harness/restore.py)
        tune.report(ended)
        return
    job = config.get("job")
    try:
        if job and job["kind"] == "floors":
            _floors(job, study)
        elif job:
            cfgs = _configs_of_job(job, study)
            if not _replay(cfgs[0], study, job):
                _train(cfgs, study, trial_id, prefix="", job=job)
        else:
            _train(_configs_of_trial(config, study), study, trial_id, prefix="proxy/" if study.objective == "proxy" else "")
    except Exception as e:
        # NaN/inf loss, bad config or data, a bug: retrying on a live worker would fail the same
        # way, so the reason is kept and a retry fails at once. Only a dead worker (no marker
        # written) is worth Tune's retry. Ray's own control-flow exceptions pass through.
        if type(e).__module__.startswith("ray.") and not isinstance(e, CrkdError):
            raise
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        if job:
            _write_record(study, job, {"outcome": "failed", "error": reason, "final": {}, "history": []})
        storage.write_text(marker, reason)
        raise storage.TrialFailed(reason) from None


def threads(study: Study) -> int:
    return max(1, int(study.cpus_per_trial))


def device(study: Study) -> str:
    """The device a run resolves to, written into its config: part of what its result depends on."""
    import torch
    return "cuda" if study.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu"


def _configs_of_trial(sampled: dict, study: Study) -> list[crkd.Config]:
    """The sampled configuration, once per proxy fold (or once, on the real split)."""
    from .spaces import trial_config
    cfg = trial_config(study.base_yaml, study.fields, sampled)
    cfg.threads, cfg.device = threads(study), device(study)
    if study.objective != "proxy":
        return [cfg]
    out = []
    for fold in range(study.proxy_folds):
        c = crkd.Config.from_dict(cfg.to_dict())
        c.data.proxy_fold, c.data.proxy_seed = fold, study.seed
        out.append(c)
    return out


def _configs_of_job(job: dict, study: Study) -> list[crkd.Config]:
    cfg = crkd.Config.from_yaml(job["config"], f"job {job['id']}")
    cfg.threads, cfg.device = threads(study), device(study)
    return [cfg]


def _train(cfgs: list[crkd.Config], study: Study, trial_id: str, prefix: str, job: dict | None = None) -> None:
    from ray import tune
    cache = Stage1Cache(study.stage1_cache)
    log = lambda msg: print(f"[crkd-tune] {trial_id}: {msg}", flush=True)  # noqa: E731
    datas = [crkd.load_data(c.data) for c in cfgs]
    runs, how = [], "checkpoint"
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            meta = json.loads(open(os.path.join(d, "meta.json")).read())
            for k, (cfg, data) in enumerate(zip(cfgs, datas)):
                teacher, _ = cache.teacher(cfg, data, who=trial_id, log=log)
                if cache.expected(cfg) != meta["teachers"][k]:
                    log("the cached teacher differs from the one this run started with (retrained "
                        "since); the run continues with the cached one")
                runs.append(crkd.Discover.from_checkpoint(os.path.join(d, f"discover-{k}.pt"), data, teacher))
        log(f"resuming discovery after epoch {runs[0].epoch}")
    else:
        for cfg, data in zip(cfgs, datas):
            teacher, how = cache.teacher(cfg, data, who=trial_id, log=log)
            runs.append(crkd.Discover(cfg, teacher, data))
    teachers = [cache.expected(c) for c in cfgs]
    epochs = cfgs[0].discover.epochs
    if runs[0].epoch >= epochs and runs[0].history:  # finished before a killed driver saved it
        tune.report({**_merge([r.history[-1] for r in runs], prefix), "stage1_cache": how})
        return
    # Every class whose images this run loaded, once: the record that a proxy search saw no novel class.
    classes = ",".join(sorted({n for d in datas for n in d.class_names}))
    key = study.metric if not job else None
    for results in zip(*runs):
        metrics = {**_merge(list(results), prefix), "stage1_cache": how, "data_classes": classes}
        epoch = results[0]["epoch"]
        if epoch == epochs and (job or not prefix):  # the record first: a report may end the process
            final, history = _numbers(results[0]), [_numbers(m) for m in runs[0].history]
            if job:
                _write_record(study, job, {"outcome": "finished", "final": final, "history": history})
            _remember(cfgs[0], study, job or {"id": trial_id}, final, history)
        if key and key not in metrics and epoch != epochs:
            continue  # no evaluation this epoch (discover.eval_every > 1): ASHA needs its metric
        if epoch % study.checkpoint_every and epoch != epochs:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            for k, run in enumerate(runs):
                run.save(os.path.join(d, f"discover-{k}.pt"), teacher=False)
            with open(os.path.join(d, "meta.json"), "w") as f:
                json.dump({"teachers": teachers, "stage1_keys": [crkd.stage1_key(c) for c in cfgs]}, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _merge(results: list[dict], prefix: str) -> dict:
    """One result per fold -> one result: the mean of each number under `prefix`."""
    if not prefix:
        return dict(results[0])
    out = {k: results[0][k] for k in PLAIN if k in results[0]}
    for k in results[0]:
        if k in PLAIN or not isinstance(results[0][k], (int, float)):
            continue
        values = [r[k] for r in results if k in r]
        out[prefix + k] = sum(values) / len(values)
    return out


def _numbers(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _floors(job: dict, study: Study) -> None:
    from ray import tune

    from crkd.floors import floors
    cfg = crkd.Config.from_yaml(job["config"], f"job {job['id']}")
    cfg.threads, cfg.device = threads(study), device(study)
    data = crkd.load_data(cfg.data)
    teacher, _ = Stage1Cache(study.stage1_cache).teacher(cfg, data, who=job["id"], log=lambda m: None)
    values = floors(cfg, data, teacher)
    _write_record(study, job, {"outcome": "finished", "final": values, "history": []})
    tune.report({"epoch": 1, **values})


# --- the run cache -----------------------------------------------------------------------------
# A confirmation run is one configuration, one seed, a fixed number of threads and a device:
# on the CPU its result is bit for bit the same every time. Finished runs are kept in
# <storage>/run_cache/ by the hash of that configuration, so a second study or benchmark that
# confirms the same configuration on the same seed (the baselines, typically) replays the
# record instead of training again; the record says where it came from.

_CODE: list[str] = []


def trainer_code() -> str:
    """A hash of what the trainer computes: every module of the crkd package as its syntax
    tree without docstrings (comments are not in it), and the split lists. Editing prose
    keeps the cached runs; editing code starts new ones."""
    if not _CODE:
        import ast
        import hashlib
        root = os.path.dirname(os.path.abspath(crkd.__file__))
        h = hashlib.sha256()
        for base, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                path = os.path.join(base, name)
                if name.endswith(".py"):
                    with open(path) as f:
                        tree = ast.parse(f.read())
                    for node in ast.walk(tree):
                        body = getattr(node, "body", None)
                        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                            node.body = body[1:] or [ast.Pass()]
                    blob = ast.dump(tree, include_attributes=False).encode()
                elif name.endswith(".txt"):
                    with open(path, "rb") as f:
                        blob = f.read()
                else:
                    continue
                h.update(os.path.relpath(path, root).encode() + b"\0" + blob)
        _CODE.append(h.hexdigest())
    return _CODE[0]


def run_key(cfg: crkd.Config) -> str:
    """The configuration and the code that trains it: a change of either is a new run."""
    import hashlib
    return hashlib.sha256((trainer_code() + "\n" + cfg.to_yaml()).encode()).hexdigest()[:20]


def _cache_path(study: Study, cfg: crkd.Config) -> str:
    return storage.join(study.root, "run_cache", f"{run_key(cfg)}.json")


def _cacheable(cfg: crkd.Config, study: Study) -> bool:
    """CPU runs only: GPU kernels are not bit-reproducible, a cached GPU result would be one
    draw passed off as another."""
    return cfg.device == "cpu"


def _replay(cfg: crkd.Config, study: Study, job: dict) -> bool:
    from ray import tune
    if not _cacheable(cfg, study):
        return False
    text = storage.read_text(_cache_path(study, cfg))
    if not text:
        return False
    cached = json.loads(text)
    _write_record(study, job, {"outcome": "finished", "final": cached["final"], "history": cached["history"],
                               "cached_from": cached["source"]})
    for m in cached["history"]:
        tune.report({**m, "stage1_cache": "run cache", "run_cache": 1})
    return True


def _remember(cfg: crkd.Config, study: Study, job: dict, final: dict, history: list) -> None:
    if _cacheable(cfg, study):
        storage.write_text(_cache_path(study, cfg), json.dumps(
            {"final": final, "history": history, "source": f"{study.name}/{job['id']}"}))


def record_path(study: Study, job_id: str) -> str:
    return study.path("confirm", "records", f"{job_id}.json")


def _write_record(study: Study, job: dict, result: dict) -> None:
    """The durable result of a confirmation job, read by the report (not by MLflow)."""
    keep = {k: v for k, v in job.items() if k != "config"}
    storage.write_text(record_path(study, job["id"]), json.dumps({**keep, **result}))
