"""Batched multi-crop augmentation on the device that holds the images (docs/methods.md,
"Benchmark presets").

Every random choice is drawn per sample; each operation is one tensor op over the
whole batch of views. Crops, resizes and flips are one `grid_sample` over per-sample
boxes drawn as torchvision's RandomResizedCrop draws them (an integer-shift crop
samples pixel centres exactly, so RandomCrop(pad) is reproduced bit for bit). Colour
jitter applies brightness, contrast, saturation and hue as one affine colour map per
sample (see jitter_affine); grayscale, Gaussian blur (one grouped convolution per
axis), solarize and equalize follow, each with its own per-sample draw.

Folder images come pre-cut (`Crops`, cut by the loader's workers in PIL as UNO does):
for those only the colour part runs here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .images import RATIO, CropSpec, Crops, centre_box


def _uniform(n: int, lo: float, hi: float, device) -> Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def rrc_params(n: int, height: int, width: int, scale: tuple[float, float], device=None,
               ratio: tuple[float, float] = RATIO, attempts: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RandomResizedCrop.get_params for n samples at once: top, left, h, w,
    each [n] int64. Per sample, up to `attempts` tries of (area uniform in scale * H * W,
    log aspect ratio uniform in log(ratio), w = round(sqrt(area * r)), h = round(sqrt(area / r)));
    the first with 0 < w <= W and 0 < h <= H wins, with offsets uniform over the integer
    positions; after `attempts` misses, the centre crop of centre_box. All tries are drawn
    up front ([n, attempts]): they are independent, so the winner's law is torchvision's."""
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    area = height * width * (torch.rand(n, attempts, device=device) * (scale[1] - scale[0]) + scale[0])
    r = torch.exp(torch.rand(n, attempts, device=device) * (hi - lo) + lo)
    w, h = torch.sqrt(area * r).round(), torch.sqrt(area / r).round()  # half to even, as Python's round
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.byte().argmax(1, keepdim=True)  # argmax returns the first maximum
    found = ok.any(1)
    ct, cl, ch, cw = centre_box(height, width, ratio)
    w = torch.where(found, w.gather(1, first).squeeze(1), float(cw))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(ch))
    # uniform integers in [0, H - h]; the clamp guards float rounding of rand * (H - h + 1)
    top = (torch.rand(n, device=device) * (height - h + 1)).floor_().clamp_(max=height - h)
    left = (torch.rand(n, device=device) * (width - w + 1)).floor_().clamp_(max=width - w)
    top, left = torch.where(found, top, float(ct)), torch.where(found, left, float(cl))
    return top.long(), left.long(), h.long(), w.long()


def _axis(start: Tensor, length: Tensor, out: int, size: int) -> Tensor:
    """[n] boxes along one axis -> [n, out] grid_sample coordinates (align_corners=False) of
    F.interpolate's bilinear source positions, clamped to the box as interpolate clamps
    them to the cropped image."""
    j = torch.arange(out, device=start.device, dtype=torch.float32) + 0.5
    start, length = start.float().unsqueeze(1), length.float().unsqueeze(1)
    pos = start + j * (length / out) - 0.5
    pos = torch.minimum(torch.maximum(pos, start), start + length - 1)
    return (2 * pos + 1) / size - 1


def crop_boxes(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, out: int,
               flip: Tensor | None = None) -> Tensor:
    """Box (top, left, h, w) of each image resized to out x out, mirrored where `flip`.
    x: [N, C, H, W] float; boxes: [N] integers (may reach outside the image: zeros there);
    flip: [N] bool or None. Equals torchvision's resized_crop on tensors with bilinear
    interpolation and antialias=False (exactly, up to float rounding); PIL's bilinear
    resize, which UNO's loader uses, also antialiases when it shrinks."""
    n, _, h_in, w_in = x.shape
    gx, gy = _axis(left, w, out, w_in), _axis(top, h, out, h_in)
    if flip is not None:  # the sample positions are symmetric about the box centre
        gx = torch.where(flip.unsqueeze(1), gx.flip(1), gx)
    grid = torch.stack([gx.unsqueeze(1).expand(n, out, out), gy.unsqueeze(2).expand(n, out, out)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def crop_flip(x: Tensor, out: int, rrc_prob: float, scale: tuple[float, float], pad: int, flip: bool) -> Tensor:
    """Per sample: RandomResizedCrop(out, scale) with chance rrc_prob, else RandomCrop(out, pad);
    then a horizontal flip with chance 1/2. x: [N, C, H, W] float in [0, 1]; zero fill is black."""
    n, _, h_in, w_in = x.shape
    dev = x.device
    top, left, h, w = rrc_params(n, h_in, w_in, scale, dev)
    # RandomCrop from the padded image: integer offsets, crop size `out`.
    oy = torch.randint(0, h_in + 2 * pad - out + 1, (n,), device=dev) - pad
    ox = torch.randint(0, w_in + 2 * pad - out + 1, (n,), device=dev) - pad
    rrc = torch.rand(n, device=dev) < rrc_prob
    top, left = torch.where(rrc, top, oy), torch.where(rrc, left, ox)
    h, w = torch.where(rrc, h, out), torch.where(rrc, w, out)
    mirror = torch.rand(n, device=dev) < 0.5 if flip else None
    return crop_boxes(x, top, left, h, w, out, mirror)


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


def grayscale(x: Tensor, on: Tensor) -> Tensor:
    """RGB -> grey (torchvision's weights), kept 3-channel, where `on` ([N] bool). One
    channel: unchanged."""
    if x.shape[1] == 1:
        return x
    grey = torch.einsum("c,nchw->nhw", torch.tensor(_LUMA, device=x.device), x).unsqueeze(1)
    return torch.where(on.view(-1, 1, 1, 1), grey.expand_as(x), x)


def random_grayscale(x: Tensor, p: float) -> Tensor:
    """RandomGrayscale(p), per sample."""
    if p <= 0 or x.shape[1] == 1:
        return x
    return grayscale(x, torch.rand(x.shape[0], device=x.device) < p)


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """[N] standard deviations -> [N, 2 radius + 1] normalised 1-D Gaussian taps; sigma 0 is
    the identity (one tap at the centre)."""
    d = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (d / sigma.float().clamp(min=1e-6).unsqueeze(1)) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Blur each image with its own sigma: x [N, C, H, W], sigma [N] (0: untouched), taps
    out to `radius`. Separable: a row and a column pass, each one grouped convolution with
    a kernel per (sample, channel). Edges replicate the border pixel, as PIL's blur does."""
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, 0)  # [N * C, K]
    y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1).to(x.dtype), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1).to(x.dtype), groups=n * c)
    return y.view(n, c, h, w)


