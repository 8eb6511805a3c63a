"""Search-space files (`search_spaces/*.yaml`): parse, validate, turn into Optuna distributions.

Format (documented in search_spaces/README.md):

    description: what the space is for
    params:                       # Optuna name -> trainer field + distribution
      beta: {field: discover.beta, dist: loguniform, low: 0.01, high: 2.0}
      iters: {field: discover.sk_iters, dist: int, low: 1, high: 10}
      relation: {field: discover.relation, dist: choice, values: [crkd, none]}
    fixed: {relation.form: ce}     # optional trainer overrides for every trial
    default_first: true            # optional (default true): the preset values go first

Everything is checked before Ray starts; each problem is one line that names the
file, the key and the fix (`SpaceError`).
"""
from __future__ import annotations

import copy
import difflib
import functools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

import crkd
from crkd.errors import ConfigError

SPACES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "search_spaces")
DISTS = ("uniform", "loguniform", "int", "choice")
TOP_KEYS = ("description", "params", "fixed", "default_first")
PARAM_KEYS = {"uniform": ("field", "dist", "low", "high", "step"),
              "loguniform": ("field", "dist", "low", "high"),
              "int": ("field", "dist", "low", "high", "step", "log"),
              "choice": ("field", "dist", "values")}
# Fields that the harness sets itself: searching them would fight the harness.
RESERVED = {"discover.epochs": "it is ASHA's max_t; set it with --max-epochs",
            "seed": "set it with --seed",
            "data.benchmark": "set it with --benchmark",
            "device": "set it with --set device=... (not searched)"}


class SpaceError(ValueError):
    """A one-line problem with a search-space file."""


@dataclass
class Param:
    name: str
    field: str
    dist: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    values: list = field(default_factory=list)

    def distribution(self):
        """The Optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.dist == "uniform":
            return FloatDistribution(self.low, self.high, step=self.step)
        if self.dist == "loguniform":
            return FloatDistribution(self.low, self.high, log=True)
        if self.dist == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(self.values)

    def contains(self, v) -> bool:
        if self.dist == "choice":
            return v in self.values
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not self.low <= v <= self.high:
            return False
        if self.step:
            k = (v - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def describe(self) -> str:
        if self.dist == "choice":
            return f"{self.field} in {self.values}"
        return f"{self.field} {self.dist}[{self.low}, {self.high}]" + (f" step {self.step}" if self.step else "")


@dataclass
class Space:
    name: str
    path: str
    text: str                      # the file as written: logged with the study
    description: str
    params: dict[str, Param]
    fixed: dict[str, Any]
    default_first: bool = True

    @property
    def fields(self) -> dict[str, str]:
        return {n: p.field for n, p in self.params.items()}

    def distributions(self) -> dict:
        return {n: p.distribution() for n, p in self.params.items()}

    def config(self, base: crkd.Config, sampled: dict[str, Any]) -> crkd.Config:
        """The trial's configuration: `base` with the sampled values on their fields."""
        cfg = copy.deepcopy(base)
        crkd.apply_overrides(cfg, {self.params[n].field: v for n, v in sampled.items() if n in self.params})
        return crkd.validate(cfg)

    def default_point(self, base: crkd.Config) -> tuple[dict | None, str]:
        """The base config's values of the searched fields (the paper defaults), if they fit."""
        flat = base.flat()
        point = {n: flat[p.field] for n, p in self.params.items()}
        outside = [f"{p.field}={point[n]}" for n, p in self.params.items() if not p.contains(point[n])]
        if outside:
            return None, f"defaults outside the space: {', '.join(outside)}"
        return point, ""


def space_names() -> list[str]:
    if not os.path.isdir(SPACES_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(SPACES_DIR) if f.endswith(".yaml"))


