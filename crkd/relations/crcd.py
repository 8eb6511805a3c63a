"""CRCD (Zhu et al., CVPR 2021), complementary relation contrastive distillation, in the
Gram-matrix form (docs/methods.md, "crcd").

Backbone features of the large views are projected (a learnable linear layer per model, as in
CRD / CRCD, or the identity with proj_dim 0) and L2-normalised. Two momentum memory banks (one
per model, N x d, indexed by dataset index) hold past projections. Each step draws `anchors`
teacher-memory entries a_j and `negatives` memory entries shared by the batch, uniformly over
the training set. The student's relation r(v_i, a_j) = normalise(v_i - a_j) must pick the
teacher's relation r(memT[i], a_j) of the same image among those of the negatives
r(memT[k], a_j), with the critic exp(<r_T, r_S> / tau): InfoNCE over the K + 1 candidates by
default, CRD's NCE with `form: nce`. With a learnable teacher projection the symmetric
teacher-side loss (teacher relation against the student's memory, anchors from the student's
memory) trains that projection, as in CRD / CRCD; the two sides are summed as there. The banks
are updated after the loss with the batch (momentum `momentum`, mean of the large views).

`grad: true` adds the complementary element: the same loss on the gradients of the
known-class cross-entropy w.r.t. the features (teacher's argmax as the label of every sample),
with its own projections and banks; the student's gradient is taken with create_graph, so the
loss back-propagates through it (double backprop).

Deviations from the paper and the released (unofficial, marked incomplete) code
Lechatelia/CRCD, and why:
- Anchors are `anchors` random teacher-memory entries per step, shared by the batch (the code:
  the batch's own memory entries, B anchors), and negatives are shared by all queries (the
  code: K per query). Sharing is what lets every score come from Gram matrices; the literal
  (B * anchors, K + 1, d) relation tensor with the code's B anchors would take ~63 GiB at
  B = 512.
- A query's own memory entry, when drawn as a negative, is masked out (it is a copy of the
  positive; at K = 500 of N = 1400 on digits that is ~30% of the queries). CRD draws its
  negatives from other classes, which needs labels novel samples do not have: here they are
  uniform, with a false-negative rate of about 1 / C_u. Likewise an anchor that is the query's
  own entry (no relation to compare) is left out of that query's mean over anchors.
- InfoNCE by default (the code: NCE), numerically safer and free of CRD's constant Z.
- The sides are summed and every loss is a mean over queries and anchors; no loss weights.
- Both banks start from the teacher's eval-mode features of the whole training set (through
  each side's initial projection), computed in setup, not random unit vectors: the student
  starts equal to the teacher, and random entries would make the first epoch's anchors,
  positives and negatives noise.
- Gradient element: the student's gradient is taken through the frozen teacher's known head
  (its prototypes, copied into a buffer in setup), not the student's own head, which a term
  cannot see (it gets outputs, not modules); both heads start equal and the student's is
  trained on the same known classes. Gradients are L2-normalised before the projection:
  their scale (1 / |f|, the CE reduction) would otherwise let the projection's bias dominate.
- The released code switches distillation off for the last ~4% of epochs (240 of 250 on
  CIFAR): scale(epoch) = 0 from (1 - off_tail) * discover.epochs on.
Memory: the largest tensor is a side's score tensor [L * B, anchors, K] (16.4 M floats, 66 MB
at B = 512, L = 2, 32 anchors, K = 500); one step of both sides allocates at most 30 of its
size in forward and backward together (2 GB, measured 27.9; twice that with grad), against
8.4 GB for the single (L * B * anchors, K + 1, d) tensor of the literal form. See
tests/test_relation_crcd.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.crcd import ce_feature_grad, contrast_scores, infonce, momentum_update, nce, nce_log_z, top1
from .base import Options, Relation, sample_mask


@dataclass
class CrcdOptions(Options):
    proj_dim: int = 128         # projection size (learnable linear per model); 0: identity, no projection
    tau: float = 0.05           # critic temperature, exp(<r_T, r_S> / tau)
    anchors: int = 32           # random teacher-memory anchors per step, shared by the batch
    negatives: int = 500        # K negatives per step, uniform over the training set, shared by the batch
    momentum: float = 0.5       # memory update: mem = normalise(m * mem + (1 - m) * new)
    form: str = "infonce"       # "infonce" (cross-entropy over K + 1) or "nce" (CRD's NCE)
    grad: bool = False          # add the gradient element (double backprop)
    samples: str = "unlabeled"  # queries that count: "unlabeled" or "all"
    off_tail: float = 0.04      # fraction of the last epochs without the term (released code: ~4%)

    def validate(self) -> None:
        self.check(proj_dim="nonnegative", tau="positive", anchors="count", negatives="count",
                   momentum="probability", off_tail="probability")
        self.choose(form=("infonce", "nce"), samples=("unlabeled", "all"))


class Element(nn.Module):
    """One element (features or their gradients): a projection and a memory bank per model."""

    def __init__(self, in_dim: int, proj_dim: int, n: int):
        super().__init__()
        d = proj_dim or in_dim
        self.proj_s = nn.Linear(in_dim, d) if proj_dim else nn.Identity()
        self.proj_t = nn.Linear(in_dim, d) if proj_dim else nn.Identity()
        self.learn_t = proj_dim > 0  # the teacher side has something to train
        self.register_buffer("mem_s", torch.zeros(n, d))
        self.register_buffer("mem_t", torch.zeros(n, d))
        self.register_buffer("log_z", torch.full((2,), float("nan")))  # NCE's Z per side, set once

    def embed(self, x: Tensor, side: str) -> Tensor:
        return F.normalize((self.proj_s if side == "s" else self.proj_t)(x.float()), dim=-1)

    @torch.no_grad()
    def fill(self, index: Tensor, x: Tensor, chunk: int = 8192) -> None:
        for i in range(0, len(index), chunk):
            self.mem_s[index[i:i + chunk]] = self.embed(x[i:i + chunk], "s")
            self.mem_t[index[i:i + chunk]] = self.embed(x[i:i + chunk], "t")


class Crcd(Relation):
    """CRCD's relation contrastive term (see the module docstring)."""
    Options = CrcdOptions

    def __init__(self, opts, dims):
        super().__init__(opts, dims)
        self.feat = Element(dims.feat_dim, opts.proj_dim, dims.num_train)
        if opts.grad:
            self.gradient = Element(dims.feat_dim, opts.proj_dim, dims.num_train)
            # The teacher's known-head prototypes as a buffer: a copy, never a submodule, so the
            # optimizer cannot reach the teacher; it travels in the checkpoint for a resume.
            self.register_buffer("head", torch.zeros(dims.num_known, dims.feat_dim))

    @torch.no_grad()
    def setup(self, teacher, data) -> None:
        feats = torch.cat([data.features(teacher, data.labeled), data.features(teacher, data.unlabeled)])
        index = torch.cat([data.labeled_index, data.unlabeled_index]).to(feats.device)
        self.feat.fill(index, feats)
        if self.opts.grad:
            self.head.copy_(teacher.head_lab.prototypes.weight)
            labels = (F.normalize(feats, dim=-1) @ self.head.t()).argmax(-1)
            grads = ce_feature_grad(feats, self.head, labels, self.dims.tau)
            self.gradient.fill(index, F.normalize(grads, dim=-1))

    def scale(self, epoch: int) -> float:
        return 0.0 if epoch >= (1 - self.opts.off_tail) * self.dims.epochs else 1.0

    def forward(self, ctx):
        o, n = self.opts, self.dims.num_train
        s_feats, t_feats = ctx.student["feats"], ctx.teacher["feats"]
        n_views = s_feats.shape[0]
        dev = s_feats.device
        mask = sample_mask(ctx.lab, o.samples).repeat(n_views).float()      # [M] queries
        # Global RNG: the stage saves its state in the checkpoint, so a resume draws the same.
        anchor_idx = torch.randint(n, (o.anchors,), device=dev)
        neg_idx = torch.randint(n, (o.negatives,), device=dev)
        draw = (ctx.idx, anchor_idx, neg_idx, mask)

        loss, logs = self._element(self.feat, s_feats, t_feats, *draw, "")
        if o.grad:
            labels = ctx.teacher["lab"].argmax(-1)                             # [L, B]
            g_t = ce_feature_grad(t_feats, self.head, labels, self.dims.tau)
            g_s = ce_feature_grad(s_feats, self.head, labels, self.dims.tau, create_graph=True)
            g_loss, g_logs = self._element(self.gradient, F.normalize(g_s, dim=-1), F.normalize(g_t, dim=-1),
                                           *draw, "grad_")
            loss = loss + g_loss
            logs.update(g_logs)
        return loss, logs

    def _element(self, el: Element, s_in: Tensor, t_in: Tensor, idx: Tensor, anchor_idx: Tensor,
                 neg_idx: Tensor, mask: Tensor, prefix: str) -> tuple[Tensor, dict[str, Tensor]]:
        n_views = s_in.shape[0]
        z_s = el.embed(s_in, "s")                                               # [L, B, d]
        z_t = el.embed(t_in.detach(), "t")
        q_idx = idx.repeat(n_views)
        loss_s, acc = self._side(z_s.flatten(0, 1), el.mem_t, el.log_z[0:1], q_idx, anchor_idx, neg_idx, mask)
        logs = {f"rel/crcd/{prefix}student": loss_s.detach(), f"rel/crcd/{prefix}acc": acc}
        loss = loss_s
        if el.learn_t:
            loss_t, _ = self._side(z_t.flatten(0, 1), el.mem_s, el.log_z[1:2], q_idx, anchor_idx, neg_idx, mask)
            logs[f"rel/crcd/{prefix}teacher"] = loss_t.detach()
            loss = loss + loss_t
        # After the loss: this batch's positives were the banks' entries before it.
        momentum_update(el.mem_s, idx, z_s.mean(0), self.opts.momentum)
        momentum_update(el.mem_t, idx, z_t.mean(0), self.opts.momentum)
        return loss, logs

    def _side(self, queries: Tensor, memory: Tensor, log_z: Tensor, q_idx: Tensor, anchor_idx: Tensor,
              neg_idx: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        o, n = self.opts, self.dims.num_train
        pos, neg = contrast_scores(queries, memory[q_idx], memory[neg_idx], memory[anchor_idx], 1 / o.tau)
        # A query's own entry drawn as a negative would be a copy of its positive.
        own = (q_idx.unsqueeze(1) == neg_idx.unsqueeze(0)).unsqueeze(1)              # [M, 1, K]
        neg = neg.masked_fill(own, float("-inf"))
        if o.form == "infonce":
            per = infonce(pos, neg)
        else:
            with torch.no_grad():  # CRD fixes Z from the first batch; a where, not an `if`: no sync
                log_z.copy_(torch.where(torch.isnan(log_z), nce_log_z(pos, neg, n), log_z))
            per = nce(pos, neg, log_z, n)
        # An anchor that is the query's own entry leaves no relation to compare (r(w, w) = 0).
        keep = (q_idx.unsqueeze(1) != anchor_idx.unsqueeze(0)).float()               # [M, A]
        per_anchor = keep.sum(-1).clamp_min(1)
        count = mask.sum().clamp_min(1)
        loss = ((per * keep).sum(-1) / per_anchor * mask).sum() / count
        acc = ((top1(pos, neg) * keep).sum(-1) / per_anchor * mask).sum() / count
        return loss, acc.detach()
