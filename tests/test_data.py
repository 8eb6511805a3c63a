"""Benchmarks load by name, with remapped labels, and fail with one clear line."""
import os

import numpy as np
import pytest
import torch

from crkd import ConfigError, DataError, load_data, preset

SHARED_NPZ = os.environ.get("CRKD_CIFAR_NPZ") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                              "cifar10_12k.npz")


def test_digits():
    d = load_data(preset("digits").data)
    assert (d.num_known, d.num_novel, d.channels, d.size) == (5, 5, 1, 8)
    assert d.train.x.dtype == torch.uint8
    assert torch.equal(d.train_lab, d.train_y < 5)
    assert set(d.test_y.tolist()) == set(range(10))
    x, idx = next(d.train.batches(32, shuffle=True))
    assert x.shape == (32, 1, 8, 8) and torch.equal(x, d.train.x[idx])


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="the CIFAR-10 subset is absent (CRKD_CIFAR_NPZ)")
def test_shared_cifar_npz_by_index_and_name():
    c = preset("npz")
    c.data.root, c.data.known = SHARED_NPZ, [0, 1, 2, 3, 4]
    d = load_data(c.data)
    assert (d.num_known, d.num_novel, d.channels, d.size, len(d.train)) == (5, 5, 3, 32, 10000)
    assert d.class_names[:5] == ["airplane", "automobile", "bird", "cat", "deer"]
    c.data.known = ["truck", "ship"]
    d2 = load_data(c.data)
    assert d2.num_known == 2 and d2.class_names[:2] == ["truck", "ship"]
    raw = np.load(SHARED_NPZ)
    assert int(d2.train_lab.sum()) == int(np.isin(raw["y_train"], [9, 8]).sum())
    c.data.known = ["horse", "unicorn"]
    with pytest.raises(ConfigError, match="'unicorn' is not in"):
        load_data(c.data)


def test_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog", "fox", "owl"):
            os.makedirs(tmp_path / split / c)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    cfg = preset("folder").data
    cfg.root, cfg.known, cfg.load_size, cfg.workers = str(tmp_path), ["owl", "cat"], 16, 0
    d = load_data(cfg)
    assert (d.num_known, d.num_novel, len(d.train)) == (2, 2, 12)
    assert d.class_names == ["owl", "cat", "dog", "fox"]
    x, idx = next(d.train.batches(5, shuffle=True))
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.uint8


@pytest.mark.parametrize("bench,root,needle", [
    ("cifar10-5-5", "/nonexistent", "cifar10 not found: put cifar-10-batches-py/"),
    ("cifar100-80-20", "/nonexistent", "cifar-100-python/"),
    ("imagenet-a", "/nonexistent", "imagenet not found"),
    ("npz", "", "npz benchmark needs --data-root"),
    ("folder", "/nonexistent", "folder benchmark needs --data-root"),
])
def test_missing_data_says_where(bench, root, needle):
    cfg = preset(bench).data
    cfg.root = root
    with pytest.raises(DataError, match=needle) as e:
        load_data(cfg)
    assert "\n" not in str(e.value)


def test_class_count_mismatch():
    cfg = preset("digits").data
    cfg.num_known = 6
    with pytest.raises(ConfigError, match="data.num_known=6 but digits has 5"):
        load_data(cfg)
