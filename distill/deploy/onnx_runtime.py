"""ONNX export with a dynamic batch, and running the file in onnxruntime.

Each exported file is checked twice in onnxruntime, with graph optimizations off (the graph as
written: QDQ nodes run in float) and on (fused int8 kernels, layout transforms): an export whose
two runs disagree beyond tolerance is refused, because then the fast path computes something
other than the graph that was verified.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.export import Dim

from distill.errors import ExportError

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(
    model: nn.Module, example_inputs: Tensor, path: Path, dynamic_batch: bool = True
) -> Path:
    """Export `model` (eval mode) to `path` with a dynamic batch dimension (or, with
    `dynamic_batch=False`, the batch size of `example_inputs`), atomically."""
    model.eval()
    dynamic_shapes = ({0: Dim("batch", min=1)},) if dynamic_batch else None
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example_inputs,),
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=False,
            )
        if program is None:  # only the legacy (dynamo=False) exporter returns nothing
            raise ExportError(f"the ONNX exporter returned no program for {path.name}")
        staged = tmp / path.name
        program.save(str(staged))
        _strip_debug_metadata(staged)
        os.replace(staged, path)
    except Exception as error:
        if isinstance(error, ExportError):
            raise
        raise ExportError(
            f"{path.name}: the student could not be exported to ONNX: {_root_cause(error)} "
            "(an op that ONNX or onnxruntime cannot run needs a replacement in the model)"
        ) from error
    finally:
        for leftover in tmp.iterdir():
            leftover.unlink()
        tmp.rmdir()
    return path


def _strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug strings (fx node, stack trace with local paths): on
    a small student they are most of the file, and they say nothing a runtime needs. What they
    say that a reader needs, the module each node comes from, becomes the node's name."""
    model = onnx.load(str(path))
    _name_nodes_by_module(model.graph)
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


# Separates the module path from the op in a node name: `features.3.se/mul`.
NODE_NAME_SEPARATOR = "/"


def _name_nodes_by_module(graph: onnx.GraphProto) -> None:
    """Name each node `<module path>/<op>` (`features.3.depthwise.0/conv2d`) from the exporter's
    name scopes, so a node onnxruntime keeps in float can be reported by the module it runs in;
    onnxruntime keeps the names of the nodes it fuses and of those it leaves alone. Names stay
    unique; a node without scopes keeps the exporter's name."""
    scoped = [(node, _name_scopes(node)) for node in graph.node]
    used = {node.name for node, scopes in scoped if not scopes}
    for node, scopes in scoped:
        if not scopes:
            continue
        # Each scope is a full module path ('', 'features', 'features.0', ...); the innermost
        # is the module the node runs in.
        *modules, op = scopes
        module = next((scope for scope in reversed(modules) if scope), "")
        base = f"{module}{NODE_NAME_SEPARATOR}{op}" if module else op
        name, index = base, 1
        while name in used:
            index += 1
            name = f"{base}_{index}"
        used.add(name)
        node.name = name


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    """The exporter's `pkg.torch.onnx.name_scopes` of a node: the paths of the modules it runs
    in, outermost first (the model itself is ''), then its fx node's name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            with contextlib.suppress(ValueError, SyntaxError):
                scopes = ast.literal_eval(prop.value)
                if isinstance(scopes, list) and all(isinstance(s, str) for s in scopes):
                    return scopes
    return []


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter prints its progress, logs every optimization pass, and warns about optional
    # torchvision ops.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _root_cause(error: BaseException) -> str:
    """The innermost cause's first line: the exporter wraps the failing op in two generic
    layers ("Failed to convert ...", "Error when translating node ...")."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


class OrtModel:
    """An ONNX file in an onnxruntime session on the CPU."""

    def __init__(self, path: Path, optimize: bool = True, threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:
            raise ExportError(
                f"onnxruntime cannot run {Path(path).name}: {_first_line(error)}"
            ) from error
        self.path = Path(path)

    def __call__(self, inputs: np.ndarray | Tensor) -> np.ndarray:
        if isinstance(inputs, Tensor):
            inputs = inputs.detach().cpu().numpy()
        try:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs.astype(np.float32)})[0]
        except Exception as error:
            raise ExportError(
                f"onnxruntime failed to run {self.path.name} on input of shape "
                f"{tuple(inputs.shape)}: {_first_line(error)}"
            ) from error


def verify_optimization_levels(
    path: Path, inputs: Tensor, quantized: bool, min_agreement: float = 0.99
) -> dict[str, float]:
    """Run `path` with optimizations off and on; refuse the file if they disagree.

    Float graphs must match to 1e-3 relative to the logits' scale (summation order changes
    with fusions). Quantized graphs run int8 kernels only when optimized, which rounds
    intermediate sums differently from the float QDQ reference: their predicted classes must
    agree on `min_agreement` of the inputs.
    """
    plain = OrtModel(path, optimize=False)(inputs)
    fused = OrtModel(path, optimize=True)(inputs)
    max_abs_diff = float(np.abs(plain - fused).max())
    agreement = float((plain.argmax(1) == fused.argmax(1)).mean())
    scale = float(np.abs(plain).max()) or 1.0
    ok = agreement >= min_agreement if quantized else max_abs_diff <= 1e-3 * scale
    if not ok:
        raise ExportError(
            f"{path.name}: onnxruntime gives different outputs with graph optimizations off and "
            f"on (max |diff| {max_abs_diff:.3g}, class agreement {agreement:.4f}); the optimized "
            "graph cannot be trusted"
        )
    return {"opt_max_abs_diff": max_abs_diff, "opt_agreement": agreement}
