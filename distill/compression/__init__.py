"""Compression of the student while it learns: masks and pruning criteria, schedules, fake
quantization, weight sharing, the quantizer that prepares and converts a student, and the
callbacks that drive them."""

from distill.compression.activation_sites import ActivationSites, find_activation_sites
from distill.compression.channel_scores import (
    BNGammaScore,
    ChannelScore,
    L1Score,
    L2Score,
    TaylorScore,
)
from distill.compression.criteria import (
    bn_gamma_scores,
    channel_mask,
    expand_channel_mask,
    global_magnitude_masks,
    kept_channels,
    l1_channel_scores,
    l2_channel_scores,
    magnitude_mask,
    nm_mask,
    random_mask,
    taylor_channel_scores,
)
from distill.compression.fake_quant import ActivationFakeQuant, WeightFakeQuant
from distill.compression.masks import (
    WeightMask,
    attach_mask,
    bake_into,
    effective_state_dict,
    set_mask,
)
from distill.compression.parametrizations import get_mask, get_weight_fake_quant, get_weight_sharing
from distill.compression.pruners import (
    ChannelPruning,
    Magnitude,
    NMSparsity,
    PruningCriterion,
    RandomPruning,
    WeightCriterion,
)
from distill.compression.pruning_callback import PruningCallback
from distill.compression.pruning_strategies import (
    ChannelGroupStrategy,
    PruningStrategy,
    UnstructuredStrategy,
)
from distill.compression.quantization_callback import QuantizationCallback
from distill.compression.quantization_settings import QuantizationSettings, WeightSharingSettings
from distill.compression.quantizer import Quantizer
from distill.compression.schedules import (
    AGPSchedule,
    IterativeSchedule,
    LinearSchedule,
    OneShotSchedule,
    SparsitySchedule,
)
from distill.compression.sharing import SharedWeights, attach_weight_sharing, kmeans_1d
from distill.compression.sparsity import sparsity_metrics, weight_sparsity
from distill.compression.sparsity_logger import SparsityLogger

__all__ = [
    "AGPSchedule",
    "ActivationFakeQuant",
    "ActivationSites",
    "BNGammaScore",
    "ChannelGroupStrategy",
    "ChannelPruning",
    "ChannelScore",
    "IterativeSchedule",
    "L1Score",
    "L2Score",
    "LinearSchedule",
    "Magnitude",
    "NMSparsity",
    "OneShotSchedule",
    "PruningCallback",
    "PruningCriterion",
    "PruningStrategy",
    "QuantizationCallback",
    "QuantizationSettings",
    "Quantizer",
    "RandomPruning",
    "SharedWeights",
    "SparsityLogger",
    "SparsitySchedule",
    "TaylorScore",
    "UnstructuredStrategy",
    "WeightCriterion",
    "WeightFakeQuant",
    "WeightMask",
    "WeightSharingSettings",
    "attach_mask",
    "attach_weight_sharing",
    "bake_into",
    "bn_gamma_scores",
    "channel_mask",
    "effective_state_dict",
    "expand_channel_mask",
    "find_activation_sites",
    "get_mask",
    "get_weight_fake_quant",
    "get_weight_sharing",
    "global_magnitude_masks",
    "kept_channels",
    "kmeans_1d",
    "l1_channel_scores",
    "l2_channel_scores",
    "magnitude_mask",
    "nm_mask",
    "random_mask",
    "set_mask",
    "sparsity_metrics",
    "taylor_channel_scores",
    "weight_sparsity",
]
