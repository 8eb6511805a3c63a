"""Batched multi-crop augmentation on the device that holds the images (method.md 4.1).

Every random choice is drawn per sample; each operation is one tensor op over the
whole batch of views. Crops, resizes and flips are one `grid_sample` with a
per-sample affine map (an integer-shift crop samples pixel centres exactly, so
RandomCrop(pad) is reproduced bit for bit). Colour jitter applies brightness,
contrast, saturation and hue as one affine colour map per sample (see jitter_affine).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, lo: float, hi: float, device) -> Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def crop_flip(x: Tensor, out: int, rrc_prob: float, scale: tuple[float, float], pad: int, flip: bool) -> Tensor:
    """Per sample: RandomResizedCrop(out, scale) with chance rrc_prob, else RandomCrop(out, pad);
    then a horizontal flip with chance 1/2. x: [N, C, H, W] float in [0, 1]; zero fill is black."""
    n, _, h_in, w_in = x.shape
    dev = x.device
    area = h_in * w_in * _uniform(n, scale[0], scale[1], dev)
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), dev))
    w = torch.sqrt(area * ratio).clamp(max=w_in)
    h = torch.sqrt(area / ratio).clamp(max=h_in)
    cx = w / 2 + torch.rand(n, device=dev) * (w_in - w)
    cy = h / 2 + torch.rand(n, device=dev) * (h_in - h)
    # RandomCrop from the padded image: integer offsets, crop size `out`.
    ox = torch.randint(0, w_in + 2 * pad - out + 1, (n,), device=dev) - pad + out / 2
    oy = torch.randint(0, h_in + 2 * pad - out + 1, (n,), device=dev) - pad + out / 2
    rrc = torch.rand(n, device=dev) < rrc_prob
    w, h = torch.where(rrc, w, float(out)), torch.where(rrc, h, float(out))
    cx, cy = torch.where(rrc, cx, ox), torch.where(rrc, cy, oy)
    sx = w / w_in
    if flip:
        sx = torch.where(torch.rand(n, device=dev) < 0.5, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx, 2 * cx / w_in - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / h_in, 2 * cy / h_in - 1
    grid = F.affine_grid(theta, [n, x.shape[1], out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_LUMA = (0.2989, 0.587, 0.114)  # torchvision's grayscale weights


def hue_rotation(hue: Tensor) -> Tensor:
    """[N] fractions of a turn -> [N, 3, 3] rotations of RGB about the grey axis.

    The linear counterpart of HSV's hue shift: grey stays grey and a third of a turn
    maps red to green to blue exactly, as HSV does; in between the two differ."""
    k = torch.full((3,), 3 ** -0.5, device=hue.device)
    cross = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=hue.device) * 3 ** -0.5
    theta = (2 * torch.pi * hue).view(-1, 1, 1)
    return (torch.cos(theta) * torch.eye(3, device=hue.device) + torch.sin(theta) * cross
            + (1 - torch.cos(theta)) * torch.outer(k, k))


def jitter_affine(x: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor, hue: Tensor) -> Tensor:
    """Brightness, contrast, saturation and hue of each image as one per-sample affine
    colour map and a single clamp to [0, 1]. x: [N, C, H, W] in [0, 1]; factors: [N].

    Same parameters as torchvision's ColorJitter; it differs in that it applies the
    four in a fixed order, clamps once at the end instead of after each step, and
    rotates hue about RGB's grey axis instead of in HSV (see hue_rotation). In
    exchange it is two passes over the batch instead of about forty.
    """
    n, c = x.shape[:2]
    scale = brightness * contrast
    if c == 1:
        offset = (1 - contrast) * brightness * x.mean((1, 2, 3))
        return (x * scale.view(-1, 1, 1, 1) + offset.view(-1, 1, 1, 1)).clamp_(0, 1)
    luma = torch.tensor(_LUMA, device=x.device)
    mean = torch.einsum("c,nc->n", luma, x.mean((2, 3)))
    eye = torch.eye(3, device=x.device)
    sat = saturation.view(-1, 1, 1) * eye + (1 - saturation).view(-1, 1, 1) * luma.view(1, 1, 3)
    matrix = hue_rotation(hue) @ sat * scale.view(-1, 1, 1)
    # every map here keeps grey grey, so the contrast pull towards the mean is a constant offset
    offset = ((1 - contrast) * brightness * mean).view(-1, 1, 1, 1)
    return (torch.einsum("nij,njhw->nihw", matrix, x) + offset).clamp_(0, 1)


def color_jitter(x: Tensor, p: float, strength: list[float]) -> Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) applied with chance p per sample."""
    n, dev = x.shape[0], x.device
    if p <= 0 or not any(strength):
        return x
    on = torch.rand(n, device=dev) < p
    b, c, s, h = strength

    def factor(k, lo, hi, neutral):
        f = _uniform(n, lo, hi, dev)
        return torch.where(on, f, torch.full_like(f, neutral))

    return jitter_affine(x, factor(b, max(0.0, 1 - b), 1 + b, 1.0), factor(c, max(0.0, 1 - c), 1 + c, 1.0),
                         factor(s, max(0.0, 1 - s), 1 + s, 1.0), factor(h, -h, h, 0.0))


