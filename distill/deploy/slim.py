"""Physical removal of channels that channel pruning has zeroed.

During training, channel pruning only masks: a pruned output channel of a conv or linear layer has
all-zero weights and bias, and the BatchNorm after it an all-zero affine weight and bias, so the
channel is exactly 0 after the norm. Removing such a channel, together with the matching input
channel of every consumer, leaves the outputs unchanged while the model gets smaller and faster.

Channels are coupled: a residual add ties the channel index of every layer feeding it, a
concatenation offsets indices, a flatten maps one channel onto many features. Torch-Pruning's
dependency graph (Fang et al. 2023, "DepGraph: Towards any structural pruning") tracks these
couplings; a channel is removed only when it is zero in every producing layer and every
BatchNorm of its coupled group.

The model must be plain (baked): no parametrizations, because the dependency graph creates new
Parameters. Removal is therefore a stage boundary after training, and works on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch_pruning.ops import OPTYPE

from distill.errors import ConfigError
from distill.validate import require_real

ExampleInputs = Tensor | Sequence[Tensor]

# Graph nodes that only route channels (adds, activations, pools, reshapes, concatenations...).
# Torch-Pruning remaps indices through them; they hold no weights to check or cut.
_ROUTING_OPS = {
    OPTYPE.ELEMENTWISE,
    OPTYPE.CONCAT,
    OPTYPE.SPLIT,
    OPTYPE.RESHAPE,
    OPTYPE.UNBIND,
    OPTYPE.EXPAND,
    OPTYPE.SLICE,
}

# Marker for a group item that places no condition on the channel (a consumer or a routing op).
_ANY = object()


@dataclass
class SlimReport:
    """What `remove_zero_channels` did.

    `channels_before` / `channels_after` map each conv / linear layer name to its output channels
    (features). MACs are per example, counted by `tp.utils.count_ops_and_params` on the example
    inputs (it divides by the batch size, but adds a Linear's bias once per batch, so use batch 1
    for exact per-example counts); params count every parameter.
    """

    model: nn.Module
    removed_channels: dict[str, list[int]]
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    max_abs_diff: float = 0.0

    @property
    def params_ratio(self) -> float:
        """Slim parameters as a fraction of the dense model's."""
        return self.params_after / self.params_before

    @property
    def macs_ratio(self) -> float:
        """Slim MACs as a fraction of the dense model's."""
        return self.macs_after / self.macs_before


@dataclass
class _Plan:
    """Channels to remove from one coupled group, named by its root layer's output indices."""

    root: nn.Module
    pruning_fn: Any
    root_idxs: list[int]
    per_layer: dict[nn.Module, list[int]]


def find_zero_channels(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, list[int]]:
    """Output channels that can be removed without changing the outputs, by layer name.

    A channel is listed for every conv / linear layer that produces it, in that layer's own
    indexing (for a residual stream, the stem, each block's last conv and each shortcut conv).
    Never listed: the model's outputs (logits), the last channel of any layer, and channels of
    groups that touch layers this module does not check (LayerNorm, grouped conv, ...).
    The input model is not modified.
    """
    work, inputs = _prepare(model, example_inputs)
    graph, output_grad_fns = _build_graph(work, inputs)
    names = {module: name for name, module in work.named_modules()}
    return {
        names[layer]: idxs
        for plan in _plan_removals(graph, output_grad_fns)
        for layer, idxs in plan.per_layer.items()
    }


