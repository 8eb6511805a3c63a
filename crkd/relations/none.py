"""No distillation term: the UNO v2 baseline (`uno`) and the ablation (`none`).

Both train with swapped-prediction self-labeling only; `scale` is 0, so the
discovery step skips the term and the teacher forward altogether. They differ in
the heads: `uno` adds UNO's over-clustering heads by default (model.overcluster=-1
resolves to UNO's factor for the benchmark), `none` does not.
"""
from __future__ import annotations

from .base import Relation


class NoRelation(Relation):
    """`none`: the trainer without a term (Cr-KD minus L_rKD)."""
    uses = frozenset()

    def scale(self, epoch: int) -> float:
        return 0.0

    def forward(self, ctx):
        return ctx.targets.new_zeros(()), {}


class Uno(NoRelation):
    """`uno`: UNO v2 (Fini et al., ICCV 2021): no term, over-clustering heads."""
    overcluster = True
