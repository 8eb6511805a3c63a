"""A study's closing report: report.md, confirmation.parquet and four PNG plots, from the
study's settings, its search trials and its confirmation records (plain dicts, loaded by
the caller). No Ray, MLflow or Optuna import; matplotlib and pyarrow are imported when
the files are written.

What the report stands on (docs/verdicts.md): configurations re-trained on fresh seeds,
compared with each baseline seed by seed (statistics in harness/stats.py), the trivial
floors beside every number, the proxy's rank correlation with the real task, and the
protocol named at the top.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from . import stats

DEFAULT_METRIC = "novel/train/acc"
FLOOR_NAMES = {"floor/kmeans_pixels": "k-means on raw pixels",
               "floor/kmeans_teacher": "k-means on the stage-1 (teacher) features"}
ROLE_ORDER = {"candidate": 0, "baseline": 1, "method": 2}
BASE_COLUMNS = ["label", "role", "seed", "job", "trial_id", "score", "outcome", "error"]


# --- numbers as text ----------------------------------------------------------------------

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _f3(v: Any) -> str:
    return f"{v:.3f}" if _finite(v) else "–"


def _fd(v: Any) -> str:
    return f"{v:+.3f}" if _finite(v) else "–"


def _fp(v: Any) -> str:
    return f"{v:.3g}" if _finite(v) else "–"


def _cell(s: dict) -> str:
    if not s["n"]:
        return "–"
    return f"{s['mean']:.3f} ± {_f3(s['std'])} ({s['n']})"


def _seed_key(s: Any) -> tuple:
    return (0, s, "") if _finite(s) else (1, 0, str(s))


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- the records, grouped -----------------------------------------------------------------

def _ok(r: dict) -> bool:
    return r.get("outcome", "finished") == "finished" and bool(r.get("final"))


class _Config:
    """One configuration of the confirmation: its finished runs by seed."""

    def __init__(self, label: str, role: str):
        self.label, self.role = label, role
        self.score = None
        self.trial_id = None
        self.runs: dict[int, dict] = {}
        self.failed: list[dict] = []

    def values(self, metric: str) -> dict[int, float]:
        return {s: r["final"][metric] for s, r in self.runs.items() if _finite(r["final"].get(metric))}

    def summary(self, metric: str) -> dict:
        return stats.summary(list(self.values(metric).values()))


def _configs(records: list[dict], baselines: list[str]) -> list[_Config]:
    by_label: dict[str, _Config] = {}
    for r in records:
        if r.get("kind", "train") != "train" or r.get("role") == "transfer":
            continue
        c = by_label.setdefault(str(r.get("label")), _Config(str(r.get("label")), r.get("role") or "method"))
        if c.score is None and r.get("score") is not None:
            c.score, c.trial_id = r.get("score"), r.get("trial_id")
        if _ok(r):
            c.runs[r.get("seed")] = r  # a rerun of the same seed replaces the earlier one
        else:
            c.failed.append(r)
    order = list(by_label)
    # candidates first (in the caller's order), then baselines in info["baselines"] order, then methods
    return sorted(by_label.values(), key=lambda c: (ROLE_ORDER.get(c.role, 3),
                                                    baselines.index(c.label) if c.label in baselines else len(baselines),
                                                    order.index(c.label)))


def _comparisons(configs: list[_Config], info: dict) -> tuple[list[_Config], list[_Config], str]:
    """(challengers, baselines, note). A study compares candidates with baselines; a
    benchmark compares its methods with those named in info["baselines"], or with its
    first method when none is named."""
    base = [c for c in configs if c.role == "baseline"]
    chal = [c for c in configs if c.role == "candidate"]
    if base or chal:
        return chal, base, ""
    methods = [c for c in configs if c.role == "method"]
    named = set(info.get("baselines") or [])
    base = [c for c in methods if c.label in named]
    note = ""
    if not base and len(methods) > 1:
        base = methods[:1]
        note = f"No baseline is named: every method is compared with the first one, {methods[0].label}."
    return [c for c in methods if c not in base], base, note


def _floors(records: list[dict]) -> dict[str, dict]:
    rows = [r.get("final") or {} for r in records if r.get("kind") == "floors"]
    keys = sorted({k for f in rows for k in f})
    return {k: stats.summary([f.get(k) for f in rows]) for k in keys}


def _below(c: _Config, metric: str, floors: dict[str, dict]) -> list[str]:
    """The floors whose mean this configuration's mean does not clear (mean <= floor)."""
    m = c.summary(metric)["mean"]
    if not _finite(m):
        return []
    return [k for k, s in floors.items() if _finite(s["mean"]) and m <= s["mean"]]


