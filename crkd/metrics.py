"""Evaluation metrics (docs/methods.md, "Evaluation"): pure functions of label arrays."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _as_int(a) -> np.ndarray:
    return np.asarray(a).astype(np.int64).ravel()


def hungarian_map(y_true, y_pred) -> dict[int, int]:
    """The one-to-one map predicted cluster -> true class that maximises agreement."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    classes, clusters = np.unique(y_true), np.unique(y_pred)
    counts = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(clusters, y_pred), np.searchsorted(classes, y_true)), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols)}


def cluster_acc(y_true, y_pred) -> float:
    """Clustering accuracy: best one-to-one matching of clusters to classes (Hungarian)."""
    y_true, y_pred = _as_int(y_true), _as_int(y_pred)
    if y_true.size == 0:
        return float("nan")
    m = hungarian_map(y_true, y_pred)
    mapped = np.array([m.get(int(p), -1) for p in y_pred])
    return float((mapped == y_true).mean())


def split_cluster_acc(y_true, y_pred, old) -> tuple[float, float, float]:
    """Task-agnostic accuracy (GCD protocol): one matching over all classes, then
    accuracy on all samples, on those of known ("old") classes and on novel ones."""
    y_true, y_pred, old = _as_int(y_true), _as_int(y_pred), np.asarray(old, dtype=bool).ravel()
    m = hungarian_map(y_true, y_pred)
    hit = np.array([m.get(int(p), -1) for p in y_pred]) == y_true
    mean = lambda h: float(h.mean()) if h.size else float("nan")
    return mean(hit), mean(hit[old]), mean(hit[~old])


def nmi(y_true, y_pred) -> float:
    return float(normalized_mutual_info_score(_as_int(y_true), _as_int(y_pred)))


def ari(y_true, y_pred) -> float:
    return float(adjusted_rand_score(_as_int(y_true), _as_int(y_pred)))
