"""Per-epoch learning rate: linear warm-up then cosine (docs/methods.md, "Optimisation")."""
import math


def lr_at(epoch: int, epochs: int, lr: float, warmup: int = 10, lr_start: float = 0.001,
          lr_min: float = 0.001) -> float:
    """Learning rate of epoch `epoch` (0-based) out of `epochs`."""
    if epoch < warmup:
        if warmup == 1:
            return lr_start
        return lr_start + epoch * (lr - lr_start) / (warmup - 1)
    span = max(epochs - warmup, 1)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * (epoch - warmup) / span))
