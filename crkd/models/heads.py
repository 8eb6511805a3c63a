"""Cosine classifier heads.

The cosine scores (normalise, then prototypes) are computed in float32 even under
autocast: Sinkhorn divides them by epsilon (down to 0.01 in searches) and the
softmaxes by tau * t, so bf16's 3 significant digits would move the targets.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineHead(nn.Module):
    """Bias-free prototypes on the L2-normalised feature; logits are cosines in [-1, 1]
    once `normalize_prototypes` has run (before every training step)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.prototypes = nn.Linear(in_dim, num_classes, bias=False)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=-1))

    def forward(self, feats: Tensor) -> Tensor:  # [B, D] -> [B, C]
        return cosine(feats, self.prototypes.weight.t())


class MultiHead(nn.Module):
    """H independent novel heads (MLP D -> hidden, BN, ReLU -> proj; L2-norm; cosine
    prototypes), evaluated together with batched matmuls instead of H small kernels.

    One BatchNorm1d over H * hidden features equals H separate BatchNorms."""

    def __init__(self, in_dim: int, num_classes: int, num_heads: int, hidden_dim: int, proj_dim: int):
        super().__init__()
        h = num_heads
        self.w1 = nn.Parameter(torch.empty(h, in_dim, hidden_dim))
        self.b1 = nn.Parameter(torch.empty(h, 1, hidden_dim))
        self.bn = nn.BatchNorm1d(h * hidden_dim)
        self.w2 = nn.Parameter(torch.empty(h, hidden_dim, proj_dim))
        self.b2 = nn.Parameter(torch.empty(h, 1, proj_dim))
        self.prototypes = nn.Parameter(torch.empty(h, num_classes, proj_dim))
        for w, b, fan_in in ((self.w1, self.b1, in_dim), (self.w2, self.b2, hidden_dim)):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        nn.init.uniform_(self.prototypes, -1 / math.sqrt(proj_dim), 1 / math.sqrt(proj_dim))
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.copy_(F.normalize(self.prototypes, dim=-1))

    def forward(self, feats: Tensor) -> Tensor:  # [B, D] -> [H, B, C]
        h, b = self.w1.shape[0], feats.shape[0]
        z = torch.baddbmm(self.b1, feats.unsqueeze(0).expand(h, -1, -1), self.w1)  # [H, B, hidden]
        z = self.bn(z.transpose(0, 1).reshape(b, -1)).reshape(b, h, -1).transpose(0, 1)
        z = torch.baddbmm(self.b2, torch.relu(z), self.w2)                          # [H, B, proj]
        return cosine(z, self.prototypes.transpose(1, 2))                           # [H, B, C]


def cosine(x: Tensor, prototypes: Tensor) -> Tensor:
    """normalise(x) @ prototypes in float32, autocast or not. x: [..., B, D]; prototypes
    [..., D, C] with unit columns (normalize_prototypes keeps them so)."""
    with torch.autocast(x.device.type, enabled=False):
        return torch.matmul(F.normalize(x.float(), dim=-1), prototypes.float())
