"""harness.reporting on synthetic studies with known answers: a candidate that beats both
baselines by a set margin, a baseline under the raw-pixel floor, a failed run, transfer
runs in a known rank order; then the variants (leaky, nobody wins, one seed, benchmark)."""
from __future__ import annotations


import pytest

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("matplotlib")

from harness.reporting import write_report  # noqa: E402

SEEDS = [1, 2, 3, 4, 5]
METRICS = ["novel/train/acc", "novel/test/acc", "test/all/acc"]
PNGS = ["seeds.png", "paired.png", "proxy_vs_real.png", "curves.png"]
UNO = [0.90, 0.88, 0.91, 0.89, 0.92]
CAND_GAIN = [0.02, 0.03, 0.04, 0.03, 0.03]     # mean +0.030, all positive
PAPER_GAIN = [-0.10, -0.09, -0.11, -0.10, -0.10]  # well under the floors


def _info(**kw) -> dict:
    info = {"study": "toy", "kind": "study", "benchmark": "digits", "objective": "proxy",
            "search_metric": "proxy/novel/train/acc", "leaky": False, "metric": "novel/train/acc",
            "metrics": METRICS, "search_seed": 0, "seeds": SEEDS, "max_epochs": 3,
            "baselines": ["paper defaults", "uno"],
            "protocol": "final epoch of each run; novel/train/acc: Hungarian accuracy on the unlabeled training images",
            "command": "crkd-tune run toy", "created": "2025-01-01T00:00:00"}
    info.update(kw)
    return info


def _run(label, role, seed, acc, params=None, score=None, trial_id=None, **extra) -> dict:
    final = {"novel/train/acc": acc, "novel/test/acc": acc - 0.01, "test/all/acc": acc - 0.02}
    return {"job": f"{label}-{seed}", "kind": "train", "label": label, "role": role, "seed": seed,
            "params": params or {"lr": 0.1, "opt": "sgd"}, "final": final,
            "history": [{"epoch": e, "novel/train/acc": acc - 0.05 * (3 - e)} for e in (1, 2, 3)],
            "trial_id": trial_id, "score": score, "outcome": "finished", **extra}


def _records(cand_gain=CAND_GAIN, seeds=SEEDS, transfer_order=+1, fail=True) -> list[dict]:
    recs = []
    for i, s in enumerate(seeds):
        recs.append(_run("rank1 #7", "candidate", s, UNO[i] + cand_gain[i], {"lr": 0.05, "opt": "adam"}, 0.97, "t7"))
        recs.append(_run("paper defaults", "baseline", s, UNO[i] + PAPER_GAIN[i]))
        recs.append(_run("uno", "baseline", s, UNO[i], {"lr": 0.1, "opt": "sgd", "uno": True}))
        recs.append({"kind": "floors", "seed": s, "final": {"floor/kmeans_pixels": 0.85 + 0.002 * i,
                                                           "floor/kmeans_teacher": 0.83 + 0.001 * i}})
    if fail:  # the last paper-defaults run failed
        last = next(r for r in reversed(recs) if r.get("label") == "paper defaults")
        last.update(outcome="failed", final={}, history=[], error="RuntimeError: CUDA out of memory")
    # transfer runs: search score and real accuracy in the same (or reversed) order
    for k in range(6):
        real = 0.80 + 0.02 * k if transfer_order > 0 else 0.90 - 0.02 * k
        recs.append(_run(f"trial {k}", "transfer", 0, real, {"lr": 0.01 * (k + 1), "opt": "sgd"},
                         0.70 + 0.03 * k, f"t{k}"))
    return recs


def _trials() -> list[dict]:
    return [{"trial_id": f"t{k}", "number": k, "params": {"lr": 0.01 * (k + 1)}, "score": 0.70 + 0.03 * k,
             "epochs": 3, "outcome": "finished" if k < 6 else "early-stopped"} for k in range(8)]


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "report"
    res = write_report(str(out), _info(), _trials(), _records())
    return out, res, (out / "report.md").read_text()


def test_verdicts_and_numbers(study):
    out, res, md = study
    assert res["supported"] == "rank1 #7"
    assert res["beats"] == {"paper defaults": ["rank1 #7"], "uno": ["rank1 #7"]}
    assert "rank1 #7 beats the uno baseline" in md
    assert "No configuration beats" not in md
    assert "The confirmation supports **rank1 #7**" in md
    assert "+0.030" in md                         # candidate - uno, mean of CAND_GAIN
    assert "0.0625" in md and "cannot reach 0.05" in md  # Wilcoxon's floor at 5 seeds
    assert "scipy.stats.ttest_rel" in md and "scipy.stats.t.interval" in md
    assert "| better |" in md
    assert "final epoch of each run" in md        # the protocol
    assert "disjoint from the search seed 0" in md
    # candidate vs uno: 5 pairs, all wins
    x = next(c for c in res["comparisons"] if c["label"] == "rank1 #7" and c["baseline"] == "uno")
    assert x["n"] == 5 and (x["wins"], x["ties"], x["losses"]) == (5, 0, 0)
    assert x["mean_diff"] == pytest.approx(0.03)
    # the failed seed is dropped from the pairing and named with its error
    y = next(c for c in res["comparisons"] if c["baseline"] == "paper defaults")
    assert y["n"] == 4 and "n < 5: the test has little power" in md
    assert "CUDA out of memory" in md and "seed 5" in md


