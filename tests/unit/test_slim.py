"""Physical channel removal: structure, exact outputs, hand-computed params and MACs."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.deploy import find_zero_channels, remove_zero_channels
from distill.errors import ConfigError
from distill.models import MLP, ConvNet1D, SmallCNN, resnet20


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Tiny models on 2 shared cores: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine, so a channel is only silent if it was zeroed."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-1.0, 1.0)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def zero_channels(
    model: nn.Module, layer: str, channels: Sequence[int], norm: str | None = None
) -> None:
    """Do what a channel-pruning mask does: zero output rows of `layer` (and bias) and `norm`."""
    idx = torch.tensor(list(channels))
    with torch.no_grad():
        module = model.get_submodule(layer)
        module.weight[idx] = 0.0
        if module.bias is not None:
            module.bias[idx] = 0.0
        if norm is not None:
            bn = model.get_submodule(norm)
            bn.weight[idx] = 0.0
            bn.bias[idx] = 0.0


def outputs_match(dense: nn.Module, slim: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(slim.eval()(x), dense.eval()(x), atol=1e-5, rtol=0.0)


def test_small_cnn_first_conv_half_removed_with_hand_counted_savings() -> None:
    height = width = 8
    c1, c2, removed = 8, 16, 4
    model = randomize_norms(SmallCNN((1, height, width), 10, channels=(c1, c2)))
    zero_channels(model, "features.0", [0, 2, 4, 6], norm="features.1")
    x = torch.randn(4, 1, height, width)

    report = remove_zero_channels(model, x)

    slim = report.model
    assert report.removed_channels == {"features.0": [0, 2, 4, 6]}
    assert slim.features[0].out_channels == c1 - removed
    assert slim.features[1].num_features == c1 - removed
    assert slim.features[4].in_channels == c1 - removed
    assert report.channels_before["features.0"] == c1
    assert report.channels_after["features.0"] == c1 - removed
    assert report.channels_after["features.4"] == c2
    outputs_match(model, slim, x)
    # Params: conv1 filters (3x3x1), BN affine pairs, conv2 input slices (3x3 per output).
    assert report.params_before - report.params_after == removed * (9 * 1 + 2 + 9 * c2)
    # MACs per example, by Torch-Pruning's counter rules: conv = out positions x kernel x in;
    # affine BN = 2 per element; ReLU and max-pool = 1 per element; conv2 runs after a 2x2 pool.
    pixels = height * width
    saved = (
        pixels * 9 * 1 * removed  # conv1
        + pixels * removed * 2  # bn1
        + pixels * removed  # relu
        + pixels * removed  # max-pool input
        + (pixels // 4) * 9 * removed * c2  # conv2
    )
    assert report.macs_before - report.macs_after == saved


def test_conv1d_first_conv_half_removed_with_hand_counted_savings() -> None:
    length, kernel, c1, c2, removed = 40, 5, 8, 8, 4
    model = randomize_norms(ConvNet1D((1, length), 10, channels=(c1, c2), kernel_size=kernel))
    zero_channels(model, "features.0", range(removed), norm="features.1")
    x = torch.randn(4, 1, length)

    report = remove_zero_channels(model, x)

    slim = report.model
    assert slim.features[0].out_channels == c1 - removed
    assert slim.features[3].in_channels == c1 - removed
    outputs_match(model, slim, x)
    assert report.params_before - report.params_after == removed * (kernel + 2 + kernel * c2)
    length1, length2 = length // 2, length // 4  # stride 2, "same" padding
    saved = (
        length1 * kernel * removed  # conv0
        + length1 * removed * 2  # bn0
        + length1 * removed  # relu
        + length2 * kernel * removed * c2  # conv1
    )
    assert report.macs_before - report.macs_after == saved


def test_conv1d_last_conv_removal_shrinks_the_flattened_head() -> None:
    model = randomize_norms(ConvNet1D((1, 40), 10, channels=(8, 8)))
    zero_channels(model, "features.3", [1, 5, 6], norm="features.4")
    x = torch.randn(4, 1, 40)

    report = remove_zero_channels(model, x)

    # Each removed channel takes its 10 positions of the flattened feature map with it.
    assert report.model.features[3].out_channels == 5
    assert report.model.classifier.in_features == 5 * 10
    assert report.model.classifier.out_features == 10
    outputs_match(model, report.model, x)


def test_mlp_hidden_neurons_removed() -> None:
    model = MLP((20,), 5, hidden_sizes=(16, 12)).eval()
    zero_channels(model, "features.0", range(6))
    # Batch 1: Torch-Pruning's counter adds a Linear's bias once per batch, not per example.
    x = torch.randn(1, 20)

    report = remove_zero_channels(model, x)

    slim = report.model
    assert slim.features[0].out_features == 10
    assert slim.features[3].in_features == 10
    assert slim.features[3].out_features == 12
    outputs_match(model, slim, x)
    assert report.params_before - report.params_after == 6 * (20 + 1 + 12)
    # Linear: inputs x outputs + bias; ReLU: one per output.
    assert report.macs_before - report.macs_after == 6 * (20 + 1) + 6 + 6 * 12


def test_a_nonzero_bias_keeps_the_neuron() -> None:
    model = MLP((20,), 5, hidden_sizes=(16,)).eval()
    zero_channels(model, "features.0", range(6))
    with torch.no_grad():
        model.features[0].bias[2] = 0.1

    assert find_zero_channels(model, torch.randn(2, 20)) == {"features.0": [0, 1, 3, 4, 5]}


def test_a_nonzero_filter_keeps_the_channel_even_behind_a_zero_norm() -> None:
    model = randomize_norms(SmallCNN((1, 8, 8), 10, channels=(8, 8)))
    zero_channels(model, "features.0", [1, 2, 5], norm="features.1")
    with torch.no_grad():
        model.features[0].weight[2, 0, 1, 1] = 0.3

    assert find_zero_channels(model, torch.randn(2, 1, 8, 8)) == {"features.0": [1, 5]}


def test_never_removes_every_channel_of_a_layer() -> None:
    model = MLP((20,), 5, hidden_sizes=(16,)).eval()
    zero_channels(model, "features.0", range(16))
    x = torch.randn(4, 20)

    report = remove_zero_channels(model, x)

    assert report.model.features[0].out_features == 1
    outputs_match(model, report.model, x)


def half_internal_resnet20() -> nn.Module:
    """resnet20 with the first half of every block's conv1 channels zeroed (not residual)."""
    model = randomize_norms(resnet20(num_classes=10))
    for name, module in model.named_modules():
        if name.startswith("layer") and name.endswith(".conv1"):
            block = name.removesuffix(".conv1")
            zero_channels(model, name, range(module.out_channels // 2), norm=f"{block}.bn1")
    return model


def test_resnet20_internal_channels_removed() -> None:
    model = half_internal_resnet20()
    x = torch.randn(2, 3, 32, 32)

    report = remove_zero_channels(model, x)

    slim = report.model
    for name, module in model.named_modules():
        if name.startswith("layer") and name.endswith(".conv1"):
            block = name.removesuffix(".conv1")
            half = module.out_channels // 2
            assert slim.get_submodule(name).out_channels == half
            assert slim.get_submodule(f"{block}.bn1").num_features == half
            assert slim.get_submodule(f"{block}.conv2").in_channels == half
            # The residual stream is untouched.
            assert slim.get_submodule(f"{block}.conv2").out_channels == module.out_channels
    outputs_match(model, slim, x)
    assert report.max_abs_diff <= 1e-5
    # Internal convs hold about half of resnet20's MACs, and they lose half of both sides.
    assert 0.45 < report.macs_ratio < 0.6
    print(f"\nresnet20, 50% internal channels removed: MACs ratio {report.macs_ratio:.3f}")


def test_resnet20_channel_zero_in_only_part_of_the_residual_group_is_kept() -> None:
    model = randomize_norms(resnet20(num_classes=10))
    # The stem feeds layer1's residual stream, which layer1's conv2s also write to.
    zero_channels(model, "conv1", [3], norm="bn1")
    zero_channels(model, "layer1.0.conv2", [3], norm="layer1.0.bn2")
    x = torch.randn(2, 3, 32, 32)

    assert find_zero_channels(model, x) == {}
    report = remove_zero_channels(model, x)
    assert report.channels_after == report.channels_before
    assert report.params_after == report.params_before
    outputs_match(model, report.model, x)


def test_resnet20_channel_zero_in_the_whole_residual_group_is_removed() -> None:
    model = randomize_norms(resnet20(num_classes=10))
    writers = [("conv1", "bn1")] + [(f"layer1.{i}.conv2", f"layer1.{i}.bn2") for i in range(3)]
    for conv, norm in writers:
        zero_channels(model, conv, [3, 9], norm=norm)
    x = torch.randn(2, 3, 32, 32)

    assert find_zero_channels(model, x) == {conv: [3, 9] for conv, _ in writers}
    slim = remove_zero_channels(model, x).model
    readers = [f"layer1.{i}.conv1" for i in range(3)] + ["layer2.0.conv1", "layer2.0.shortcut.0"]
    assert all(slim.get_submodule(conv).out_channels == 14 for conv, _ in writers)
    assert all(slim.get_submodule(conv).in_channels == 14 for conv in readers)
    outputs_match(model, slim, x)


def test_mobilenet_channels_zero_through_expand_depthwise_and_se_are_removed() -> None:
    from distill.models import MobileNetV3Small

    blocks = [[3, 16, 16, True, "relu", 2], [5, 48, 24, True, "hardswish", 1]]
    model = randomize_norms(MobileNetV3Small(10, 3, 1.0, blocks=blocks, last_channels=32))
    block = "features.2"
    # Channel 5 of the expansion: the expand conv and BN, the depthwise conv and BN, and the SE
    # expansion gating it (hard-sigmoid(0) = 0.5 multiplies a zero, so the output stays exact).
    zero_channels(model, f"{block}.expand.0", [5, 7], norm=f"{block}.expand.1")
    zero_channels(model, f"{block}.depthwise.0", [5, 7], norm=f"{block}.depthwise.1")
    zero_channels(model, f"{block}.se.fc2", [5, 7])
    x = torch.randn(2, 3, 16, 16)

    zero = find_zero_channels(model, x)
    writers = ("expand.0", "depthwise.0", "se.fc2")
    assert zero == {f"{block}.{layer}": [5, 7] for layer in writers}
    slim = remove_zero_channels(model, x).model
    assert all(slim.get_submodule(f"{block}.{layer}").out_channels == 46 for layer in writers)
    assert slim.get_submodule(f"{block}.depthwise.0").groups == 46
    assert slim.get_submodule(f"{block}.se.fc1").in_channels == 46
    assert slim.get_submodule(f"{block}.project.0").in_channels == 46
    outputs_match(model, slim, x)


def test_mobilenet_depthwise_channel_zero_but_gated_by_a_live_se_is_kept() -> None:
    from distill.models import MobileNetV3Small

    blocks = [[3, 16, 16, True, "relu", 2], [5, 48, 24, True, "hardswish", 1]]
    model = randomize_norms(MobileNetV3Small(10, 3, 1.0, blocks=blocks, last_channels=32))
    # The expand and depthwise rows are zero but the SE expansion still writes channel 5: its
    # gate multiplies a zero, yet the group is only cut when every writer is zero.
    zero_channels(model, "features.2.expand.0", [5], norm="features.2.expand.1")
    zero_channels(model, "features.2.depthwise.0", [5], norm="features.2.depthwise.1")
    assert find_zero_channels(model, torch.randn(2, 3, 16, 16)) == {}


class TwoBranchConcat(nn.Module):
    """Two conv branches concatenated along channels, then a 1x1 conv: index offsets matter."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(2, 4, 3, padding=1)
        self.right = nn.Conv2d(2, 6, 3, padding=1)
        self.mix = nn.Conv2d(10, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        features = torch.relu(torch.cat([self.left(x), self.right(x)], dim=1))
        return self.head(self.mix(features).mean(dim=(2, 3)))


def test_concatenated_branches_keep_their_offsets() -> None:
    model = TwoBranchConcat().eval()
    zero_channels(model, "left", [1])
    zero_channels(model, "right", [0, 4])
    x = torch.randn(2, 2, 6, 6)

    report = remove_zero_channels(model, x)

    assert report.removed_channels == {"left": [1], "right": [0, 4]}
    assert report.model.mix.in_channels == 7
    outputs_match(model, report.model, x)


def test_input_model_is_not_modified() -> None:
    model = half_internal_resnet20().train()
    model.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())

    report = remove_zero_channels(model, torch.randn(2, 3, 32, 32))

    assert model.training
    assert model.layer1[0].conv1.out_channels == 16
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert not any(param.requires_grad for param in model.parameters())
    # The copy keeps the caller's train flag and frozen parameters.
    assert report.model.training
    assert not any(param.requires_grad for param in report.model.parameters())


def test_classifier_outputs_are_never_removed() -> None:
    model = randomize_norms(SmallCNN((1, 8, 8), 10, channels=(8,)))
    zero_channels(model, "classifier", [2, 7])
    x = torch.randn(2, 1, 8, 8)

    assert find_zero_channels(model, x) == {}
    report = remove_zero_channels(model, x)
    assert report.model.classifier.out_features == 10
    outputs_match(model, report.model, x)


class SigmoidBetween(nn.Module):
    """sigmoid(0) = 0.5: a zeroed channel is not silent, so removing it must be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.second = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(torch.sigmoid(self.first(x)))


def test_removal_that_changes_outputs_raises() -> None:
    model = SigmoidBetween().eval()
    zero_channels(model, "first", [0, 1])

    with pytest.raises(RuntimeError, match="changed the outputs"):
        remove_zero_channels(model, torch.randn(2, 6))


def test_works_under_no_grad() -> None:
    model = MLP((20,), 5, hidden_sizes=(16,)).eval()
    zero_channels(model, "features.0", range(4))
    with torch.no_grad():
        report = remove_zero_channels(model, [torch.randn(2, 20)])
    assert report.model.features[0].out_features == 12


class _Halve(nn.Module):
    def forward(self, weight: Tensor) -> Tensor:
        return weight * 0.5


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("model", {"model": "resnet20"}),
        ("example_inputs", {"example_inputs": [[1.0, 2.0]]}),
        ("example_inputs", {"example_inputs": ()}),
        ("atol", {"atol": 0.0}),
        ("atol", {"atol": True}),
    ],
)
def test_bad_arguments_raise_config_error(field: str, kwargs: dict) -> None:
    arguments = {"model": MLP((4,), 2, hidden_sizes=(3,)), "example_inputs": torch.randn(1, 4)}
    arguments.update(kwargs)
    with pytest.raises(ConfigError) as error:
        remove_zero_channels(**arguments)
    assert error.value.field == field


def test_parametrized_model_is_refused() -> None:
    model = MLP((4,), 2, hidden_sizes=(3,))
    parametrize.register_parametrization(model.features[0], "weight", _Halve())
    with pytest.raises(ConfigError, match="baked"):
        find_zero_channels(model, torch.randn(1, 4))


def _latency_ms(model: nn.Module, x: Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats * 1e3


def test_resnet20_dense_vs_slim_latency_is_reported() -> None:
    """Measured for the notes, not asserted: CPU timings on shared cores are too noisy."""
    model = half_internal_resnet20()
    batch = torch.randn(64, 3, 32, 32)
    slim = remove_zero_channels(model, batch[:2]).model.eval()
    dense_ms, slim_ms = _latency_ms(model, batch), _latency_ms(slim, batch)
    print(
        f"\nresnet20 batch 64, {torch.get_num_threads()} threads: dense {dense_ms:.1f} ms, "
        f"slim {slim_ms:.1f} ms ({dense_ms / slim_ms:.2f}x)"
    )
