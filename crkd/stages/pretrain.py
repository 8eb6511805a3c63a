"""Stage 1: supervised pretraining on the known classes (UNO's recipe)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..data import NCDData
from ..models import NCDModel
from .base import Stage
from .common import autocast, infer, save_atomic


class Pretrain(Stage):
    name = "pretrain"

    def __init__(self, cfg: Config, data: NCDData | None = None):
        super().__init__(cfg, data)
        d = self.data
        self.images = d.train.subset(d.train_lab).to(self.device)
        self.labels = d.train_y[d.train_lab].to(self.device)
        known_test = d.test_y < d.num_known
        self.test_images = d.test.subset(known_test).to(self.device)
        self.test_labels = d.test_y[known_test]
        self.model = self._to_device(NCDModel(self.cfg.model, d.channels, d.num_known))
        self.opt = self._optimizer(self.model.parameters())

    def train_epoch(self) -> dict[str, float]:
        s, total, steps = self.sc, 0.0, 0
        self.model.train()
        batches = self.images.batches(s.batch_size, shuffle=True, drop_last=True, crops=self.aug.crop_spec(small=False))
        for step, (x, idx) in enumerate(batches):
            self.model.normalize_prototypes()
            views = self.aug.large(x)
            with autocast(self.device, self.cfg.amp):
                if s.bn_views == "joint":
                    logits = self.model(self._views(views))["lab"]
                else:  # each view through BatchNorm on its own, as UNO's pretraining does
                    logits = torch.cat([self.model(self._views([v]))["lab"] for v in views])
            loss = F.cross_entropy(logits / s.tau, self.labels[idx].repeat(len(views)))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            total += self._check({"loss": loss}, step)["loss"]  # before the update, as in discovery
            steps += 1
            self.opt.step()
        return {"pretrain/loss": total / max(steps, 1)}

    def evaluate(self) -> dict[str, float]:
        out = infer(self.model, self.test_images, self.aug, 2 * self.sc.batch_size, self.device,
                    self.cfg.amp, self.channels_last)
        acc = (out["lab"].argmax(-1) == self.test_labels).float().mean().item()
        return {"known/test/acc": acc}

    def teacher_checkpoint(self) -> dict:
        """Encoder + known head with the resolved config: the input of stage 2."""
        return {"stage": "teacher", "config": self.cfg.to_dict(), "model": self.model.teacher_state(),
                "epoch": self.epoch, "history": self.history}

    def save_teacher(self, path: str) -> None:
        save_atomic(self.teacher_checkpoint(), path)
