"""Pruning: one mask mechanism, pure criteria, schedules, and the callback that drives them."""

from distill.compression.callback import PruningCallback
from distill.compression.criteria import (
    bn_gamma_scores,
    channel_mask,
    expand_channel_mask,
    global_magnitude_masks,
    l1_channel_scores,
    l2_channel_scores,
    magnitude_mask,
    nm_mask,
    random_mask,
    taylor_channel_scores,
)
from distill.compression.masks import (
    WeightMask,
    attach_mask,
    bake_into,
    effective_state_dict,
    get_mask,
    set_mask,
)
from distill.compression.pruners import ChannelPruning, Magnitude, NMSparsity, RandomPruning
from distill.compression.schedules import (
    AGPSchedule,
    IterativeSchedule,
    LinearSchedule,
    OneShotSchedule,
    SparsitySchedule,
)

__all__ = [
    "AGPSchedule",
    "ChannelPruning",
    "IterativeSchedule",
    "LinearSchedule",
    "Magnitude",
    "NMSparsity",
    "OneShotSchedule",
    "PruningCallback",
    "RandomPruning",
    "SparsitySchedule",
    "WeightMask",
    "attach_mask",
    "bake_into",
    "bn_gamma_scores",
    "channel_mask",
    "effective_state_dict",
    "expand_channel_mask",
    "get_mask",
    "global_magnitude_masks",
    "l1_channel_scores",
    "l2_channel_scores",
    "magnitude_mask",
    "nm_mask",
    "random_mask",
    "set_mask",
    "taylor_channel_scores",
]