# --- the files ----------------------------------------------------------------------------

def write_report(out_dir: str, info: dict, trials: list[dict], records: list[dict]) -> dict:
    """Write report.md, confirmation.parquet, seeds.png, paired.png, proxy_vs_real.png and
    curves.png into out_dir. Returns {"supported", "beats", "below_floor", "spearman",
    "comparisons", "files"}."""
    os.makedirs(out_dir, exist_ok=True)
    metric = info.get("metric") or DEFAULT_METRIC
    metrics = list(info.get("metrics") or [])
    if metric not in metrics:
        metrics.insert(0, metric)
    configs = _configs(records, list(info.get("baselines") or []))
    floors = _floors(records)
    chal, base, cmp_note = _comparisons(configs, info)

    comparisons = []
    for b in base:
        bv = b.values(metric)
        for c in chal:
            cv = c.values(metric)
            seeds = sorted(set(cv) | set(bv), key=_seed_key)
            res = stats.paired([cv.get(s) for s in seeds], [bv.get(s) for s in seeds])
            comparisons.append({"label": c.label, "baseline": b.label, **res})
    beats = {b.label: [x["label"] for x in comparisons if x["baseline"] == b.label and x["verdict"] == "better"]
             for b in base}
    below = {c.label: _below(c, metric, floors) for c in configs}
    below_floor = [c.label for c in configs if below[c.label]]

    ranked = [c for c in configs if c.summary(metric)["n"]]
    supported = max(ranked, key=lambda c: c.summary(metric)["mean"]).label if ranked else None

    transfer = [r for r in records if r.get("kind", "train") == "train" and r.get("role") == "transfer" and _ok(r)]
    pts = [(r.get("score"), r["final"].get(metric), r) for r in transfer]
    pts = [(x, y, r) for x, y, r in pts if _finite(x) and _finite(y)]
    sp = stats.spearman([x for x, _, _ in pts], [y for _, y, _ in pts])
    sp["ranks"], sp["reason"] = stats.proxy_ranks(sp)

    failed = [r for r in records if r.get("kind", "train") == "train" and not _ok(r)]

    files = []
    md = _markdown(info, metric, metrics, trials, configs, floors, below, comparisons, cmp_note, base, beats,
                   supported, sp, len(transfer), failed, records)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(md)
    files.append(path)
    files.append(_parquet(os.path.join(out_dir, "confirmation.parquet"), records, metrics))
    files += _plots(out_dir, info, metric, configs, floors, comparisons, pts, sp)
    return {"supported": supported, "beats": beats, "below_floor": below_floor, "spearman": sp,
            "comparisons": comparisons, "files": files}


