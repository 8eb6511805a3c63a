"""Losses: pure functions of tensors (no state, no config objects)."""
from .relation_kd import relation_kd, relation_kd_terms
from .sinkhorn import sinkhorn_knopp
from .swapped import swapped_prediction

__all__ = ["relation_kd", "relation_kd_terms", "sinkhorn_knopp", "swapped_prediction"]
