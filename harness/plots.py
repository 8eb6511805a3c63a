"""Plots logged as MLflow artifacts: per-trial learning curves, and the study's Optuna
history, parallel-coordinate and parameter-importance plots as HTML.

Interactive plotly HTML when plotly is installed; otherwise matplotlib (which the
full `mlflow` package already depends on) drawn as SVG inside an HTML page. No
plotting package is imported until a plot is made, and none by crkd.
"""
from __future__ import annotations

import html
import io
import os
import warnings


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def learning_curves(hist: dict[str, list[tuple[int, float]]], outdir: str) -> list[str]:
    """`hist`: metric -> [(epoch, value)]. Writes history.csv and curves.png."""
    steps = sorted({s for v in hist.values() for s, _ in v})
    cols = list(hist)
    table = {k: dict(v) for k, v in hist.items()}
    csv = os.path.join(outdir, "history.csv")
    with open(csv, "w") as f:
        f.write(",".join(["epoch", *cols]) + "\n")
        for s in steps:
            f.write(",".join([str(s), *("" if s not in table[k] else repr(table[k][s]) for k in cols)]) + "\n")
    written = [csv]
    try:
        plt = _plt()
    except ImportError:
        return written
    losses = [k for k in cols if k.startswith("loss/")]
    others = [k for k in cols if k not in losses]
    fig, axes = plt.subplots(1, 2 if losses else 1, figsize=(10 if losses else 5.5, 3.6), squeeze=False)
    panels = [(axes[0][0], others, "score")] + ([(axes[0][1], losses, "loss")] if losses else [])
    for ax, keys, label in panels:
        for k in keys:
            xs, ys = zip(*hist[k])
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=k)
        ax.set_xlabel("discovery epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(outdir, "curves.png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return written + [png]


def optuna_plots(study, outdir: str) -> list[str]:
    """history.html, parallel_coordinate.html, param_importances.html for an Optuna study.
    A plot that cannot be drawn (e.g. importances need two completed trials) becomes a
    page that says why."""
    import optuna
    plots = {"history": "plot_optimization_history", "parallel_coordinate": "plot_parallel_coordinate",
             "param_importances": "plot_param_importances"}
    try:
        import plotly  # noqa: F401
        backend = "plotly"
    except ImportError:
        backend = "matplotlib"
    written = []
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" is said in the page
    try:
        for name, fn in plots.items():
            written.append(_optuna_plot(study, name, fn, backend, outdir))
    finally:
        optuna.logging.set_verbosity(level)
    return written


def _optuna_plot(study, name: str, fn: str, backend: str, outdir: str) -> str:
    import optuna
    path = os.path.join(outdir, f"{name}.html")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib plots are "experimental"
            if backend == "plotly":
                getattr(optuna.visualization, fn)(study).write_html(path, include_plotlyjs="cdn")
                return path
            plt = _plt()
            ax = getattr(optuna.visualization.matplotlib, fn)(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", bbox_inches="tight")
            plt.close(fig)
        _page(path, f"{study.study_name}: {name}", buf.getvalue())
    except Exception as e:
        _page(path, f"{study.study_name}: {name}", f"<p>Not drawn: {html.escape(' '.join(str(e).split()))}</p>")
    return path


def _page(path: str, title: str, body: str) -> None:
    with open(path, "w") as f:
        f.write(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"</head><body><h3>{html.escape(title)}</h3>{body}</body></html>")


def study_plots(study) -> str | None:
    """The study's Optuna plots in a new folder (None if there is no Optuna study)."""
    import tempfile

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    ot = optuna.load_study(study_name=study.name, storage=JournalStorage(JournalFileBackend(study.optuna_journal)))
    folder = tempfile.mkdtemp(prefix="crkd-plots-")
    optuna_plots(ot, folder)
    return folder
