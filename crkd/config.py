"""Typed configuration: the methods' defaults (docs/methods.md), presets per benchmark,
YAML round trip.

One dataclass per concern; `Config` holds them all and is what every checkpoint,
CLI run and tracked trial carries. Overrides are dotted `key=value` strings. The
`relation` section is the options dataclass of the term `discover.relation` names
(crkd.relations); changing the term swaps the section for the new term's defaults.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .relations import RELATIONS, Options

# libyaml's C dumper and loader when PyYAML was built with it (the wheels are): the same text
# as the pure-Python ones, 3-10x faster; a study's driver writes a config per trial.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class DataConfig:
    benchmark: str = "digits"   # see crkd.data.BENCHMARKS
    root: str = ""              # torchvision root, ImageFolder root or .npz file
    download: bool = False      # torchvision may download (needs network)
    known: list = field(default_factory=list)  # known classes by index or name: a subset of a benchmark's
                                               # own (the others are not loaded), any for npz/folder
    proxy_fold: int = -1        # >= 0: the proxy task, fold k: real novel classes are not loaded and
                                # a seeded share of the known classes plays novel
    proxy_seed: int = 0         # which partition of the known classes the proxy folds take
    proxy_hidden: int = 0       # classes a proxy fold hides (0: the real split's novel share, >= 2)
    num_known: int = 0          # 0: from the data; otherwise checked against it
    num_novel: int = 0
    load_size: int = 0          # ImageFolder: decode and resize to this square size (0: 256)
    workers: int = 4            # ImageFolder decoding processes


@dataclass
class AugConfig:
    """Multi-crop recipe (docs/methods.md, "Benchmark presets"); sizes 0 mean 'from the data'."""
    size: int = 0               # large crop (0: image size)
    small_size: int = 0         # small crop (0: 9/16 of the large one, 18 at 32)
    num_large: int = 2
    num_small: int = 2          # 0 switches multi-crop off
    pad: int = 4                # RandomCrop padding of the large crop
    rrc_prob: float = 0.5       # large crop: RandomResizedCrop with this chance, else RandomCrop(pad)
    rrc_scale: list = field(default_factory=lambda: [0.5, 1.0])
    small_scale: list = field(default_factory=lambda: [0.3, 0.8])
    flip: bool = True
    jitter: list = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # brightness, contrast, saturation, hue
    jitter_p: float = 0.6
    small_jitter_p: float = 0.8
    solarize_p: float = 0.1     # UNO's Solarize: threshold uniform in [0, 256) per image
    small_solarize_p: float = 0.2
    equalize_p: float = 0.1
    small_equalize_p: float = 0.2
    grayscale_p: float = 0.0    # UNO's ImageNet recipe: RandomGrayscale and Gaussian blur
    small_grayscale_p: float = 0.0
    blur_p: float = 0.0
    small_blur_p: float = 0.0
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])
    mean: list = field(default_factory=list)  # empty: per-channel statistics of the training images
    std: list = field(default_factory=list)


@dataclass
class ModelConfig:
    arch: str = "resnet18"      # resnet18 (CIFAR stem), resnet18_imagenet, small
    widths: list = field(default_factory=lambda: [32, 64, 128])  # 'small' only
    stem_stride: int = 1        # 'small' only: 2 for 32x32 inputs on CPU
    num_heads: int = 4
    hidden_dim: int = 2048
    proj_dim: int = 256
    overcluster: int = -1       # over-clustering factor; 0 off, -1 auto: UNO's factor for `uno`, else off


@dataclass
class PretrainConfig:
    """Stage 1 (docs/methods.md, "Stage 1: supervised pretraining"): UNO's recipe."""
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.1
    lr_start: float = 0.001
    lr_min: float = 0.001
    warmup: int = 10
    momentum: float = 0.9
    weight_decay: float = 1e-4
    tau: float = 0.1
    bn_views: str = "separate"  # each view through BatchNorm on its own (UNO), or "joint" (one batch)
    eval_every: int = 1


@dataclass
class DiscoverConfig:
    """Stage 2: L = L_l + alpha L_u + beta * L_rel, L_rel the term `relation` names."""
    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.4
    lr_start: float = 0.001
    lr_min: float = 0.001
    warmup: int = 10
    momentum: float = 0.9
    weight_decay: float = 1.5e-4
    alpha: float = 1.0
    beta: float = 0.1           # weight of the relation term (its options: the `relation` section)
    tau: float = 0.1            # softmax temperature of the joint prediction
    sk_epsilon: float = 0.05
    sk_iters: int = 3
    relation: str = "crkd"      # crkd.relations.RELATIONS: uno, none, crkd, crkd-code, refilled, ...
    sampling: str = "mixed"     # "mixed": batches from all images shuffled; "paired": half labeled,
                                # half unlabeled with the unlabeled set cycled (UNO's ImageNet)
    bn_views: str = "separate"  # each view through BatchNorm on its own (UNO), or "joint"
    eval_every: int = 1


