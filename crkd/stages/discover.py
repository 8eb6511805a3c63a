"""Stage 2: discovery, L = L_l + alpha L_u + beta L_rel (method.md 4), evaluated per epoch (5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config
from ..data import NCDData
from ..errors import CheckpointError
from ..losses import sinkhorn_knopp, swapped_prediction
from ..metrics import ari, cluster_acc, nmi, split_cluster_acc
from ..models import NCDModel
from ..relations import RELATIONS, StepContext
from .base import Stage
from .common import autocast, infer, load_checkpoint


class Discover(Stage):
    name = "discover"

    def __init__(self, cfg: Config, teacher: str | dict, data: NCDData | None = None):
        super().__init__(cfg, data)
        d, s = self.data, self.sc
        source = teacher if isinstance(teacher, str) else "teacher checkpoint"
        state = load_checkpoint(teacher) if isinstance(teacher, str) else teacher
        if state.get("stage") != "teacher":
            raise CheckpointError(f"{source} is a {state.get('stage')!r} checkpoint, not a stage-1 teacher")
        self.teacher_state = state["model"]
        self.model = NCDModel(self.cfg.model, d.channels, d.num_known, d.num_novel)
        self.model.load_teacher_state(self.teacher_state, source)
        self.model = self._to_device(self.model)
        self.relation = RELATIONS[s.relation](s, d.num_known, d.num_novel, len(d.train))
        self.teacher = None
        if self.relation.needs_teacher and s.beta > 0:
            self.teacher = NCDModel(self.cfg.model, d.channels, d.num_known)
            self.teacher.load_teacher_state(self.teacher_state, source)
            self.teacher = self._to_device(self.teacher).eval().requires_grad_(False)
        self.opt = self._optimizer(self.model.parameters())
        self.images = d.train.to(self.device)
        self.labels, self.lab = d.train_y.to(self.device), d.train_lab.to(self.device)
        self.novel_images = d.train.subset(d.train_lab.logical_not())
        self.novel_labels = d.train_y[~d.train_lab] - d.num_known
        d.test.to(self.device)
        self.head_loss = torch.zeros(self.cfg.model.num_heads, device=self.device)

    # --- one step --------------------------------------------------------------

    def _outputs(self, views: list[Tensor], model) -> dict[str, Tensor]:
        """Forward all views at once; regroup logits per view: lab [V, B, C_l], heads [V, H, B, C]."""
        n = len(views)
        with autocast(self.device, self.cfg.amp):
            out = model(self._views(views))
        res = {"lab": out["lab"].float().unflatten(0, (n, -1)),
               "feats": out["feats"].float().unflatten(0, (n, -1))}
        for k in ("unlab", "over"):
            if k in out:
                res[k] = out[k].float().unflatten(1, (n, -1)).transpose(0, 1)
        return res

    def _targets(self, logits: Tensor, y: Tensor, lab: Tensor, num_classes: int) -> Tensor:
        """[L, H, B, C_l + C]: one-hot labels for labeled samples, Sinkhorn assignments of
        the same view and head for unlabeled ones. Masks, not boolean indexing: no GPU sync."""
        s, c_l = self.sc, self.data.num_known
        onehot = F.one_hot(torch.where(lab, y, 0), c_l).float() * lab.unsqueeze(1)          # [B, C_l]
        assigned = sinkhorn_knopp(logits, s.sk_epsilon, s.sk_iters, mask=~lab)             # [L, H, B, C]
        return torch.cat([onehot.expand(*assigned.shape[:2], -1, -1), assigned], dim=-1)

    def _swapped(self, key: str, large, small, y, lab) -> tuple[Tensor, Tensor]:
        """Per-head swapped-prediction loss [H, B] and the large views' targets."""
        views = [large] + ([small] if small else [])
        heads = large[key].shape[1]
        joint = torch.cat([torch.cat([v["lab"].unsqueeze(1).expand(-1, heads, -1, -1), v[key]], -1)
                           for v in views])  # [V, H, B, C_l + C]
        targets = self._targets(large[key], y, lab, large[key].shape[-1])
        return swapped_prediction(joint, targets, self.sc.tau), targets

    def step(self, x: Tensor, idx: Tensor, step: int) -> dict[str, float]:
        s = self.sc
        y, lab = self.labels[idx], self.lab[idx]
        self.model.normalize_prototypes()
        large_views, small_views = self.aug.large(x), self.aug.small(x)
        large = self._outputs(large_views, self.model)
        small = self._outputs(small_views, self.model) if small_views else None
        ce, targets = self._swapped("unlab", large, small, y, lab)
        if "over" in large:
            ce = (ce + self._swapped("over", large, small, y, lab)[0]) / 2
        b, m = ce.shape[1], lab.float()
        loss_l = (ce * m).sum(1) / b              # [H]; L_l + L_u is UNO's per-batch mean
        loss_u = (ce * (1 - m)).sum(1) / b
        self.head_loss += (loss_l + loss_u).detach()
        loss_rel, logs = ce.new_zeros(()), {}
        if s.beta > 0:  # beta 0 skips the term (and the teacher forward) entirely
            teacher = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher = self._outputs(large_views, self.teacher)
            loss_rel, logs = self.relation(StepContext(large, teacher, lab, y, idx, targets, self.epoch))
        loss = loss_l.mean() + s.alpha * loss_u.mean() + s.beta * loss_rel
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # One sync per step, after the backward is queued and before the update: a
        # non-finite loss stops here without touching the weights. Components come
        # first so a NaN is blamed on the term that produced it.
        values = self._check({"loss/l": loss_l.mean(), "loss/u": loss_u.mean(), "loss/rel": loss_rel,
                              **logs, "loss/total": loss}, step)
        self.opt.step()
        return values

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.head_loss.zero_()  # per epoch: the public code never resets it
        sums: dict[str, float] = {}
        steps = 0
        for step, (x, idx) in enumerate(self.images.batches(self.sc.batch_size, shuffle=True, drop_last=True)):
            for k, v in self.step(x, idx, step).items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        return {k: v / max(steps, 1) for k, v in sums.items()}

    # --- evaluation (method.md 5) ------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        d, c_l = self.data, self.data.num_known
        run = lambda images: infer(self.model, images, self.aug, 2 * self.sc.batch_size, self.device,
                                   self.cfg.amp, self.channels_last)
        best = int(self.head_loss.argmin())
        train = run(self.novel_images)["unlab_arg"]          # [H, N_u]
        y_novel = self.novel_labels.numpy()
        accs = [cluster_acc(y_novel, p.numpy()) for p in train]
        m = {"novel/train/acc": accs[best], "novel/train/acc_avg": sum(accs) / len(accs),
             "novel/train/nmi": nmi(y_novel, train[best].numpy()),
             "novel/train/ari": ari(y_novel, train[best].numpy()), "best_head": best}
        test = run(d.test)
        y_test = d.test_y.numpy()
        novel = y_test >= c_l
        test_accs = [cluster_acc(y_test[novel] - c_l, p[novel].numpy()) for p in test["unlab_arg"]]
        m["novel/test/acc"], m["novel/test/acc_avg"] = test_accs[best], sum(test_accs) / len(test_accs)
        m["test/all/acc"], m["test/old/acc"], m["test/new/acc"] = split_cluster_acc(
            y_test, test["joint_arg"][best].numpy(), ~novel)
        m["known/test/acc"] = float((test["lab"][~novel].argmax(-1).numpy() == y_test[~novel]).mean())
        return m

    def state_dict(self) -> dict:
        # The teacher travels with the run, so a resume needs no other file.
        return {**super().state_dict(), "teacher": self.teacher_state}

    @classmethod
    def from_checkpoint(cls, path: str, data: NCDData | None = None) -> "Discover":
        state = load_checkpoint(path)
        if state.get("stage") != cls.name:
            raise CheckpointError(f"{path} holds stage {state.get('stage')!r}, not a discovery run")
        stage = cls(Config.from_dict(state["config"], path),
                    {"stage": "teacher", "model": state["teacher"]}, data)
        stage.load_state_dict(state)
        return stage