def random_blur(x: Tensor, p: float, sigma: tuple[float, float]) -> Tensor:
    """SimCLR's GaussianBlur as UNO applies it, RandomApply([GaussianBlur(sigma)], p): per
    sample a chance p of a blur with sigma uniform in [sigma[0], sigma[1]] (PIL's radius is
    the standard deviation). The kernel reaches 3 sigma of the largest sigma (radius
    ceil(3 * sigma[1])) and is renormalised: the truncated tails hold 0.27% of a 1-D
    Gaussian at sigma[1], less at smaller sigmas. PIL itself approximates the Gaussian with
    three box blurs of the same variance."""
    if p <= 0:
        return x
    n, dev = x.shape[0], x.device
    s = _uniform(n, sigma[0], sigma[1], dev)
    s = torch.where(torch.rand(n, device=dev) < p, s, 0.0)
    return gaussian_blur(x, s, math.ceil(3 * sigma[1]))


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert, per sample, the values at or above threshold / 255: x [N, C, H, W] in [0, 1],
    threshold [N] on the 0-255 scale of PIL's ImageOps.solarize (>= 256 leaves x as it is)."""
    return torch.where(x >= (threshold / 255).view(-1, 1, 1, 1), 1 - x, x)


def random_solarize(x: Tensor, p: float) -> Tensor:
    """UNO's Solarize(p): with chance p, solarize at a threshold uniform in [0, 256)."""
    if p <= 0:
        return x
    n, dev = x.shape[0], x.device
    t = torch.rand(n, device=dev) * 256
    return solarize(x, torch.where(torch.rand(n, device=dev) < p, t, math.inf))


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

    def crop_spec(self, small: bool = True) -> CropSpec:
        """The geometric part of the recipe, for loaders that cut the views themselves;
        without the small views if not `small` (pretraining uses the large ones only)."""
        c = self.cfg
        return CropSpec(c.size, c.num_large, tuple(c.rrc_scale), c.rrc_prob, c.pad,
                        c.small_size, c.num_small if small else 0, tuple(c.small_scale), c.flip)

    def _normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def _colour(self, x: Tensor, copies: int, jitter_p: float, grayscale_p: float, blur_p: float,
                solarize_p: float, equalize_p: float) -> list[Tensor]:
        """The colour part, in UNO's order, on views in [0, 1] -> `copies` normalised views."""
        c = self.cfg
        x = color_jitter(x, jitter_p, c.jitter)
        x = random_grayscale(x, grayscale_p)
        x = random_blur(x, blur_p, tuple(c.blur_sigma))
        x = random_solarize(x, solarize_p)
        x = maybe_equalize(x, equalize_p)
        return list(self._normalize(x).chunk(copies))

    def large(self, x: Tensor | Crops, copies: int | None = None) -> list[Tensor]:
        """num_large (or `copies`) large views of a uint8 batch [B, C, H, W], cropped here;
        or of pre-cut Crops, colour only."""
        c = self.cfg
        colour = (c.jitter_p, c.grayscale_p, c.blur_p, c.solarize_p, c.equalize_p)
        if isinstance(x, Crops):
            if copies and copies != len(x.large):
                raise ValueError(f"asked for {copies} large views of a batch cut with {len(x.large)}")
            return self._colour(torch.cat(x.large).float().div_(255), len(x.large), *colour)
        copies = copies or c.num_large
        x = x.float().div_(255).repeat(copies, 1, 1, 1)
        x = crop_flip(x, c.size, c.rrc_prob, tuple(c.rrc_scale), c.pad, c.flip)
        return self._colour(x, copies, *colour)

    def small(self, x: Tensor | Crops) -> list[Tensor]:
        """num_small small views (RandomResizedCrop(small_size, small_scale)), as `large`."""
        c = self.cfg
        if not c.num_small:
            return []
        colour = (c.small_jitter_p, c.small_grayscale_p, c.small_blur_p, c.small_solarize_p, c.small_equalize_p)
        if isinstance(x, Crops):
            if not x.small:  # cut without small views (pretraining's spec)
                return []
            return self._colour(torch.cat(x.small).float().div_(255), len(x.small), *colour)
        x = x.float().div_(255).repeat(c.num_small, 1, 1, 1)
        x = crop_flip(x, c.small_size, 1.0, tuple(c.small_scale), 0, c.flip)
        return self._colour(x, c.num_small, *colour)

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
