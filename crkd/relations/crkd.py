"""Cr-KD's class-relation distillation (ICCV 2023), paper form and public-code form.

L_rKD = mean_i g_i * t^2 * KL(p_T_i || p_S_i) over the unlabeled samples of both large
views and every head, p = softmax of the known-class cosine logits at tau * t, g the
known-class mass eta of the student's joint prediction normalised to mean 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import relation_kd_terms
from .base import Options, Relation


@dataclass
class CrKDOptions(Options):
    t: float = 4.0              # KD temperature, on top of discover.tau (effective tau * t)
    eta_at: str = "tau"         # temperature of the known mass eta: "tau" (paper) or "tau_t" (code)
    form: str = "kl"            # "kl" (paper) or "ce" (code: KL + teacher entropy)
    weight_norm: str = "sample"  # g's mean is 1 per view and head ("sample") or over all ("global", code)
    detach_weight: bool = False  # True: no gradient through g

    def validate(self) -> None:
        self.check(t="positive")
        self.choose(eta_at=("tau", "tau_t"), form=("kl", "ce"), weight_norm=("sample", "global"))


@dataclass
class CrKDCodeOptions(CrKDOptions):
    """The public code (kleinzcy/Cr-KD-NCD, model/losses.py `KD`) exactly."""
    eta_at: str = "tau_t"
    form: str = "ce"
    weight_norm: str = "global"


class CrKD(Relation):
    """Class-relation KD on unlabeled samples, both large views, every head."""
    Options = CrKDOptions

    def forward(self, ctx):
        o, u = self.opts, ~ctx.lab
        s_lab, s_unlab = ctx.student["lab"], ctx.student["unlab"]  # [L, B, C_l], [L, H, B, C_u]
        heads = s_unlab.shape[1]
        joint = torch.cat([s_lab.unsqueeze(1).expand(-1, heads, -1, -1), s_unlab], dim=-1)
        teacher = ctx.teacher["lab"].unsqueeze(1).expand(-1, heads, -1, -1)
        loss, g = relation_kd_terms(teacher, joint, o.t, self.dims.tau, eta_at=o.eta_at, form=o.form,
                                    detach_weight=o.detach_weight, mask=u, weight_norm=o.weight_norm)
        g, m = g.detach(), u.float()
        n = m.sum()
        std = torch.sqrt((((g - 1) ** 2) * m).sum(-1) / (n - 1).clamp_min(1)).mean()
        return loss, {"rkd/weight_mean": (g * m).sum(-1).mean() / n.clamp_min(1), "rkd/weight_std": std}


class CrKDCode(CrKD):
    """The same term with the public code's defaults (CE, eta at tau * t, global weight norm)."""
    Options = CrKDCodeOptions
