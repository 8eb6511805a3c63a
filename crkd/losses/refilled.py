"""REFILLED's two losses (Ye, Lu, Zhan; CVPR 2020 / TPAMI 2022): tuple comparison matching on
an embedding and the embedding-induced classifier, as pure functions of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_distances(emb: Tensor) -> Tensor:
    """Euclidean distances [M, M] between the rows of emb [M, D].

    From the Gram matrix; the squared distance is clamped at 1e-12 before the square root so
    the diagonal (and exact duplicates) get a zero gradient instead of 0/0."""
    sq = (emb * emb).sum(-1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * emb @ emb.t()
    return d2.clamp_min(1e-12).sqrt()


def tuple_facts(lab: Tensor, y: Tensor, pseudo: Tensor, sure: Tensor, num_known: int) -> tuple[Tensor, Tensor]:
    """Positive and negative pairs [M, M] (bool) over the M = L * B views, from NCD facts only.

    lab: [B] bool labeled; y: [B] labels 0..num_known-1 of labeled samples (ignored elsewhere);
    pseudo: [L, B] this step's novel pseudo-label of each unlabeled view (ignored on labeled ones);
    sure: [L, B] bool, the pseudo-label may be used (confident enough).
    Row/column m = l * B + b is view l of sample b.

    Positive: two views of one image; two labeled samples with one label; two sure unlabeled
    views with one pseudo-label. Negative: a labeled/unlabeled pair (disjoint class sets); two
    labeled samples with different labels; two sure unlabeled views with different
    pseudo-labels. Anything else (an unsure unlabeled view with another unlabeled one) is
    neither. A view is never paired with itself, and two views of one image never negative.
    """
    n_views, b = pseudo.shape
    lab_m = lab.repeat(n_views)                                     # [M]
    # Known classes first, novel ones after them: one id space, so equal id means one class.
    cls = torch.where(lab.unsqueeze(0), y.unsqueeze(0), num_known + pseudo).reshape(-1)
    usable = (lab.unsqueeze(0) | sure).reshape(-1)                  # the class id may be compared
    image = torch.arange(b, device=lab.device).repeat(n_views)
    same_image = image.unsqueeze(1) == image.unsqueeze(0)
    both = usable.unsqueeze(1) & usable.unsqueeze(0)
    same = cls.unsqueeze(1) == cls.unsqueeze(0)
    eye = torch.eye(len(cls), dtype=torch.bool, device=lab.device)
    pos = (same_image | (both & same)) & ~eye
    neg = ~same_image & ((lab_m.unsqueeze(1) != lab_m.unsqueeze(0)) | (both & ~same))
    return pos, neg


def _positives(pos: Tensor, anchors: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Up to k positives per anchor, a uniform random subset where there are more:
    (indices [M, k], usable [M, k] bool). Random keys and topk keep it free of host syncs."""
    key = torch.where(pos & anchors.unsqueeze(1), torch.rand(pos.shape, device=pos.device), -1.0)
    val, idx = key.topk(min(k, pos.shape[1]), dim=1)
    return idx, val >= 0


def _kl_and_grad(gap_s: Tensor, gap_t: Tensor, tau1: float) -> tuple[Tensor, Tensor]:
    """Per triplet, KL(Bern(sigmoid(x_t)) || Bern(sigmoid(x_s))) with x = gap / tau1, which is
    softplus(x_s) - softplus(x_t) - sigmoid(x_t) (x_s - x_t), and its derivative w.r.t. gap_s,
    (sigmoid(x_s) - sigmoid(x_t)) / tau1."""
    x_s, x_t = gap_s / tau1, gap_t / tau1
    p_t = torch.sigmoid(x_t)
    kl = F.softplus(x_s) - F.softplus(x_t) - p_t * (x_s - x_t)
    return kl, (torch.sigmoid(x_s) - p_t) / tau1


