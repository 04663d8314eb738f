"""Loss terms: each a pure function plus a thin weighted module; WeightedSum combines them.

Logit terms: CrossEntropy, SoftTargetKD (Hinton 2015), DecoupledKD (Zhao 2022), DISTLoss
(Huang 2022), StandardizedKD (Sun 2024). Feature terms (`student` / `teacher` taps): FitNets
(Romero 2015), AttentionTransfer (Zagoruyko 2017), NeuronSelectivityTransfer (Huang 2017),
SimilarityPreserving (Tung 2019), PKT (Passalis 2018), RelationalKD (Park 2019),
CorrelationCongruence (Peng 2019), ContrastiveRepresentationKD (Tian 2020).
"""

from distill.losses.at import AttentionTransfer, attention_map, attention_transfer
from distill.losses.base import LossTerm, StepOutputs, WeightedSum
from distill.losses.cc import CorrelationCongruence, correlation_congruence
from distill.losses.ce import CrossEntropy, cross_entropy
from distill.losses.crd import ContrastiveRepresentationKD, nce_loss
from distill.losses.dist import DISTLoss, dist_loss
from distill.losses.dkd import DecoupledKD, decoupled_kd
from distill.losses.features import FeatureLossTerm
from distill.losses.fitnets import FitNets, hint_loss
from distill.losses.kd import SoftTargetKD, soft_target_kd
from distill.losses.logit_standardization import (
    StandardizedKD,
    standardize_logits,
    standardized_kd,
)
from distill.losses.nst import NeuronSelectivityTransfer, nst_mmd
from distill.losses.pkt import PKT, probabilistic_transfer
from distill.losses.rkd import RelationalKD, rkd_angle, rkd_distance
from distill.losses.sp import SimilarityPreserving, similarity_preserving

__all__ = [
    "PKT",
    "AttentionTransfer",
    "ContrastiveRepresentationKD",
    "CorrelationCongruence",
    "CrossEntropy",
    "DISTLoss",
    "DecoupledKD",
    "FeatureLossTerm",
    "FitNets",
    "LossTerm",
    "NeuronSelectivityTransfer",
    "RelationalKD",
    "SimilarityPreserving",
    "SoftTargetKD",
    "StandardizedKD",
    "StepOutputs",
    "WeightedSum",
    "attention_map",
    "attention_transfer",
    "correlation_congruence",
    "cross_entropy",
    "decoupled_kd",
    "dist_loss",
    "hint_loss",
    "nce_loss",
    "nst_mmd",
    "probabilistic_transfer",
    "rkd_angle",
    "rkd_distance",
    "similarity_preserving",
    "soft_target_kd",
    "standardize_logits",
    "standardized_kd",
]
