"""Sinkhorn-Knopp equal-partition pseudo-labels (method.md 4.2), in the log domain."""
import math

import torch
from torch import Tensor


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, epsilon: float = 0.05, n_iters: int = 3) -> Tensor:
    """Soft assignments of B samples to K classes with equal class mass.

    logits: [..., B, K] raw cosine scores (not divided by tau); leading dims are
    independent problems (views, heads). Returns [..., B, K] in float32, each row
    summing to 1 and each column to B / K.

    Runs the same alternating normalisation as the reference algorithm, but on
    log-potentials (logsumexp), so small epsilon cannot underflow whole samples.
    """
    b, k = logits.shape[-2:]
    log_q = logits.float() / epsilon
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=-2, keepdim=True) - math.log(k)  # class mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True) - math.log(b)  # sample mass 1/B
    return torch.exp(log_q + math.log(b))
