"""Stopping a run whose training loss, or weights, stopped being finite, naming what and when.

A NaN or infinite loss poisons every weight at the next update, and a checkpoint saved after
it would replace the last good one. The module checks the loss at every step, before the
backward pass and the update (Lightning runs `training_step` inside the optimizer's closure),
and the weights before each checkpoint (the end of a validation or training epoch, before
ModelCheckpoint saves), so an update that overflowed from a finite loss is caught too. Either
raises `TrainingDiverged`; Lightning saves no checkpoint on an exception (unless a
ModelCheckpoint is told `save_on_exception`), and the run writes no summary.

Cost: one `isfinite` and one device-to-host read of a single boolean per step; the terms are
looked at only once the total is bad.

DDP: every rank computes its own loss, and all must take the same decision: a rank that raised
alone would leave the others waiting in backward's gradient all-reduce until the collective
timed out (a hang, not an error). The decision is therefore reduced across ranks (one
all-reduce of one number per step), every rank raises, and each gathers every rank's terms so
that they all name the same culprits. The weights, by contrast, are the same on every DDP rank,
so each rank checks them alone: no collective at epoch end, where a rank-0-only progress bar
starts collectives of its own (DistillationModule.stop_if_weights_not_finite).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from pytorch_lightning.strategies import Strategy
from torch import Tensor

from distill.errors import TrainingDiverged

ADVICE = "Check the learning rate, the loss weights and temperature, and the inputs."
# A diverged model may have every parameter non-finite: the message names this many.
NAMED_PARAMETERS = 3
NON_FINITE: dict[str, Callable[[Tensor], Tensor]] = {"nan": torch.isnan, "inf": torch.isinf}


def finite_everywhere(finite: Tensor, strategy: Strategy | None) -> bool:
    """Whether `finite` (booleans) holds on every rank of `strategy` (None: one process); the
    same answer on each."""
    decision = bool(finite.all())  # the one device-to-host read
    return decision if strategy is None else strategy.reduce_boolean_decision(decision, all=True)


def loss_divergence(
    weights: Mapping[str, float],
    total: Tensor,
    values: Mapping[str, Tensor],
    gather: Callable[[Tensor], Tensor],
    step: int,
    epoch: int,
) -> TrainingDiverged:
    """The error for a step where some rank's total loss is not finite, naming the weighted
    terms (`values`, times `weights`) that are not. Every rank must call it: `gather` collects
    every rank's total and terms."""
    names = list(values)
    row = [total, *(values[name] for name in names)]
    # Weighted as WeightedSum weighs them (in the loss's own dtype, where an overflow happens).
    row += [weights[name] * values[name] for name in names]
    local = torch.stack([value.detach().float().reshape(()) for value in row])
    # (ranks, 1 + 2 * terms); with one process all_gather adds no leading dimension.
    table = gather(local).reshape(-1, local.numel()).cpu()
    culprits = []
    for rank, ranked in enumerate(table.tolist()):
        if math.isfinite(ranked[0]):
            continue
        where = f" on rank {rank}" if len(table) > 1 else ""
        terms = ranked[1 : 1 + len(names)]
        weighted = ranked[1 + len(names) :]
        factors = [float(weights[name]) for name in names]
        culprits += rank_culprits(names, factors, terms, weighted, ranked[0], where)
    return TrainingDiverged(
        f"the training loss is not finite at step {step} (epoch {epoch}): "
        f"{', '.join(culprits)}. Training stopped before this step's update; checkpoints "
        f"saved before it are kept. {ADVICE}",
        step,
        epoch,
    )


def rank_culprits(
    names: Sequence[str],
    weights: Sequence[float],
    terms: Sequence[float],
    weighted: Sequence[float],
    total: float,
    where: str,
) -> list[str]:
    """`loss.<name>=<value>` for each term whose weighted value is not finite on one rank; the
    whole sum when every term is finite and only their sum overflowed."""
    bad = [i for i, value in enumerate(weighted) if not math.isfinite(value)]
    if not bad:
        pairs = zip(names, terms, strict=True)
        parts = ", ".join(f"loss.{name}={number(value)}" for name, value in pairs)
        return [f"the weighted sum of {parts} overflowed to {number(total)}{where}"]
    culprits = []
    for i in bad:
        culprit = f"loss.{names[i]}={number(terms[i])}"
        if number(weighted[i]) != number(terms[i]):  # a finite value times a large weight, 0*inf
            culprit += f" (times weight {weights[i]:g}: {number(weighted[i])})"
        culprits.append(culprit + where)
    return culprits


def weights_divergence(
    parameters: Sequence[tuple[str, Tensor]], step: int, epoch: int
) -> TrainingDiverged:
    """The error for weights that an update made non-finite (from a finite loss: an overflow),
    naming the first few parameters that hold NaN or infinite values."""
    culprits = []
    for name, parameter in parameters:
        held = [kind for kind, test in NON_FINITE.items() if bool(test(parameter).any())]
        if held:
            culprits.append(f"{name} holds {' and '.join(held)}")
    shown = ", ".join(culprits[:NAMED_PARAMETERS])
    if len(culprits) > NAMED_PARAMETERS:
        shown += f" and {len(culprits) - NAMED_PARAMETERS} more parameters"
    return TrainingDiverged(
        f"the weights are not finite at step {step} (epoch {epoch}): {shown}. The loss was "
        "finite up to here, so an update overflowed. Training stopped before a checkpoint saved "
        f"them; checkpoints saved before are kept. {ADVICE}",
        step,
        epoch,
    )


def number(value: float) -> str:
    """nan, inf, -inf, or a finite value in 4 significant digits."""
    return f"{value:.4g}"
