"""RKD: relational knowledge distillation (Park et al., CVPR 2019), distance- and angle-wise.

The student's pooled backbone features of each large view must keep the teacher's
pairwise distances (each normalised by its mean over the pairs) and the angles of its
triplets. Per view: each large view is its own set of samples, as in RepDistiller, which
distils one augmented batch. Pooling the views would add cross-view pairs whose student
distances mix two BatchNorm normalisations (each view goes through the student on its own,
discover.bn_views=separate), and would double the cost (4 B^2 pairs against 2 B^2, and
4 A B^2 anchored triplets against 2 A B^2).

Cost per step, L views of B samples, D features, A anchors: distances O(L B^2 D); angles
O(L B^2 D) for the Gram matrix plus O(L A B^2) time and memory for the cosines, which is
33M entries (134 MB per float32 tensor) at B = 512, L = 2, A = 64, against 268M for all
B^3 triplets of both views.

Deviations from RepDistiller (distiller_zoo/RKD.py): weights 1 and 2 instead of 25 and 50
(the same 1 : 2 ratio; discover.beta carries the scale); degenerate pairs and triplets
(a sample with itself) are left out of the means instead of entering as zeros; the angle
term uses a random subset of anchors (vertices) per step and view instead of all B (drawn
from the global torch generator, whose state the discovery checkpoint keeps). Distances
and angles both come from the Gram matrix of batch-centred features (same values).

Samples: "all" by default. The relations need no labels, RepDistiller uses the whole
batch, and the labeled/unlabeled pairs are where the teacher's known-class structure says
something about the novel samples; "unlabeled" restricts the term to Cr-KD's samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses import rkd_angle, rkd_distance
from .base import Options, Relation, sample_mask


@dataclass
class RKDOptions(Options):
    w_dist: float = 1.0         # weight of the distance-wise part
    w_angle: float = 2.0        # weight of the angle-wise part (RepDistiller's 25 : 50)
    angle_anchors: int = 64     # triplet vertices drawn per step and view (>= B: all, exact)
    samples: str = "all"        # samples that take part: "all" or "unlabeled"

    def validate(self) -> None:
        self.check(w_dist="nonnegative", w_angle="nonnegative", angle_anchors="count")
        self.choose(samples=("all", "unlabeled"))
        if self.w_dist == 0 and self.w_angle == 0:
            raise ConfigError("relation.w_dist and relation.w_angle are both 0; set one > 0 "
                              "(or use discover.relation=none)")


class RKD(Relation):
    """RKD on the pooled features of the large views, per view."""
    Options = RKDOptions

    def anchors(self, mask: Tensor, views: int) -> Tensor | None:
        """[views, A] random distinct anchors among the included samples (None: all of them).
        Included samples score in [1, 2), the others in [0, 1): top-k takes included ones
        first; if fewer than A are included, the extra ones are ignored by the loss."""
        n, k = mask.shape[-1], min(self.opts.angle_anchors, mask.shape[-1])
        if k == n:
            return None
        score = torch.rand(views, n, device=mask.device) + mask.float()
        return score.topk(k, dim=-1).indices

    def forward(self, ctx):
        o = self.opts
        s, t = ctx.student["feats"], ctx.teacher["feats"]          # [L, B, D]
        mask = sample_mask(ctx.lab, o.samples)
        zero = s.new_zeros(())
        dist = rkd_distance(s, t, mask) if o.w_dist > 0 else zero
        angle = rkd_angle(s, t, mask, self.anchors(mask, s.shape[0])) if o.w_angle > 0 else zero
        return o.w_dist * dist + o.w_angle * angle, {"rel/rkd/dist": dist.detach(), "rel/rkd/angle": angle.detach()}
