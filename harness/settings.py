"""A study's settings: one typed object, validated before Ray starts, saved as YAML.

`Study` is what every phase (search, confirmation, report) and every trial reads.
It is written to `<storage>/<name>/study.yaml` when a study starts and read back by
`--resume`, report.py and the trials. Paths are not stored: they derive from the
storage root the study is opened from, so a moved or remounted store still works.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

import crkd

from . import storage

# What a discovery epoch reports and which way is better. A proxy search reports the
# same metrics of the proxy task, averaged over its folds, under "proxy/".
METRICS = {
    "novel/train/acc": "max", "novel/train/acc_avg": "max", "novel/train/nmi": "max",
    "novel/train/ari": "max", "novel/test/acc": "max", "novel/test/acc_avg": "max",
    "test/all/acc": "max", "test/all/acc_avg": "max", "test/old/acc": "max", "test/old/acc_avg": "max",
    "test/new/acc": "max", "test/new/acc_avg": "max", "known/test/acc": "max",
    "loss/total": "min", "loss/l": "min", "loss/u": "min", "loss/rel": "min",
}
# Metrics computed with the novel classes' labels: selecting by them is label leakage.
# test/old/acc too: its Hungarian matching runs over all classes, novel ones included.
USES_NOVEL_LABELS = {k for k in METRICS if k.startswith(("novel/", "test/"))}
OBJECTIVES = {"proxy": "proxy/novel/train/acc", "novel": "novel/train/acc"}
# The metric a confirmation compares configurations on, and the ones it tabulates.
CONFIRM_METRIC = "novel/train/acc"
REPORT_METRICS = ["novel/train/acc", "novel/train/acc_avg", "novel/test/acc", "test/all/acc", "test/old/acc",
                  "test/new/acc", "known/test/acc"]

# Per benchmark family: trials, CPUs per trial, whether trials want a GPU, confirmation top-K
# and seeds. digits is sized so `make run` (search, confirmation, report) ends in about six
# minutes on 2 CPU cores: fewer confirmed configurations and seeds than the general default.
FAMILY = {"digits": dict(num_samples=12, cpus=1.0, gpu=False, confirm_top=1, confirm_seeds=3),
          "imagenet": dict(num_samples=16, cpus=4.0, gpu=True, confirm_top=3, confirm_seeds=5),
          "other": dict(num_samples=32, cpus=1.0, gpu=True, confirm_top=3, confirm_seeds=5)}

# --smoke-test: a tiny model and a few epochs, so a whole study takes about a minute.
SMOKE = ["pretrain.epochs=3", "discover.epochs=4", "model.widths=[8,16,16]",
         "model.hidden_dim=32", "model.proj_dim=16"]


class SettingsError(ValueError):
    """A bad option or file: reported as one `error:` line, exit code 2."""


@dataclass
class Study:
    """Everything a study was started with (options resolved, defaults settled)."""
    name: str
    kind: str = "study"                 # "study": search + confirmation; "benchmark": confirmation only
    benchmark: str = "digits"
    tracking_uri: str = ""              # "" = the store's own sqlite database
    # the search
    space_name: str = ""
    space_text: str = ""                # the space file as it was: a resumed study keeps it
    fields: dict = field(default_factory=dict)          # parameter name -> trainer field
    default_point: dict | None = None   # the preset's values of the searched fields (first trial)
    default_skipped: str = ""
    base_yaml: str = ""                 # preset + space fixed + --set + --seed + --max-epochs
    overrides: list = field(default_factory=list)
    seed: int = 0
    objective: str = "proxy"            # "proxy" (no novel labels) or "novel" (papers' protocol, leaky)
    proxy_folds: int = 1
    metric: str = OBJECTIVES["proxy"]
    mode: str = "max"
    num_samples: int = 12
    max_concurrent: int = 0             # 0: as many as the resources fit (settled when Ray is up)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = -1.0        # -1: one GPU if the cluster has GPUs and the family wants one
    wants_gpu: bool = False
    max_t: int = 1
    grace_period: int = 1
    reduction_factor: float = 3.0
    keep_checkpoints: int = 2
    checkpoint_every: int = 1
    max_failures: int = 2
    # the confirmation
    confirm_top: int = 3
    confirm_seeds: int = 5
    transfer: bool = True               # re-run finished search trials on the real split (proxy check)
    methods: list = field(default_factory=list)   # benchmark: the methods compared
    from_study: str = ""                # benchmark: add this study's confirmed configuration
    # the record
    command: str = ""
    created: str = ""
    git_commit: str = ""

    # --- places (derived, never stored) ---------------------------------------------------

    def bind(self, root: str) -> "Study":
        self._root = storage.normalize(root)
        return self

    @property
    def root(self) -> str:
        return self._root

    @property
    def folder(self) -> str:
        return storage.join(self.root, self.name)

    def path(self, *parts: str) -> str:
        return storage.join(self.folder, *parts)

    @property
    def stage1_cache(self) -> str:
        return storage.join(self.root, "stage1_cache")

    @property
    def tracking(self) -> str:
        return self.tracking_uri or f"sqlite:///{os.path.join(self.root, 'mlflow.db')}"

    @property
    def optuna_journal(self) -> str:
        # Optuna's journal needs a local file; on an object store it lives with the driver.
        if storage.is_uri(self.root):
            return os.path.join(os.path.expanduser("~"), ".cache", "crkd-tune", "optuna", self.name, "optuna.log")
        return os.path.join(self.folder, "optuna.log")

    @property
    def leaky(self) -> bool:
        return self.metric in USES_NOVEL_LABELS

    @property
    def search_seeds(self) -> list[int]:
        return [self.seed]

    @property
    def confirmation_seeds(self) -> list[int]:
        """Fresh seeds: never the search's. A new study draws them after its search seed."""
        return [self.seed + 1 + i for i in range(self.confirm_seeds)]

    def base(self) -> crkd.Config:
        return crkd.Config.from_yaml(self.base_yaml, f"study {self.name}")

    # --- YAML round trip ------------------------------------------------------------------

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False, width=100)

    @classmethod
    def from_yaml(cls, text: str, where: str) -> "Study":
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError:
            d = None
        if not isinstance(d, dict) or "name" not in d:
            raise SettingsError(f"{where} is not a study file (expected YAML written by harness/tune.py); "
                                f"restore it from a backup or start a new study with another --name")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SettingsError(f"{where}: unknown keys {', '.join(unknown)} (written by a newer crkd-tune?)")
        try:
            return cls(**d)
        except TypeError as e:
            raise SettingsError(f"{where}: {e}") from None

    def save(self) -> None:
        storage.write_text(self.path("study.yaml"), self.to_yaml())

    @classmethod
    def load(cls, root: str, name: str) -> "Study":
        where = storage.join(storage.normalize(root), name, "study.yaml")
        try:
            text = storage.read_text(where)
        except UnicodeDecodeError:
            text = "\x00"  # binary: reported as not a study file below
        except OSError as e:
            raise SettingsError(f"{where} cannot be read ({e.strerror or e})") from None
        if text is None:
            raise SettingsError(f"no study '{name}' in {storage.normalize(root)} (no study.yaml); "
                                f"check --name and --storage")
        return cls.from_yaml(text, where).bind(root)