def test_floor_flag(study):
    out, res, md = study
    assert res["below_floor"] == ["paper defaults"]
    row = next(line for line in md.splitlines() if line.startswith("| paper defaults |"))
    assert "below" in row
    assert "Below a floor on `novel/train/acc`: paper defaults" in md
    assert "k-means on raw pixels 0.854 ± " in md  # floor mean over the 5 seeds
    uno_row = next(line for line in md.splitlines() if line.startswith("| uno |"))
    assert "clears" in uno_row and "0.900 ± 0.016 (5)" in uno_row


def test_proxy_ranks(study):
    out, res, md = study
    assert res["spearman"]["rho"] == pytest.approx(1.0) and res["spearman"]["n"] == 6
    assert res["spearman"]["ranks"]
    assert "ranks configurations like the real task" in md
    assert "cannot rank" not in md


def test_parquet(study):
    out, res, md = study
    t = pq.read_table(out / "confirmation.parquet")
    assert t.num_rows == 3 * 5 + 6
    cols = set(t.column_names)
    assert {"label", "role", "seed", "job", "trial_id", "score", "outcome"} <= cols
    assert {"param/lr", "param/opt", "param/uno"} <= cols
    assert set(METRICS) <= cols
    rows = t.to_pylist()
    assert sum(r["role"] == "transfer" for r in rows) == 6
    assert sum(r["outcome"] == "failed" for r in rows) == 1
    cand = [r for r in rows if r["label"] == "rank1 #7"]
    assert len(cand) == 5 and all(r["param/lr"] == 0.05 and r["trial_id"] == "t7" for r in cand)
    assert str(out / "confirmation.parquet") in res["files"]


def test_plots(study):
    out, res, md = study
    for name in PNGS:
        p = out / name
        assert p.exists() and p.stat().st_size > 1000, name
        assert str(p) in res["files"]


def test_leaky_marker(tmp_path, study):
    _, _, md = study
    assert "LEAKY" not in md
    write_report(str(tmp_path), _info(objective="novel", search_metric="novel/train/acc", leaky=True),
                 _trials(), _records())
    md = (tmp_path / "report.md").read_text()
    assert "**LEAKY**" in md and "optimistic" in md


def test_nobody_beats_and_proxy_fails(tmp_path):
    gain = [0.01, -0.02, 0.015, -0.01, 0.0]
    res = write_report(str(tmp_path), _info(), _trials(), _records(cand_gain=gain, transfer_order=-1))
    md = (tmp_path / "report.md").read_text()
    assert res["beats"]["uno"] == []
    assert "No configuration beats the uno baseline on these seeds." in md
    assert "no detectable difference" in md
    assert "The proxy cannot rank configurations here" in md and "<= 0" in md
    assert not res["spearman"]["ranks"]


def test_one_seed(tmp_path):
    res = write_report(str(tmp_path), _info(seeds=[1]), _trials(), _records(seeds=[1], fail=False))
    md = (tmp_path / "report.md").read_text()
    assert res["supported"] == "rank1 #7"
    assert res["beats"]["uno"] == []                  # no interval from one seed
    assert "n = 1: no interval and no test" in md
    assert "No configuration beats the uno baseline" in md
    for name in PNGS:
        assert (tmp_path / name).stat().st_size > 0


def test_benchmark_without_trials_or_transfer(tmp_path):
    recs = []
    for i, s in enumerate(SEEDS):
        recs.append(_run("uno", "method", s, UNO[i]))
        crkd = _run("crkd", "method", s, UNO[i] + CAND_GAIN[i])
        if i == 0:
            del crkd["final"]["test/all/acc"]       # a configuration missing a metric on one seed
        recs.append(crkd)
    res = write_report(str(tmp_path), _info(kind="benchmark", objective="none", search_seed=None,
                                            baselines=["uno"]), [], recs)
    md = (tmp_path / "report.md").read_text()
    assert "No search" in md and "No transfer runs" in md and "No floors" in md
    assert res["beats"] == {"uno": ["crkd"]}
    row = next(line for line in md.splitlines() if line.startswith("| crkd |"))
    assert "(4)" in row                                # test/all/acc over 4 seeds
    assert res["spearman"]["n"] == 0 and not res["spearman"]["ranks"]
    assert (tmp_path / "proxy_vs_real.png").stat().st_size > 0
    assert pq.read_table(tmp_path / "confirmation.parquet").num_rows == 10


def test_empty_records(tmp_path):
    res = write_report(str(tmp_path), _info(), [], [])
    assert res["supported"] is None and res["below_floor"] == []
    assert "supports nothing" in (tmp_path / "report.md").read_text()
    assert pq.read_table(tmp_path / "confirmation.parquet").num_rows == 0
