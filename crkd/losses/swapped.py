"""Swapped-prediction self-labeling loss (docs/methods.md, "Swapped prediction")."""
import torch
import torch.nn.functional as F
from torch import Tensor


def swapped_prediction(logits: Tensor, targets: Tensor, tau: float) -> Tensor:
    """Cross-entropy of each large view's targets against every other view's prediction.

    logits:  [V, H, B, C] joint cosine logits of all views (large views first), per head.
    targets: [L, H, B, C] soft targets of the L <= V large views.
    Returns [H, B]: per head and sample, the mean over the L * (V - 1) swapped pairs.
    """
    n_views, n_large = logits.shape[0], targets.shape[0]
    log_p = F.log_softmax(logits.float() / tau, dim=-1)
    # ce[i, j] = CE(targets[i], log_p[j]) for all pairs; the diagonal (same view) is excluded.
    ce = -torch.einsum("ihbc,jhbc->ijhb", targets.float(), log_p)
    keep = ~torch.eye(n_large, n_views, dtype=torch.bool, device=logits.device)
    return ce[keep].sum(0) / keep.sum()
