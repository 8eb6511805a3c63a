"""Relational feature distillation: RKD (Park et al., CVPR 2019), SP (Tung & Mori, ICCV 2019)
and PKT (Passalis & Tefas, ECCV 2018), as pure functions of tensors.

Conventions shared by every function here:
- Features are [..., N, D]: leading dims (views) are independent batches, each with its
  own relations; the loss is the mean over them.
- `mask` ([N] or [..., N] bool, None = all) marks the samples that take part, with the
  same result as calling the function on that subset alone (up to rounding). A mask
  rather than boolean indexing keeps shapes static: no host-device sync on GPUs.
- Each loss is exactly zero when student == teacher, with zero gradient (RKD, SP: exactly;
  PKT: its gradient cancels through the row normalisation, so up to rounding).
- RKD leaves out pairs and triplets that repeat a sample: they carry no information
  (RepDistiller keeps them in its means, where they are zero and only shrink the loss by
  a factor of about 1 - 1/N for pairs, 1 - 3/N for triplets). SP and PKT keep a sample's
  similarity to itself, as the original codes do: it enters their row normalisations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-12


def _weights(mask: Tensor | None, like: Tensor) -> Tensor:
    """[..., N] float weights (1 = included) for features `like` of shape [..., N, D]."""
    shape = like.shape[:-1]
    if mask is None:
        return like.new_ones(shape)
    return mask.to(like.dtype).expand(shape)


def _pair_weights(m: Tensor) -> Tensor:
    """[..., N, N]: 1 for pairs (i, j) of included samples with i != j."""
    n = m.shape[-1]
    off = 1 - torch.eye(n, dtype=m.dtype, device=m.device)
    return m.unsqueeze(-1) * m.unsqueeze(-2) * off


def _mean(values: Tensor, w: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Weighted mean over `dims` per leading batch, then the mean over the batches;
    0 for a batch with nothing included."""
    return ((values * w).sum(dims) / w.sum(dims).clamp_min(1)).mean()


def _gram(x: Tensor) -> Tensor:
    """[..., N, D] -> [..., N, N] inner products of the batch-centred features. Distances and
    angles are translation-invariant; centring makes |x|^2 small next to the distances, which
    keeps the cancellation in |a|^2 + |b|^2 - 2<a, b> harmless in float32."""
    x = x - x.mean(-2, keepdim=True)
    return x @ x.transpose(-1, -2)


def pair_distances(x: Tensor) -> Tensor:
    """[..., N, D] -> [..., N, N] Euclidean distances, zero diagonal."""
    g = _gram(x)
    sq = g.diagonal(dim1=-2, dim2=-1)
    d2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * g
    eye = torch.eye(x.shape[-2], dtype=torch.bool, device=x.device)
    # clamp: rounding can make d2 slightly negative, and sqrt has no gradient at 0
    return d2.clamp_min(EPS).sqrt().masked_fill(eye, 0.0)