def _markdown(info, metric, metrics, trials, configs, floors, below, comparisons, cmp_note, base, beats,
              supported, sp, n_transfer, failed, records) -> str:
    out: list[str] = []
    add = out.append
    study = info.get("study", "study")
    add(f"# {study}: report\n")
    add(f"**Protocol.** {info.get('protocol') or 'not given'}\n")
    add(f"Confirmation metric: `{metric}`; benchmark: {info.get('benchmark', '?')}; "
        f"at most {info.get('max_epochs', '?')} epochs; created {info.get('created', '?')}.\n")
    if info.get("command"):
        add(f"```\n{info['command']}\n```\n")

    # the search
    add("## Search\n")
    objective = info.get("objective", "none")
    if info.get("kind") == "benchmark" or objective == "none" or not trials:
        add("No search: the configurations below were run as given." if info.get("kind") == "benchmark"
            else "No search trials were recorded.")
        add("")
    else:
        outcomes = {}
        for t in trials:
            outcomes[t.get("outcome", "?")] = outcomes.get(t.get("outcome", "?"), 0) + 1
        add(f"Objective: **{objective}**, selecting on `{info.get('search_metric', '?')}` at each trial's "
            f"last epoch, search seed {info.get('search_seed')}. {len(trials)} trials: "
            + ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items())) + ".\n")
        # The leaderboard's order: finished trials by score, then early-stopped ones (scored at
        # fewer epochs, so not comparable), top 10.
        order = {"finished": 0, "early-stopped": 1}
        scored = sorted((t for t in trials if _finite(t.get("score"))),
                        key=lambda t: (order.get(t.get("outcome"), 2), -t["score"]))
        if scored:
            add(f"Top {min(10, len(scored))} of {len(scored)} scored trials (finished first):\n")
            add("| trial | search score | epochs | outcome | params |")
            add("|---|---|---|---|---|")
            for t in scored[:10]:
                params = ", ".join(f"{k}={_short(v)}" for k, v in (t.get("params") or {}).items())
                add(f"| #{t.get('number', '')} | {_f3(t['score'])} | {t.get('epochs', '')} "
                    f"| {t.get('outcome', '')} | {_md(params)} |")
            add("")
    if info.get("leaky"):
        add(f"**LEAKY**: the search read the novel classes' labels (objective {objective}, "
            f"`{info.get('search_metric', '?')}`), so its scores are optimistic; only the confirmation on "
            "fresh seeds below is evidence.\n")

    # seeds
    add("## Seeds\n")
    seeds = list(info.get("seeds") or [])
    used = sorted({r.get("seed") for r in records if r.get("kind", "train") == "train"
                   and r.get("role") != "transfer" and r.get("seed") is not None}, key=_seed_key)
    ss = info.get("search_seed")
    add(f"Confirmation seeds: {seeds or used}" + (f" (runs found for {used})" if seeds and set(used) != set(seeds)
                                                   else "") + ".")
    if ss is None:
        add("No search seed: nothing to be disjoint from.\n")
    elif ss in seeds or ss in used:
        add(f"**WARNING**: the search seed {ss} is among the confirmation seeds; the confirmation is not fresh.\n")
    else:
        add(f"They are disjoint from the search seed {ss}.\n")

    # the table
    add("## Confirmation\n")
    add(f"Each cell: mean ± std (n seeds) over the confirmation seeds, measured as the protocol above says. Floor flag on `{metric}`: the configuration's "
        "mean does not exceed the floor's mean.\n")
    head = ["configuration", "role", "search score"] + [f"`{m}`" for m in metrics] + ["floor"]
    add("| " + " | ".join(head) + " |")
    add("|" + "---|" * len(head))
    for c in configs:
        flag = ("**below " + ", ".join(_floor_name(k, short=True) for k in below[c.label]) + "**") if below[c.label] else "clears"
        if not c.summary(metric)["n"]:
            flag = "–"
        add("| " + " | ".join([_md(c.label), c.role, _f3(c.score)] + [_cell(c.summary(m)) for m in metrics] + [flag]) + " |")
    add("")
    if floors:
        add("Floors (Hungarian accuracy on the novel training images, mean ± std (n seeds)): "
            + "; ".join(f"{_floor_name(k)} {_cell(s)}" for k, s in floors.items()) + ".\n")
        low = [c for c in configs if below[c.label]]
        if low:
            add("Below a floor on `" + metric + "`: " + "; ".join(
                f"{c.label} ({_f3(c.summary(metric)['mean'])} ≤ " + ", ".join(
                    f"{_floor_name(k, short=True)} {_f3(floors[k]['mean'])}" for k in below[c.label]) + ")"
                for c in low) + ".\n")
        else:
            add(f"Every configuration clears the floors on `{metric}`.\n")
    else:
        add("No floors were computed for this study: the table has no trivial reference.\n")

    # paired comparisons
    add(f"## Paired comparisons on `{metric}`\n")
    if cmp_note:
        add(cmp_note + "\n")
    if comparisons:
        add("Difference = configuration − baseline on the same seed. 95% CI: Student t-interval of the mean "
            "difference (`scipy.stats.t.interval`, n − 1 df); p (t): two-sided paired t-test "
            "(`scipy.stats.ttest_rel`); p (W): two-sided Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, exact "
            "when there are no ties), with the smallest p it can reach at this n. Verdict: better / worse when the "
            "95% interval excludes 0, else no detectable difference.\n")
        add("| configuration | vs | n | mean diff | 95% CI | p (t) | p (W) [min] | wins/ties/losses | verdict |")
        add("|---|---|---|---|---|---|---|---|---|")
        for x in comparisons:
            add(f"| {_md(x['label'])} | {_md(x['baseline'])} | {x['n']} | {_fd(x['mean_diff'])} | "
                f"[{_fd(x['ci_low'])}, {_fd(x['ci_high'])}] | {_fp(x['p_t'])} | "
                f"{_fp(x['p_wilcoxon'])} [{_fp(x['wilcoxon_min_p'])}] | {x['wins']}/{x['ties']}/{x['losses']} | "
                f"{x['verdict']} |")
        add("")
        notes = {}
        for x in comparisons:
            if x["note"]:
                notes.setdefault(x["note"], []).append(f"{x['label']} vs {x['baseline']}")
        for note, who in notes.items():
            add(f"- {', '.join(who)}: {note}.")
        if notes:
            add("")
    else:
        add("No paired comparison: the confirmation has no configuration/baseline pair.\n")

    # the proxy
    add("## Proxy check\n")
    if not n_transfer:
        add("No transfer runs: whether the proxy ranks configurations like the real task was not measured.\n")
    else:
        add(f"Spearman rank correlation between the search score (`{info.get('search_metric', '?')}`) and the real "
            f"`{metric}` of the search's finished trials re-run once on the real split with the search seed: "
            f"rho = {_fp(sp['rho'])}, n = {sp['n']}, p = {_fp(sp['p'])} (scipy.stats.spearmanr)"
            + (f", exact permutation p = {_fp(sp['p_exact'])}" if _finite(sp["p_exact"]) else "") + ".")
        add("Rule: the proxy counts as ranking configurations only when rho > 0 with two-sided p < 0.05 "
            "(the exact permutation p for n ≤ 8, so 4 or fewer trials can never qualify).")
        if sp["ranks"]:
            add(f"The proxy ranks configurations like the real task here ({sp['reason']}).\n")
        else:
            add(f"The proxy cannot rank configurations here ({sp['reason']}).\n")

    # verdict
    add("## Verdict\n")
    if supported is None:
        add("No configuration has a finished run with this metric: the confirmation supports nothing.\n")
    else:
        c = next(c for c in configs if c.label == supported)
        s = c.summary(metric)
        line = (f"The confirmation supports **{supported}** ({c.role}): the highest mean `{metric}`, "
                f"{_f3(s['mean'])} ± {_f3(s['std'])} over {s['n']} seed{'s' if s['n'] != 1 else ''}")
        if below[supported]:
            line += ", though it does not clear the " + ", ".join(_floor_name(k) for k in below[supported]) + " floor"
        add(line + ".")
        if c.role == "candidate":
            ties = [x["baseline"] for x in comparisons if x["label"] == supported and x["verdict"] != "better"]
            if ties:
                add(f"Its lead over {', '.join(ties)} is not detectable on these seeds.")
    for b in base:
        if beats[b.label]:
            add(f"{', '.join(beats[b.label])} beat{'s' if len(beats[b.label]) == 1 else ''} the {b.label} baseline "
                "on these seeds (95% interval above 0).")
        else:
            add(f"No configuration beats the {b.label} baseline on these seeds.")
    add("")

    # failures
    add("## Failed runs\n")
    pending = [r for r in failed if r.get("outcome") == "not run yet"]
    failed = [r for r in failed if r.get("outcome") != "not run yet"]
    if pending:
        add(f"{len(pending)} runs not run yet: the confirmation is unfinished, and this report is partial.\n")
    if failed:
        for r in failed:
            add(f"- {r.get('label')} ({r.get('role')}), seed {r.get('seed')}, job {r.get('job')}: "
                f"{r.get('outcome', 'failed')}: {' '.join(str(r.get('error') or 'no error recorded').split())}")
        add("")
    else:
        add("None.\n")
    return "\n".join(out)


