"""Training stages: `Pretrain` (stage 1) and `Discover` (stage 2), iterators over epochs."""
from .discover import Discover
from .pretrain import Pretrain

__all__ = ["Discover", "Pretrain"]