def _triplet_pass(d_s: Tensor, d_t: Tensor, p_idx: Tensor, p_ok: Tensor, neg: Tensor, tau1: float,
                  margin: float, max_elems: int, compact: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of the per-triplet losses, their number and the gradient of the sum w.r.t. d_s.

    Anchors are taken in chunks of c rows so that one chunk's [c, k, M] tensors (anchor,
    positive, negative) hold at most max_elems entries: the peak memory is a few such tensors
    whatever the batch, and the gradient is accumulated into an [M, M] matrix as we go instead
    of being left to autograd, which would keep every chunk alive until the backward.
    compact: evaluate the loss on the mined triplets only (nonzero), not on the whole masked
    chunk; a few times faster where there is no device to wait for (CPU), a host sync per chunk
    on an accelerator."""
    m, k = p_idx.shape
    chunk = max(1, max_elems // (k * m))
    total = d_s.new_zeros(())
    count = d_s.new_zeros(())
    grad = torch.zeros_like(d_s)
    for start in range(0, m, chunk):
        rows = slice(start, min(start + chunk, m))
        pi = p_idx[rows]
        s_an, t_an = d_s[rows], d_t[rows]                                         # [c, M]
        s_ap, t_ap = s_an.gather(1, pi), t_an.gather(1, pi)                       # [c, k]
        gap_s = s_an.unsqueeze(1) - s_ap.unsqueeze(2)                             # [c, k, M]: d_an - d_ap
        # Semi-hard by the student's distances: d_ap < d_an < d_ap + margin.
        valid = p_ok[rows].unsqueeze(2) & neg[rows].unsqueeze(1) & (gap_s > 0) & (gap_s < margin)
        view = grad[rows]
        if compact:
            a, p, n = valid.nonzero(as_tuple=True)
            kl, g = _kl_and_grad(gap_s[a, p, n], t_an[a, n] - t_ap[a, p], tau1)
            total = total + kl.sum()
            count = count + len(a)
            view.index_put_((a, n), g, accumulate=True)
            view.index_put_((a, pi[a, p]), -g, accumulate=True)
        else:
            kl, g = _kl_and_grad(gap_s, t_an.unsqueeze(1) - t_ap.unsqueeze(2), tau1)
            w = valid.to(d_s.dtype)
            total = total + (kl * w).sum()
            count = count + w.sum()
            g = g * w
            view += g.sum(1)
            view.scatter_add_(1, pi, -g.sum(2))
    return total, count, grad


class _TupleKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d_s, d_t, p_idx, p_ok, neg, tau1, margin, max_elems, compact):
        total, count, grad = _triplet_pass(d_s.detach(), d_t.detach(), p_idx, p_ok, neg, tau1, margin,
                                           max_elems, compact)
        n = count.clamp_min(1)
        ctx.save_for_backward(grad / n)
        ctx.mark_non_differentiable(count)
        return total / n, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_count):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None, None, None, None


def tuple_kl(d_student: Tensor, d_teacher: Tensor, pos: Tensor, neg: Tensor, anchors: Tensor,
             tau1: float = 4.0, margin: float = 0.2, max_positives: int = 64,
             max_elems: int = 1 << 24, compact: bool | None = None) -> tuple[Tensor, Tensor]:
    """REFILLED's triplet comparison matching: mean over mined triplets of
    KL(Bern(sigmoid((dT_an - dT_ap) / tau1)) || Bern(sigmoid((dS_an - dS_ap) / tau1))).

    d_student, d_teacher: [M, M] distances in each model's embedding.
    pos, neg: [M, M] bool pairs allowed as (anchor, positive) and (anchor, negative).
    anchors: [M] bool, the rows that may be anchors.
    Triplets (a, p, n) are mined semi-hard by the student: d_ap < d_an < d_ap + margin.
    Every value is read from the two distance matrices; no embedding is gathered per triplet.
    Cost cap: at most max_positives positives per anchor (a uniform random subset, drawn from
    the global RNG, where an anchor has more), so the work is O(M * max_positives * M) rather
    than O(M^3). Memory cap: a few [c, k, M] tensors with c * k * M <= max_elems, k =
    min(max_positives, M) (see _triplet_pass), plus [M, M] matrices.
    compact: None picks by device: gather the mined triplets on the CPU, masks elsewhere (no
    host-device sync); both give the same value up to summation order.
    Returns (scalar loss, number of triplets); 0 when there is none. Only d_student gets a
    gradient (the teacher is frozen); the loss is not twice differentiable.
    """
    p_idx, p_ok = _positives(pos, anchors, max_positives)
    if compact is None:
        compact = d_student.device.type == "cpu"
    return _TupleKL.apply(d_student.float(), d_teacher.float(), p_idx, p_ok, neg, float(tau1),
                          float(margin), int(max_elems), bool(compact))


def class_centres(emb: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """[C, D] unit class centres: the mean of the L2-normalised rows of emb [N, D] per class
    (labels [N] in 0..C-1), normalised again. A class without a sample gets a zero row."""
    e = F.normalize(emb.float(), dim=-1)
    sums = torch.zeros(num_classes, e.shape[1], device=e.device).index_add_(0, labels, e)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


def centre_kd(teacher_emb: Tensor, centres: Tensor, student_logits: Tensor, temp: float,
              mask: Tensor | None = None) -> Tensor:
    """The embedding-induced classifier's distillation: KL(q_T || p_S) per row, masked mean.

    teacher_emb: [..., N, D] L2-normalised teacher embeddings; centres: [C, D] unit centres;
    student_logits: [..., N, C] the student's cosine scores on the same C classes;
    q_T = softmax(teacher_emb @ centres^T / temp), p_S = softmax(student_logits / temp).
    mask: optional [N] bool, the rows that count. Returns the masked mean of KL(q_T || p_S).
    """
    log_q = F.log_softmax(teacher_emb.float() @ centres.float().t() / temp, dim=-1)
    log_p = F.log_softmax(student_logits.float() / temp, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)                    # [..., N]
    if mask is None:
        return kl.mean()
    m = mask.to(kl.dtype).expand_as(kl)
    return (kl * m).sum() / m.sum().clamp_min(1)
