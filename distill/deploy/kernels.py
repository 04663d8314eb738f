"""What onnxruntime makes of an int8 QDQ graph: which convs run as int8 kernels, which ops stay
float.

onnxruntime fuses DequantizeLinear -> op -> QuantizeLinear into an int8 kernel (QLinearConv,
QLinearAdd, QLinearMul, QGemm, ...) where it has one; an op without one (hard-swish,
hard-sigmoid, ReduceMean, ...) runs in float between a DequantizeLinear and a QuantizeLinear,
and so does an op whose input or output is not quantized. Neither fails the export; this says
which is which, by the module each op comes from (`export_onnx` names nodes `<module>/<op>`),
so the report can list what stayed float.

The graph is read after onnxruntime's extended optimizations (level 2, where the QDQ fusions
happen), before the layout transforms of level 3 that only change how kernels are laid out.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from distill.deploy.onnx_runtime import NODE_NAME_SEPARATOR

# int8 kernels: every `QLinear*` op, and these.
_INT8_KERNELS = {"QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "QAttention"}
_INT8_CONVS = {"QLinearConv", "ConvInteger"}
# int8 kernels whose output is float (dequantized inside the kernel).
_FLOAT_OUTPUT_KERNELS = {"MatMulIntegerToFloat"}
_QUANTIZE = {"QuantizeLinear", "DynamicQuantizeLinear"}
# Ops that only move, reshape or select data: not listed as float compute.
_LAYOUT_OPS = {
    "Cast",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Expand",
    "Flatten",
    "Gather",
    "Identity",
    "Reshape",
    "Shape",
    "Size",
    "Slice",
    "Split",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
}


@dataclass(frozen=True)
class FloatOp:
    """An op of the exported graph that onnxruntime runs in float: its ONNX type and the module
    it comes from (the node name when the module is unknown)."""

    op: str
    module: str

    def __str__(self) -> str:
        return f"{self.op} at {self.module}"


@dataclass
class KernelSummary:
    """`convs` Conv nodes in the exported graph, `int8_convs` of them int8 kernels after
    optimization; `int8_kernels` counts every int8 kernel by type; `float_ops` lists the
    compute ops kept in float, in graph order."""

    convs: int
    int8_convs: int
    int8_kernels: dict[str, int] = field(default_factory=dict)
    float_ops: list[FloatOp] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        """The numbers and lists for an artifact's entry in summary.json."""
        return {
            "convs": self.convs,
            "int8_convs": self.int8_convs,
            "int8_kernels": dict(self.int8_kernels),
            "float_ops": [str(op) for op in self.float_ops],
        }

    def note(self, shown: int = 4) -> str:
        """One line for the report: int8 convs, and the float ops by type with their modules."""
        text = f"int8 kernels for {self.int8_convs} of {self.convs} convs"
        if not self.float_ops:
            return f"{text}; no op kept in float"
        by_op: dict[str, list[str]] = {}
        for op in self.float_ops:
            by_op.setdefault(op.op, []).append(op.module)
        parts = []
        for op_type, modules in by_op.items():
            listed = ", ".join(modules[:shown]) + (", ..." if len(modules) > shown else "")
            parts.append(f"{op_type} x{len(modules)} ({listed})")
        return f"{text}; kept in float: {'; '.join(parts)}"


def summarize_kernels(path: Path) -> KernelSummary:
    """Optimize the ONNX file at `path` in onnxruntime and say what runs in int8 and in float."""
    exported = onnx.load(str(path), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="distill-kernels-") as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(optimized_path))
    return summarize_graphs(exported.graph, optimized.graph)


def summarize_graphs(exported: onnx.GraphProto, optimized: onnx.GraphProto) -> KernelSummary:
    """`summarize_kernels` on graphs already loaded: the file as exported and as optimized."""
    kernels = Counter(node.op_type for node in optimized.node if _is_int8_kernel(node.op_type))
    convs = sum(node.op_type == "Conv" for node in exported.node)
    int8_convs = sum(kernels[op] for op in _INT8_CONVS)
    exported_by_name = {node.name: node for node in exported.node}
    producer = {output: node for node in exported.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in optimized.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    float_ops: list[FloatOp] = []
    for node in _float_compute_nodes(optimized):
        source = _source_node(node, producer, exported_by_name, consumers)
        op_type = source.op_type if source is not None else node.op_type
        name = source.name if source is not None else node.name or node.op_type
        found = FloatOp(op_type, name.split(NODE_NAME_SEPARATOR)[0])
        if found not in float_ops:
            float_ops.append(found)
    return KernelSummary(convs, int8_convs, dict(sorted(kernels.items())), float_ops)


def _is_int8_kernel(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in _INT8_KERNELS


def _float_compute_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """Nodes that compute on float activations: whose input is a float activation (the graph
    input, a DequantizeLinear output, or a float op's output) and that are no int8 kernel,
    quantize op or data movement. onnxruntime writes the graph in topological order."""
    constants = {init.name for init in graph.initializer}
    float_tensors = {value.name for value in graph.input if value.name not in constants}
    for node in graph.node:
        op = node.op_type
        if op in _QUANTIZE:
            continue
        if op == "DequantizeLinear" or op in _FLOAT_OUTPUT_KERNELS or _float_gemm(node):
            float_tensors.update(node.output)
            continue
        if _is_int8_kernel(op) or not any(name in float_tensors for name in node.input):
            continue
        float_tensors.update(node.output)
        if op not in _LAYOUT_OPS:
            yield node


def _float_gemm(node: onnx.NodeProto) -> bool:
    """A QGemm without an output scale writes float."""
    return node.op_type == "QGemm" and len([name for name in node.input if name]) < 8


def _source_node(
    node: onnx.NodeProto,
    producer: Mapping[str, onnx.NodeProto],
    exported_by_name: Mapping[str, onnx.NodeProto],
    consumers: Mapping[str, list[onnx.NodeProto]],
) -> onnx.NodeProto | None:
    """The exported node an optimized node comes from: the one of the same name, or the one
    whose output it writes; a node onnxruntime made up (a function body it inlined, such as the
    HardSigmoid and Mul of a HardSwish) belongs to the node its outputs flow into."""
    seen: set[str] = set()
    pending = [node]
    while pending:
        current = pending.pop(0)
        if current.name and current.name in exported_by_name:
            return exported_by_name[current.name]
        for output in current.output:
            if output in producer:
                return producer[output]
        for output in current.output:
            for consumer in consumers.get(output, []):
                key = consumer.name or "|".join(consumer.output)
                if key not in seen:
                    seen.add(key)
                    pending.append(consumer)
    return None
