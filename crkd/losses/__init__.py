"""Losses: pure functions of tensors (no state, no config objects)."""
from .relation_kd import relation_kd, relation_kd_terms
from .relational import angle_cosines, pair_distances, pkt_loss, rkd_angle, rkd_distance, sp_loss
from .sinkhorn import sinkhorn_knopp
from .swapped import swapped_prediction

__all__ = ["relation_kd", "relation_kd_terms", "pair_distances", "rkd_distance", "angle_cosines", "rkd_angle",
           "sp_loss", "pkt_loss", "sinkhorn_knopp", "swapped_prediction"]
