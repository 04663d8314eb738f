"""Where activations are fake-quantized, and the hooks that do it.

onnxruntime runs a conv, matmul or add in int8 only when its inputs come from DequantizeLinear
and its output goes to QuantizeLinear (DESIGN.md section 3: placing Q/DQ on inputs alone gave no
speed-up). So the sites are the model input and the outputs of every conv, linear, BatchNorm,
ReLU, other pointwise activation (ReLU6, hard-swish, hard-sigmoid, SiLU, ...) and pooling module,
and of every custom module (a residual block's output is its `relu(x + shortcut)`, a
squeeze-and-excitation block's its `x * gate`: the only handle on a functional add or multiply).
Modules are recognised by type, never by class name, so a user's own model gets the same
sites. Two refinements, found by one recorded forward pass that follows tensors from producer to
consumer:

- a conv or linear whose output goes straight into a BatchNorm is folded with it when deployed,
  so only the BatchNorm's output is a site (quantizing before it would add noise the deployed
  model never has);
- a tensor a ReLU module consumes is not a site: the ReLU's output is, and onnxruntime drops a
  ReLU in front of a QuantizeLinear whose zero point is 0.

Training and export place the same sites by module name, so the simulated model and the deployed
one round the same tensors. Hooks are owned by `ActivationQuantizer`; the observers live in the
student (`student.activation_quant`), so they are checkpointed with it and, under DDP, broadcast
from rank 0 like any buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from distill.compression.fake_quant import ActivationFakeQuant
from distill.errors import ConfigError

INPUT_SITE = "<input>"
OBSERVERS_ATTR = "activation_quant"

_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RELUS = (nn.ReLU, nn.ReLU6)
# Pointwise activations onnxruntime has no int8 kernel for (hard-swish, hard-sigmoid, SiLU...):
# they run in float between a DequantizeLinear and a QuantizeLinear, so both their input (the
# output of the layer before) and their output are sites, and the convs around them stay int8.
_ACTIVATIONS = (
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Softplus,
)
_SITE_TYPES = (
    *_CONV_LINEAR,
    *_NORMS,
    *_RELUS,
    *_ACTIVATIONS,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool3d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool3d,
)
# BatchNorm that folds into the layer before it: (layer type, norm type). isinstance, because a
# parametrized layer's class is a generated subclass (ParametrizedConv1d).
_FOLDABLE = {
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
    (nn.Linear, nn.BatchNorm1d),
}


@dataclass
class ActivationSites:
    """Module names whose outputs are quantized (`INPUT_SITE` for the model input), in call
    order, and the conv/linear -> BatchNorm pairs folded at deployment."""

    names: list[str]
    folds: dict[str, str] = field(default_factory=dict)


def _is_custom(module: nn.Module) -> bool:
    return not type(module).__module__.startswith("torch.")


def find_activation_sites(model: nn.Module, example_inputs: Tensor) -> ActivationSites:
    """Record one forward pass of `model` and choose its activation sites (see module doc)."""
    calls = _record_calls(model, example_inputs)
    consumers: dict[TensorKey, list[nn.Module]] = {}
    for _, module, input_keys, _ in calls:
        for key in input_keys:
            consumers.setdefault(key, []).append(module)
    producer = {output: (name, module) for name, module, _, output in reversed(calls)}

    folds = {}
    for name, module, input_keys, _ in calls:
        if isinstance(module, _NORMS) and len(input_keys) == 1 and input_keys[0] in producer:
            layer_name, layer = producer[input_keys[0]]
            foldable = any(
                isinstance(layer, layer_type) and isinstance(module, norm_type)
                for layer_type, norm_type in _FOLDABLE
            )
            if foldable and len(consumers[input_keys[0]]) == 1:
                folds[layer_name] = name

    names = [INPUT_SITE]
    seen = {(id(example_inputs), 0)}
    for name, module, _, output in calls:
        if output in seen or not name:
            continue
        if not (isinstance(module, _SITE_TYPES) or _is_custom(module)):
            continue
        if name in folds:
            continue
        if any(isinstance(consumer, _RELUS) for consumer in consumers.get(output, [])):
            continue
        seen.add(output)
        names.append(name)
    return ActivationSites(names=names, folds=folds)


# A tensor as it was at one point of the forward pass: (id, version). An in-place op (ReLU with
# inplace=True) returns its input object changed, so its output is a new version of that id.
TensorKey = tuple[int, int]
Call = tuple[str, nn.Module, list[TensorKey], TensorKey]


def _record_calls(model: nn.Module, example_inputs: Tensor) -> list[Call]:
    """Every module call of one eval forward pass, in completion order: name, module, the
    keys of its tensor inputs (taken before it ran) and of its floating-point output."""
    calls: list[Call] = []
    versions: dict[int, int] = {}
    pending: list[list[TensorKey]] = []
    keep_alive: list[Tensor] = [example_inputs]  # ids are only unique while tensors live

    def key(tensor: Tensor) -> TensorKey:
        return (id(tensor), versions.get(id(tensor), 0))

    def before(module: nn.Module, args: tuple) -> None:
        inputs = [arg for arg in args if isinstance(arg, Tensor)]
        keep_alive.extend(inputs)
        pending.append([key(tensor) for tensor in inputs])

    def after(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            input_keys = pending.pop()
            if not (isinstance(output, Tensor) and output.is_floating_point()):
                return
            keep_alive.append(output)
            if key(output) in input_keys:  # changed in place: a new version
                versions[id(output)] = versions.get(id(output), 0) + 1
            calls.append((name, module, input_keys, key(output)))

        return hook

    # Parametrizations (masks, fake-quant) compute weights, not activations.
    weight_side = {
        id(inner)
        for module in model.modules()
        if isinstance(module, parametrize.ParametrizationList)
        for inner in module.modules()
    }
    handles = []
    for name, module in model.named_modules():
        if id(module) not in weight_side:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def observer_key(site: str) -> str:
    """A ModuleDict key for a site (module names have dots, keys may not)."""
    return site.replace(".", "/")


def qdq_hook(fake_quant: Callable[[Tensor], Tensor]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return fake_quant(output)

    return hook


def input_qdq_hook(fake_quant: Callable[[Tensor], Tensor]) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (fake_quant(args[0]), *args[1:])

    return hook


class SiteHooks:
    """Forward hooks applying `transform(site)` at each site of a model; owns the handles."""

    def __init__(
        self, model: nn.Module, sites: Iterable[str], transform: Callable[[str], Callable]
    ) -> None:
        self.handles: list[RemovableHandle] = []
        for site in sites:
            if site == INPUT_SITE:
                hook = input_qdq_hook(transform(site))
                self.handles.append(model.register_forward_pre_hook(hook))
            else:
                module = _site_module(model, site)
                self.handles.append(module.register_forward_hook(qdq_hook(transform(site))))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _site_module(model: nn.Module, site: str) -> nn.Module:
    try:
        return model.get_submodule(site)
    except AttributeError as error:
        raise ConfigError(
            "quantization.sites", site, "the name of a module of this student"
        ) from error


class ActivationObservers(nn.ModuleDict):
    """The student's observers, by site. Hooks call them; `forward` passes its input through
    unchanged because an `nn.Sequential` student calls every child in turn, this one too."""

    def forward(self, x: Tensor) -> Tensor:
        return x


# The observer a hooked module's hook calls, kept in the module's __dict__ rather than as a
# child: not a second state-dict entry, and `copy.deepcopy` of the student maps it to the copied
# observer, so a copy (an EMA or SWA model) observes into its own buffers.
_OBSERVER_REF = "_distill_activation_observer"
_INPUT_OBSERVER_REF = "_distill_input_observer"


def _observe_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return module.__dict__[_OBSERVER_REF](output)


def _observe_input(module: nn.Module, args: tuple) -> tuple:
    return (module.__dict__[_INPUT_OBSERVER_REF](args[0]), *args[1:])


class ActivationQuantizer:
    """Observers + fake-quant hooks at a student's activation sites."""

    def __init__(self, sites: ActivationSites | None = None, momentum: float = 0.1) -> None:
        self.sites = sites  # found when the student is first seen, if not given
        self.momentum = momentum
        self.handles: list[RemovableHandle] = []

    def attach(self, model: nn.Module) -> nn.ModuleDict:
        """Add `model.activation_quant` (one observer per site) and hook them in."""
        if self.sites is None:
            raise ConfigError("quantization.sites", None, "sites found by find_activation_sites")
        if hasattr(model, OBSERVERS_ATTR):
            raise ConfigError(
                "quantization", type(model).__name__, "a student without activation observers yet"
            )
        observers = ActivationObservers(
            {observer_key(site): ActivationFakeQuant(self.momentum) for site in self.sites.names}
        )
        device = next(iter(model.parameters()), torch.empty(0)).device
        model.add_module(OBSERVERS_ATTR, observers.to(device))
        for site in self.sites.names:
            observer = observers[observer_key(site)]
            if site == INPUT_SITE:
                model.__dict__[_INPUT_OBSERVER_REF] = observer
                self.handles.append(model.register_forward_pre_hook(_observe_input))
            else:
                module = _site_module(model, site)
                module.__dict__[_OBSERVER_REF] = observer
                self.handles.append(module.register_forward_hook(_observe_output))
        return observers

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def observers_of(model: nn.Module) -> dict[str, ActivationFakeQuant]:
    """site -> observer, for a model an `ActivationQuantizer` was attached to."""
    observers = getattr(model, OBSERVERS_ATTR, None)
    if not isinstance(observers, nn.ModuleDict):
        return {}
    return {
        key.replace("/", "."): cast(ActivationFakeQuant, observer)
        for key, observer in observers.items()
    }
