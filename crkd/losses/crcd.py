"""CRCD's relation contrastive loss (Zhu et al., CVPR 2021), in Gram-matrix form.

A relation of a vector v to an anchor a is r(v, a) = normalise(v - a). A query's relation to
anchor a_j must pick the relation of its positive w_i to a_j among those of K negatives w_k
(shared by every query). Every score <r(w, a), r(v, a)> follows from dot products:

    <norm(w - a), norm(v - a)> = (w.v - w.a - a.v + |a|^2) / (|w - a| |v - a|)

so the literal (queries * anchors, K + 1, d) tensor of relation vectors is never built: the
largest tensor is the score tensor [M, A, K] itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Floor of squared distances |w - a|^2, |v - a|^2. Computed from dot products they carry
# rounding of ~1e-7, so for an anchor equal to a vector (it is drawn from the same memory)
# the score would be rounding noise over a tiny norm; at a floor of 1e-6 it stays below ~1e-3.
_EPS = 1e-6


def relation_scores(queries: Tensor, anchors: Tensor, candidates: Tensor, scale: float = 1.0) -> Tensor:
    """[M, A, K] scores scale * <r(w_k, a_j), r(v_i, a_j)> for queries v [M, d], anchors a [A, d]
    and candidates w [K, d] shared by all queries (scale = 1 / tau gives the critic's logits)."""
    v, a, w = queries.float(), anchors.float(), candidates.float()
    aa = (a * a).sum(-1, keepdim=True)                                            # [A, 1]
    av = a @ v.t()                                                                # [A, M]
    wa = a @ w.t()                                                                # [A, K]
    inv_w = ((w * w).sum(-1) - 2 * wa + aa).clamp_min(_EPS).rsqrt()               # [A, K]
    inv_v = ((v * v).sum(-1) - 2 * av + aa).clamp_min(_EPS).rsqrt() * scale       # [A, M]
    num = (v @ w.t()).unsqueeze(1) + ((aa - wa).unsqueeze(0) - av.t().unsqueeze(2))  # [M, A, K]
    return num * inv_w * inv_v.t().unsqueeze(2)


def paired_relation_scores(queries: Tensor, anchors: Tensor, positives: Tensor, scale: float = 1.0) -> Tensor:
    """[M, A] scores scale * <r(w_i, a_j), r(v_i, a_j)> with one candidate w_i [M, d] per query v_i."""
    v, a, w = queries.float(), anchors.float(), positives.float()
    aa = (a * a).sum(-1)
    av, aw = v @ a.t(), w @ a.t()                                                 # [M, A]
    num = (v * w).sum(-1, keepdim=True) - aw - av + aa
    nv = ((v * v).sum(-1, keepdim=True) - 2 * av + aa).clamp_min(_EPS)
    nw = ((w * w).sum(-1, keepdim=True) - 2 * aw + aa).clamp_min(_EPS)
    return num * (nv * nw).rsqrt() * scale


def infonce(pos: Tensor, neg: Tensor) -> Tensor:
    """Cross-entropy of the positive among the K + 1 candidates, per row of logits
    (scores / tau, i.e. the critic exp(score / tau)). pos: [...], neg: [..., K]. Returns [...]."""
    return torch.logaddexp(pos, torch.logsumexp(neg, dim=-1)) - pos


def nce_log_z(pos: Tensor, neg: Tensor, n_data: int) -> Tensor:
    """CRD's normalisation constant from one batch of logits: log Z = log(mean(exp(logits)) * N)."""
    logits = torch.cat([pos.reshape(-1), neg.reshape(-1)])
    return torch.logsumexp(logits, 0) - math.log(logits.numel()) + math.log(n_data)


def nce(pos: Tensor, neg: Tensor, log_z: Tensor, n_data: int) -> Tensor:
    """CRD's binary NCE per row of logits (scores / tau), with P = exp(logit) / Z against the
    uniform noise distribution 1 / N and K = neg.shape[-1] noise samples per positive:
    -[log P_pos / (P_pos + K/N) + sum_k log (K/N) / (P_k + K/N)], written with softplus.
    pos: [...], neg: [..., K]. Returns [...]."""
    log_kn = math.log(neg.shape[-1] / n_data)
    return F.softplus(log_kn - (pos - log_z)) + F.softplus(neg - log_z - log_kn).sum(-1)


def contrast_scores(queries: Tensor, positives: Tensor, negatives: Tensor, anchors: Tensor,
                    scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """The scores of CRCD's relation contrast times scale: (pos [M, A], neg [M, A, K]).

    queries: [M, d] (student side: the student's current projections); positives: [M, d] each
    query's positive (the other model's memory entry of its image); negatives: [K, d] shared
    by all queries; anchors: [A, d]. Memory O(M * A * K), never O(M * A * K * d).
    """
    return (paired_relation_scores(queries, anchors, positives, scale),
            relation_scores(queries, anchors, negatives, scale))


def top1(pos: Tensor, neg: Tensor) -> Tensor:
    """[...] 1.0 where the positive scores above every negative (pos [...], neg [..., K])."""
    return (pos > neg.amax(-1)).float()


def momentum_update(memory: Tensor, idx: Tensor, new: Tensor, momentum: float) -> None:
    """In place, no gradient: memory[idx] = normalise(momentum * memory[idx] + (1 - momentum) * new).
    memory: [N, d]; idx: [B] distinct dataset indices; new: [B, d]."""
    with torch.no_grad():
        mixed = memory.index_select(0, idx) * momentum + new.detach().to(memory.dtype) * (1 - momentum)
        memory.index_copy_(0, idx, F.normalize(mixed, dim=-1))


def ce_feature_grad(feats: Tensor, prototypes: Tensor, labels: Tensor, tau: float,
                    create_graph: bool = False) -> Tensor:
    """Gradient of the cosine classifier's cross-entropy w.r.t. the features, per sample.

    feats: [..., D] backbone features (in the autograd graph when create_graph: the student's);
    prototypes: [C, D] classifier rows; labels: [...] class per sample; logits
    normalise(feats) @ prototypes^T / tau. The loss is summed over samples, so each row is its
    own sample's gradient. With create_graph the result stays differentiable (double backprop).
    """
    if not feats.requires_grad:
        feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = F.normalize(feats, dim=-1) @ prototypes.t() / tau
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        (grad,) = torch.autograd.grad(ce, feats, create_graph=create_graph)
    return grad
