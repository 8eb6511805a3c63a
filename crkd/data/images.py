"""Image sets that yield uint8 batches [B, C, H, W] with dataset indices.

CIFAR-size data lives on the training device as one uint8 tensor and batches are
slices of a device-side permutation (airbench style: no workers, no PIL); all
augmentation happens batched on the device. Large folder datasets stream through a
DataLoader: evaluation batches are decoded into fixed-size squares; training batches
asked for with a CropSpec come as `Crops`, the geometric part of UNO's recipe done
per image in PIL by the workers (RandomResizedCrop of the whole image, flip), and
only the colour part is left to the device (Augment recognises Crops).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import torch
from torch import Tensor

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range


def _batch_bounds(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    bs = min(batch_size, n)
    stop = n - n % bs if drop_last else n
    return [(s, min(s + bs, n)) for s in range(0, stop, bs)]


@dataclass(frozen=True)
class CropSpec:
    """The geometric part of a multi-crop recipe: what a loader needs to cut the views.
    Large views: RandomResizedCrop(size, scale) with chance rrc_prob, else RandomCrop(size,
    pad); small views: RandomResizedCrop(small_size, small_scale); each then flipped with
    chance 1/2 if `flip`."""
    size: int
    num_large: int
    scale: tuple[float, float]
    rrc_prob: float
    pad: int
    small_size: int
    num_small: int
    small_scale: tuple[float, float]
    flip: bool


class Crops(NamedTuple):
    """A batch of pre-cut views: num_large uint8 [B, C, size, size], num_small [B, C, s, s]."""
    large: list[Tensor]
    small: list[Tensor]


def centre_box(height: int, width: int, ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """RandomResizedCrop's fallback after ten misses: the centre crop with the aspect
    ratio clamped to `ratio`, as (top, left, h, w)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def rrc_box(height: int, width: int, scale: tuple[float, float], g: torch.Generator,
            ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, draw for draw, on the generator g:
    (top, left, h, w). Given the same seed it returns torchvision's box exactly."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return top, left, h, w
    return centre_box(height, width, ratio)


def _resize_short(im, size: int):
    """Shorter side to `size` (bilinear, PIL's antialiasing), the longer at least `size`."""
    from PIL import Image
    w, h = im.size
    scale = size / min(w, h)
    return im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BILINEAR, reducing_gap=None)


def cut_views(im, spec: CropSpec, load_size: int, g: torch.Generator) -> list:
    """The num_large + num_small views of one PIL image, as torchvision's PIL transforms cut
    them (UNO's ImageNet recipe): RandomResizedCrop of the whole image, bilinear resize,
    RandomHorizontalFlip. A large view that draws RandomCrop instead (rrc_prob < 1) takes it
    from the image resized as for evaluation (shorter side load_size), zero padded by `pad`."""
    from PIL import Image
    out, base = [], None
    for k in range(spec.num_large + spec.num_small):
        large = k < spec.num_large
        size = spec.size if large else spec.small_size
        if not large or spec.rrc_prob >= 1 or torch.rand(1, generator=g).item() < spec.rrc_prob:
            top, left, h, w = rrc_box(im.height, im.width, spec.scale if large else spec.small_scale, g)
            # = torchvision.transforms.functional.resized_crop on PIL: crop, then resize
            view = im.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
        else:
            base = _resize_short(im, load_size) if base is None else base
            p = spec.pad
            top = int(torch.randint(0, max(base.height + 2 * p - size, 0) + 1, (1,), generator=g).item()) - p
            left = int(torch.randint(0, max(base.width + 2 * p - size, 0) + 1, (1,), generator=g).item()) - p
            view = base.crop((left, top, left + size, top + size))  # PIL fills outside the image with 0
        if spec.flip and torch.rand(1, generator=g).item() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(view)
    return out


def _to_tensor(im) -> Tensor:
    import numpy as np
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


class _Decode(torch.utils.data.Dataset):
    """Evaluation: shorter side to `size`, centre square."""

    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.paths[i]) as im:
            im = _resize_short(im.convert("RGB"), self.size)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            return _to_tensor(im.crop((left, top, left + self.size, top + self.size))), i


