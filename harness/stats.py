"""The numbers behind a study's verdict: seed summaries, seed-paired comparisons and the
proxy's rank correlation with the real task. Pure functions of numbers, no I/O.

Conventions (docs/verdicts.md): a paired Student t-interval on the per-seed differences
(scipy.stats.ttest_rel, scipy.stats.t.interval), the Wilcoxon signed-rank test beside it
with the smallest p it can reach at this n, and a power warning below 5 seeds.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Sequence

import numpy as np
from scipy import stats as st

POWER_N = 5          # fewer seed pairs than this: say the test has little power
ALPHA = 0.05
EXACT_RANKS_N = 8    # Spearman: exhaustive permutation p up to 8! = 40320 orderings
_TOL = 1e-12         # float noise: accuracy differences closer than this are equal

NAN = float("nan")


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([NAN if v is None else v for v in values], dtype=float).ravel()
    return x[np.isfinite(x)]


def summary(values: Sequence[float]) -> dict:
    """n, mean, std (ddof=1; nan when n < 2), min, max of the finite values (None and nan
    are dropped, so n counts what was measured)."""
    x = _finite(values)
    n = int(x.size)
    return {"n": n,
            "mean": float(x.mean()) if n else NAN,
            "std": float(x.std(ddof=1)) if n > 1 else NAN,
            "min": float(x.min()) if n else NAN,
            "max": float(x.max()) if n else NAN}


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p of the exact Wilcoxon signed-rank test with n non-zero
    differences: all signs alike has probability 2 / 2**n under the null (0.0625 at n = 5)."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else 1.0


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Seed-paired comparison of a candidate `a` with a baseline `b` (same seeds, same order).

    Pairs with a missing (None/nan) side are dropped; `n` counts the pairs used. The
    verdict is "better"/"worse" when the t-interval of the mean difference a - b excludes
    0, else "no detectable difference". When every difference is the same, the interval
    collapses to that point and the t-test's p is undefined (nan); the note says so.
    """
    a = np.asarray([NAN if v is None else v for v in a], dtype=float)
    b = np.asarray([NAN if v is None else v for v in b], dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    d = np.where(np.abs(d) <= _TOL, 0.0, d)
    n = int(d.size)
    notes = []
    out = {"n": n, "dropped": int((~keep).sum()), "confidence": confidence,
           "mean_diff": float(d.mean()) if n else NAN, "std_diff": float(d.std(ddof=1)) if n > 1 else NAN,
           "ci_low": NAN, "ci_high": NAN, "p_t": NAN,
           "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum()),
           "test": f"paired t-test (scipy.stats.ttest_rel), {confidence:.0%} t-interval on the mean difference"}

    # t-interval and t-test
    if n == 0:
        notes.append("no seed has both values")
    elif n == 1:
        notes.append("n = 1: no interval and no test")
    elif out["std_diff"] <= _TOL:
        out["ci_low"] = out["ci_high"] = out["mean_diff"]
        notes.append("every seed gives the same difference: the interval collapses to it and p (t) is undefined")
    else:
        se = out["std_diff"] / math.sqrt(n)
        lo, hi = st.t.interval(confidence, n - 1, loc=out["mean_diff"], scale=se)
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_t"] = float(st.ttest_rel(a, b).pvalue)

    # Wilcoxon signed-rank on the non-zero differences (Wilcoxon's own zero handling);
    # rounded so that differences equal up to float noise tie as they should.
    nz = np.round(d[d != 0], 12)
    ties = nz.size != np.unique(np.abs(nz)).size
    out["wilcoxon_n"] = int(nz.size)
    out["wilcoxon_min_p"] = wilcoxon_min_p(int(nz.size))
    out["p_wilcoxon"] = NAN
    out["wilcoxon_method"] = ""
    if n >= 2 and nz.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(st.wilcoxon(nz, alternative="two-sided", method="auto").pvalue)
        # what scipy's method="auto" chose: exact without ties up to 50, else an exhaustive
        # permutation up to 13, else the normal approximation
        out["wilcoxon_method"] = ("exact" if not ties and nz.size <= 50 else
                                  "exact permutation (ties)" if nz.size <= 13 else "normal approximation")
    elif n >= 2:
        notes.append("all differences are 0: the Wilcoxon test is undefined")

    if 0 < n < POWER_N:
        notes.append(f"n < {POWER_N}: the test has little power")
    if n >= 2 and nz.size and out["wilcoxon_min_p"] > ALPHA:
        notes.append(f"the Wilcoxon test cannot reach {ALPHA} at n = {nz.size} "
                     f"(smallest two-sided p {out['wilcoxon_min_p']:.3g}): its p is no evidence of no difference")

    lo, hi = out["ci_low"], out["ci_high"]
    out["verdict"] = ("better" if lo > 0 else "worse" if hi < 0 else "no detectable difference") \
        if np.isfinite(lo) and np.isfinite(hi) else "no detectable difference"
    out["note"] = "; ".join(notes)
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of x with each row of y."""
    xc = x - x.mean()
    yc = y - y.mean(axis=-1, keepdims=True)
    return (yc @ xc) / (np.sqrt((yc ** 2).sum(axis=-1)) * np.sqrt((xc ** 2).sum()))


def spearman(x: Sequence[float], y: Sequence[float]) -> dict:
    """Spearman rank correlation of paired x, y (pairs with a missing side dropped).

    rho and p from scipy.stats.spearmanr. Its p uses a t approximation that is too
    optimistic for a handful of points (rho = 1 at n = 4 gives p = 0, while only 2 of the
    24 orderings are that extreme), so `p_exact` adds the exhaustive permutation p for
    n <= 8; `p_used` is that one when present. rho is nan, with a note, when n < 3 or a
    side is constant.
    """
    xa = np.asarray([NAN if v is None else v for v in x], dtype=float)
    ya = np.asarray([NAN if v is None else v for v in y], dtype=float)
    if xa.shape != ya.shape:
        raise ValueError(f"spearman needs pairs: {xa.shape} vs {ya.shape}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = int(xa.size)
    out = {"rho": NAN, "p": NAN, "p_exact": NAN, "p_used": NAN, "n": n, "note": ""}
    if n < 3:
        out["note"] = f"n = {n} < 3: no rank correlation"
        return out
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        out["note"] = "one side is constant: no rank correlation"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = st.spearmanr(xa, ya)
    out["rho"], out["p"] = float(res.statistic), float(res.pvalue)
    out["p_used"] = out["p"]
    if n <= EXACT_RANKS_N:
        rx, ry = st.rankdata(xa), st.rankdata(ya)
        perms = np.array(list(itertools.permutations(range(n))))
        r = _pearson(rx, ry[perms])
        out["p_exact"] = float(np.mean(np.abs(r) >= abs(out["rho"]) - _TOL))
        out["p_used"] = out["p_exact"]
    return out


def proxy_ranks(result: dict, alpha: float = ALPHA) -> tuple[bool, str]:
    """Whether a Spearman result says the proxy ranks configurations like the real task.

    Rule: only a clearly positive rho counts: rho > 0 with two-sided p < alpha (the
    exact permutation p for n <= 8, where n <= 4 can never get there). Otherwise the
    reason is returned: too few points, rho <= 0, or a p that cannot tell rho from 0.
    """
    n, rho, p = result["n"], result["rho"], result["p_used"]
    if not np.isfinite(rho):
        return False, result.get("note") or "no rank correlation"
    if rho <= 0:
        return False, f"rho = {rho:.3g} <= 0"
    if not p < alpha:
        why = f"p = {p:.3g} >= {alpha}"
        if n <= EXACT_RANKS_N and 2 / math.factorial(n) >= alpha:
            why += f"; with n = {n} even a perfect order cannot reach p < {alpha}: too few trials"
        return False, why
    return True, f"rho = {rho:.3g} > 0 with p = {p:.3g} < {alpha}"
