"""data.known and the proxy task: what is loaded is what the split says, and a proxy task
never loads an image or a label of a real novel class."""
from __future__ import annotations

import os

import numpy as np
import pytest

from crkd import ConfigError, apply_overrides, load_data, preset
from crkd.data.benchmarks import proxy_hidden


def _digits(*overrides):
    return load_data(apply_overrides(preset("digits"), list(overrides)).data)


def _source_rows():
    """The digits images as the loader splits them, keyed by their bytes, with their true digit."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    return {r.tobytes(): int(c) for r, c in zip(np.concatenate([xtr, xte]), np.concatenate([ytr, yte]))}


def _true_digits(images) -> set[int]:
    rows = _source_rows()
    return {rows[x.squeeze(0).numpy().tobytes()] for x in images.x}


def test_proxy_task_loads_known_classes_only():
    real = _digits()
    assert _true_digits(real.train) == set(range(10))
    folds = []
    for fold in (0, 1):
        d = _digits(f"data.proxy_fold={fold}")
        assert (d.num_known, d.num_novel) == (3, 2)  # digits is 5/5: half of 5 known, rounded down, >= 2
        # nothing of the real novel digits 5-9, in train or test, images or labels
        assert _true_digits(d.train) | _true_digits(d.test) <= {0, 1, 2, 3, 4}
        assert int(d.train_y.max()) < 5 and int(d.test_y.max()) < 5
        hidden = {int(n) for n in d.class_names[3:]}
        assert hidden == _true_digits(d.train.subset(~d.train_lab))
        folds.append(hidden)
    assert not folds[0] & folds[1]  # disjoint folds
    with pytest.raises(ConfigError, match="give 2 disjoint fold"):
        _digits("data.proxy_fold=2")
    assert _digits("data.proxy_fold=0", "data.proxy_seed=1").class_names != _digits("data.proxy_fold=0").class_names


def test_proxy_hidden_share():
    cfg = preset("digits").data
    assert [proxy_hidden(cfg, k, n) for k, n in ((5, 5), (80, 20), (50, 50), (882, 30))] == [2, 16, 25, 29]
    with pytest.raises(ConfigError, match="at least 2 classes to hide and 2 to keep"):
        proxy_hidden(cfg, 3, 3)


def test_known_narrows_a_benchmark():
    d = _digits("data.known=[0, 2, 4]")
    assert (d.num_known, d.num_novel) == (3, 5)
    assert _true_digits(d.train) == {0, 2, 4, 5, 6, 7, 8, 9}  # 1 and 3 are not loaded
    assert d.class_names[:3] == ["0", "2", "4"]
    with pytest.raises(ConfigError, match=r"data.known: class 7 \(7\) is not one of digits's known classes"):
        _digits("data.known=[0, 7]")
    with pytest.raises(ConfigError, match="distinct"):
        _digits("data.known=[0, 0]")


def test_proxy_of_a_folder_tree_never_opens_a_novel_folder(tmp_path, monkeypatch):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("ant", "bee", "cat", "dog", "eel", "fox"):
            os.makedirs(tmp_path / split / c)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    listed = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: listed.append(os.path.basename(str(p))) or real_listdir(p))
    cfg = apply_overrides(preset("folder"), ["data.known=[ant, bee, cat, dog]", "data.proxy_fold=0",
                                             "data.workers=0", "data.load_size=12"]).data
    cfg.root = str(tmp_path)
    d = load_data(cfg)
    assert (d.num_known, d.num_novel) == (2, 2)
    assert set(d.class_names) == {"ant", "bee", "cat", "dog"}
    assert "eel" not in listed and "fox" not in listed
    assert not any("/eel/" in p or "/fox/" in p for p in d.train.paths + d.test.paths)


SHARED_NPZ = os.environ.get("CRKD_CIFAR_NPZ") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                              "cifar10_12k.npz")


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="the CIFAR-10 subset is absent (CRKD_CIFAR_NPZ)")
def test_proxy_on_the_cifar_subset():
    cfg = apply_overrides(preset("npz"), ["data.known=[0, 1, 2, 3, 4]", "data.proxy_fold=0"]).data
    cfg.root = SHARED_NPZ
    d = load_data(cfg)
    assert (d.num_known, d.num_novel, len(d.train), len(d.test)) == (3, 2, 5000, 1000)
    assert set(d.class_names) <= {"airplane", "automobile", "bird", "cat", "deer"}