def rkd_distance(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """RKD distance-wise loss.

    student, teacher: [..., N, D] features (D may differ between them).
    Each model's pairwise distances over the included pairs i != j are divided by their
    mean over those pairs (so only the shape of the configuration is matched, not its
    scale); the loss is the mean over those pairs of SmoothL1 (beta 1) between the
    normalised teacher and student distances. Scalar.
    """
    w = _pair_weights(_weights(mask, student))

    def normalised(x: Tensor) -> Tensor:
        d = pair_distances(x)
        mean = (d * w).sum((-2, -1)) / w.sum((-2, -1)).clamp_min(1)
        return d / mean.clamp_min(EPS)[..., None, None]

    diff = F.smooth_l1_loss(normalised(student), normalised(teacher), reduction="none")
    return _mean(diff, w, (-2, -1))


def angle_cosines(x: Tensor, anchors: Tensor | None = None) -> Tensor:
    """Cosines of the triplet angles with their vertex at an anchor.

    x: [..., N, D]; anchors: [..., A] long indices into N (None: every sample, A = N).
    Returns [..., A, N, N]: out[a, j, k] = cos of the angle between x_j - x_a and x_k - x_a;
    0 where j or k is the anchor itself (as RepDistiller's normalisation of a zero vector).

    Computed from the Gram matrix G of the centred features,
    <x_j - x_a, x_k - x_a> = G_jk - G_aj - G_ak + G_aa, so the cost is O(N^2 D) for G plus
    O(A N^2) time and memory for the cosines, not O(A N^2 D) for explicit differences.
    """
    n = x.shape[-2]
    g = _gram(x)
    if anchors is None:
        anchors = torch.arange(n, device=x.device).expand(*x.shape[:-2], n)
    ga = g.gather(-2, anchors.unsqueeze(-1).expand(*anchors.shape, n))   # [..., A, N]: G_aj
    gaa = ga.gather(-1, anchors.unsqueeze(-1))                             # [..., A, 1]: G_aa
    sq = g.diagonal(dim1=-2, dim2=-1).unsqueeze(-2)                        # [..., 1, N]: G_jj
    length = (sq - 2 * ga + gaa).clamp_min(EPS).sqrt()                     # [..., A, N]: |x_j - x_a|
    vertex = torch.arange(n, device=x.device) == anchors.unsqueeze(-1)    # [..., A, N]: j == a
    inv = length.reciprocal().masked_fill(vertex, 0.0)                     # 0 zeroes the vertex rows
    h = ga - gaa / 2                                                       # dot = G_jk - h_aj - h_ak
    # four elementwise passes over the [..., A, N, N] result: it is the whole cost
    dot = g.unsqueeze(-3) - (h.unsqueeze(-1) + h.unsqueeze(-2))
    return dot * inv.unsqueeze(-1) * inv.unsqueeze(-2)


def rkd_angle(student: Tensor, teacher: Tensor, mask: Tensor | None = None,
              anchors: Tensor | None = None) -> Tensor:
    """RKD angle-wise loss.

    student, teacher: [..., N, D] features. anchors: [..., A] indices of the vertices to use
    (None: all N, RepDistiller's full O(N^3) form); anchors outside the mask are ignored.
    Mean over triplets (a, j, k) of distinct included samples, a an anchor, of SmoothL1
    (beta 1) between teacher and student angle cosines. With the anchors a uniform random
    subset of the included samples this is an unbiased estimate of the full mean (every
    anchor has the same number of triplets). Scalar.
    """
    m = _weights(mask, student)
    n = m.shape[-1]
    if anchors is None:
        anchors = torch.arange(n, device=m.device).expand(*m.shape[:-1], n)
    diff = F.smooth_l1_loss(angle_cosines(student, anchors), angle_cosines(teacher, anchors), reduction="none")
    # Triplets with j or k at the vertex are 0 in both cosines, so they add nothing to the sum;
    # the count leaves them out: an included anchor has (M - 1)(M - 2) pairs j != k of other
    # included samples, M the number included. Weights stay [A] and [N, N], never [A, N, N].
    w_anchor = m.gather(-1, anchors)                                        # [..., A]
    total = (torch.einsum("...ajk,...jk->...a", diff, _pair_weights(m)) * w_anchor).sum(-1)
    count = m.sum(-1)
    count = w_anchor.sum(-1) * (count - 1) * (count - 2)
    return (total / count.clamp_min(1)).mean()


def sp_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Similarity-preserving loss (SP).

    student, teacher: [..., N, K] flattened feature maps (K = C * h * w; may differ).
    Per model G = F F^T over the included samples, each row L2-normalised; the loss is the
    mean over included rows i of sum_j (G_T - G_S)_ij^2, the squared Frobenius norm divided
    by N. RepDistiller divides by N^2 instead, which makes the loss shrink as 1/N with the
    batch size; per row it does not depend on N. Each term lies in [0, 4]. Scalar.
    """
    m = _weights(mask, student)

    def rows(f: Tensor) -> Tensor:
        return F.normalize((f @ f.transpose(-1, -2)) * m.unsqueeze(-2), dim=-1)

    sq = (rows(teacher) - rows(student)).pow(2).sum(-1)                    # [..., N]
    return _mean(sq, m, (-1,))


def pkt_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer loss (PKT).

    student, teacher: [..., N, D] features (D may differ).
    Per model, cosine similarities s_ij mapped to (s_ij + 1) / 2 in [0, 1], each row
    normalised over the included j (the sample itself included, as in the original code)
    to a distribution p_i; the loss is the mean over included rows i of KL(p_T_i || p_S_i).
    RepDistiller averages the N^2 terms instead (the row mean divided by N, hence its weight
    30000). `eps` floors the similarities before the log (RepDistiller adds it to both
    probabilities, which leaves a small gradient at student == teacher; a floor does not). Scalar.
    """
    m = _weights(mask, student)

    def log_p(x: Tensor) -> Tensor:
        x = F.normalize(x, dim=-1)
        s = ((x @ x.transpose(-1, -2) + 1) / 2).clamp_min(eps)
        return s.log() - (s * m.unsqueeze(-2)).sum(-1, keepdim=True).log()

    lt, ls = log_p(teacher), log_p(student)
    kl = (m.unsqueeze(-2) * lt.exp() * (lt - ls)).sum(-1)                  # [..., N]
    return _mean(kl, m, (-1,))
