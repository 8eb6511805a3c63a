"""Relation-distillation terms of the discovery stage, by the name users write in
`discover.relation`. Adding one: a new module with an `Options` dataclass and a
`Relation` subclass (see base.py), and one line here."""
from __future__ import annotations

from .base import Dims, Options, Relation, SetupData, StepContext
from .crcd import Crcd
from .crkd import CrKD, CrKDCode
from .none import NoRelation, Uno
from .pkt import PKT
from .refilled import Refilled
from .rkd import RKD
from .sp import SP

RELATIONS: dict[str, type[Relation]] = {
    "uno": Uno,
    "none": NoRelation,
    "crkd": CrKD,
    "crkd-code": CrKDCode,
    "refilled": Refilled,
    "crcd": Crcd,
    "rkd": RKD,
    "sp": SP,
    "pkt": PKT,
}

__all__ = ["RELATIONS", "Dims", "Options", "Relation", "SetupData", "StepContext"]