def solarize(x: Tensor, p: float) -> Tensor:
    on = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(on & (x >= 128 / 255), 1 - x, x)


def maybe_equalize(x: Tensor, p: float) -> Tensor:
    if p <= 0:
        return x
    from torchvision.transforms.v2.functional import equalize  # slow to import: only when used
    on = torch.rand(x.shape[0], device=x.device) < p
    if on.any():
        x = x.clone()
        x[on] = equalize(x[on])
    return x


class Augment:
    """The large/small crop recipes of an AugConfig whose sizes and statistics are resolved."""

    def __init__(self, cfg, channels: int, device):
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.shape[1] != channels:
            raise ValueError(f"aug.mean has {self.mean.shape[1]} values but the images have {channels} channels")

    def _normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def _recipe(self, x: Tensor, copies: int, size: int, rrc_prob: float, scale, pad: int,
                jitter_p: float, solarize_p: float, equalize_p: float) -> list[Tensor]:
        c = self.cfg
        x = x.float().div_(255).repeat(copies, 1, 1, 1)
        x = crop_flip(x, size, rrc_prob, tuple(scale), pad, c.flip)
        x = color_jitter(x, jitter_p, c.jitter)
        x = solarize(x, solarize_p)
        x = maybe_equalize(x, equalize_p)
        return list(self._normalize(x).chunk(copies))

    def large(self, x: Tensor, copies: int | None = None) -> list[Tensor]:
        c = self.cfg
        return self._recipe(x, copies or c.num_large, c.size, c.rrc_prob, c.rrc_scale, c.pad,
                            c.jitter_p, c.solarize_p, c.equalize_p)

    def small(self, x: Tensor) -> list[Tensor]:
        c = self.cfg
        if not c.num_small:
            return []
        return self._recipe(x, c.num_small, c.small_size, 1.0, c.small_scale, 0,
                            c.small_jitter_p, c.small_solarize_p, c.small_equalize_p)

    def plain(self, x: Tensor) -> Tensor:
        """Evaluation view: a centre crop to the large size, normalised."""
        s, (h, w) = self.cfg.size, x.shape[-2:]
        if h > s or w > s:
            top, left = (h - s) // 2, (w - s) // 2
            x = x[..., top:top + s, left:left + s]
        return self._normalize(x.float() / 255)


def resolve_aug(cfg, data) -> None:
    """Fill the 'from the data' fields (size 0, empty mean/std) of an AugConfig in place."""
    if not cfg.size:
        cfg.size = min(data.size, 224)
    if not cfg.small_size:
        cfg.small_size = max(1, round(cfg.size * 9 / 16))
    if not cfg.mean:
        if hasattr(data.train, "x"):
            x = data.train.x[:20000].float() / 255
            cfg.mean = [round(v, 4) for v in x.mean((0, 2, 3)).tolist()]
            cfg.std = [round(v, 4) for v in x.std((0, 2, 3)).tolist()]
        else:
            cfg.mean, cfg.std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