def git_commit() -> str:
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (out.stdout.strip() or "none") + ("+dirty" if dirty else "") if out.returncode == 0 else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def shell_command() -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def finite(name: str, value: float | None, low: float | None = None, above: float | None = None) -> None:
    """A number option must be finite (nan and inf are rejected) and within its bound."""
    if value is None:
        return
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {value}")
    if low is not None and value < low:
        raise SettingsError(f"{name} must be >= {low:g}, got {value:g}")
    if above is not None and value <= above:
        raise SettingsError(f"{name} must be > {above:g}, got {value:g}")


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# --- from the command line ------------------------------------------------------------------

def add_common(p) -> None:
    """Options shared by tune.py and benchmark.py."""
    a = p.add_argument
    a("--benchmark", help="crkd benchmark (default digits: CPU-fast, no downloads)")
    a("--seed", type=int, help="seeds the sampler, the search trials and, after it, the fresh "
                               "confirmation seeds (default 0)")
    a("--name", help="study name: folder, MLflow experiment and Optuna study (default <space>-<benchmark>-<time>)")
    a("--storage", help="where studies live: a local folder, or s3:// / gs:// on a cluster (default ./runs)")
    a("--tracking-uri", help="MLflow store (default sqlite:///<storage>/mlflow.db; on clusters the http:// "
                             "address of an `mlflow server`)")
    a("--address", help="an existing Ray cluster (e.g. auto or HOST:6379); default: a new local Ray")
    a("--resume", action="store_true", help="continue an interrupted study (--name, or the newest in "
                                            "--storage) where it stopped, with its saved settings")
    a("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
      help="fixed trainer setting for every run, e.g. --set discover.batch_size=128 (repeatable)")
    a("--cpus-per-trial", type=float, help="CPUs per run; also its torch threads (default 1; ImageNet 4)")
    a("--gpus-per-trial", type=float, help="GPUs per run; fractions pack runs on one GPU, e.g. 0.25 "
                                           "(default 1 where the cluster has GPUs, 0 for digits)")
    a("--max-concurrent", type=int, help="runs at once (default: as many as the CPUs/GPUs fit)")
    a("--max-epochs", type=int, help="discovery epochs of a full run (default: the preset's)")
    a("--max-failures", type=int, default=2, help="retries of a run whose worker died (default 2)")
    a("--confirm-seeds", type=int, help="fresh seeds per confirmed configuration (digits 3, else 5; 0 skips)")
    a("--checkpoint-every", type=int, default=1, help="epochs between checkpoints of a run (default 1)")
    a("--verbose", action="store_true", help="Ray's own progress table and logs")


