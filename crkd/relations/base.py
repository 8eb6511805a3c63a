"""The plug-in interface of the discovery stage's relation-distillation terms.

A term is an `nn.Module` with its own typed options (a dataclass, the config's
`relation:` section, set with `--set relation.KEY=VALUE`). The discovery stage
builds it once, calls `setup` with the frozen teacher and what it may see of the
training data, puts its parameters in the optimizer and its state (parameters and
buffers: memory banks, class centres) in the discovery checkpoint, and calls it
once per step with a `StepContext`. Its loss enters as `beta * scale(epoch) * loss`.

A term never sees a novel class's label: `StepContext.y` holds -1 for every
unlabeled sample, and `SetupData` carries labels of labeled images only.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass
class Options:
    """Base of every term's options; a term with none uses it as it is."""

    def validate(self) -> None:
        """Raise ConfigError (one line, naming `relation.KEY`) for values the term cannot use."""

    def check(self, **rules: str) -> None:
        """Common checks by name: `check(tau="positive", margin="nonnegative", p="probability")`."""
        tests = {"positive": lambda v: v > 0, "nonnegative": lambda v: v >= 0,
                 "probability": lambda v: 0 <= v <= 1, "count": lambda v: v >= 1}
        words = {"positive": "> 0", "nonnegative": ">= 0", "probability": "in [0, 1]", "count": ">= 1"}
        for key, rule in rules.items():
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not tests[rule](v):
                raise ConfigError(f"relation.{key} must be {words[rule]}, got {v!r}")

    def choose(self, **allowed: tuple) -> None:
        """`choose(form=("kl", "ce"))`: a string option must be one of the allowed values."""
        for key, values in allowed.items():
            v = getattr(self, key)
            if v not in values:
                raise ConfigError(f"relation.{key} must be one of {', '.join(map(str, values))}, got {v!r}")

    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]


@dataclass(frozen=True)
class Dims:
    """What a term may size itself by."""
    num_known: int
    num_novel: int
    feat_dim: int               # backbone feature size (512 for ResNet-18)
    num_train: int              # training images, labeled and unlabeled (dataset indices run below it)
    tau: float                  # discover.tau, the softmax temperature of the joint prediction
    epochs: int                 # discovery epochs


@dataclass
class SetupData:
    """What a term may see of the training data before the first step."""
    labeled: object             # image set of the labeled (known-class) training images
    labels: Tensor              # [N_l] their labels, 0..C_l-1
    labeled_index: Tensor       # [N_l] their dataset indices
    unlabeled: object           # image set of the unlabeled training images (no labels)
    unlabeled_index: Tensor     # [N_u] their dataset indices
    features: Callable          # features(model, images) -> [N, D] eval-mode backbone features, in order


@dataclass
class StepContext:
    """One discovery step as a term sees it. Outputs are float32, grouped by view:
    the two (or more) large views only, which is where the terms apply."""
    student: dict[str, Tensor]  # lab [L, B, C_l], unlab [L, H, B, C_u], feats [L, B, D], maps [L, B, C, h, w]*
    teacher: dict[str, Tensor] | None  # frozen stage-1 model, eval mode, no grad: lab, feats, maps*
    lab: Tensor                 # [B] bool, labeled sample
    y: Tensor                   # [B] labels of labeled samples; -1 for every unlabeled one
    idx: Tensor                 # [B] dataset indices
    targets: Tensor             # [L, H, B, C_l + C_u] swapped-prediction targets (one-hot / Sinkhorn)
    epoch: int                  # 0-based discovery epoch
    # * maps only for terms that list "maps" in `uses`


class Relation(nn.Module):
    """Base class. Subclasses set `Options` and implement `forward`."""
    Options: ClassVar[type[Options]] = Options
    uses: ClassVar[frozenset[str]] = frozenset({"teacher"})  # "teacher": teacher outputs; "maps": conv maps
    overcluster: ClassVar[bool] = False   # UNO's over-clustering heads by default (model.overcluster=-1)

    def __init__(self, opts: Options, dims: Dims):
        super().__init__()
        self.opts, self.dims = opts, dims

    def setup(self, teacher: nn.Module | None, data: SetupData) -> None:
        """Once, before the first step of a new run (a resumed run restores the state instead)."""

    def scale(self, epoch: int) -> float:
        """Multiplier of beta at a 0-based epoch (annealing, switching off); 0 skips the term."""
        return 1.0

    def forward(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss, {name: scalar tensor to log})."""
        raise NotImplementedError


def sample_mask(lab: Tensor, samples: str) -> Tensor:
    """[B] bool: the samples a feature term applies to, "unlabeled" or "all" (a mask, not an
    index: boolean indexing would cost a host-device sync per step on GPUs)."""
    return ~lab if samples == "unlabeled" else torch.ones_like(lab)
