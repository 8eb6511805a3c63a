"""What both stages share: device, seeding, atomic checkpoints, batched inference."""
from __future__ import annotations

import os
import random
import tempfile
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast(device: torch.device, amp: bool):
    # bf16 keeps fp32's range, so no loss scaling (and no GradScaler state) is needed.
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def save_atomic(obj: dict, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash or
    Ctrl-C leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}); was it written by crkd?") from None


@torch.no_grad()
def features(model, images, aug, batch_size: int, device, amp: bool, channels_last: bool) -> Tensor:
    """Eval-mode backbone features [N, D] (float32, on `device`) of an image set, in order."""
    was_training = model.training
    model.eval()
    out = []
    for x, _ in images.batches(batch_size):
        x = aug.plain(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out.append(model.encoder(x).float())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def infer(model, images, aug, batch_size: int, device, amp: bool, channels_last: bool) -> dict[str, Tensor]:
    """Eval-mode outputs over a whole image set, in dataset order: lab [N, C_l] and
    per-head argmax of the novel heads [H, N] and of the joint logits [H, N]."""
    model.eval()
    lab, unlab_arg, joint_arg = [], [], []
    for x, _ in images.batches(batch_size):
        x = aug.plain(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = model(x)
        lab.append(out["lab"].float())
        if "unlab" in out:
            u = out["unlab"].float()
            unlab_arg.append(u.argmax(-1))
            known_max, known_arg = out["lab"].float().max(-1)
            novel_max, novel_arg = u.max(-1)
            joint_arg.append(torch.where(novel_max > known_max, novel_arg + lab[-1].shape[1], known_arg))
    model.train()
    out = {"lab": torch.cat(lab).cpu()}
    if unlab_arg:
        out["unlab_arg"] = torch.cat(unlab_arg, 1).cpu()
        out["joint_arg"] = torch.cat(joint_arg, 1).cpu()
    return out
