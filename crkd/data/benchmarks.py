"""NCD benchmarks by name: labeled known classes, unlabeled novel classes, a test set.

Labels are remapped so known classes are 0..C_l-1 and novel ones C_l..C_l+C_u-1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .images import FolderImages, TensorImages

SPLITS = os.path.join(os.path.dirname(__file__), "splits")


@dataclass
class NCDData:
    name: str
    train: TensorImages | FolderImages
    train_y: Tensor          # [N] remapped labels (novel labels only for evaluation)
    train_lab: Tensor        # [N] bool: labeled (known class) or not
    test: TensorImages | FolderImages
    test_y: Tensor
    num_known: int
    num_novel: int
    class_names: list[str] = field(default_factory=list)  # in remapped order

    @property
    def channels(self) -> int:
        return self.train.shape[0]

    @property
    def size(self) -> int:
        return self.train.shape[-1]


def _tensor_data(name, x_train, y_train, x_test, y_test, known: list[int], novel: list[int],
                 names: list[str]) -> NCDData:
    """Keep the images of `known` + `novel` classes only (given in source label ids) and
    remap them to 0..C_l-1 (known) and C_l.. (novel), in the order given."""
    order = list(known) + list(novel)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    lut = np.full(max(int(y_train.max()), int(y_test.max()), *order) + 1, -1, dtype=np.int64)
    lut[order] = np.arange(len(order))
    keep_tr, keep_te = lut[y_train] >= 0, lut[y_test] >= 0
    # Filtered before any tensor exists: a dropped class (a real novel class during a proxy
    # search, a known class left out of data.known) never reaches the trainer.
    x_train, x_test = np.asarray(x_train)[keep_tr], np.asarray(x_test)[keep_te]
    ytr, yte = torch.from_numpy(lut[y_train[keep_tr]]), torch.from_numpy(lut[y_test[keep_te]])
    new_names = [names[c] if c < len(names) else str(c) for c in order]
    return NCDData(name, TensorImages(_nchw(x_train)), ytr, ytr < len(known), TensorImages(_nchw(x_test)),
                   yte, len(known), len(novel), new_names)


def _nchw(x: np.ndarray) -> Tensor:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {x.dtype}; convert them to 0..255 first")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"images must be [N, H, W] or [N, H, W, C], got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x))


def _resolve_known(known: list, names: list[str], allowed: list[int], what: str) -> list[int]:
    """data.known (indices or names) as class ids; each must be in `allowed`."""
    out = []
    for k in known:
        if isinstance(k, str) and not k.isdigit():
            if k not in names:
                raise ConfigError(f"data.known: class name {k!r} is not in {what}; names are {names[:20]}")
            k = names.index(k)
        k = int(k)
        if k not in allowed:
            shown = ", ".join(names[c] if c < len(names) else str(c) for c in allowed[:12])
            raise ConfigError(f"data.known: class {k} ({names[k] if k < len(names) else k}) is not one of "
                              f"{what}'s known classes ({shown}{', ...' if len(allowed) > 12 else ''})")
        out.append(k)
    if len(set(out)) != len(out):
        raise ConfigError(f"data.known must name distinct classes, got {known}")
    return out


def split_classes(cfg, names: list[str], known: list[int], novel: list[int] | None,
                  what: str) -> tuple[list[int], list[int]]:
    """The (known, novel) class ids a run loads, from the benchmark's own split.

    `known`/`novel`: the benchmark's split (novel None: every class not known, custom data).
    data.known narrows a fixed benchmark's known classes (or picks them, for custom data).
    data.proxy_fold >= 0 builds the proxy task instead: the real novel classes are not
    loaded at all, and fold k of a seeded partition of the known classes plays novel."""
    all_classes = list(range(len(names)))
    if cfg.known:
        allowed = known if novel is not None else all_classes
        known = _resolve_known(cfg.known, names, allowed, what)
    if novel is None:
        novel = [c for c in all_classes if c not in known]
    if len(known) < 1 or not novel:
        raise ConfigError(f"data.known must leave at least one known and one novel class, got {cfg.known}")
    if cfg.proxy_fold < 0:
        return known, novel
    hidden = proxy_hidden(cfg, len(known), len(novel))
    folds = len(known) // hidden
    if cfg.proxy_fold >= folds:
        raise ConfigError(f"data.proxy_fold={cfg.proxy_fold}: {len(known)} known classes give {folds} disjoint "
                          f"fold(s) of {hidden} hidden classes; use a fold below {folds}")
    perm = np.random.default_rng(cfg.proxy_seed).permutation(len(known))
    out = set(perm[cfg.proxy_fold * hidden:(cfg.proxy_fold + 1) * hidden].tolist())
    return [c for i, c in enumerate(known) if i not in out], [c for i, c in enumerate(known) if i in out]


def proxy_hidden(cfg, num_known: int, num_novel: int) -> int:
    """How many known classes a proxy task hides: data.proxy_hidden, or the real split's novel
    share of them (half rounds down), at least 2, leaving at least 2 to train stage 1 on."""
    share = num_known * num_novel / (num_known + num_novel)
    hidden = cfg.proxy_hidden or max(2, int(np.ceil(share - 0.5)))
    if num_known - hidden < 2:
        raise ConfigError(f"a proxy task needs at least 2 classes to hide and 2 to keep; the split has "
                          f"{num_known} known classes (data.proxy_hidden={hidden})")
    return hidden


def load_digits_ncd(cfg) -> NCDData:
    """scikit-learn's bundled 8x8 digits: classes 0-4 known, 5-9 novel, fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target, random_state=0)
    names = [str(i) for i in range(10)]
    known, novel = split_classes(cfg, names, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], "digits")
    return _tensor_data("digits", xtr, ytr, xte, yte, known, novel, names)