def _floor_name(key: str, short: bool = False) -> str:
    if short:
        return key.split("/", 1)[-1]
    return FLOOR_NAMES.get(key, key)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --- confirmation.parquet -----------------------------------------------------------------

def _column_type(values: list):
    import pyarrow as pa
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_(), values
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64(), values
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64(), [None if v is None else float(v) for v in values]
    # mixed or structured values: their text, so one odd trial cannot break the table
    return pa.string(), [None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                         for v in values]


def _parquet(path: str, records: list[dict], metrics: list[str]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [r for r in records if r.get("kind", "train") == "train"]
    params = list(dict.fromkeys(k for r in rows for k in (r.get("params") or {})))
    finals = list(dict.fromkeys(metrics + sorted({k for r in rows for k in (r.get("final") or {})} - set(metrics))))
    text = lambda v: None if v is None else str(v)  # noqa: E731
    cols = {"label": (pa.string(), [text(r.get("label")) for r in rows]),
            "role": (pa.string(), [text(r.get("role")) for r in rows]),
            "seed": (pa.int64(), [r.get("seed") for r in rows]),
            "job": (pa.string(), [text(r.get("job")) for r in rows]),
            "trial_id": (pa.string(), [text(r.get("trial_id")) for r in rows]),
            "score": (pa.float64(), [float(r["score"]) if _finite(r.get("score")) else None for r in rows]),
            "outcome": (pa.string(), [text(r.get("outcome", "finished")) for r in rows]),
            "error": (pa.string(), [text(r.get("error")) for r in rows])}
    for k in params:
        cols[f"param/{k}"] = _column_type([(r.get("params") or {}).get(k) for r in rows])
    for k in finals:
        cols[k] = (pa.float64(), [float(v) if _finite(v := (r.get("final") or {}).get(k)) else None for r in rows])
    schema = pa.schema([(k, t) for k, (t, _) in cols.items()])
    pq.write_table(pa.Table.from_pydict({k: v for k, (_, v) in cols.items()}, schema=schema), path)
    return path


# --- plots --------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _blank(plt, path: str, title: str, message: str) -> str:
    """A page that says why a plot has nothing to show, so the file always exists."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return _save(plt, fig, path)


def _plots(out_dir, info, metric, configs, floors, comparisons, pts, sp) -> list[str]:
    try:
        plt = _plt()
    except ImportError:
        return []
    return [_seeds_plot(plt, os.path.join(out_dir, "seeds.png"), metric, configs, floors),
            _paired_plot(plt, os.path.join(out_dir, "paired.png"), metric, comparisons),
            _proxy_plot(plt, os.path.join(out_dir, "proxy_vs_real.png"), info, metric, pts, sp),
            _curves_plot(plt, os.path.join(out_dir, "curves.png"), metric, configs)]


def _seeds_plot(plt, path, metric, configs, floors) -> str:
    shown = [c for c in configs if c.values(metric)]
    if not shown:
        return _blank(plt, path, f"{metric} per seed", "no finished confirmation run")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(shown) + 2), 4))
    for i, c in enumerate(shown):
        vals = list(c.values(metric).values())
        k = len(vals)
        xs = [i - 0.15 + 0.3 * j / max(k - 1, 1) for j in range(k)] if k > 1 else [i]
        ax.scatter(xs, vals, s=18, alpha=0.7, color="C0", zorder=3)
        s = c.summary(metric)
        ax.errorbar([i + 0.25], [s["mean"]], yerr=[[s["std"] if _finite(s["std"]) else 0]], fmt="D",
                    color="black", capsize=4, zorder=4)
    for j, (k, s) in enumerate(floors.items()):
        if _finite(s["mean"]):
            ax.axhline(s["mean"], color=f"C{j + 1}", ls="--", lw=1, label=f"{_floor_name(k)} {s['mean']:.3f}")
    ax.set_xticks(range(len(shown)), [c.label for c in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: seeds (dots), mean ± std (diamond)")
    ax.grid(alpha=0.3)
    if floors:
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _paired_plot(plt, path, metric, comparisons) -> str:
    title = f"paired difference on {metric}, 95% t-interval"
    if not comparisons:
        return _blank(plt, path, title, "no configuration/baseline pair")
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(comparisons) + 1.5))
    for i, x in enumerate(comparisons):
        m, lo, hi = x["mean_diff"], x["ci_low"], x["ci_high"]
        if not _finite(m):
            continue
        err = [[m - lo], [hi - m]] if _finite(lo) and _finite(hi) else None
        color = {"better": "C2", "worse": "C3"}.get(x["verdict"], "C0")
        ax.errorbar([m], [i], xerr=err, fmt="o", color=color, capsize=4)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(comparisons)), [f"{x['label']} − {x['baseline']} (n={x['n']})" for x in comparisons],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric}: configuration − baseline")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return _save(plt, fig, path)


def _proxy_plot(plt, path, info, metric, pts, sp) -> str:
    title = "proxy score vs real " + metric
    if len(pts) < 2:
        return _blank(plt, path, title, f"not enough points (n = {len(pts)})")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], color="C0")
    ax.set_xlabel(f"search score ({info.get('search_metric', '?')})")
    ax.set_ylabel(f"{metric} (real split, search seed)")
    ax.set_title(f"Spearman rho = {_fp(sp['rho'])}, n = {sp['n']}, p = {_fp(sp['p_used'])}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _curves_plot(plt, path, metric, configs) -> str:
    import numpy as np
    title = f"{metric} over epochs: mean over seeds ± std"
    curves = []
    for c in configs:
        by_epoch: dict[int, list[float]] = {}
        for r in c.runs.values():
            for h in r.get("history") or []:
                if _finite(h.get(metric)) and h.get("epoch") is not None:
                    by_epoch.setdefault(h["epoch"], []).append(h[metric])
        if by_epoch:
            curves.append((c.label, sorted(by_epoch.items())))
    if not curves:
        return _blank(plt, path, title, "no learning curves recorded")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (label, rows) in enumerate(curves):
        ep = np.array([e for e, _ in rows], dtype=float)
        mean = np.array([np.mean(v) for _, v in rows])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in rows])
        ax.plot(ep, mean, color=f"C{i % 10}", label=label, marker="." if len(ep) < 30 else None)
        ax.fill_between(ep, mean - std, mean + std, color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel("discovery epoch")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
