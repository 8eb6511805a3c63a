"""Plots of a whole search, from its Optuna journal: PNG files (matplotlib, which the full
`mlflow` package already depends on), so they render offline anywhere.

Every trial counts, pruned (early-stopped) ones included: Optuna's own plots draw only
the trials that reached the last epoch, which after ASHA is a small minority.

    history.png         each trial's last score by trial number (finished, early-stopped,
                        failed marked apart) and the best finished score so far
    intermediate.png    learning curves: every trial's score at each epoch
    parallel.png        parallel coordinates of the parameters (log axes for log-scale ones),
                        coloured by the last score
    importances.png     fANOVA importances from every trial with a score (pruned ones at their
                        last epoch's score: the title says how many of each)
"""
from __future__ import annotations

import math
import os


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _rows(study) -> list[dict]:
    from optuna.trial import TrialState
    out = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        last = t.value if t.state == TrialState.COMPLETE else (t.intermediate_values[steps[-1]] if steps else None)
        kind = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "early-stopped",
                TrialState.FAIL: "failed"}.get(t.state, "running")
        out.append({"number": t.number, "kind": kind, "last": last, "epochs": steps[-1] if steps else 0,
                    "curve": [(s, t.intermediate_values[s]) for s in steps], "params": t.params,
                    "distributions": t.distributions})
    return out


STYLE = {"finished": dict(marker="o", color="C0"), "early-stopped": dict(marker="v", color="C1", alpha=0.7),
         "failed": dict(marker="x", color="C3"), "running": dict(marker=".", color="grey")}


def history(rows: list[dict], metric: str, mode: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    low = min((r["last"] for r in rows if r["last"] is not None), default=0.0)
    for kind, style in STYLE.items():
        pts = [(r["number"], r["last"] if r["last"] is not None else low) for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter(*zip(*pts), label=f"{kind} ({len(pts)})", **style)
    best, line = None, []
    for r in sorted(rows, key=lambda r: r["number"]):
        if r["kind"] == "finished" and r["last"] is not None:
            best = r["last"] if best is None else (max if mode == "max" else min)(best, r["last"])
        line.append((r["number"], best))
    pts = [(n, b) for n, b in line if b is not None]
    if pts:
        ax.step(*zip(*pts), where="post", color="C2", label="best finished so far")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=metric, title=f"search history: {len(rows)} trials (early-stopped at their last epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def intermediate(rows: list[dict], metric: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for r in rows:
        if not r["curve"]:
            continue
        xs, ys = zip(*r["curve"])
        finished = r["kind"] == "finished"
        ax.plot(xs, ys, color="C0" if finished else "grey", alpha=0.9 if finished else 0.5, lw=1.5 if finished else 1)
        ax.annotate(f"#{r['number']}", (xs[-1], ys[-1]), fontsize=7, alpha=0.8)
    ax.set(xlabel="discovery epoch", ylabel=metric,
           title=f"learning curves of all {sum(bool(r['curve']) for r in rows)} trials (grey: early-stopped or failed)")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def parallel(rows: list[dict], metric: str, path: str) -> None:
    plt = _plt()
    names = sorted({n for r in rows for n in r["params"]})
    scored = [r for r in rows if r["last"] is not None and r["params"]]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * (len(names) + 1)), 4.5))
    if not names or not scored:
        ax.text(0.5, 0.5, "no scored trial yet", ha="center")
        _save(plt, fig, path, tight=False)
        return

    def position(name, value, dist):
        """Where a value sits on its axis, 0..1: log axes for log-scale parameters, choices by index."""
        if hasattr(dist, "choices"):
            return dist.choices.index(value) / max(1, len(dist.choices) - 1)
        lo, hi = dist.low, dist.high
        if getattr(dist, "log", False):
            return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (value - lo) / (hi - lo) if hi > lo else 0.5

    values = [r["last"] for r in scored]
    vmin, vmax = min(values), max(values)
    cmap = plt.get_cmap("viridis")
    for r in scored:
        dist = r["distributions"]
        ys = [position(n, r["params"][n], dist[n]) for n in names if n in r["params"]] + \
             [(r["last"] - vmin) / (vmax - vmin) if vmax > vmin else 0.5]
        ax.plot(range(len(ys)), ys, color=cmap((r["last"] - vmin) / (vmax - vmin) if vmax > vmin else 0.5),
                ls="-" if r["kind"] == "finished" else "--", alpha=0.8)
    dists = {n: next(r["distributions"][n] for r in scored if n in r["distributions"]) for n in names}
    labels = []
    for n in names:
        d = dists[n]
        if hasattr(d, "choices"):
            labels.append(f"{n}\n{' / '.join(map(str, d.choices))}")
        else:
            labels.append(f"{n}\n[{d.low:g}, {d.high:g}]" + (" log" if getattr(d, "log", False) else ""))
    labels.append(f"{metric}\n[{vmin:.3g}, {vmax:.3g}]")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks([])
    for x in range(len(labels)):
        ax.axvline(x, color="black", lw=0.5)
    ax.set_title(f"parallel coordinates: {len(scored)} trials (dashed: early-stopped, at their last epoch)")
    _save(plt, fig, path)


def importances(study, rows: list[dict], path: str) -> None:
    """fANOVA on a copy of the study where each scored trial counts with its last score."""
    import optuna
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    scored = [r for r in rows if r["last"] is not None and r["params"]]
    finished = sum(r["kind"] == "finished" for r in scored)
    try:
        copy = optuna.create_study(direction=study.direction)
        for r in scored:
            copy.add_trial(optuna.trial.create_trial(params=r["params"], distributions=r["distributions"],
                                                     value=r["last"]))
        imp = optuna.importance.get_param_importances(copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="C0")
        ax.set_xlabel("fANOVA importance")
    except Exception as e:  # too few trials, or no variation
        ax.text(0.02, 0.5, f"not computed: {' '.join(str(e).split())[:90]}", fontsize=8)
        ax.set_axis_off()
    ax.set_title(f"importances from {len(scored)} trials ({finished} finished, {len(scored) - finished} "
                 f"early-stopped at their last epoch's score)", fontsize=9)
    _save(plt, fig, path)


def study_plots(study, folder: str) -> None:
    """Draw the search's four plots, from its Optuna journal, into `folder`."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        ot = optuna.load_study(study_name=study.name, storage=JournalStorage(JournalFileBackend(study.optuna_journal)))
        rows = _rows(ot)
        history(rows, study.metric, study.mode, os.path.join(folder, "history.png"))
        intermediate(rows, study.metric, os.path.join(folder, "intermediate.png"))
        parallel(rows, study.metric, os.path.join(folder, "parallel.png"))
        importances(ot, rows, os.path.join(folder, "importances.png"))
    finally:
        optuna.logging.set_verbosity(level)


def _save(plt, fig, path: str, tight: bool = True) -> None:
    """Write the figure as a PNG (static: the plots load offline) and free it."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