class _DecodeViews(torch.utils.data.Dataset):
    """Training: the views of the whole decoded image; item (index, seed)."""

    def __init__(self, paths: list[str], size: int, spec: CropSpec):
        self.paths, self.size, self.spec = paths, size, spec

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        from PIL import Image
        i, seed = item
        # A generator per image, seeded from the main process: the views depend on the
        # global RNG only, not on the number of workers or which worker cuts them.
        g = torch.Generator().manual_seed(seed)
        with Image.open(self.paths[i]) as im:
            views = cut_views(im.convert("RGB"), self.spec, self.size, g)
        return tuple(_to_tensor(v) for v in views), i


class TensorImages:
    """All images in one uint8 tensor [N, C, H, W]."""

    def __init__(self, x: Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def to(self, device) -> "TensorImages":
        self.x = self.x.to(device)
        return self

    def subset(self, mask: Tensor) -> "TensorImages":
        return TensorImages(self.x[mask.to(self.x.device)])

    def batches(self, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                crops: CropSpec | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of whole images; `crops` is ignored: these are cut on the device."""
        n, dev = len(self), self.x.device
        order = torch.randperm(n, device=dev) if shuffle else torch.arange(n, device=dev)
        return self.batches_from(order[s:e] for s, e in _batch_bounds(n, batch_size, drop_last))

    def batches_from(self, index_batches: Iterable[Tensor],
                     crops: CropSpec | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The images of each given batch of indices (on this set's device), with the indices."""
        for idx in index_batches:
            yield self.x[idx], idx


class FolderImages:
    """Image files decoded by DataLoader workers: fixed-size uint8 squares, or, for
    training with a CropSpec, the views cut from the whole image (Crops)."""

    def __init__(self, paths: list[str], size: int, workers: int = 4):
        self.paths, self.size, self.workers, self.device = paths, size, workers, torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def to(self, device) -> "FolderImages":
        self.device = torch.device(device)
        return self

    def subset(self, mask: Tensor) -> "FolderImages":
        keep = mask.cpu().tolist()
        return FolderImages([p for p, k in zip(self.paths, keep) if k], self.size, self.workers).to(self.device)

    def batches(self, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                crops: CropSpec | None = None) -> Iterator[tuple[Tensor | Crops, Tensor]]:
        # The order comes from the global RNG, so it is saved and restored with it.
        n = len(self)
        order = torch.randperm(n) if shuffle else torch.arange(n)
        return self.batches_from((order[s:e] for s, e in _batch_bounds(n, batch_size, drop_last)), crops)

    def batches_from(self, index_batches: Iterable[Tensor],
                     crops: CropSpec | None = None) -> Iterator[tuple[Tensor | Crops, Tensor]]:
        """The images of each given batch of indices, decoded by the workers, on this set's
        device: squares of side `size`, or with `crops` the views of that spec (Crops)."""
        batches = [b.cpu().tolist() for b in index_batches]
        if crops is not None:
            # Every image's seed is drawn here, at once, from the global RNG: the crops of
            # an epoch follow from the RNG state at its start (which checkpoints save),
            # however the workers' prefetching interleaves with the training steps.
            seeds = iter(torch.randint(0, 2 ** 62, (sum(map(len, batches)),)).tolist())
            batches = [[(i, next(seeds)) for i in b] for b in batches]
        data = _Decode(self.paths, self.size) if crops is None else _DecodeViews(self.paths, self.size, crops)
        # A private generator for the loader's own worker seed, so that iterating it takes
        # nothing from the global RNG (our randomness is all in the seeds above).
        loader = torch.utils.data.DataLoader(
            data, batch_sampler=batches, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False, generator=torch.Generator().manual_seed(0))
        return self._yield(loader, crops)

    def _yield(self, loader, crops: CropSpec | None):
        put = lambda t: t.to(self.device, non_blocking=True)
        for x, idx in loader:
            if crops is None:
                yield put(x), put(idx)
            else:
                yield Crops([put(v) for v in x[:crops.num_large]], [put(v) for v in x[crops.num_large:]]), put(idx)
