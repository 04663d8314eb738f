"""Loss terms: each a pure function plus a thin weighted module; WeightedSum combines them."""

from distill.losses.base import LossTerm, StepOutputs, WeightedSum, check_weight
from distill.losses.ce import CrossEntropy, cross_entropy
from distill.losses.kd import SoftTargetKD, soft_target_kd

__all__ = [
    "CrossEntropy",
    "LossTerm",
    "SoftTargetKD",
    "StepOutputs",
    "WeightedSum",
    "check_weight",
    "cross_entropy",
    "soft_target_kd",
]
