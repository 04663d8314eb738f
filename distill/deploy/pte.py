"""ExecuTorch: the slim student as a `.pte` program for phones (XNNPACK delegate), and running it
in ExecuTorch's Python runtime. Optional: `pip install 'distill[edge]'`.

A `.pte` is planned for fixed input shapes: ExecuTorch allocates every tensor ahead of time, and
a dynamic batch does not survive XNNPACK's lowering of a convolution here (torch's conv shape
function guards the batch on `< 16` or `>= 16` while the graph is re-traced, so a batch declared
dynamic in [1, 64] comes out bounded to [1, 15] and batch 64 is refused at run time). Each file
therefore holds one method per batch size, `forward` for one example (what an app calls) and
`forward_bs64` for a batch of 64; the methods share their weights, so the second one costs a few
KiB (a small CNN: 28.6 KiB for both against 25.3 for `forward` alone), not a second copy.

int8 goes the way ExecuTorch quantizes for XNNPACK: torchao's pt2e `prepare_pt2e` with
`XNNPACKQuantizer` (symmetric per-channel int8 weights, int8 activations at XNNPACK's own sites),
calibrated on training batches, `convert_pt2e`, then the same lowering.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim

from distill.errors import ConfigError, ExportError
from distill.files import atomic_write

INSTALL_HINT = "pip install 'distill[edge]'"
SETTING = "export_executorch"
SETTING_ALLOWED = "auto (a .pte when executorch is installed), true or false"
RUNTIME = "ExecuTorch (XNNPACK)"
# Method name of each batch size a .pte is planned for.
METHODS: dict[int, str] = {1: "forward", 64: "forward_bs64"}


# -- the setting --------------------------------------------------------------------------
def check_setting(value: Any, exporting: bool = False) -> str | bool:
    """`export_executorch`: "auto", true or false (1, "yes", "true" are refused, not guessed);
    true for a run that exports (`exporting`) needs executorch installed."""
    if value != "auto" and not isinstance(value, bool):
        raise ConfigError(SETTING, value, SETTING_ALLOWED)
    if value is True and exporting and not installed():
        raise ConfigError(
            SETTING, value, f"auto or false here: executorch is not installed ({INSTALL_HINT})"
        )
    return value


def installed() -> bool:
    """Whether executorch is installed (found, not imported: its import takes seconds)."""
    return importlib.util.find_spec("executorch") is not None


def planned(value: Any) -> bool:
    """Whether an export with this `export_executorch` makes the .pte files."""
    return value is True or (value == "auto" and installed())


def missing() -> str | None:
    """Why ExecuTorch cannot be used in this environment, or None when it can."""
    try:
        _modules()
    except ImportError as error:
        return f"executorch is not installed ({INSTALL_HINT}): {error}"
    return None


def skip_reason(value: Any) -> str | None:
    """Why this export makes no .pte (None: it makes them). `export_executorch=true` without
    a working executorch is a ConfigError: the run asked for files it cannot have."""
    setting = check_setting(value, exporting=True)
    if setting is False:
        return f"{SETTING}=false"
    reason = missing()
    if reason is not None and setting is True:
        raise ConfigError(SETTING, value, f"auto or false here: {reason}")
    return reason


def _modules() -> SimpleNamespace:
    """ExecuTorch's entry points, imported on first use (an optional dependency). Its import
    logs that torchao's CUDA kernels are absent (a CPU build) and warns about pytree enums."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
                XnnpackPartitioner,
            )
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from executorch.exir import to_edge_transform_and_lower
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return SimpleNamespace(
        XnnpackPartitioner=XnnpackPartitioner,
        XNNPACKQuantizer=XNNPACKQuantizer,
        get_symmetric_quantization_config=get_symmetric_quantization_config,
        to_edge_transform_and_lower=to_edge_transform_and_lower,
        portable_lib=portable_lib,
        Runtime=Runtime,
        prepare_pt2e=prepare_pt2e,
        convert_pt2e=convert_pt2e,
    )


# -- export -------------------------------------------------------------------------------
def quantize_for_xnnpack(
    model: nn.Module, example_inputs: Tensor, batches: Iterable[Tensor]
) -> nn.Module:
    """Post-training static int8 of `model` for XNNPACK (pt2e): symmetric per-channel int8
    weights, int8 activations observed on `batches`. Returns the converted graph, whose
    quantize/dequantize ops in float are what the int8 .pte computes with int8 kernels; it
    takes any batch size (`example_inputs`, a batch of two or more, traces it)."""
    et = _modules()
    quantizer = et.XNNPACKQuantizer().set_global(
        et.get_symmetric_quantization_config(is_per_channel=True)
    )
    with _quiet():
        traced = torch.export.export(
            model.eval(), (example_inputs,), dynamic_shapes=({0: Dim("batch", min=1)},)
        ).module()
        prepared = et.prepare_pt2e(traced, quantizer)
        with torch.inference_mode():
            for inputs in batches:
                prepared(inputs)
        return et.convert_pt2e(prepared)


