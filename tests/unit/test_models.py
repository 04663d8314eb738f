"""Model zoo: output shapes, gradient flow, exact parameter counts, argument validation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.models import (
    MLP,
    CifarResNet,
    ConvNet1D,
    MobileNetV2,
    MobileNetV3Small,
    SmallCNN,
    WideResNet,
    resnet8x4,
    resnet20,
    resnet32x4,
    resnet56,
    wrn_16_2,
    wrn_16_4,
    wrn_40_2,
)

BATCH = 2

# One row per model/factory and representative input: (build, per-example input shape, classes).
SETTINGS: list = [
    pytest.param(lambda: MLP((1, 40), 10, hidden_sizes=(16,)), (1, 40), 10, id="mlp-mnist1d"),
    pytest.param(
        lambda: MLP((1, 8, 8), 10, hidden_sizes=(16, 8), dropout=0.1),
        (1, 8, 8),
        10,
        id="mlp-digits",
    ),
    pytest.param(lambda: ConvNet1D((1, 40), 10, channels=(8, 8, 8)), (1, 40), 10, id="cnn1d-3d"),
    pytest.param(lambda: ConvNet1D((40,), 10, channels=(8, 8)), (40,), 10, id="cnn1d-2d"),
    pytest.param(
        lambda: ConvNet1D((1, 40), 10, channels=(4,), kernel_size=4, batch_norm=False),
        (1, 40),
        10,
        id="cnn1d-even-kernel-no-bn",
    ),
    pytest.param(
        lambda: SmallCNN((1, 8, 8), 10, channels=(8, 8)), (1, 8, 8), 10, id="cnn2d-digits"
    ),
    pytest.param(
        lambda: SmallCNN((3, 32, 32), 10, channels=(8, 16)), (3, 32, 32), 10, id="cnn2d-cifar"
    ),
    # 3x3 → 1x1 after one pool; the remaining pools must be skipped, not fail.
    pytest.param(
        lambda: SmallCNN((1, 3, 3), 4, channels=(4, 4, 4), batch_norm=False),
        (1, 3, 3),
        4,
        id="cnn2d-tiny",
    ),
    pytest.param(lambda: CifarResNet(8, (4, 4, 8, 8), 7), (3, 32, 32), 7, id="resnet-custom"),
    pytest.param(lambda: resnet8x4(), (3, 32, 32), 100, id="resnet8x4"),
    pytest.param(lambda: resnet20(num_classes=10), (3, 32, 32), 10, id="resnet20"),
    pytest.param(lambda: resnet20(10, in_channels=1), (1, 8, 8), 10, id="resnet20-digits"),
    pytest.param(lambda: resnet32x4(), (3, 32, 32), 100, id="resnet32x4"),
    pytest.param(lambda: resnet56(), (3, 32, 32), 100, id="resnet56"),
    pytest.param(lambda: WideResNet(10, 1, 5, dropout=0.3), (3, 32, 32), 5, id="wrn-custom"),
    pytest.param(lambda: wrn_16_2(), (3, 32, 32), 100, id="wrn_16_2"),
    pytest.param(lambda: wrn_40_2(), (3, 32, 32), 100, id="wrn_40_2"),
    pytest.param(lambda: wrn_16_4(10, in_channels=1), (1, 8, 8), 10, id="wrn_16_4-digits"),
    pytest.param(lambda: MobileNetV2(10, width_mult=0.25), (3, 32, 32), 10, id="mobilenetv2"),
    pytest.param(
        lambda: MobileNetV2(10, 1, 0.25, dims=1, last_channels=64),
        (1, 40),
        10,
        id="mobilenetv2-1d",
    ),
    # Not 8x8: at 1x1 after the last downsampling every shift is constant and the next
    # train-mode BatchNorm removes it, so the biases before it get exactly zero gradient.
    pytest.param(
        lambda: MobileNetV2(7, 1, 0.25, last_channels=32), (1, 16, 16), 7, id="mobilenetv2-gray"
    ),
    pytest.param(
        lambda: MobileNetV3Small(10, width_mult=0.25), (3, 32, 32), 10, id="mobilenetv3_small"
    ),
    pytest.param(
        lambda: MobileNetV3Small(10, 1, 0.25, dims=1, last_channels=64),
        (40,),
        10,
        id="mobilenetv3_small-1d-no-channel-dim",
    ),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("build", "input_shape", "num_classes"), SETTINGS)
def test_logits_shape_and_gradient_reaches_every_parameter(
    build: Callable[[], nn.Module], input_shape: tuple[int, ...], num_classes: int
) -> None:
    model = build().train()
    inputs = torch.randn(BATCH, *input_shape)
    targets = torch.randint(0, num_classes, (BATCH,))

    logits = model(inputs)
    assert logits.shape == (BATCH, num_classes)
    F.cross_entropy(logits, targets).backward()

    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# Exact counts for a 100-class head, derived by hand from the architecture: e.g. resnet20 =
# stem 3*16*9 + 2*16 = 464; layer1 3 * (2*16*16*9 + 4*16) = 14016; layer2 = 14528 (first block,
# with 1x1 shortcut 16*32 + 2*32) + 2 * 18560 = 51648; layer3 = 57728 + 2 * 73984 = 205696;
# fc 64*100 + 100 = 6500. Deeper variants add (n - 1) identical blocks per stage.
PARAMETER_COUNTS = [
    pytest.param(resnet20, 278_324, id="resnet20"),  # published ~0.28M (CIFAR-100; 0.27M at 10)
    pytest.param(resnet56, 861_620, id="resnet56"),  # published ~0.86M
    pytest.param(resnet8x4, 1_233_540, id="resnet8x4"),  # published ~1.23M
    pytest.param(resnet32x4, 7_433_860, id="resnet32x4"),  # published ~7.43M
    pytest.param(wrn_40_2, 2_255_156, id="wrn_40_2"),  # published ~2.2M
    pytest.param(wrn_16_2, 703_284, id="wrn_16_2"),  # published ~0.70M
]


@pytest.mark.parametrize(("build", "expected"), PARAMETER_COUNTS)
def test_parameter_count_for_100_classes(build: Callable[..., nn.Module], expected: int) -> None:
    assert sum(p.numel() for p in build(num_classes=100).parameters()) == expected


def test_convnet1d_accepts_single_channel_input_without_channel_dim() -> None:
    model = ConvNet1D((1, 40), 10).eval()
    sequences = torch.randn(BATCH, 40)
    torch.testing.assert_close(model(sequences), model(sequences.unsqueeze(1)))


@pytest.mark.parametrize(
    ("build", "names"),
    [
        pytest.param(lambda: MLP((4,), 3), ["features.0", "features.3", "classifier"], id="mlp"),
        pytest.param(lambda: ConvNet1D(), ["features.0", "features.1", "classifier"], id="cnn1d"),
        pytest.param(lambda: SmallCNN(), ["features.0", "features.4", "classifier"], id="cnn2d"),
        pytest.param(
            resnet20,
            ["conv1", "bn1", "layer1.0.conv1", "layer2.0.shortcut.0", "layer3.2.bn2", "fc"],
            id="resnet",
        ),
        pytest.param(
            wrn_16_2,
            ["conv1", "layer1.0.bn1", "layer1.0.shortcut", "layer3.1.conv2", "bn_final", "fc"],
            id="wrn",
        ),
        pytest.param(
            MobileNetV2,
            [
                *["features.0.0", "features.1.depthwise.0", "features.2.expand.1"],
                *["features.17.project.1", "features.18.2", "pool", "dropout", "classifier"],
            ],
            id="mobilenetv2",
        ),
        pytest.param(
            MobileNetV3Small,
            [
                *["features.0.2", "features.1.se.fc1", "features.1.se.gate", "features.2.expand.0"],
                *["features.11.project.1", "features.12.0", "head.0", "head.1", "classifier"],
            ],
            id="mobilenetv3_small",
        ),
    ],
)
def test_layer_names_are_stable(build: Callable[[], nn.Module], names: list[str]) -> None:
    modules = dict(build().named_modules())
    for name in names:
        assert name in modules, name


def test_layer_names_do_not_depend_on_dropout_or_batch_norm() -> None:
    def names(model: nn.Module) -> list[str]:
        return [name for name, _ in model.named_modules()]

    assert names(MLP((4,), 3, dropout=0.0)) == names(MLP((4,), 3, dropout=0.5))
    assert names(ConvNet1D(batch_norm=True)) == names(ConvNet1D(batch_norm=False))
    assert names(SmallCNN(batch_norm=True)) == names(SmallCNN(batch_norm=False))


INVALID = [
    pytest.param(MLP, {"input_shape": (40,), "num_classes": 0}, "num_classes", id="mlp-classes"),
    pytest.param(MLP, {"input_shape": (), "num_classes": 10}, "input_shape", id="mlp-shape"),
    pytest.param(
        MLP,
        {"input_shape": (40,), "num_classes": 10, "hidden_sizes": ()},
        "hidden_sizes",
        id="mlp-hidden",
    ),
    pytest.param(
        MLP, {"input_shape": (40,), "num_classes": 10, "dropout": 1.0}, "dropout", id="mlp-dropout"
    ),
    pytest.param(ConvNet1D, {"num_classes": True}, "num_classes", id="cnn1d-bool-classes"),
    pytest.param(ConvNet1D, {"input_shape": (1, 2, 40)}, "input_shape", id="cnn1d-shape"),
    pytest.param(ConvNet1D, {"channels": ()}, "channels", id="cnn1d-channels"),
    pytest.param(ConvNet1D, {"kernel_size": 0}, "kernel_size", id="cnn1d-kernel"),
    pytest.param(ConvNet1D, {"batch_norm": "false"}, "batch_norm", id="cnn1d-batch-norm"),
    pytest.param(SmallCNN, {"input_shape": (32, 32)}, "input_shape", id="cnn2d-shape"),
    pytest.param(SmallCNN, {"channels": (0, 8)}, "channels", id="cnn2d-channels"),
    pytest.param(
        CifarResNet, {"depth": 21, "widths": (16, 16, 32, 64)}, "depth", id="resnet-depth"
    ),
    pytest.param(
        CifarResNet, {"depth": 2, "widths": (16, 16, 32, 64)}, "depth", id="resnet-depth-0"
    ),
    pytest.param(CifarResNet, {"depth": 20, "widths": (16, 32, 64)}, "widths", id="resnet-widths"),
    pytest.param(resnet20, {"num_classes": 0}, "num_classes", id="resnet20-classes"),
    pytest.param(resnet56, {"in_channels": 0}, "in_channels", id="resnet56-in-channels"),
    pytest.param(WideResNet, {"depth": 18, "widen_factor": 2}, "depth", id="wrn-depth"),
    pytest.param(WideResNet, {"depth": 16, "widen_factor": 0}, "widen_factor", id="wrn-widen"),
    pytest.param(
        WideResNet, {"depth": 16, "widen_factor": 2, "dropout": -0.1}, "dropout", id="wrn-dropout"
    ),
    pytest.param(wrn_40_2, {"num_classes": 2.5}, "num_classes", id="wrn_40_2-classes"),
    pytest.param(MobileNetV2, {"width_mult": 0}, "width_mult", id="mobilenetv2-width"),
    pytest.param(MobileNetV2, {"dims": 3}, "dims", id="mobilenetv2-dims"),
    pytest.param(MobileNetV2, {"layout": "mobile"}, "layout", id="mobilenetv2-layout"),
    pytest.param(MobileNetV2, {"blocks": [[6, 24, 2]]}, "blocks[0]", id="mobilenetv2-row"),
    pytest.param(MobileNetV2, {"blocks": []}, "blocks", id="mobilenetv2-no-blocks"),
    pytest.param(MobileNetV2, {"dropout": 1.0}, "dropout", id="mobilenetv2-dropout"),
    pytest.param(MobileNetV3Small, {"dims": True}, "dims", id="mobilenetv3-dims"),
    pytest.param(
        MobileNetV3Small,
        {"blocks": [[3, 16, 16, True, "swish", 2]]},
        "blocks[0]",
        id="mobilenetv3-activation",
    ),
    pytest.param(
        MobileNetV3Small, {"blocks": [[3, 16, 16, 1, "relu", 2]]}, "blocks[0]", id="mobilenetv3-se"
    ),
    pytest.param(MobileNetV3Small, {"last_channels": 0}, "last_channels", id="mobilenetv3-last"),
]


@pytest.mark.parametrize(("build", "kwargs", "field"), INVALID)
def test_invalid_arguments_raise_config_error_naming_the_field(
    build: Callable[..., nn.Module], kwargs: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        build(**kwargs)
    assert raised.value.field == field
    assert field in str(raised.value)