def remove_zero_channels(
    model: nn.Module, example_inputs: ExampleInputs, atol: float = 1e-5
) -> SlimReport:
    """Return a copy of `model` with its all-zero channels physically removed, and a report.

    The copy's outputs on `example_inputs` (eval mode) are checked against the input model's;
    a difference above `atol` raises RuntimeError, since a removal that changes the outputs must
    never be saved silently. The input model is not modified.
    """
    # inf is allowed, as before: any finite difference then passes (shapes are still checked).
    atol = require_real(
        "atol", atol, minimum=0, min_inclusive=False, finite=False, allowed="a positive number"
    )
    slim, inputs = _prepare(model, example_inputs)
    reference = copy.deepcopy(model).eval()
    graph, output_grad_fns = _build_graph(slim, inputs)
    names = {module: name for name, module in slim.named_modules()}
    plans = _plan_removals(graph, output_grad_fns)

    channels_before = _layer_channels(slim)
    macs_before, params_before = tp.utils.count_ops_and_params(reference, inputs)
    requires_grad = {name: p.requires_grad for name, p in slim.named_parameters()}
    for plan in plans:
        group = graph.get_pruning_group(plan.root, plan.pruning_fn, plan.root_idxs)
        if not graph.check_pruning_group(group):
            # Planning checked each group alone; an earlier cut must not have changed that.
            raise RuntimeError(f"Removing channels of {names[plan.root]} would empty a layer")
        group.prune()
    # Torch-Pruning replaces every cut tensor with a fresh Parameter that requires grad.
    for name, param in slim.named_parameters():
        param.requires_grad_(requires_grad[name])
    slim.eval()
    macs_after, params_after = tp.utils.count_ops_and_params(slim, inputs)
    max_abs_diff = _check_same_outputs(reference, slim, inputs, atol)
    slim.train(model.training)

    return SlimReport(
        model=slim,
        removed_channels={
            names[layer]: idxs for plan in plans for layer, idxs in plan.per_layer.items()
        },
        channels_before=channels_before,
        channels_after=_layer_channels(slim),
        params_before=int(params_before),
        params_after=int(params_after),
        macs_before=float(macs_before),
        macs_after=float(macs_after),
        max_abs_diff=max_abs_diff,
    )


def _prepare(
    model: nn.Module, example_inputs: ExampleInputs
) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """Validate the arguments; return a deep copy to work on and the inputs as a tuple."""
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "an nn.Module")
    if any(parametrize.is_parametrized(module) for module in model.modules()):
        raise ConfigError(
            "model",
            type(model).__name__,
            "a baked plain model without parametrizations (copy the effective weights into a "
            "fresh model first)",
        )
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else example_inputs
    if (
        not isinstance(inputs, (tuple, list))
        or not inputs
        or not all(isinstance(item, Tensor) for item in inputs)
    ):
        raise ConfigError(
            "example_inputs", type(example_inputs).__name__, "a Tensor or a sequence of Tensors"
        )
    return copy.deepcopy(model), tuple(inputs)


def _build_graph(
    model: nn.Module, inputs: tuple[Tensor, ...]
) -> tuple[tp.DependencyGraph, list[Any]]:
    """Trace `model` (which it puts in eval mode) into a dependency graph.

    Also returns the grad_fns of the traced outputs, which tell which layers make the outputs.

    Tracing follows autograd, so it needs grad mode and parameters that require grad even when
    the caller froze them or runs under no_grad.
    """
    output_grad_fns: list[Any] = []

    def remember_outputs(outputs: Any) -> Any:
        output_grad_fns.extend(
            tensor.grad_fn for tensor in _flatten(outputs) if tensor.grad_fn is not None
        )
        return outputs

    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, output_transform=remember_outputs, verbose=False
            )
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
    return graph, output_grad_fns


def _plan_removals(graph: tp.DependencyGraph, output_grad_fns: list[Any]) -> list[_Plan]:
    """One plan per coupled group that has removable channels."""
    plans = []
    roots = (nn.modules.conv._ConvNd, nn.Linear)
    for group in graph.get_all_groups(root_module_types=roots):
        if _touches_outputs(graph, group, output_grad_fns):
            continue
        removable = _removable_root_idxs(graph, group)
        if not removable:
            continue
        root_dep = group[0].dep
        cut = graph.get_pruning_group(root_dep.target.module, root_dep.handler, sorted(removable))
        if not graph.check_pruning_group(cut):
            # A split can route all kept channels of a layer elsewhere; leave such groups whole.
            continue
        per_layer = {
            item.dep.target.module: sorted(
                idx for idx, root in _index_pairs(item) if root in removable
            )
            for item in group
            if _is_producer(graph, item.dep)
        }
        plans.append(_Plan(root_dep.target.module, root_dep.handler, sorted(removable), per_layer))
    return plans


def _touches_outputs(graph: tp.DependencyGraph, group: Any, output_grad_fns: list[Any]) -> bool:
    """True if the group's channels reach the model's outputs without passing through a layer.

    A consumer's own outputs are another group's business, so only nodes that carry the group's
    channels forward (producers, norms, routing ops) count.
    """
    for item in group:
        node = item.dep.target
        if node.type == OPTYPE.OUTPUT:
            return True
        carries_channels = graph.is_out_channel_pruning_fn(item.dep.handler)
        is_output = not node.outputs or any(node.grad_fn is fn for fn in output_grad_fns)
        if carries_channels and is_output:
            return True
    return False


