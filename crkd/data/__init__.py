"""Data: NCD benchmarks by name, device-resident image sets, batched augmentation."""
from .augment import Augment
from .benchmarks import BENCHMARKS, NCDData, load_data
from .images import FolderImages, TensorImages

__all__ = ["Augment", "BENCHMARKS", "NCDData", "load_data", "FolderImages", "TensorImages"]