def _cifar(cfg, which: str, n_known: int) -> NCDData:
    from torchvision import datasets
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[which]
    root = cfg.root or "data"
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[which]
    archive = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[which]
    if not cfg.download and not os.path.isdir(os.path.join(root, folder)):
        raise DataError(f"{which} not found: put {folder}/ (unpacked from {archive}) under "
                        f"{os.path.abspath(root)}, or add --download on a machine with network")
    try:
        tr = cls(root, train=True, download=cfg.download)
        te = cls(root, train=False, download=cfg.download)
    except RuntimeError as e:
        raise DataError(f"{which} under {os.path.abspath(root)} is unreadable ({e}); re-extract {archive}") from None
    n = len(tr.classes)
    known, novel = split_classes(cfg, list(tr.classes), list(range(n_known)), list(range(n_known, n)), which)
    return _tensor_data(f"{which}-{n_known}", tr.data, tr.targets, te.data, te.targets, known, novel,
                        list(tr.classes))


def _read_list(name: str) -> list[str]:
    with open(os.path.join(SPLITS, name)) as f:
        return [ln.strip() for ln in f if ln.strip()]


def _folder_files(root: str, classes: list[str]) -> tuple[list[str], list[int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS
    paths, labels = [], []
    for label, c in enumerate(classes):
        d = os.path.join(root, c)
        for f in sorted(os.listdir(d)):
            if f.lower().endswith(IMG_EXTENSIONS):
                paths.append(os.path.join(d, f))
                labels.append(label)
    return paths, labels


def _folder_data(name, cfg, train_dir, test_dir, known: list[str], novel: list[str]) -> NCDData:
    for d in (train_dir, test_dir):
        for c in known + novel:
            if not os.path.isdir(os.path.join(d, c)):
                raise DataError(f"{name}: class folder {os.path.join(d, c)} is missing; "
                                f"the tree must be ROOT/{{train,val}}/<class>/<images>")
    classes = known + novel
    size = cfg.load_size or 256
    ptr, ytr = _folder_files(train_dir, classes)
    pte, yte = _folder_files(test_dir, classes)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    return NCDData(name, FolderImages(ptr, size, cfg.workers), ytr, ytr < len(known),
                   FolderImages(pte, size, cfg.workers), yte, len(known), len(novel), classes)


def _imagenet(cfg, subset: str) -> NCDData:
    """UNO's ImageNet split: 882 known classes, 30 novel (subset a, b or c); test on val/."""
    root = cfg.root or "data/imagenet"
    for sub in ("train", "val"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise DataError(f"imagenet not found: expected {os.path.abspath(os.path.join(root, sub))}/<wnid>/ "
                            f"folders (ILSVRC-2012 train and val, val sorted into class folders); set --data-root")
    known, novel = _read_list("imagenet_882.txt"), _read_list(f"imagenet_{subset}.txt")
    names = known + novel
    k, n = split_classes(cfg, names, list(range(len(known))), list(range(len(known), len(names))), "imagenet")
    return _folder_data(f"imagenet-{subset}", cfg, os.path.join(root, "train"), os.path.join(root, "val"),
                        [names[i] for i in k], [names[i] for i in n])


def load_npz(cfg) -> NCDData:
    """Custom data: an .npz with x_train, y_train, x_test, y_test (uint8 HWC images)."""
    if not cfg.root or not os.path.isfile(cfg.root):
        raise DataError(f"npz benchmark needs --data-root FILE.npz; {cfg.root or '(none given)'} is not a file")
    try:
        z = np.load(cfg.root, allow_pickle=False)
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise DataError(f"{cfg.root} lacks array {e}; it needs x_train, y_train, x_test, y_test") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{cfg.root} is not a readable .npz ({e})") from None
    names = [str(n) for n in z["class_names"]] if "class_names" in z else []
    classes = sorted(np.unique(arrays["y_train"]).tolist())
    names = names or [str(c) for c in range(max(classes) + 1)]
    default = classes[:cfg.num_known or len(classes) // 2]
    known, novel = split_classes(cfg, names, default, None, cfg.root)
    return _tensor_data("npz", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                        known, [c for c in novel if c in classes], names)


def load_folder(cfg) -> NCDData:
    """Custom data: ROOT/train/<class>/ and ROOT/test/ (or val/) ImageFolder trees."""
    train_dir = os.path.join(cfg.root, "train")
    test_dir = next((os.path.join(cfg.root, d) for d in ("test", "val") if os.path.isdir(os.path.join(cfg.root, d))), "")
    if not cfg.root or not os.path.isdir(train_dir) or not test_dir:
        raise DataError(f"folder benchmark needs --data-root DIR with DIR/train/<class>/ and DIR/test/<class>/; "
                        f"got {cfg.root or '(none)'}")
    names = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    default = list(range(cfg.num_known or len(names) // 2))
    known, novel = split_classes(cfg, names, default, None, train_dir)
    return _folder_data("folder", cfg, train_dir, test_dir, [names[i] for i in known], [names[i] for i in novel])


BENCHMARKS = {
    "digits": load_digits_ncd,
    "cifar10-5-5": lambda cfg: _cifar(cfg, "cifar10", 5),
    "cifar100-80-20": lambda cfg: _cifar(cfg, "cifar100", 80),
    "cifar100-50-50": lambda cfg: _cifar(cfg, "cifar100", 50),
    "imagenet-a": lambda cfg: _imagenet(cfg, "a"),
    "imagenet-b": lambda cfg: _imagenet(cfg, "b"),
    "imagenet-c": lambda cfg: _imagenet(cfg, "c"),
    "npz": load_npz,
    "folder": load_folder,
}


def load_data(cfg) -> NCDData:
    """Load the benchmark of a DataConfig and check its class counts against the config."""
    if cfg.benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {cfg.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    data = BENCHMARKS[cfg.benchmark](cfg)
    for key, have in (("num_known", data.num_known), ("num_novel", data.num_novel)):
        want = getattr(cfg, key)
        if want and want != have:
            raise ConfigError(f"data.{key}={want} but {cfg.benchmark} has {have} such classes; "
                              f"drop the setting or change data.known")
    return data
