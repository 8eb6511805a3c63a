"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

Each sample's cosine similarities to the others, mapped to [0, 1] and normalised, form a
distribution over the batch (a kernel density estimate of its neighbourhood); the
student's must match the teacher's in KL(teacher || student). On the pooled backbone
features of each large view, per view, as RKD (rkd.py).

Normalisation: the loss is SCALE times the mean over rows of the per-row KL
(crkd.losses.pkt_loss), which does not depend on the batch size. RepDistiller averages the
N^2 terms, i.e. the row mean divided by N, and weights it by 30000: 469 times the row mean
at its batch size 64. SCALE = 500 keeps about that balance and puts the useful beta
range around the default 0.1 (search_spaces/pkt.yaml has the measured magnitudes).

Deviations from RepDistiller (distiller_zoo/PKT.py): that normalisation; `eps` floors
the mapped similarities before the log instead of being added to both probabilities
(the floor keeps the gradient at student == teacher zero); per view of the two large
views with a sample mask ("all" by default, see rkd.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import pkt_loss
from .base import Options, Relation, sample_mask

SCALE = 500.0  # about RepDistiller's 30000 / 64 (see above)


@dataclass
class PKTOptions(Options):
    samples: str = "all"        # samples that take part: "all" or "unlabeled"
    eps: float = 1e-7           # floor of the mapped similarities before the log

    def validate(self) -> None:
        self.check(eps="positive")
        self.choose(samples=("all", "unlabeled"))


class PKT(Relation):
    """PKT on the pooled features of the large views, per view."""
    Options = PKTOptions

    def forward(self, ctx):
        s, t = ctx.student["feats"], ctx.teacher["feats"]          # [L, B, D]
        loss = pkt_loss(s, t, sample_mask(ctx.lab, self.opts.samples), self.opts.eps)
        return SCALE * loss, {"rel/pkt/kl": loss.detach()}
