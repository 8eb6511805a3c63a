"""harness.stats against computations written out independently: the t-interval and p
from the t distribution by hand, a 3-seed case done on paper, Wilcoxon's floor at 5
seeds, Spearman as Pearson of ranks, and the degenerate inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from harness import stats


def test_summary():
    s = stats.summary([0.9, 0.8, None, float("nan"), 1.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.9)
    assert s["std"] == pytest.approx(0.1) and s["min"] == 0.8 and s["max"] == 1.0
    one = stats.summary([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"])
    none = stats.summary([])
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["max"])


def test_paired_matches_hand_formula():
    a = [0.912, 0.874, 0.951, 0.903, 0.889, 0.925]
    b = [0.900, 0.881, 0.930, 0.880, 0.872, 0.901]
    d = np.array(a) - np.array(b)
    n = len(d)
    mean, sd = d.sum() / n, math.sqrt(((d - d.sum() / n) ** 2).sum() / (n - 1))
    se = sd / math.sqrt(n)
    half = st.t.ppf(0.975, n - 1) * se
    p = 2 * st.t.sf(abs(mean / se), n - 1)
    r = stats.paired(a, b)
    assert r["n"] == n
    assert r["mean_diff"] == pytest.approx(mean) and r["std_diff"] == pytest.approx(sd)
    assert r["ci_low"] == pytest.approx(mean - half) and r["ci_high"] == pytest.approx(mean + half)
    assert r["p_t"] == pytest.approx(p)
    assert (r["wins"], r["ties"], r["losses"]) == (5, 0, 1)
    assert r["verdict"] == ("better" if mean - half > 0 else "no detectable difference")
    # 90% interval is narrower
    r90 = stats.paired(a, b, confidence=0.90)
    assert r90["ci_high"] - r90["ci_low"] < r["ci_high"] - r["ci_low"]


def test_three_seeds_by_hand():
    # d = 0.02, 0.03, 0.04: mean 0.03, sd 0.01, se 0.01/sqrt(3); t_{0.975,2} = 4.302653;
    # t = 3*sqrt(3) = 5.196152, and with 2 df the two-sided p is 1 - t/sqrt(t^2 + 2).
    r = stats.paired([0.90, 0.92, 0.94], [0.88, 0.89, 0.90])
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert r["mean_diff"] == pytest.approx(0.03)
    assert r["std_diff"] == pytest.approx(0.01)
    assert r["ci_low"] == pytest.approx(0.03 - half, abs=1e-6)
    assert r["ci_high"] == pytest.approx(0.03 + half, abs=1e-6)
    t = 3 * math.sqrt(3)
    assert r["p_t"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-6)
    assert r["verdict"] == "better" and r["wins"] == 3
    assert r["wilcoxon_min_p"] == 0.25 and r["p_wilcoxon"] == pytest.approx(0.25)
    assert "n < 5: the test has little power" in r["note"]
    assert "cannot reach 0.05" in r["note"]


def test_wilcoxon_floor_at_five_seeds():
    assert stats.wilcoxon_min_p(5) == 0.0625
    assert stats.wilcoxon_min_p(6) == 0.03125
    # every seed better: the most extreme outcome, and still p = 0.0625
    r = stats.paired([0.91, 0.93, 0.95, 0.97, 0.99], [0.90, 0.91, 0.92, 0.93, 0.94])
    assert r["p_wilcoxon"] == pytest.approx(0.0625) and r["wilcoxon_method"] == "exact"
    assert r["wilcoxon_min_p"] == 0.0625
    assert "cannot reach 0.05" in r["note"] and "little power" not in r["note"]
    r6 = stats.paired([1, 2, 3, 4, 5, 6.5], [0, 0, 0, 0, 0, 0])
    assert r6["p_wilcoxon"] == pytest.approx(0.03125) and "cannot reach" not in r6["note"]


def test_worse_and_no_difference():
    worse = stats.paired([0.80, 0.81, 0.79, 0.80, 0.82], [0.90, 0.90, 0.91, 0.89, 0.90])
    assert worse["verdict"] == "worse" and worse["ci_high"] < 0 and worse["losses"] == 5
    flat = stats.paired([0.90, 0.88, 0.93, 0.87, 0.91], [0.89, 0.90, 0.91, 0.90, 0.90])
    assert flat["verdict"] == "no detectable difference" and flat["ci_low"] < 0 < flat["ci_high"]


def test_degenerate_cases():
    same = stats.paired([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same["ties"] == 3 and same["mean_diff"] == 0 and same["ci_low"] == same["ci_high"] == 0
    assert math.isnan(same["p_t"]) and math.isnan(same["p_wilcoxon"])
    assert same["verdict"] == "no detectable difference" and "p (t) is undefined" in same["note"]
    const = stats.paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.5, 2.5, 3.5, 4.5])
    assert const["ci_low"] == const["ci_high"] == pytest.approx(0.5) and math.isnan(const["p_t"])
    assert "collapses" in const["note"]
    one = stats.paired([0.9], [0.8])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1) and math.isnan(one["ci_low"])
    assert one["verdict"] == "no detectable difference" and "n = 1" in one["note"]
    gap = stats.paired([0.9, None, 0.92, float("nan")], [0.8, 0.8, 0.85, 0.8])
    assert gap["n"] == 2 and gap["dropped"] == 2
    empty = stats.paired([], [])
    assert empty["n"] == 0 and empty["verdict"] == "no detectable difference"
    with pytest.raises(ValueError):
        stats.paired([1, 2], [1])


def test_spearman_is_pearson_of_ranks():
    x = [0.3, 0.1, 0.4, 0.4, 0.9, 0.2, 0.6]
    y = [0.5, 0.2, 0.6, 0.3, 0.95, 0.25, 0.5]
    rx, ry = st.rankdata(x), st.rankdata(y)
    want = np.corrcoef(rx, ry)[0, 1]
    r = stats.spearman(x, y)
    assert r["n"] == 7 and r["rho"] == pytest.approx(want)
    assert r["p"] == pytest.approx(st.spearmanr(x, y).pvalue)
    assert 0 < r["p_exact"] <= 1 and r["p_used"] == r["p_exact"]


def test_spearman_exact_p_and_degenerate():
    # 4 points in perfect order: only 2 of the 24 orderings are as extreme
    r4 = stats.spearman([1, 2, 3, 4], [10, 20, 30, 40])
    assert r4["rho"] == pytest.approx(1) and r4["p_exact"] == pytest.approx(2 / 24)
    ok, why = stats.proxy_ranks(r4)
    assert not ok and "too few" in why
    r5 = stats.spearman([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5])
    assert stats.proxy_ranks(r5)[0]
    neg = stats.spearman([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 1, 2])
    ok, why = stats.proxy_ranks(neg)
    assert not ok and "<= 0" in why
    two = stats.spearman([1, 2], [1, 2])
    assert two["n"] == 2 and math.isnan(two["rho"]) and "< 3" in two["note"]
    assert not stats.proxy_ranks(two)[0]
    flat = stats.spearman([1, 2, 3], [0.5, 0.5, 0.5])
    assert math.isnan(flat["rho"]) and "constant" in flat["note"]
    gaps = stats.spearman([1, 2, None, 4], [1, 2, 3, float("nan")])
    assert gaps["n"] == 2
    big = stats.spearman(list(range(12)), list(range(12)))
    assert math.isnan(big["p_exact"]) and big["p_used"] == big["p"]