def _default_relation() -> Options:
    return RELATIONS[DiscoverConfig.relation].Options()


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"        # auto | cpu | cuda
    amp: bool = True            # bf16 autocast on CUDA
    channels_last: bool = True  # CUDA only
    threads: int = 0            # torch CPU threads (0: torch's default); results depend on it bit for bit
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    discover: DiscoverConfig = field(default_factory=DiscoverConfig)
    relation: Options = field(default_factory=_default_relation)  # options of discover.relation

    def sync_relation(self, where: str = "config") -> None:
        """Make `relation` the options of the term `discover.relation` names (its defaults
        if the term changed)."""
        name = self.discover.relation
        if name not in RELATIONS:
            raise ConfigError(f"{where}: discover.relation {name!r} is unknown; choose one of {', '.join(RELATIONS)}")
        if type(self.relation) is not RELATIONS[name].Options:
            self.relation = RELATIONS[name].Options()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "Config":
        cfg = cls()
        _merge(cfg, d, where, "")
        return cfg

    @classmethod
    def from_yaml(cls, text: str, where: str = "config") -> "Config":
        try:
            d = yaml.load(text, Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML ({e.__class__.__name__}); check indentation and quoting") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping of config sections, got {type(d).__name__}")
        return cls.from_dict(d, where)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. {'discover.beta': 0.1}: for tracking and overrides."""
        out: dict[str, Any] = {}

        def walk(obj, prefix):
            for f in dataclasses.fields(obj):
                v = getattr(obj, f.name)
                if dataclasses.is_dataclass(v):
                    walk(v, prefix + f.name + ".")
                else:
                    out[prefix + f.name] = v
        walk(self, "")
        return out


# Keys that moved into the `relation` section when the terms became plug-ins.
MOVED = {"discover.t": "relation.t", "discover.eta_at": "relation.eta_at",
         "discover.kd_form": "relation.form", "discover.detach_weight": "relation.detach_weight"}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """A section's field types (string annotations evaluated once, not on every merge)."""
    return get_type_hints(cls)


def _merge(obj, d: dict, where: str, prefix: str) -> None:
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    # The relation section is typed by discover.relation: merge it after the discover section.
    for key, value in sorted(d.items(), key=lambda kv: kv[0] == "relation"):
        if key not in names:
            moved = MOVED.get(f"{prefix}{key}")
            hint = f"it is now '{moved}'" if moved else f"valid keys here: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'; {hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{prefix}{key}' is a section; give it a mapping")
            _merge(current, value, where, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}: '{prefix}{key}'"))
        if isinstance(obj, Config) and key == "discover":
            obj.sync_relation(where)


