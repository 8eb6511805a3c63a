"""SP: similarity-preserving distillation (Tung & Mori, ICCV 2019).

The student's last conv map of each large view, flattened per sample, must give the same
row-normalised similarity matrix G = rownorm(F F^T) as the teacher's: samples that
activate the teacher alike must activate the student alike. Per view, as RKD (rkd.py).

Normalisation: the loss is SCALE times the mean over rows of the squared row difference
||G_T_i - G_S_i||^2 (crkd.losses.sp_loss), which does not depend on the batch size.
RepDistiller sums the N^2 squared entries, divides by N^2 and weights the result by 3000,
i.e. 3000 / N times the row mean: 47 at its batch size 64, 6 at B = 512. SCALE = 50
keeps RepDistiller's balance at its own batch size, and puts the useful beta range
around the default 0.1 (search_spaces/sp.yaml has the measured magnitudes).

Deviations from RepDistiller (distiller_zoo/SP.py): that normalisation; per view of the
two large views with a sample mask ("all" by default, see rkd.py), where RepDistiller has
one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import sp_loss
from .base import Options, Relation, sample_mask

SCALE = 50.0  # about RepDistiller's 3000 / 64 (see above)


@dataclass
class SPOptions(Options):
    samples: str = "all"        # samples that take part: "all" or "unlabeled"

    def validate(self) -> None:
        self.choose(samples=("all", "unlabeled"))


class SP(Relation):
    """SP on the last conv maps of the large views, per view."""
    Options = SPOptions
    uses = frozenset({"teacher", "maps"})

    def forward(self, ctx):
        s, t = ctx.student["maps"].flatten(2), ctx.teacher["maps"].flatten(2)   # [L, B, C*h*w]
        loss = sp_loss(s, t, sample_mask(ctx.lab, self.opts.samples))
        return SCALE * loss, {"rel/sp/row_diff": loss.detach()}
