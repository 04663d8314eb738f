"""Every conv model of the zoo through the deploy path: channel pruning -> QAT -> slim -> ONNX.

One settings table (`ZOO`), tiny widths and inputs, a few QAT steps on random data. Each row is
channel-pruned to exactly half of every prunable coupled group, trained a few steps with int8
fake quantization, baked, slimmed, and exported by the export's own builders (`onnx_fp32`,
`onnx_int8`, `report` of `distill.deploy.artifacts`), which measure the int8 file against the
fake-quant student as `distill-export` does. Asserted per row: channel counts after removal,
the fp32 file against the torch slim model, the int8 file's agreement, how many convs
onnxruntime runs as int8 kernels, and the ops it keeps in float, listed in the report by name.
The zoo's own configs (full block tables) run the same way under `pytest -m slow`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from distill.compression import (
    ChannelPruning,
    OneShotSchedule,
    PruningCallback,
    QuantizationCallback,
    bake_into,
)
from distill.compression.batchnorm import freeze_batchnorm
from distill.config import build
from distill.data.base import ClassificationDataModule, TensorClassificationDataset
from distill.deploy.artifacts import (
    MIN_INT8_AGREEMENT,
    ExportContext,
    baselines,
    onnx_fp32,
    onnx_int8,
    report,
)
from distill.deploy.onnx_runtime import OrtModel
from distill.deploy.run_dir import TrainedRun
from distill.models import (
    MLP,
    CifarResNet,
    ConvNet1D,
    MobileNetV2,
    MobileNetV3Small,
    SmallCNN,
    WideResNet,
)
from distill.pipeline import train
from tests.conftest import CONF_DIR, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")

SPARSITY = 0.5
NUM_CLASSES = 10
TEST_SAMPLES = 256

# Short block tables with every kind of block: without expansion, strided, residual, SE with
# ReLU and with hard-swish, a 5-wide kernel.
V2_BLOCKS = [[1, 8, 1, 1], [6, 16, 2, 2], [4, 24, 2, 2]]
V3_BLOCKS = [
    [3, 16, 16, True, "relu", 1],
    [3, 32, 16, False, "relu", 1],
    [5, 48, 24, True, "hardswish", 2],
    [5, 64, 24, True, "hardswish", 1],
]


@dataclass(frozen=True)
class ZooCase:
    """A zoo model, its input, the ops onnxruntime keeps in float in its int8 graph (by ONNX op
    type: AdaptiveAvgPool exports as ReduceMean, which has no int8 kernel, nor have hard-swish
    and hard-sigmoid), and int8 kernels other than convs it must run (residual adds, SE
    products, Linear layers)."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    float_ops: frozenset[str]
    kernels: tuple[tuple[str, int], ...] = ()
    named: tuple[str, ...] = ()  # some of the float ops, as the report names them


def case(
    build: Callable[[], nn.Module],
    shape: tuple[int, ...],
    *float_ops: str,
    named: tuple[str, ...] = (),
    **kernels: int,
) -> ZooCase:
    return ZooCase(build, shape, frozenset(float_ops), tuple(kernels.items()), named)


ZOO = [
    # MaxPool's output has an observer of its own, whose scale differs from its input's, so
    # onnxruntime cannot run it on the uint8 values (it would need the same scale both sides).
    pytest.param(
        case(
            lambda: SmallCNN((1, 8, 8), NUM_CLASSES, channels=(8, 16, 16)),
            (1, 8, 8),
            *("MaxPool", "ReduceMean"),
        ),
        id="cnn2d_small",
    ),
    pytest.param(case(lambda: ConvNet1D((1, 40), NUM_CLASSES, (8, 8, 8)), (1, 40)), id="cnn1d"),
    pytest.param(case(lambda: MLP((1, 40), NUM_CLASSES, (16, 16)), (1, 40)), id="mlp"),
    pytest.param(
        case(lambda: CifarResNet(8, (8, 8, 16, 16), NUM_CLASSES), (3, 8, 8), "ReduceMean"),
        id="resnet",
    ),
    # Pre-activation: a BatchNorm that follows an add, not a conv, cannot be folded, and
    # onnxruntime has no int8 BatchNormalization.
    pytest.param(
        case(lambda: WideResNet(10, 1, NUM_CLASSES), (3, 8, 8), "BatchNormalization", "ReduceMean"),
        id="wrn",
    ),
    pytest.param(
        case(
            lambda: MobileNetV2(NUM_CLASSES, 3, 0.5, blocks=V2_BLOCKS, last_channels=32),
            (3, 8, 8),
            "ReduceMean",
            QLinearAdd=2,
            QGemm=1,
        ),
        id="mobilenetv2",
    ),
    pytest.param(
        case(
            lambda: MobileNetV2(NUM_CLASSES, 1, 0.5, dims=1, blocks=V2_BLOCKS, last_channels=32),
            (1, 40),
            "ReduceMean",
        ),
        id="mobilenetv2_1d",
    ),
    pytest.param(
        case(
            lambda: MobileNetV3Small(NUM_CLASSES, 3, 0.5, blocks=V3_BLOCKS, last_channels=32),
            (3, 8, 8),
            *("ReduceMean", "HardSwish", "HardSigmoid"),
            # By module: the stem's activation, an SE gate and pool, the head's hard-swish.
            named=(
                *("HardSwish at features.0.2", "HardSigmoid at features.1.se.gate"),
                *("ReduceMean at features.3.se.pool", "HardSwish at head.1"),
            ),
            QLinearAdd=3,
            QLinearMul=3,
            QGemm=2,
        ),
        id="mobilenetv3_small",
    ),
    pytest.param(
        case(
            lambda: MobileNetV3Small(
                NUM_CLASSES, 1, 0.5, dims=1, blocks=V3_BLOCKS, last_channels=32
            ),
            (1, 40),
            *("ReduceMean", "HardSwish", "HardSigmoid"),
        ),
        id="mobilenetv3_small_1d",
    ),
]


