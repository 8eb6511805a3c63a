"""Relation-distillation terms of the discovery stage, chosen by name.

A term sees one training step through `StepContext` and returns a scalar loss
plus tensors to log. It may keep state (memory banks, class centres) between
steps; the discovery loop stays the same for every term. Later terms (REFILLED,
CRCD, RKD, SP, PKT; docs/relation_kd.md) register here the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .losses import relation_kd_terms


@dataclass
class StepContext:
    student: dict[str, Tensor]  # large views: lab [L, B, C_l], unlab [L, H, B, C_u], feats [L, B, D]
    teacher: dict[str, Tensor] | None  # large views, frozen stage-1 model: lab [L, B, C_l], feats [L, B, D]
    lab: Tensor                 # [B] bool, labeled sample
    y: Tensor                   # [B] labels (meaningful where lab)
    idx: Tensor                 # [B] dataset indices
    targets: Tensor             # [L, H, B, C_l + C_u] swapped-prediction targets
    epoch: int


class Relation:
    needs_teacher = True

    def __init__(self, cfg, num_known: int, num_novel: int, num_train: int):
        self.cfg = cfg

    def __call__(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class NoRelation(Relation):
    """UNO baseline: no distillation term."""
    needs_teacher = False

    def __call__(self, ctx):
        return ctx.targets.new_zeros(()), {}


class CrKD(Relation):
    """Class-relation KD on unlabeled samples, both large views, every head (method.md 4.4)."""

    def __call__(self, ctx):
        c, u = self.cfg, ~ctx.lab
        s_lab, s_unlab = ctx.student["lab"], ctx.student["unlab"]  # [L, B, C_l], [L, H, B, C_u]
        heads = s_unlab.shape[1]
        joint = torch.cat([s_lab.unsqueeze(1).expand(-1, heads, -1, -1), s_unlab], dim=-1)
        teacher = ctx.teacher["lab"].unsqueeze(1).expand(-1, heads, -1, -1)
        loss, g = relation_kd_terms(teacher, joint, c.t, c.tau, eta_at=c.eta_at, form=c.kd_form,
                                    detach_weight=c.detach_weight, mask=u)
        g, m = g.detach(), u.float()
        n = m.sum()
        std = torch.sqrt((((g - 1) ** 2) * m).sum(-1) / (n - 1).clamp_min(1)).mean()
        return loss, {"rkd/weight_mean": (g * m).sum(-1).mean() / n.clamp_min(1), "rkd/weight_std": std}


RELATIONS: dict[str, type[Relation]] = {"none": NoRelation, "crkd": CrKD}