def resolve_path(name_or_path: str) -> str:
    """A path to an existing file, or the name of a file in search_spaces/."""
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        raise SpaceError(f"--space {name_or_path}: no such file; give an existing YAML path "
                         f"or one of: {', '.join(space_names())}")
    path = os.path.join(SPACES_DIR, name_or_path + ".yaml")
    if not os.path.isfile(path):
        near = difflib.get_close_matches(name_or_path, space_names(), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise SpaceError(f"--space {name_or_path}: unknown space; {hint}choose one of: "
                         f"{', '.join(space_names())} (or give a YAML path)")
    return path


def load_space(name_or_path: str, benchmark: str, text: str | None = None,
               base: crkd.Config | None = None) -> Space:
    """Read and validate a space file against the trainer's fields for `benchmark`
    (`text`: the file's saved contents, for a resumed study; `base`: the config the space
    applies to, default the benchmark's preset; its relation term decides which
    `relation.*` fields exist, unless the space fixes discover.relation itself)."""
    path = name_or_path if text is not None else resolve_path(name_or_path)
    where = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    if text is None:
        try:
            with open(path) as f:
                text = f.read()
        except UnicodeDecodeError:
            raise SpaceError(f"{where}: not a text file (a YAML search space is text; see search_spaces/README.md)") from None
        except OSError as e:
            raise SpaceError(f"{where}: cannot be read ({e.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise SpaceError(f"{where}: not valid YAML{at}; check indentation and the {{key: value}} braces") from None
    if not isinstance(doc, dict):
        raise SpaceError(f"{where}: expected a mapping with 'params:' (see search_spaces/README.md)")
    _unknown_keys(where, "", doc, TOP_KEYS)
    base = copy.deepcopy(base) if base is not None else crkd.preset(benchmark)

    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{where}: fixed: must be a mapping of trainer fields, e.g. {{relation.form: ce}}")
    if "discover.relation" in fixed:  # the term decides which relation.* fields exist
        try:
            crkd.apply_overrides(base, {"discover.relation": fixed["discover.relation"]})
        except ConfigError as e:
            raise SpaceError(f"{where}: fixed.discover.relation: {e}") from None
    flat = base.flat()
    for key, value in list(fixed.items()):
        _check_field(where, f"fixed.{key}", key, flat)
        try:
            cfg = crkd.validate(crkd.apply_overrides(copy.deepcopy(base), {key: value}))
            fixed[key] = cfg.flat()[key]  # typed by crkd (YAML 1.1 reads 1e-3 as a string)
        except ConfigError as e:
            raise SpaceError(f"{where}: fixed.{key}: {e}") from None
    base = crkd.apply_overrides(copy.deepcopy(base), dict(fixed)) if fixed else base
    flat = base.flat()

    raw = doc.get("params")
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: params: needs at least one parameter, e.g. "
                         f"beta: {{field: discover.beta, dist: loguniform, low: 0.01, high: 2.0}}")
    params, seen = {}, {}
    for name, spec in raw.items():
        params[name] = _param(where, str(name), spec, flat, base)
        f = params[name].field
        if f in seen:
            raise SpaceError(f"{where}: params.{name}: field {f} is already searched by params.{seen[f]}; "
                             f"remove one of them")
        if f in fixed:
            raise SpaceError(f"{where}: params.{name}: field {f} is also under fixed:; remove it from one")
        seen[f] = name
    default_first = doc.get("default_first", True)
    if not isinstance(default_first, bool):
        raise SpaceError(f"{where}: default_first: must be true or false, got {default_first!r}")
    name = os.path.splitext(os.path.basename(path))[0]
    return Space(name, path, text, str(doc.get("description") or ""), params, dict(fixed), default_first)


def parse_sets(items: list[str], benchmark: str, base: crkd.Config | None = None) -> dict[str, Any]:
    """--set key=value strings as {dotted key: value}, values read as YAML (crkd types them),
    checked against `base` (default the preset) with any --set discover.relation applied."""
    base = copy.deepcopy(base) if base is not None else crkd.preset(benchmark)
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' needs the form section.key=value, e.g. discover.batch_size=128")
        key, raw = (x.strip() for x in item.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key, value))
    for key, value in pairs:
        if key == "discover.relation":
            crkd.apply_overrides(base, {key: value})
    flat = base.flat()
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key not in flat:
            near = difflib.get_close_matches(key, list(flat), n=1, cutoff=0.6)
            raise ConfigError(f"--set {key}: unknown trainer field" + (f"; did you mean '{near[0]}'?" if near else ""))
        out[key] = crkd.apply_overrides(copy.deepcopy(base), {key: value}).flat()[key]  # typed by crkd
    return out