def _coerce(value: Any, typ: Any, what: str) -> Any:
    origin = get_origin(typ) or typ
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    if origin in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if origin is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{what} must be an integer, got {value!r}")
        return int(value)
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{what} must be a number, got {value!r}")
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"{what} must be a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{what} must be a list like [1, 2], got {value!r}")
        return value
    return value


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply `section.key=value` strings (values parsed as YAML) or a {dotted: value} dict in place."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    # A new term first, so that its options can be set in the same call.
    for key, value in sorted(items, key=lambda kv: kv[0] != "discover.relation"):
        parts = key.split(".")
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        _merge(cfg, nested, "--set", "")
    return cfg


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}' needs the form section.key=value, e.g. discover.beta=0.2")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def validate(cfg: Config) -> Config:
    """Reject values the trainer cannot run with, before any expensive work."""
    d, p, a, m = cfg.discover, cfg.pretrain, cfg.aug, cfg.model
    flat = cfg.flat()  # once: a study's driver validates every trial's config
    positive = {
        "discover.tau": d.tau, "discover.sk_epsilon": d.sk_epsilon,
        "pretrain.tau": p.tau, "discover.lr": d.lr, "pretrain.lr": p.lr,
    }
    for k, v in positive.items():
        if not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{k} must be > 0, got {v}")
    for k in ("discover.alpha", "discover.beta", "discover.weight_decay", "pretrain.weight_decay",
              "discover.lr_min", "pretrain.lr_min", "discover.lr_start", "pretrain.lr_start"):
        v = flat[k]
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"{k} must be >= 0, got {v}")
    for k in ("discover.sk_iters", "discover.epochs", "pretrain.epochs", "discover.batch_size",
              "pretrain.batch_size", "model.num_heads", "aug.num_large", "discover.eval_every",
              "pretrain.eval_every"):
        if flat[k] < 1:
            raise ConfigError(f"{k} must be >= 1, got {flat[k]}")
    if cfg.data.proxy_fold < -1 or cfg.data.proxy_hidden < 0:
        raise ConfigError(f"data.proxy_fold must be -1 (off) or a fold >= 0 and data.proxy_hidden >= 0, got "
                          f"{cfg.data.proxy_fold} and {cfg.data.proxy_hidden}")
    for k in ("discover.warmup", "pretrain.warmup", "aug.num_small", "aug.pad", "threads",
              "data.num_known", "data.num_novel", "aug.size", "aug.small_size"):
        if flat[k] < 0:
            raise ConfigError(f"{k} must be >= 0, got {flat[k]}")
    if a.num_large < 2:
        raise ConfigError(f"aug.num_large must be >= 2 (swapped prediction needs two large views), got {a.num_large}")
    if m.overcluster < -1:
        raise ConfigError(f"model.overcluster must be -1 (auto), 0 (off) or a factor >= 1, got {m.overcluster}")
    for k, v, allowed in (("discover.sampling", d.sampling, ("mixed", "paired")),
                          ("discover.bn_views", d.bn_views, ("separate", "joint")),
                          ("pretrain.bn_views", p.bn_views, ("separate", "joint"))):
        if v not in allowed:
            raise ConfigError(f"{k} must be one of {', '.join(allowed)}, got {v!r}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    cfg.sync_relation()
    cfg.relation.validate()
    from .models import ARCHS
    if m.arch not in ARCHS:
        raise ConfigError(f"model.arch {m.arch!r} is unknown; choose one of {', '.join(sorted(ARCHS))}")
    from .data import BENCHMARKS
    if cfg.data.benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {cfg.data.benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    for k, pair in (("aug.rrc_scale", a.rrc_scale), ("aug.small_scale", a.small_scale)):
        if len(pair) != 2 or not 0 < pair[0] <= pair[1] <= 1:
            raise ConfigError(f"{k} must be [low, high] with 0 < low <= high <= 1, got {pair}")
    if len(a.blur_sigma) != 2 or not 0 < a.blur_sigma[0] <= a.blur_sigma[1]:
        raise ConfigError(f"aug.blur_sigma must be [low, high] with 0 < low <= high, got {a.blur_sigma}")
    if len(a.jitter) != 4 or any(v < 0 for v in a.jitter):
        raise ConfigError(f"aug.jitter must be four non-negative numbers [brightness, contrast, saturation, hue], got {a.jitter}")
    for k, v in flat.items():
        if k.startswith("aug.") and k.endswith(("_p", "_prob")) and not 0 <= v <= 1:
            raise ConfigError(f"{k} is a probability, must be in [0, 1], got {v}")
    if len(a.mean) != len(a.std):
        raise ConfigError(f"aug.mean and aug.std must have the same length, got {a.mean} and {a.std}")
    return cfg


# --- presets -----------------------------------------------------------------

CIFAR10_NORM = ([0.491, 0.482, 0.447], [0.202, 0.199, 0.201])
CIFAR100_NORM = ([0.507, 0.487, 0.441], [0.267, 0.256, 0.276])
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _digits() -> dict:
    # A small fast recipe: 8x8 grey digits on 2 CPU cores in under a minute. The UNO
    # over-clustering heads stay on here: without them self-labeling on ~700 novel
    # images was unstable (novel acc 0.73-0.87 over seeds; 0.95 with them).
    return {
        "data": {"benchmark": "digits"},
        "aug": {"size": 8, "small_size": 6, "num_small": 0, "pad": 1, "rrc_prob": 0.5,
                "rrc_scale": [0.6, 1.0], "flip": False, "jitter": [0.4, 0.4, 0.0, 0.0],
                "jitter_p": 0.5, "solarize_p": 0.0, "equalize_p": 0.0,
                "small_solarize_p": 0.0, "small_equalize_p": 0.0},
        "model": {"arch": "small", "widths": [16, 32, 64], "stem_stride": 1,
                  "hidden_dim": 256, "proj_dim": 64, "overcluster": 4},
        "pretrain": {"epochs": 30, "batch_size": 128, "lr": 0.1, "warmup": 3},
        "discover": {"epochs": 60, "batch_size": 128, "lr": 0.1, "warmup": 3},
    }


def _cifar(name: str, norm) -> dict:
    return {"data": {"benchmark": name},
            "aug": {"size": 32, "small_size": 18, "mean": norm[0], "std": norm[1]},
            "model": {"arch": "resnet18"}}


def _imagenet(name: str) -> dict:
    # UNO's ImageNet recipe: RandomResizedCrop(224, 0.5-1) of the whole image, small crops
    # (96, 0.08-0.5), jitter, grayscale and blur instead of solarize/equalize; discovery
    # batches half labeled, half unlabeled with the unlabeled set cycled. UNO runs 256 per
    # GPU on 2 GPUs with synchronised BatchNorm: one device takes the global 512.
    return {"data": {"benchmark": name, "load_size": 256},
            "aug": {"size": 224, "small_size": 96, "pad": 0, "rrc_prob": 1.0, "rrc_scale": [0.5, 1.0],
                    "small_scale": [0.08, 0.5], "jitter_p": 0.5, "small_jitter_p": 0.8,
                    "solarize_p": 0.0, "small_solarize_p": 0.0, "equalize_p": 0.0, "small_equalize_p": 0.0,
                    "grayscale_p": 0.2, "small_grayscale_p": 0.2, "blur_p": 0.2, "small_blur_p": 0.5,
                    "mean": IMAGENET_NORM[0], "std": IMAGENET_NORM[1]},
            "model": {"arch": "resnet18_imagenet"},
            "pretrain": {"epochs": 100, "batch_size": 256, "warmup": 5},
            "discover": {"epochs": 60, "batch_size": 512, "lr": 0.2, "warmup": 5, "sampling": "paired"}}


def _custom(name: str) -> dict:
    # Custom data: the CIFAR recipe with sizes and normalisation taken from the data.
    return {"data": {"benchmark": name}, "model": {"arch": "resnet18"}}


PRESETS = {
    "digits": _digits,
    "cifar10-5-5": lambda: _cifar("cifar10-5-5", CIFAR10_NORM),
    "cifar100-80-20": lambda: _cifar("cifar100-80-20", CIFAR100_NORM),
    "cifar100-50-50": lambda: _cifar("cifar100-50-50", CIFAR100_NORM),
    "imagenet-a": lambda: _imagenet("imagenet-a"),
    "imagenet-b": lambda: _imagenet("imagenet-b"),
    "imagenet-c": lambda: _imagenet("imagenet-c"),
    "npz": lambda: _custom("npz"),
    "folder": lambda: _custom("folder"),
}


def preset(benchmark: str) -> Config:
    """The recommended configuration for a benchmark: paper recipe for CIFAR/ImageNet."""
    if benchmark not in PRESETS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(PRESETS)}")
    return Config.from_dict(PRESETS[benchmark](), f"preset {benchmark}")


def load_config(path: str | None = None, benchmark: str | None = None,
                overrides: list[str] | dict | None = None) -> Config:
    """Preset for `benchmark` (or the file's), then the file, then overrides; validated."""
    file_dict: dict = {}
    if path:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        Config.from_yaml(text, path)  # reports unknown keys against the file name
        file_dict = yaml.safe_load(text) or {}
    name = benchmark or file_dict.get("data", {}).get("benchmark") or "digits"
    cfg = preset(name)
    _merge(cfg, file_dict, path or "config", "")
    cfg.data.benchmark = name
    if overrides:
        apply_overrides(cfg, overrides)
    return validate(cfg)


# UNO's over-clustering factors (its README's commands), and for other data the factor
# of the UNO benchmark with the nearest number of novel classes.
UNO_OVERCLUSTER = {"cifar10-5-5": 10, "cifar100-80-20": 5, "cifar100-50-50": 3,
                   "imagenet-a": 4, "imagenet-b": 4, "imagenet-c": 4}


def overcluster_factor(cfg: Config, num_novel: int) -> int:
    """model.overcluster resolved: an explicit factor (or 0) as it is; -1 (auto) gives UNO's
    factor to terms that use over-clustering heads (`uno`) and 0 to the others."""
    if cfg.model.overcluster >= 0:
        return cfg.model.overcluster
    if not RELATIONS[cfg.discover.relation].overcluster:
        return 0
    if cfg.data.benchmark in UNO_OVERCLUSTER:
        return UNO_OVERCLUSTER[cfg.data.benchmark]
    return 10 if num_novel <= 5 else 5 if num_novel <= 20 else 4 if num_novel <= 30 else 3


def stage1_key(cfg: Config) -> str:
    """Hash of everything stage 1 depends on: equal keys give interchangeable teachers."""
    d = cfg.to_dict()
    relevant = {"seed": d["seed"], "data": d["data"], "aug": d["aug"], "pretrain": d["pretrain"],
                "model": {k: d["model"][k] for k in ("arch", "widths", "stem_stride")},
                "amp": d["amp"]}
    relevant["data"] = {k: v for k, v in relevant["data"].items() if k not in ("download", "workers")}
    blob = json.dumps(relevant, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