def _removable_root_idxs(graph: tp.DependencyGraph, group: Any) -> set[int]:
    """Root indices that are zero in every producer and norm of `group`, keeping one per layer."""
    removable = set(group[0].root_idxs)
    for item in group:
        zero = _zero_channels_of(graph, item.dep)
        if zero is None:
            return set()
        if zero is not _ANY:
            removable -= {root for idx, root in _index_pairs(item) if not zero[idx]}
    # Never remove every channel of a layer: keep its lowest-index channel.
    for item in group:
        if not _is_producer(graph, item.dep):
            continue
        cut = sorted((idx, root) for idx, root in _index_pairs(item) if root in removable)
        if len(cut) >= graph.get_out_channels(item.dep.target.module):
            removable.discard(cut[0][1])
    return removable


def _zero_channels_of(graph: tp.DependencyGraph, dep: Any) -> Any:
    """Per-channel zero flags of a producer or norm; `_ANY` for consumers; None if unsupported."""
    node, module = dep.target, dep.target.module
    if node.type in _ROUTING_OPS:
        return _ANY
    is_plain_conv = node.type == OPTYPE.CONV and not module.transposed and module.groups == 1
    if node.type == OPTYPE.LINEAR or is_plain_conv:
        # Handlers are bound methods, created anew on each attribute access: compare with ==
        # (what the graph's own lookup does), never with `is`.
        if not graph.is_out_channel_pruning_fn(dep.handler):
            return _ANY
        return _zero_rows(module.weight, module.bias)
    if node.type == OPTYPE.DEPTHWISE_CONV and not module.transposed:
        # Each filter reads only its own channel, so it both consumes and produces it.
        return _zero_rows(module.weight, module.bias)
    if node.type == OPTYPE.BN:
        if not module.affine:
            # (0 - running_mean) / std is not zero in general.
            return torch.zeros(module.num_features, dtype=torch.bool)
        return (module.weight == 0) & (module.bias == 0)
    # LayerNorm, GroupNorm, PReLU, grouped or transposed convs, attention, bare Parameters, ...:
    # their channel semantics are not checked here, so their groups are left whole.
    return None


def _index_pairs(item: Any) -> list[tuple[int, int]]:
    """(index in this layer, index in the group's root layer) for each channel of a group item."""
    return list(zip(item.idxs, item.root_idxs, strict=True))


def _zero_rows(weight: Tensor, bias: Tensor | None) -> Tensor:
    zero = ~weight.detach().flatten(1).ne(0).any(dim=1)
    if bias is not None:
        zero &= bias.detach() == 0
    return zero


def _is_producer(graph: tp.DependencyGraph, dep: Any) -> bool:
    """A conv / linear whose output channels the group cuts."""
    return dep.target.type in (
        OPTYPE.CONV,
        OPTYPE.DEPTHWISE_CONV,
        OPTYPE.LINEAR,
    ) and graph.is_out_channel_pruning_fn(dep.handler)


def _layer_channels(model: nn.Module) -> dict[str, int]:
    channels = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            channels[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            channels[name] = module.out_features
    return channels


def _check_same_outputs(
    reference: nn.Module, slim: nn.Module, inputs: tuple[Tensor, ...], atol: float
) -> float:
    """Largest absolute output difference; RuntimeError if shapes differ or it exceeds `atol`."""
    with torch.no_grad():
        expected = _flatten(reference(*inputs))
        actual = _flatten(slim(*inputs))
    shapes = ([t.shape for t in expected], [t.shape for t in actual])
    if shapes[0] != shapes[1]:
        raise RuntimeError(f"Channel removal changed the output shapes: {shapes[0]} -> {shapes[1]}")
    diffs = [(e - a).abs().max().item() for e, a in zip(expected, actual, strict=True)]
    diff = max(diffs, default=0.0)
    if not diff <= atol:
        raise RuntimeError(
            f"Channel removal changed the outputs: max |difference| {diff:.3g} > atol {atol:g}. "
            "An op between a zeroed channel and its consumer probably maps 0 to a non-zero value "
            "(a bias added outside a layer, sigmoid, padding with a constant...); the slim model "
            "was not returned."
        )
    return diff


def _flatten(outputs: Any) -> list[Tensor]:
    return list(_iter_tensors(outputs))


def _iter_tensors(outputs: Any) -> Iterator[Tensor]:
    if isinstance(outputs, Tensor):
        yield outputs
    elif isinstance(outputs, dict):
        for value in outputs.values():
            yield from _iter_tensors(value)
    elif isinstance(outputs, (tuple, list)):
        for value in outputs:
            yield from _iter_tensors(value)