def _unknown_keys(where: str, prefix: str, d: dict, allowed) -> None:
    for k in d:
        if k not in allowed:
            near = difflib.get_close_matches(str(k), list(allowed), n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"allowed keys: {', '.join(allowed)}"
            raise SpaceError(f"{where}: {prefix}{k}: unknown key; {hint}")


def _check_field(where: str, key: str, name: Any, flat: dict) -> None:
    if not isinstance(name, str) or name not in flat:
        near = difflib.get_close_matches(str(name), list(flat), n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'?" if near else "fields look like discover.beta (see Config.flat())"
        raise SpaceError(f"{where}: {key}: unknown trainer field '{name}'; {hint}")


def _number(where: str, key: str, v: Any, integer: bool = False):
    if isinstance(v, str):  # YAML 1.1 reads 1e-2 as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpaceError(f"{where}: {key}: must be a number, got {v!r}")
    if integer:
        if float(v) != int(v):
            raise SpaceError(f"{where}: {key}: must be an integer for dist: int, got {v!r}")
        return int(v)
    return float(v)


def _param(where: str, name: str, spec: Any, flat: dict, base: crkd.Config) -> Param:
    at = f"params.{name}"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise SpaceError(f"{where}: {at}: parameter names are letters, digits, '_', '.', '-' (no '/')")
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: {at}: expected {{field: ..., dist: ..., low: ..., high: ...}}")
    if "field" not in spec:
        raise SpaceError(f"{where}: {at}: missing 'field' (the trainer setting, e.g. discover.beta)")
    _check_field(where, f"{at}.field", spec["field"], flat)
    fname = spec["field"]
    if fname in RESERVED:
        raise SpaceError(f"{where}: {at}.field: {fname} cannot be searched; {RESERVED[fname]}")
    dist = spec.get("dist")
    if dist not in DISTS:
        near = difflib.get_close_matches(str(dist), DISTS, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise SpaceError(f"{where}: {at}.dist: {dist!r} is not a distribution; {hint}use one of {', '.join(DISTS)}")
    _unknown_keys(where, f"{at}.", spec, PARAM_KEYS[dist])
    current = flat[fname]
    kind = type(current).__name__
    p = Param(name, fname, dist)
    if dist == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}: {at}.values: give a non-empty list, e.g. values: [0.1, 0.2]")
        if any(isinstance(v, (list, dict)) for v in values):
            raise SpaceError(f"{where}: {at}.values: choices must be numbers, strings or booleans")
        p.values = values
    else:
        for k in ("low", "high"):
            if k not in spec:
                raise SpaceError(f"{where}: {at}: missing '{k}' (dist {dist} needs low and high)")
        integer = dist == "int"
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise SpaceError(f"{where}: {at}.dist: {fname} is a {kind}; use dist: choice with values: [...]")
        if integer and not isinstance(current, int):
            raise SpaceError(f"{where}: {at}.dist: {fname} is a float; use uniform or loguniform")
        if not integer and isinstance(current, int):
            raise SpaceError(f"{where}: {at}.dist: {fname} is an integer; use dist: int")
        p.low = _number(where, f"{at}.low", spec["low"], integer)
        p.high = _number(where, f"{at}.high", spec["high"], integer)
        if not p.low < p.high:
            raise SpaceError(f"{where}: {at}: low ({p.low}) must be below high ({p.high}); swap or widen them")
        if dist == "loguniform" and p.low <= 0:
            raise SpaceError(f"{where}: {at}.low: loguniform needs low > 0, got {p.low}; "
                             f"use a small positive value or dist: uniform")
        if "step" in spec:
            p.step = _number(where, f"{at}.step", spec["step"], integer)
            if p.step <= 0:
                raise SpaceError(f"{where}: {at}.step: must be > 0, got {p.step}")
        if "log" in spec:
            if not isinstance(spec["log"], bool):
                raise SpaceError(f"{where}: {at}.log: must be true or false")
            p.log = spec["log"]
            if p.log and p.low < 1:
                raise SpaceError(f"{where}: {at}.low: log: true needs low >= 1, got {p.low}")
            if p.log and p.step not in (None, 1):
                raise SpaceError(f"{where}: {at}: log: true cannot take a step; drop one of them")
    # The trainer must accept every end of the range: catches tau: {low: 0}, bad choices, etc.
    probes = p.values if dist == "choice" else [("low", p.low), ("high", p.high)]
    for probe in probes:
        label, value = probe if isinstance(probe, tuple) else ("values", probe)
        try:
            crkd.validate(crkd.apply_overrides(copy.deepcopy(base), {fname: value}))
        except ConfigError as e:
            raise SpaceError(f"{where}: {at}.{label}: the trainer rejects {fname}={value!r} ({e}); "
                             f"change the {'choices' if label == 'values' else 'bound'}") from None
    return p


@functools.lru_cache(maxsize=8)
def _parsed(base_yaml: str) -> dict:
    """The base config as a dict, parsed once: YAML parsing costs the driver ~5 ms a trial."""
    return crkd.Config.from_yaml(base_yaml, "study config").to_dict()


def trial_config(base_yaml: str, fields: dict[str, str], sampled: dict[str, Any]) -> crkd.Config:
    """The resolved configuration of one trial: the study's base config (preset, space
    `fixed:`, --set, --seed, --max-epochs) with the sampled values on their fields."""
    cfg = crkd.Config.from_dict(copy.deepcopy(_parsed(base_yaml)))
    crkd.apply_overrides(cfg, {fields[n]: v for n, v in sampled.items() if n in fields})
    return crkd.validate(cfg)
