"""REFILLED (Ye, Lu, Zhan; CVPR 2020 / TPAMI 2022), relationship matching, adapted to discovery
(docs/methods.md, "refilled"): both parts at once, as one term of the discovery loss.

1. Tuple comparison matching on the L2-normalised backbone features of the large views.
   Triplets (anchor, positive, negative) come from facts that hold in NCD: two views of one
   image are positives, a labeled/unlabeled pair is a negative, labeled pairs follow their
   labels and unlabeled pairs this step's Sinkhorn pseudo-labels (head 0; only those with an
   assignment >= `confident` when it is > 0). They are mined semi-hard with the student's
   distances; per triplet, teacher and student each give sigmoid((d_an - d_ap) / tau1) and the
   loss is KL(teacher || student), averaged over triplets.
2. Embedding-induced classifier on the known classes: unit class centres of the teacher's
   embeddings of the labeled data (computed once in setup: the teacher is frozen); per sample,
   q_T = softmax(<e_T(x), c_k> / (tau * tau2)) distilled into the student's known-head cosine
   logits at the same temperature.

Deviations from the papers and the public code (njulus/REFILLED), and why:
- The two stages of REFILLED (embedding first, then classifier with the CE task loss) become
  one term added to the discovery loss from the first epoch; w_tuple and w_cls weigh the parts.
- Positives and negatives come from views, labels and pseudo-labels as above; the original
  has the labels of every sample.
- Triplet form only (the TPAMI "merged tuple" softmax over several negatives is not offered).
- At most 64 positives per anchor (a uniform random subset where there are more), so a step
  costs O(M * 64 * M) for M = L * B views instead of O(M^3), computed in chunks of anchors
  whose [chunk, 64, M] tensors stay under 2^24 entries. With ~B / C same-cluster views per
  anchor this keeps every positive on CIFAR-100 and ImageNet batches (about 10-20) and on
  digits (about 25); on CIFAR-10 (about 100 at B = 512) it subsamples. The code mines every
  semi-hard triplet.
- Both KLs are multiplied by their temperature squared (tau1^2, tau2^2; Hinton's factor, as
  Cr-KD's t^2): at the code's tau1 = 4 the triplet KL is about (gap_T - gap_S)^2 / (8 tau1^2),
  so without it a search over tau1 in [0.25, 8] would also rescale the loss 1000-fold. It
  replaces the code's x1000 / x100 weights; the loss is a mean over triplets and over samples.
  In these units the code's weights (x1000 on half the mean triplet KL at tau1 = 4, x100 on
  the classifier KL at tau2 = 2) come to about 31 and 25: the default w_tuple = w_cls = 1
  keeps their ratio. The tuple part is then small (on digits its gradient is ~1/30 of the
  classifier part's); w_tuple is searched (search_spaces/refilled.yaml).
- Part 2's logits are cosines in [-1, 1] (our cosine known head, and unit embedding and
  centres), so its temperature is applied as discover.tau * tau2, like Cr-KD's tau * t; the code
  divides raw logits by tau2. Centres are means of unit embeddings (the code averages raw ones).
  The softmax runs over all known classes; the code's newer version also uses global centres
  but keeps only the classes of the batch's labels, which unlabeled samples do not have.
- Part 2 applies to the unlabeled samples (samples: all adds the labeled ones), where the
  code applies it to every (labeled) training sample next to its cross-entropy.
- The term's weight can decay by exp(-anneal) per epoch (the CVPR code uses anneal = 0.05);
  off by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses.refilled import centre_kd, class_centres, pairwise_distances, tuple_facts, tuple_kl
from .base import Options, Relation, sample_mask


@dataclass
class RefilledOptions(Options):
    tau1: float = 4.0           # temperature of the triplet comparison probabilities (code: 4)
    margin: float = 0.2         # semi-hard mining margin on the student's distances
    tau2: float = 2.0           # classifier KD temperature, on top of discover.tau (effective tau * tau2)
    w_tuple: float = 1.0        # weight of the tuple matching part inside the term
    w_cls: float = 1.0          # weight of the embedding-induced classifier part inside the term
    samples: str = "unlabeled"  # anchors of part 1 and samples of part 2: "unlabeled" or "all"
    anneal: float = 0.0         # scale(epoch) = exp(-anneal * epoch); the CVPR code: 0.05
    confident: float = 0.0      # pseudo-labels with assignment below this make no tuple; 0: all

    def validate(self) -> None:
        self.check(tau1="positive", margin="positive", tau2="positive", w_tuple="nonnegative",
                   w_cls="nonnegative", anneal="nonnegative", confident="probability")
        self.choose(samples=("unlabeled", "all"))


class Refilled(Relation):
    """REFILLED's tuple matching + embedding-induced classifier (see the module docstring)."""
    Options = RefilledOptions

    def __init__(self, opts, dims):
        super().__init__(opts, dims)
        # A buffer: it travels in the checkpoint, so a resumed run needs no teacher pass.
        self.register_buffer("centres", torch.zeros(dims.num_known, dims.feat_dim))

    @torch.no_grad()
    def setup(self, teacher, data) -> None:
        feats = data.features(teacher, data.labeled)
        self.centres.copy_(class_centres(feats, data.labels.to(feats.device), self.dims.num_known))

    def scale(self, epoch: int) -> float:
        return math.exp(-self.opts.anneal * epoch)

    def forward(self, ctx):
        o, c_l = self.opts, self.dims.num_known
        mask = sample_mask(ctx.lab, o.samples)
        e_s = F.normalize(ctx.student["feats"].float(), dim=-1)          # [L, B, D]
        e_t = F.normalize(ctx.teacher["feats"].float(), dim=-1)
        n_views = e_s.shape[0]

        novel = ctx.targets[:, 0, :, c_l:]                               # [L, B, C_u], head 0
        conf, pseudo = novel.max(-1)
        pos, neg = tuple_facts(ctx.lab, ctx.y, pseudo, conf >= o.confident, c_l)
        d_s = pairwise_distances(e_s.flatten(0, 1))
        with torch.no_grad():
            d_t = pairwise_distances(e_t.flatten(0, 1))
        tup, count = tuple_kl(d_s, d_t, pos, neg, mask.repeat(n_views), o.tau1, o.margin)
        tup = tup * o.tau1 ** 2

        temp = self.dims.tau * o.tau2
        cls = centre_kd(e_t, self.centres, ctx.student["lab"], temp, mask) * o.tau2 ** 2
        loss = o.w_tuple * tup + o.w_cls * cls
        return loss, {"rel/refilled/tuple": tup.detach(), "rel/refilled/cls": cls.detach(),
                      "rel/refilled/triplets": count}
