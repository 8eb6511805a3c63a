"""Hungarian accuracy against brute force; the LR schedule against its closed form."""
import itertools
import math

import numpy as np
import pytest

from crkd.metrics import cluster_acc, split_cluster_acc
from crkd.schedule import lr_at


def brute_acc(y, p, k):
    best = 0.0
    for perm in itertools.permutations(range(k)):
        best = max(best, float(np.mean(np.array(perm)[p] == y)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_cluster_acc_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = 5
    y = rng.integers(0, k, 40)
    p = np.where(rng.random(40) < 0.6, (y + 2) % k, rng.integers(0, k, 40))
    assert cluster_acc(y, p) == pytest.approx(brute_acc(y, p, k))


def test_cluster_acc_hand_case():
    assert cluster_acc([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    assert cluster_acc([0, 0, 1, 1], [0, 1, 1, 1]) == 0.75


def test_split_cluster_acc():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    p = np.array([0, 0, 1, 0, 3, 3, 2, 2])  # one old mistake; novel clusters swapped
    all_, old, new = split_cluster_acc(y, p, y < 2)
    assert (all_, old, new) == (7 / 8, 3 / 4, 1.0)


def test_lr_schedule_closed_form():
    E, W, lr, lr0, lrmin = 50, 10, 0.4, 0.001, 0.001
    for e in range(E):
        if e < W:
            expect = lr0 + e * (lr - lr0) / (W - 1)
        else:
            expect = lrmin + 0.5 * (lr - lrmin) * (1 + math.cos(math.pi * (e - W) / (E - W)))
        assert lr_at(e, E, lr, W, lr0, lrmin) == pytest.approx(expect)
    assert lr_at(W - 1, E, lr, W, lr0, lrmin) == pytest.approx(lr)
    assert lr_at(0, E, lr, 0, lr0, lrmin) == pytest.approx(lr)
