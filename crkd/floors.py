"""Trivial baselines a discovery result must clear, on the same split: k-means on raw
pixels and k-means on the frozen stage-1 teacher's features, each scored by Hungarian
accuracy on the novel training images (the NCD headline protocol)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config
from .data import NCDData
from .metrics import cluster_acc
from .models import NCDModel
from .stages.common import features, load_checkpoint, resolve_device

PIXEL_SIZE = 32  # larger images are averaged down to 32x32 first (ImageNet would be 23 GB of pixels)


def kmeans_acc(x: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> float:
    """Hungarian accuracy of k-means (k clusters, 10 restarts) on rows of x [N, D] against y [N]."""
    from sklearn.cluster import KMeans
    pred = KMeans(k, n_init=10, random_state=seed).fit_predict(x.astype(np.float32))
    return cluster_acc(y, pred)


def floors(cfg: Config, data: NCDData, teacher: str | dict) -> dict[str, float]:
    """{"floor/kmeans_pixels", "floor/kmeans_teacher"} for this config's split and teacher."""
    from .data import Augment
    from .data.augment import resolve_aug
    device = resolve_device(cfg.device)
    novel = data.train_lab.logical_not()
    y = (data.train_y[novel] - data.num_known).numpy()
    images = data.train.subset(novel)
    pixels = []
    for x, _ in images.batches(512):
        x = x.float().cpu() / 255
        if x.shape[-1] > PIXEL_SIZE:
            x = F.adaptive_avg_pool2d(x, PIXEL_SIZE)
        pixels.append(x.flatten(1))
    state = load_checkpoint(teacher) if isinstance(teacher, str) else teacher
    model = NCDModel(cfg.model, data.channels, data.num_known)
    model.load_teacher_state(state["model"], "teacher")
    model = model.to(device)
    aug_cfg = cfg.aug
    resolve_aug(aug_cfg, data)
    feats = features(model, images.to(device), Augment(aug_cfg, data.channels, device), 512, device,
                     cfg.amp, False)
    feats = F.normalize(feats, dim=-1).cpu().numpy()  # the teacher's geometry is cosine
    return {"floor/kmeans_pixels": kmeans_acc(torch.cat(pixels).numpy(), y, data.num_novel, cfg.seed),
            "floor/kmeans_teacher": kmeans_acc(feats, y, data.num_novel, cfg.seed)}
