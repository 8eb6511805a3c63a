"""Image sets that yield uint8 batches [B, C, H, W] with dataset indices.

CIFAR-size data lives on the training device as one uint8 tensor and batches are
slices of a device-side permutation (airbench style: no workers, no PIL). Large
folder datasets stream through a DataLoader that only decodes and resizes; all
augmentation happens batched on the device.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor


def _batch_bounds(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    bs = min(batch_size, n)
    stop = n - n % bs if drop_last else n
    return [(s, min(s + bs, n)) for s in range(0, stop, bs)]


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

    def batches(self, batch_size: int, shuffle: bool = False, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        n, dev = len(self), self.x.device
        order = torch.randperm(n, device=dev) if shuffle else torch.arange(n, device=dev)
        return self.batches_from(order[s:e] for s, e in _batch_bounds(n, batch_size, drop_last))

    def batches_from(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """The images of each given batch of indices (on this set's device), with the indices."""
        for idx in index_batches:
            yield self.x[idx], idx


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = self.size / min(w, h)
            im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1), i


class FolderImages:
    """Image files decoded by DataLoader workers into fixed-size uint8 squares."""

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

    def batches(self, batch_size: int, shuffle: bool = False, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        # The order comes from the global RNG, so it is saved and restored with it.
        n = len(self)
        order = torch.randperm(n) if shuffle else torch.arange(n)
        return self.batches_from(order[s:e] for s, e in _batch_bounds(n, batch_size, drop_last))

    def batches_from(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """The images of each given batch of indices, decoded by the workers, on this set's device."""
        loader = torch.utils.data.DataLoader(
            _Decode(self.paths, self.size), batch_sampler=[b.cpu().tolist() for b in index_batches],
            num_workers=self.workers, pin_memory=self.device.type == "cuda", persistent_workers=False)
        for x, idx in loader:
            yield x.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)
