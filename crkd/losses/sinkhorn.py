"""Sinkhorn-Knopp equal-partition pseudo-labels, in the log domain (docs/methods.md,
"Sinkhorn-Knopp pseudo-labels")."""
from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, epsilon: float = 0.05, n_iters: int = 3,
                   mask: Tensor | None = None) -> Tensor:
    """Soft assignments of B samples to K classes with equal class mass.

    logits: [..., B, K] raw cosine scores (not divided by tau); leading dims are
    independent problems (views, heads). mask: optional [B] bool, the samples that
    take part (the others get all-zero rows); it replaces boolean indexing, which
    would force a host-device sync on GPUs. Returns [..., B, K] in float32, each
    included row summing to 1 and each column to B_included / K.

    Runs the same alternating normalisation as the reference algorithm, but on
    log-potentials (logsumexp), so small epsilon cannot underflow whole samples.
    """
    k = logits.shape[-1]
    if mask is None:
        mask = torch.ones(logits.shape[-2], dtype=torch.bool, device=logits.device)
    keep = mask.view(-1, 1)
    log_b = torch.log(mask.sum().clamp_min(1).float())
    neg_inf = torch.tensor(float("-inf"), device=logits.device)
    log_q = torch.where(keep, logits.float() / epsilon, neg_inf)
    for _ in range(n_iters):
        log_q = torch.where(keep, log_q - torch.logsumexp(log_q, dim=-2, keepdim=True) - math.log(k), neg_inf)
        log_q = torch.where(keep, log_q - torch.logsumexp(log_q, dim=-1, keepdim=True) - log_b, neg_inf)
    return torch.exp(log_q + log_b)