def _check_numbers(args) -> None:
    finite("--cpus-per-trial", args.cpus_per_trial, above=0)
    finite("--gpus-per-trial", args.gpus_per_trial, low=0)
    if args.gpus_per_trial is not None and args.gpus_per_trial > 1 and args.gpus_per_trial % 1:
        raise SettingsError("--gpus-per-trial above 1 must be a whole number")
    for opt, value, low in (("--max-concurrent", args.max_concurrent, 1), ("--max-epochs", args.max_epochs, 1),
                            ("--max-failures", args.max_failures, 0), ("--confirm-seeds", args.confirm_seeds, 0),
                            ("--checkpoint-every", args.checkpoint_every, 1)):
        if value is not None and value < low:
            raise SettingsError(f"{opt} must be >= {low}, got {value}")
    if args.name is not None and not args.name:
        raise SettingsError("--name is empty; give a name or leave the option out")
    if args.name and not all(c.isalnum() or c in "-_." for c in args.name):
        raise SettingsError(f"--name {args.name!r}: use letters, digits, '-', '_' and '.'")


def base_config(bench: str, space_fixed: dict, overrides: list[str], seed: int | None,
                max_epochs: int | None, searched: dict[str, str], space: str = "the space") -> tuple[crkd.Config, dict]:
    """The study's base config: preset, the space's fixed values, --set, --seed, --max-epochs."""
    from . import spaces
    pre = crkd.apply_overrides(crkd.preset(bench), dict(space_fixed))
    sets = spaces.parse_sets(overrides, bench, base=pre)
    for key in sets:
        if key in searched.values():
            raise SettingsError(f"--set {key}: this field is searched by {space}; drop the --set or use "
                                f"a space without it")
        if key in ("data.benchmark", "seed"):
            raise SettingsError(f"--set {key}: choose it with --{key.split('.')[-1]}")
        if key in space_fixed and sets[key] != space_fixed[key]:
            raise SettingsError(f"--set {key}: the space fixes {key}={space_fixed[key]}; use another space")
        if key.startswith("data.proxy"):
            raise SettingsError(f"--set {key}: the harness builds the proxy task itself (--objective, --proxy-folds)")
    if "discover.epochs" in sets and max_epochs:
        raise SettingsError("--set discover.epochs and --max-epochs both set the discovery epochs; keep one")
    base = crkd.load_config(benchmark=bench, overrides={**space_fixed, **sets})
    if seed is not None:
        base.seed = seed
    if max_epochs is not None:
        base.discover.epochs = max_epochs
    if base.data.root and not storage.is_uri(base.data.root) and os.path.exists(base.data.root):
        base.data.root = os.path.abspath(base.data.root)  # runs start in other folders
    return crkd.validate(base), sets


def family(bench: str) -> dict:
    return FAMILY["digits" if bench == "digits" else "imagenet" if bench.startswith("imagenet") else "other"]


def check_data(base: crkd.Config, objective: str, folds: int) -> None:
    """Fail now, not in every trial: the real split (confirmation) and each proxy fold exist."""
    crkd.load_data(base.data)
    if objective == "proxy":
        for k in range(folds):
            base.data.proxy_fold = k
            try:
                crkd.load_data(base.data)
            finally:
                base.data.proxy_fold = -1


def new_name(space: str, bench: str) -> str:
    return f"{space}-{bench}-{time.strftime('%Y%m%d-%H%M%S')}"
