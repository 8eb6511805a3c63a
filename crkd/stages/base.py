"""A training stage: setup in __init__, then an iterator over epochs.

Iterating runs one epoch per step and yields its metrics; between epochs the
whole state (model, optimiser, RNG, epoch, history) can be saved and loaded, so a
caller such as Ray Tune can stop, checkpoint and resume anywhere.
"""
from __future__ import annotations

import copy
import time
from typing import Iterator

import torch
from torch import Tensor

from ..config import Config, validate
from ..data import Augment, NCDData, load_data
from ..data.augment import resolve_aug
from ..errors import CheckpointError, NonFiniteLoss
from ..schedule import lr_at
from .common import load_checkpoint, resolve_device, rng_state, save_atomic, seed_all, set_rng_state


class Stage:
    name = "stage"

    def __init__(self, cfg: Config, data: NCDData | None = None):
        self.cfg = validate(copy.deepcopy(cfg))
        self.device = resolve_device(self.cfg.device)
        self.data = data if data is not None else load_data(self.cfg.data)
        resolve_aug(self.cfg.aug, self.data)
        self.aug = Augment(self.cfg.aug, self.data.channels, self.device)
        self.channels_last = self.cfg.channels_last and self.device.type == "cuda"
        self.epoch, self.history = 0, []
        seed_all(self.cfg.seed)

    @property
    def sc(self):
        """This stage's section of the config."""
        return getattr(self.cfg, self.name)

    def _to_device(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def _views(self, views: list[Tensor]) -> Tensor:
        x = torch.cat(views)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _optimizer(self, params) -> torch.optim.Optimizer:
        s = self.sc
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def _check(self, values: dict[str, Tensor], step: int) -> dict[str, float]:
        """One device sync per step: fetch the logged scalars and stop on NaN/inf."""
        names = list(values)
        host = torch.stack([values[k].detach().float().reshape(()) for k in names]).cpu().tolist()
        out = dict(zip(names, host))
        for k, v in out.items():
            if v != v or v in (float("inf"), float("-inf")):
                raise NonFiniteLoss(self.name, self.epoch + 1, step, k, v)
        return out

    def train_epoch(self) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, float]]:
        s = self.sc
        while self.epoch < s.epochs:
            start = time.perf_counter()
            lr = lr_at(self.epoch, s.epochs, s.lr, s.warmup, s.lr_start, s.lr_min)
            for group in self.opt.param_groups:
                group["lr"] = lr
            metrics = self.train_epoch()
            self.epoch += 1
            if self.epoch % s.eval_every == 0 or self.epoch == s.epochs:
                metrics.update(self.evaluate())
            metrics.update({"epoch": self.epoch, "lr": lr, "time/epoch_s": time.perf_counter() - start})
            self.history.append(metrics)
            yield metrics

    def run(self) -> dict[str, float]:
        """Train all remaining epochs; the last epoch's metrics."""
        last = self.history[-1] if self.history else {}
        for last in self:
            pass
        return last

    # --- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"stage": self.name, "config": self.cfg.to_dict(), "epoch": self.epoch,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": rng_state(), "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        if state.get("stage") != self.name:
            raise CheckpointError(f"checkpoint holds stage {state.get('stage')!r}, not {self.name!r}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not fit the model: {' '.join(str(e).split())[:400]}") from None
        self.opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], list(state["history"])

    def save(self, path: str) -> None:
        save_atomic(self.state_dict(), path)

    def load(self, path: str) -> None:
        self.load_state_dict(load_checkpoint(path))
