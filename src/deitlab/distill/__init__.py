"""Distillation: the loss functions/object and the frozen teacher."""

from deitlab.distill.losses import (
    DistillationLoss,
    LossParts,
    cross_entropy,
    hard_distillation,
    soft_distillation,
)
from deitlab.distill.teacher import CachedTeacher, FrozenTeacher, load_teacher

__all__ = [
    "CachedTeacher",
    "DistillationLoss",
    "FrozenTeacher",
    "LossParts",
    "cross_entropy",
    "hard_distillation",
    "load_teacher",
    "soft_distillation",
]