def save_pte(model: nn.Module, example_input: Tensor, path: Path) -> dict[str, Any]:
    """Lower `model` with the XNNPACK delegate to an ExecuTorch program at `path` (atomically),
    one method per batch size of `METHODS`; `example_input` is one example (batch of one).

    Returns what the file is: `inputs` (each method's input shape) and `portable_ops` (the ops
    XNNPACK did not take, run by ExecuTorch's portable kernels). An op ExecuTorch cannot lower
    or run is named in the ExportError.
    """
    et = _modules()
    example = example_input[:1]
    inputs = {name: [batch, *example.shape[1:]] for batch, name in sorted(METHODS.items())}
    try:
        with _quiet():
            programs = {
                name: torch.export.export(model, (example.expand(*shape).contiguous(),))
                for name, shape in inputs.items()
            }
            edge = et.to_edge_transform_and_lower(programs, partitioner=[et.XnnpackPartitioner()])
            portable = sorted(
                {op for name in programs for op in _ops_outside_delegates(edge, name)}
            )
            program = edge.to_executorch()
    except Exception as error:
        raise ExportError(f"{path.name}: {_describe_lowering_failure(error)}") from error
    absent = _kernels_absent(program, et.Runtime.get())
    if absent:
        raise ExportError(
            f"{path.name}: ExecuTorch's runtime here has no kernel for {', '.join(absent)} "
            "(an op XNNPACK did not take); replace it in the model, or export_executorch=false"
        )
    atomic_write(path, lambda handle: handle.write(program.buffer))
    return {"inputs": inputs, "portable_ops": portable}


_OP_PATTERNS = (
    # to_edge: "Operator torch._ops.aten.special_bessel_j0.default is not in Core ATen opset"
    re.compile(r"Operator (?:torch\._ops\.)?([\w.:]+) is not"),
    # to_executorch: "Missing out variants: {'quantized_decomposed::quantize_per_tensor', ...}"
    re.compile(r"Missing out variants: \{([^}]*)\}"),
)


def _describe_lowering_failure(error: BaseException) -> str:
    """The op a lowering failed on, when the message names one; else the innermost cause."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    for link in chain:
        for pattern in _OP_PATTERNS:
            match = pattern.search(str(link))
            if match:
                ops = match.group(1).replace("'", "").strip()
                return (
                    f"ExecuTorch cannot lower op {ops} ({type(link).__name__}); replace it in "
                    "the model, or export_executorch=false"
                )
    root = chain[-1]
    lines = str(root).strip().splitlines()
    first = lines[0][:300] if lines else ""
    return f"the ExecuTorch lowering failed: {type(root).__name__}: {first}"


def _ops_outside_delegates(edge: Any, method: str) -> list[str]:
    """The ops of `method` left to ExecuTorch's portable kernels ("aten.mean.dim")."""
    graph = edge.exported_program(method).graph_module.graph
    ops = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target.__module__ == "_operator":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            continue
        ops.append(name)
    return ops


def _kernels_absent(program: Any, runtime: Any) -> list[str]:
    """The program's non-delegated operators this runtime has no kernel for."""
    registered = set(runtime.operator_registry.operator_names)
    absent = set()
    for plan in program.executorch_program.execution_plan:
        for operator in plan.operators:
            name = f"{operator.name}.{operator.overload}" if operator.overload else operator.name
            if name not in registered:
                absent.add(name)
    return sorted(absent)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and the lowering warn about deprecated pytree specs and print progress."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# -- running ------------------------------------------------------------------------------
class PteModel:
    """A .pte file in ExecuTorch's Python runtime: a batch of a size the file has a method for
    runs as it is; any other batch runs in chunks of the largest one, the last chunk padded
    with zeros (their outputs dropped)."""

    def __init__(self, path: Path) -> None:
        et = _modules()
        self.path = Path(path)
        try:
            # Held for as long as its methods, which refer to its data; `release` frees both.
            self.program = et.Runtime.get().load_program(self.path)
            self.methods = {
                batch: self.program.load_method(name)
                for batch, name in METHODS.items()
                if name in self.program.method_names
            }
        except Exception as error:
            raise ExportError(
                f"ExecuTorch cannot load {self.path.name}: {type(error).__name__}: {error}"
            ) from error
        if not self.methods:
            methods = ", ".join(sorted(METHODS.values()))
            raise ExportError(f"{self.path.name} has none of the methods {methods}")

    def release(self) -> None:
        """Free the program and its methods now (calling the model afterwards is an error)."""
        self.methods = {}
        self.program = None

    def __call__(self, inputs: Tensor) -> Tensor:
        if not self.methods:
            raise ExportError(f"{self.path.name} was released; load it again to run it")
        inputs = inputs.detach().to(torch.float32).contiguous()
        if len(inputs) in self.methods:
            return self._run(len(inputs), inputs)
        batch = max(self.methods)
        outputs = []
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            padding = batch - len(chunk)
            if padding:
                chunk = torch.cat([chunk, chunk.new_zeros(padding, *chunk.shape[1:])])
            outputs.append(self._run(batch, chunk)[: batch - padding])
        return torch.cat(outputs)

    def _run(self, batch: int, inputs: Tensor) -> Tensor:
        try:
            return self.methods[batch].execute([inputs])[0]
        except Exception as error:
            raise ExportError(
                f"ExecuTorch failed to run {self.path.name} ({METHODS[batch]}) on input of shape "
                f"{tuple(inputs.shape)}: {error}"
            ) from error


@contextlib.contextmanager
def runtime_threads(threads: int) -> Iterator[None]:
    """ExecuTorch's threadpool (XNNPACK's kernels) at `threads` threads, then as it was."""
    portable_lib = _modules().portable_lib
    before = portable_lib._threadpool_get_thread_count()
    portable_lib._unsafe_reset_threadpool(threads)
    try:
        yield
    finally:
        portable_lib._unsafe_reset_threadpool(before)