class RandomData(ClassificationDataModule):
    """Random inputs whose labels are a fixed random linear function of them."""

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(2 * TEST_SAMPLES, *self.input_shape, generator=generator)
        projection = torch.randn(inputs[0].numel(), self.num_classes, generator=generator)
        labels = (inputs.flatten(1) @ projection).argmax(1)
        train = TensorClassificationDataset(inputs[:TEST_SAMPLES], labels[:TEST_SAMPLES])
        test = TensorClassificationDataset(inputs[TEST_SAMPLES:], labels[TEST_SAMPLES:])
        return train, test


@dataclass
class Deployed:
    run: TrainedRun
    pruning: PruningCallback
    context: ExportContext


def deploy(build: Callable[[], nn.Module], input_shape: tuple[int, ...], out: Path) -> Deployed:
    """Prune, train with QAT for a few steps, bake, and run the export's own builders."""
    torch.manual_seed(0)
    data = RandomData(NUM_CLASSES, input_shape, batch_size=64, val_fraction=0.0)
    data.setup("fit")
    example = data.example_input_batch(2)
    student = build()
    pruning = PruningCallback(ChannelPruning(), OneShotSchedule(sparsity=SPARSITY, at=0))
    pruning.attach(student, example)
    quantization = QuantizationCallback(start_epoch=0)
    quantization.attach(student, example)
    pruning.apply(student, 0)
    quantization.enter_epoch(student, 0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    student.train()
    freeze_batchnorm(student)  # as QuantizationCallback does before every batch
    for inputs, labels in data.train_dataloader():
        optimizer.zero_grad()
        F.cross_entropy(student(inputs), labels).backward()
        optimizer.step()
    student.eval()
    plain = bake_into(student, build()).eval()
    run = TrainedRun(OmegaConf.create({}), data, student, quantization, plain)
    out.mkdir()
    context = ExportContext.of(run, out, repeats=1)
    for builder in (baselines, onnx_fp32, onnx_int8, report):
        builder(context)
    return Deployed(run, pruning, context)


def check(deployed: Deployed, zoo: ZooCase) -> None:
    run, pruning, context = deployed.run, deployed.pruning, deployed.context
    slim = run.slim

    # Exactly half of every coupled group's channels is gone from every layer writing them
    # (depthwise convs and SE expansions with their expand conv, residual adds across blocks);
    # layers outside the groups keep their width.
    in_groups = set()
    for group in pruning.strategy.groups:
        kept = group.channels - round(SPARSITY * group.channels)
        for producer in group.producers:
            assert slim.channels_before[producer] == group.channels, producer
            assert slim.channels_after[producer] == kept, producer
            in_groups.add(producer)
    assert in_groups
    for name, channels in slim.channels_before.items():
        if name not in in_groups:
            assert slim.channels_after[name] == channels, name
    assert slim.max_abs_diff <= 1e-5  # slim == masked student

    # fp32 ONNX == torch slim model.
    probe = context.test_set.inputs[:64]
    fp32 = OrtModel(context.out / context.entries["onnx_fp32"]["path"])
    with torch.no_grad():
        expected = slim.model.eval()(probe).numpy()
    np.testing.assert_allclose(fp32(probe), expected, rtol=1e-4, atol=1e-5)
    # ... with every conv of a 1-D student written as 2-D (onnxruntime's fast kernels).
    graph = onnx.load(str(fp32.path)).graph
    ranks = {init.name: len(init.dims) for init in graph.initializer}
    conv_ranks = {ranks[n.input[1]] for n in graph.node if n.op_type == "Conv"}
    assert conv_ranks <= {4}, conv_ranks  # 4-D weights only: no Conv1d is left

    # int8 ONNX agrees with the fake-quant student (measured by the export itself), every
    # conv runs as an int8 kernel, and what stays float is named.
    int8 = context.entries["onnx_int8"]
    assert int8["agreement"] >= MIN_INT8_AGREEMENT
    assert int8["opt_agreement"] >= MIN_INT8_AGREEMENT
    convs = sum(isinstance(m, nn.modules.conv._ConvNd) for m in slim.model.modules())
    assert int8["convs"] == convs and int8["int8_convs"] == convs
    for op in zoo.named:
        assert op in int8["float_ops"]
    kinds = {op.split(" at ")[0] for op in int8["float_ops"]}
    assert kinds == zoo.float_ops, int8["float_ops"]
    for kernel, count in zoo.kernels:
        assert int8["int8_kernels"].get(kernel) == count, (kernel, int8["int8_kernels"])

    rows = json.loads((context.out / "report.json").read_text())["rows"]
    row = next(row for row in rows if row["name"] == "onnx_int8")
    assert row["float_ops"] == int8["float_ops"]
    markdown = (context.out / "report.md").read_text()
    assert f"int8 kernels for {convs} of {convs} convs" in markdown
    for op in zoo.float_ops:
        assert f"{op} x" in markdown


@pytest.mark.parametrize("zoo", ZOO)
def test_zoo_model_prunes_quantizes_and_exports(zoo: ZooCase, tmp_path: Path) -> None:
    check(deploy(zoo.build, zoo.input_shape, tmp_path / "export"), zoo)


class FunctionalRelu(nn.Module):
    """A conv whose input comes from a functional op inside forward: it cannot be quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)) * 0.5)
        return self.fc(torch.flatten(self.pool(self.conv3(out)), 1))


def test_a_conv_that_stays_float_is_named_instead_of_failing_the_export(tmp_path: Path) -> None:
    deployed = deploy(FunctionalRelu, (3, 8, 8), tmp_path / "export")
    int8 = deployed.context.entries["onnx_int8"]
    assert (int8["convs"], int8["int8_convs"]) == (3, 2)
    assert "Conv at conv2" in int8["float_ops"]
    markdown = (deployed.context.out / "report.md").read_text()
    assert "int8 kernels for 2 of 3 convs" in markdown and "Conv x1 (conv2)" in markdown


ZOO_CONFIGS = [path.stem for path in sorted((CONF_DIR / "student").glob("mobilenet*.yaml"))]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_CONFIGS)
def test_zoo_config_with_its_full_block_table(name: str, tmp_path: Path) -> None:
    node = OmegaConf.load(CONF_DIR / "student" / f"{name}.yaml")
    one_d = name.endswith("_1d")
    shape = (1, 40) if one_d else (1, 8, 8)
    node.num_classes, node.in_channels, node.width_mult = NUM_CLASSES, 1, 0.25
    float_ops = ("ReduceMean", *(("HardSwish", "HardSigmoid") if "v3" in name else ()))
    zoo = case(lambda: build(node, "student"), shape, *float_ops)
    check(deploy(zoo.build, zoo.input_shape, tmp_path / "export"), zoo)


MOBILE_DIGITS = [
    "data=digits",
    "teacher=cnn2d_digits",
    "student=mobilenetv3_small_digits",
    "student.blocks=[[3,16,16,true,relu,1],[5,48,24,true,hardswish,2],[5,64,24,true,hardswish,1]]",
    "student.last_channels=64",
    "teacher.train.max_epochs=3",
    "trainer.max_epochs=3",
    "pruning.schedule.start=0",
    "pruning.schedule.num_updates=2",
    "quantization.start_epoch=1",
    "quantization.observer_freeze_epoch=null",
    "export=true",
    "export_latency_repeats=1",
    "logger=none",
    "callbacks=none",
    "trainer.enable_progress_bar=false",
]


def test_a_mobile_student_config_through_distill_train(tmp_path: Path) -> None:
    """The zoo's config composed by Hydra, trained, pruned, quantized and exported by the
    pipeline: the summary and the report name what onnxruntime keeps in float."""
    summary = train(compose_train(MOBILE_DIGITS, tmp_path))
    int8 = summary["artifacts"]["onnx_int8"]
    assert int8["agreement"] >= MIN_INT8_AGREEMENT
    assert int8["convs"] == int8["int8_convs"] > 0
    assert "HardSwish at features.0.2" in int8["float_ops"]
    assert "HardSigmoid at features.1.se.gate" in int8["float_ops"]
    assert summary["artifacts"]["slim"]["params"] < summary["student"]["params_total"]
    markdown = (tmp_path / "run" / summary["artifacts"]["report_md"]["path"]).read_text()
    assert f"int8 kernels for {int8['convs']} of {int8['convs']} convs" in markdown
    assert "HardSwish x" in markdown and "HardSigmoid x3" in markdown
