"""Stage 2: discovery, L = L_l + alpha L_u + beta * scale(epoch) * L_rel, evaluated per epoch.

L_l + L_u is swapped-prediction self-labeling with Sinkhorn pseudo-labels (UNO);
L_rel is the relation term that `discover.relation` names (crkd.relations), which
the loop calls through one interface whatever the term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import Config, overcluster_factor
from ..data import NCDData
from ..errors import CheckpointError
from ..losses import sinkhorn_knopp, swapped_prediction
from ..metrics import ari, cluster_acc, nmi, split_cluster_acc
from ..models import NCDModel
from ..relations import RELATIONS, Dims, SetupData, StepContext
from .base import Stage
from .common import autocast, features, infer, load_checkpoint, save_atomic


class Discover(Stage):
    name = "discover"

    def __init__(self, cfg: Config, teacher: str | dict, data: NCDData | None = None, setup: bool = True):
        super().__init__(cfg, data)
        d, s = self.data, self.sc
        source = teacher if isinstance(teacher, str) else "teacher checkpoint"
        state = load_checkpoint(teacher) if isinstance(teacher, str) else teacher
        if state.get("stage") != "teacher":
            raise CheckpointError(f"{source} is a {state.get('stage')!r} checkpoint, not a stage-1 teacher")
        self.teacher_state = state["model"]
        self.cfg.model.overcluster = overcluster_factor(self.cfg, d.num_novel)  # resolve "auto"
        self.model = NCDModel(self.cfg.model, d.channels, d.num_known, d.num_novel, self.cfg.model.overcluster)
        self.model.load_teacher_state(self.teacher_state, source)
        self.model = self._to_device(self.model)

        # The term, and the frozen teacher if it uses one.
        term = RELATIONS[s.relation]
        dims = Dims(d.num_known, d.num_novel, self.model.encoder.out_dim, len(d.train), s.tau, s.epochs)
        self.relation = term(self.cfg.relation, dims).to(self.device)
        self.teacher = None
        if "teacher" in term.uses and s.beta > 0:
            self.teacher = NCDModel(self.cfg.model, d.channels, d.num_known)
            self.teacher.load_teacher_state(self.teacher_state, source)
            self.teacher = self._to_device(self.teacher).eval().requires_grad_(False)
        self.opt = self._optimizer([*self.model.parameters(), *self.relation.parameters()])

        # Training labels exist for labeled images only: the loop never holds a novel label.
        self.images = d.train.to(self.device)
        self.lab = d.train_lab.to(self.device)
        self.labels = torch.where(d.train_lab, d.train_y, -1).to(self.device)
        self.lab_index = d.train_lab.nonzero().squeeze(1).to(self.device)
        self.unlab_index = d.train_lab.logical_not().nonzero().squeeze(1).to(self.device)
        # Evaluation alone reads the novel labels.
        self.novel_images = d.train.subset(d.train_lab.logical_not())
        self.novel_labels = d.train_y[~d.train_lab] - d.num_known
        d.test.to(self.device)
        self.head_loss = torch.zeros(self.cfg.model.num_heads, device=self.device)
        if setup and s.beta > 0:
            self.relation.setup(self.teacher, self._setup_data())

    def _setup_data(self) -> SetupData:
        d = self.data
        return SetupData(
            labeled=self.images.subset(d.train_lab), labels=d.train_y[d.train_lab].to(self.device),
            labeled_index=self.lab_index, unlabeled=self.images.subset(d.train_lab.logical_not()),
            unlabeled_index=self.unlab_index,
            features=lambda model, images: features(model, images, self.aug, 2 * self.sc.batch_size,
                                                     self.device, self.cfg.amp, self.channels_last))

    # --- one step --------------------------------------------------------------

    def _outputs(self, views: list[Tensor], model, maps: bool = False, joint: bool = False) -> dict[str, Tensor]:
        """Forward the views; logits per view: lab [V, B, C_l], heads [V, H, B, C], feats [V, B, D].
        Each view goes through the model on its own (BatchNorm statistics per view, as in UNO)
        unless `joint` or discover.bn_views=joint; a model in eval mode takes them at once."""
        n = len(views)
        with autocast(self.device, self.cfg.amp):
            if joint or self.sc.bn_views == "joint" or not model.training:
                out = model(self._views(views), maps=maps)
                out = {k: v.unflatten(1 if k in ("unlab", "over") else 0, (n, -1)) for k, v in out.items()}
            else:
                outs = [model(self._views([v]), maps=maps) for v in views]
                out = {k: torch.stack([o[k] for o in outs], 1 if k in ("unlab", "over") else 0) for k in outs[0]}
        return {k: (v.transpose(0, 1) if k in ("unlab", "over") else v).float() for k, v in out.items()}

    def _targets(self, logits: Tensor, y: Tensor, lab: Tensor) -> Tensor:
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
        targets = self._targets(large[key], y, lab)
        return swapped_prediction(joint, targets, self.sc.tau), targets

    def step(self, x: Tensor, idx: Tensor, step: int, weight: float | None = None) -> dict[str, float]:
        """One update on the batch `x` (dataset indices `idx`); `weight` is beta * scale(epoch)."""
        s = self.sc
        weight = s.beta * self.relation.scale(self.epoch) if weight is None else weight
        y, lab = self.labels[idx], self.lab[idx]
        self.model.normalize_prototypes()
        large_views, small_views = self.aug.large(x), self.aug.small(x)
        maps = weight > 0 and "maps" in self.relation.uses
        large = self._outputs(large_views, self.model, maps=maps)
        small = self._outputs(small_views, self.model) if small_views else None
        ce, targets = self._swapped("unlab", large, small, y, lab)
        self.head_loss += ce.mean(1).detach()  # UNO: the best head by the normal heads' loss alone
        if "over" in large:
            ce = (ce + self._swapped("over", large, small, y, lab)[0]) / 2
        b, m = ce.shape[1], lab.float()
        loss_l = (ce * m).sum(1) / b              # [H]; L_l + L_u is UNO's per-batch mean
        loss_u = (ce * (1 - m)).sum(1) / b
        loss_rel, logs = ce.new_zeros(()), {}
        if weight > 0:  # a zero weight skips the term (and the teacher forward) entirely
            teacher = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher = self._outputs(large_views, self.teacher, maps=maps)
            loss_rel, logs = self.relation(StepContext(large, teacher, lab, y, idx, targets, self.epoch))
        loss = loss_l.mean() + s.alpha * loss_u.mean() + weight * loss_rel
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # One sync per step, after the backward is queued and before the update: a
        # non-finite loss stops here without touching the weights. Components come
        # first so a NaN is blamed on the term that produced it.
        values = self._check({"loss/l": loss_l.mean(), "loss/u": loss_u.mean(), "loss/rel": loss_rel,
                              **logs, "loss/total": loss}, step)
        self.opt.step()
        return values

    def _batches(self):
        """This epoch's batches: all training images shuffled together ("mixed"), or UNO's
        ImageNet pairing ("paired"): index i of a shuffled range(max(N_l, N_u)) takes labeled
        image i mod N_l and unlabeled image i mod N_u, half a batch each."""
        s = self.sc
        if s.sampling == "mixed":
            return self.images.batches(s.batch_size, shuffle=True, drop_last=True, crops=self.aug.crop_spec())
        half = max(1, s.batch_size // 2)
        n_l, n_u = len(self.lab_index), len(self.unlab_index)
        order = torch.randperm(max(n_l, n_u), device=self.device)
        chunks = [order[i:i + half] for i in range(0, len(order) - half + 1, half)]
        return self.images.batches_from(
            (torch.cat([self.lab_index[c % n_l], self.unlab_index[c % n_u]]) for c in chunks), self.aug.crop_spec())

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.head_loss.zero_()  # per epoch: the public code never resets it
        weight = self.sc.beta * self.relation.scale(self.epoch)
        sums: dict[str, float] = {}
        steps = 0
        for step, (x, idx) in enumerate(self._batches()):
            for k, v in self.step(x, idx, step, weight).items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        return {k: v / max(steps, 1) for k, v in sums.items()}

    # --- evaluation ----------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Every accuracy for the best head (lowest loss this epoch: no label is used to pick it),
        `.../acc`, and averaged over the heads, `.../acc_avg`."""
        d, c_l = self.data, self.data.num_known
        run = lambda images: infer(self.model, images, self.aug, 2 * self.sc.batch_size, self.device,
                                   self.cfg.amp, self.channels_last)
        best = int(self.head_loss.argmin())
        avg = lambda v: sum(v) / len(v)
        train = run(self.novel_images)["unlab_arg"]          # [H, N_u]
        y_novel = self.novel_labels.numpy()
        accs = [cluster_acc(y_novel, p.numpy()) for p in train]
        m = {"novel/train/acc": accs[best], "novel/train/acc_avg": avg(accs),
             "novel/train/nmi": nmi(y_novel, train[best].numpy()),
             "novel/train/ari": ari(y_novel, train[best].numpy()), "best_head": best}
        test = run(d.test)
        y_test = d.test_y.numpy()
        novel = y_test >= c_l
        test_accs = [cluster_acc(y_test[novel] - c_l, p[novel].numpy()) for p in test["unlab_arg"]]
        m["novel/test/acc"], m["novel/test/acc_avg"] = test_accs[best], avg(test_accs)
        agnostic = [split_cluster_acc(y_test, p.numpy(), ~novel) for p in test["joint_arg"]]
        for i, part in enumerate(("all", "old", "new")):
            m[f"test/{part}/acc"] = agnostic[best][i]
            m[f"test/{part}/acc_avg"] = avg([a[i] for a in agnostic])
        m["known/test/acc"] = float((test["lab"][~novel].argmax(-1).numpy() == y_test[~novel]).mean())
        return m

    # --- state ---------------------------------------------------------------------

    def state_dict(self, teacher: bool = True) -> dict:
        """The whole run. With the teacher (default) a resume needs no other file; without it
        (a caller that keeps teachers elsewhere, such as the harness's stage-1 cache) the
        checkpoint is smaller and `from_checkpoint` takes the teacher separately. The term's
        parameters and buffers (memory banks, centres) always travel."""
        state = {**super().state_dict(), "relation": self.relation.state_dict()}
        return {**state, "teacher": self.teacher_state} if teacher else state

    def save(self, path: str, teacher: bool = True) -> None:
        save_atomic(self.state_dict(teacher), path)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        try:
            self.relation.load_state_dict(state.get("relation", {}))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint's relation state does not fit discover.relation="
                                  f"{self.sc.relation}: {' '.join(str(e).split())[:300]}") from None

    @classmethod
    def from_checkpoint(cls, path: str, data: NCDData | None = None, teacher: str | dict | None = None) -> "Discover":
        """Resume a saved run; `teacher` (a teacher checkpoint or its path) for a checkpoint
        saved without one."""
        state = load_checkpoint(path)
        if state.get("stage") != cls.name:
            raise CheckpointError(f"{path} holds stage {state.get('stage')!r}, not a discovery run")
        if teacher is None:
            if "teacher" not in state:
                raise CheckpointError(f"{path} was saved without its teacher; give the stage-1 teacher too")
            teacher = {"stage": "teacher", "model": state["teacher"]}
        stage = cls(Config.from_dict(state["config"], path), teacher, data, setup=False)
        stage.load_state_dict(state)
        return stage
