"""Quantization-aware training: fake-quant arithmetic, activation sites, QAT phases, BatchNorm
folding, exact resume, and the int8 QDQ deployment model matching the fake-quant student."""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from distill.compression import (
    ActivationFakeQuant,
    ChannelPruning,
    OneShotSchedule,
    PruningCallback,
    QuantizationCallback,
    WeightFakeQuant,
    WeightMask,
    attach_mask,
    bake_into,
    find_activation_sites,
    get_mask,
    set_mask,
)
from distill.compression.activation_sites import INPUT_SITE, observers_of
from distill.compression.batchnorm import fold_batchnorm_in_place, freeze_batchnorm
from distill.compression.fake_quant import (
    fake_quantize_per_tensor,
    fake_quantize_per_tensor_vectorized,
)
from distill.compression.qdq import QDQLayer, build_qdq_model
from distill.compression.quantization_callback import get_weight_fake_quant
from distill.data.resumable import ResumableDataLoader
from distill.errors import ConfigError
from distill.losses import CrossEntropy, WeightedSum
from distill.module import DistillationModule

# Tiny models on 2 shared cores: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = (3, 6, 6)
NUM_CLASSES = 10
LAYERS = ("features.0", "features.3", "features.8")  # conv, conv, linear of `Net`


def features(seed: int = 0, inplace: bool = False) -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU-pool-Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


class Net(nn.Module):
    """`features` behind a forward of its own, as the project's students are built."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.features = features(seed)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN, identity shortcut, functional add + ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return F.relu(out + x)


class ResNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.block = Block(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(self.block(self.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(out, 1))


def with_stats(model: nn.Module, seed: int = 5) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1.0, 1.0, generator=generator)
                module.running_var.uniform_(0.3, 3.0, generator=generator)
                module.weight.uniform_(0.2, 2.0, generator=generator)
                module.bias.uniform_(-0.5, 0.5, generator=generator)
    return model


def inputs(n: int, seed: int = 1) -> Tensor:
    return torch.randn(n, *IMAGE, generator=torch.Generator().manual_seed(seed))


def channel_pruning(model: nn.Module) -> PruningCallback:
    """Masks on the middle conv + BN (first and last layers stay dense), half its channels cut."""
    callback = PruningCallback(ChannelPruning(), OneShotSchedule(sparsity=0.5, at=0), unit="epoch")
    callback.attach(model, inputs(2))
    return callback


# -- WeightFakeQuant ---------------------------------------------------------------------------


def test_weight_fake_quant_disabled_is_the_identity():
    weight = torch.randn(4, 3, 3, 3)
    quant = WeightFakeQuant(8)
    assert not bool(quant.enabled)
    assert quant(weight) is weight


@pytest.mark.parametrize("bits", [8, 7, 4])
def test_weight_fake_quant_is_q_times_scale_per_channel(bits):
    generator = torch.Generator().manual_seed(bits)
    weight = torch.randn(6, 4, 3, 3, generator=generator) * torch.tensor(
        [0.01, 1.0, 0.0, 5.0, 0.3, 2.0]
    ).view(-1, 1, 1, 1)
    quant = WeightFakeQuant(bits)
    quant.enabled.fill_(True)
    qmax = 2 ** (bits - 1) - 1
    assert quant.qmax == qmax

    out = quant(weight)
    q, scale = quant.quantize(weight)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    assert torch.equal(out, q.float() * scale.view(-1, 1, 1, 1))
    assert int(q.abs().max()) <= qmax and int(q.min()) >= -qmax
    # Each live channel's max |w| lands exactly on qmax (and with its sign).
    for channel in (0, 1, 3, 4, 5):
        index = weight[channel].abs().argmax()
        assert int(q[channel].flatten()[index]) == qmax * int(
            weight[channel].flatten()[index].sign()
        )
        assert int(q[channel].abs().max()) == qmax
    assert torch.allclose(
        scale[[0, 1, 3, 4, 5]], weight.abs().flatten(1).amax(1)[[0, 1, 3, 4, 5]] / qmax
    )
    # The all-zero channel stays exactly zero.
    assert torch.all(q[2] == 0) and torch.all(out[2] == 0)
    # Rounding to nearest: within half a step of the float weight, and really rounded.
    half_step = (scale / 2).view(-1, 1, 1, 1)
    assert torch.all((out - weight).abs() <= half_step * (1 + 1e-5))
    assert not torch.equal(out, weight)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_fake_quant_gradient_is_straight_through(bits):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 7, generator=generator).requires_grad_(True)
    upstream = torch.randn(5, 7, generator=generator)
    quant = WeightFakeQuant(bits)
    quant.enabled.fill_(True)
    quant(weight).backward(upstream)
    assert torch.equal(weight.grad, upstream)


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_fake_quant_after_a_mask_keeps_pruned_weights_zero(bits):
    torch.manual_seed(3)
    layer = nn.Linear(64, 6)
    attach_mask(layer)
    keep = torch.rand(6, 64, generator=torch.Generator().manual_seed(4)) > 0.4
    keep[5] = False  # a fully pruned row
    set_mask(layer, "weight", keep)
    quant = WeightFakeQuant(bits)
    parametrize.register_parametrization(layer, "weight", quant)
    assert [type(p) for p in layer.parametrizations.weight] == [WeightMask, WeightFakeQuant]
    float_weight = layer.weight.detach().clone()
    quant.enabled.fill_(True)
    weight = layer.weight.detach()

    assert torch.all(weight[~keep] == 0)
    assert torch.all(weight[5] == 0)
    for row in range(5):
        # Far more distinct values than the grid has in float; at most 2^b - 1 once quantized.
        assert float_weight[row].unique().numel() > 2**bits - 1 or bits == 8
        assert weight[row].unique().numel() <= 2**bits - 1
    # The quantizer sees the masked weight: its integers reproduce the effective weight.
    q, scale = quant.quantize(
        layer.parametrizations.weight[0](layer.parametrizations.weight.original)
    )
    assert torch.equal(weight, q.float() * scale.view(-1, 1))


# -- ActivationFakeQuant -----------------------------------------------------------------------


def test_observer_first_batch_sets_the_range_then_moves_by_momentum():
    generator = torch.Generator().manual_seed(0)
    observer = ActivationFakeQuant()
    observer.observing.fill_(True)
    observer.train()
    first = torch.randn(200, generator=generator)
    observer(first)
    assert bool(observer.initialized)
    assert torch.equal(observer.min_val, first.min()) and torch.equal(observer.max_val, first.max())
    expected_min, expected_max = first.min().double(), first.max().double()
    for scale in (3.0, 0.5, 2.0):
        batch = torch.randn(200, generator=generator) * scale + 0.5
        old_min, old_max = observer.min_val.clone(), observer.max_val.clone()
        observer(batch)
        # x <- x + 0.1 (new - x), the lerp torch computes, exactly.
        assert torch.equal(observer.min_val, torch.lerp(old_min, batch.min(), 0.1))
        assert torch.equal(observer.max_val, torch.lerp(old_max, batch.max(), 0.1))
        expected_min += 0.1 * (batch.min().double() - expected_min)
        expected_max += 0.1 * (batch.max().double() - expected_max)
        assert abs(float(observer.min_val) - float(expected_min)) < 1e-5
        assert abs(float(observer.max_val) - float(expected_max)) < 1e-5


def test_observer_does_not_observe_in_eval_mode_or_when_not_observing():
    observer = ActivationFakeQuant()
    observer.observing.fill_(True)
    observer.eval()
    observer(torch.randn(50))
    assert not bool(observer.initialized)
    observer.train()
    observer(torch.linspace(-1.0, 2.0, 50))
    low, high = observer.min_val.clone(), observer.max_val.clone()
    assert (float(low), float(high)) == (-1.0, 2.0)
    observer.eval()
    observer(torch.linspace(-9.0, 9.0, 50))
    assert torch.equal(observer.min_val, low) and torch.equal(observer.max_val, high)
    observer.train()
    observer.observing.fill_(False)
    observer(torch.linspace(-9.0, 9.0, 50))
    assert torch.equal(observer.min_val, low) and torch.equal(observer.max_val, high)


@pytest.mark.parametrize(("low", "high"), [(-1.3, 4.1), (0.5, 6.0), (-3.0, -0.25), (-2.0, 0.0)])
def test_observer_qparams_cover_zero_and_the_range(low, high):
    observer = ActivationFakeQuant()
    observer.min_val.fill_(low)
    observer.max_val.fill_(high)
    observer.initialized.fill_(True)
    observer.enabled.fill_(True)
    scale, zero_point = observer.qparams()
    assert zero_point.dtype == torch.int32 and 0 <= int(zero_point) <= 255
    scale, zero_point = float(scale), int(zero_point)
    # The grid [(0 - zp) s, (255 - zp) s] holds min(low, 0) .. max(high, 0) to within half a step.
    assert (0 - zero_point) * scale <= min(low, 0.0) + scale / 2
    assert (255 - zero_point) * scale >= max(high, 0.0) - scale / 2
    assert abs(scale - (max(high, 0.0) - min(low, 0.0)) / 255) < 1e-7
    if low >= 0:
        assert zero_point == 0
    if high <= 0:
        assert zero_point == 255
    # 0 is on the grid: padding and ReLU zeros stay exactly zero.
    observer.eval()
    assert torch.equal(observer(torch.zeros(3)), torch.zeros(3))


def test_observer_output_is_the_uint8_formula():
    generator = torch.Generator().manual_seed(2)
    observer = ActivationFakeQuant()
    observer.observing.fill_(True)
    observer.train()
    observer(torch.randn(500, generator=generator) * 2 + 0.7)
    observer.enabled.fill_(True)
    observer.eval()
    x = torch.randn(2000, generator=generator) * 3  # partly outside the observed range: clamped
    scale, zero_point = observer.qparams()
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    expected = (q - zero_point) * scale
    out = observer(x)
    assert torch.equal(out, expected)
    assert (q == 0).any() and (q == 255).any()  # the clamp was exercised at both ends
    assert out.unique().numel() <= 256


def test_observer_disabled_is_the_identity():
    observer = ActivationFakeQuant()
    x = torch.randn(10)
    assert observer(x) is x  # neither enabled nor initialized
    observer.observing.fill_(True)
    observer.train()
    observer(x)
    assert observer(x) is x  # initialized, not enabled
    observer.enabled.fill_(True)
    observer.observing.fill_(False)
    observer.initialized.fill_(False)
    assert observer(x) is x  # enabled, never observed


def bits_of(tensor: Tensor) -> Tensor:
    """A float tensor's bit patterns (so -0.0 and 0.0 differ, and NaN equals itself)."""
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor


def grid_cases() -> list[tuple[Tensor, Tensor, Tensor]]:
    """(x, scale, zero point): observed grids, off-grid scales, exact ties, clamping at both
    ends, tiny and huge magnitudes, a non-contiguous tensor."""
    generator = torch.Generator().manual_seed(11)
    cases = []
    for case in range(60):
        n = int(torch.randint(1, 3000, (), generator=generator))
        magnitude = 10.0 ** float(torch.randint(-4, 5, (), generator=generator))
        x = torch.randn(n, generator=generator) * magnitude + torch.randn(1, generator=generator)
        low, high = torch.aminmax(x)
        scale = ((high.clamp(min=0) - low.clamp(max=0)) / 255).clamp_min(1e-8)
        zero_point = (0 - torch.round(low.clamp(max=0) / scale)).clamp(0, 255).to(torch.int32)
        if case % 2:  # a grid narrower or wider than x: clamped elements, other roundings
            scale = scale * (0.3 + torch.rand((), generator=generator))
        if case % 5 == 0:  # exact halves: round half to even
            scale = torch.tensor(0.5)
            x = torch.round(x * 4) / 4
        cases.append((x, scale, zero_point))
    wide = torch.randn(6, 40, generator=generator) * 3
    cases.append((wide.t(), torch.tensor(0.02), torch.tensor(128, dtype=torch.int32)))
    return cases


def test_vectorized_fake_quant_is_torch_kernel_bit_for_bit():
    for x, scale, zero_point in grid_cases():
        torch_x, fast_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected = torch.fake_quantize_per_tensor_affine(torch_x, scale, zero_point, 0, 255)
        out = fake_quantize_per_tensor_vectorized(fast_x, float(scale), int(zero_point), 0, 255)
        assert torch.equal(bits_of(out), bits_of(expected))
        grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(x.numel()))
        expected.backward(grad)
        out.backward(grad)
        assert torch.equal(bits_of(fast_x.grad), bits_of(torch_x.grad))  # -0.0 included
        qparams = (float(scale), int(zero_point), 0, 255)
        with torch.no_grad():  # no mask to keep; and the dispatch by size
            for fake_quantize in (fake_quantize_per_tensor_vectorized, fake_quantize_per_tensor):
                assert torch.equal(bits_of(fake_quantize(x, *qparams)), bits_of(expected))


@pytest.mark.parametrize("seed", range(3))
def test_host_qparams_are_qparams_bit_for_bit(seed):
    generator = torch.Generator().manual_seed(seed)
    exponents = torch.randint(-12, 6, (2000, 2), generator=generator).float()
    ranges = torch.randn(2000, 2, generator=generator) * 10.0**exponents
    special = torch.tensor(
        [[0.0, 0.0], [-0.0, 0.0], [1e-12, 2e-12], [-3e-7, 0.0], [-2.0, -0.25], [0.5, 6.0]]
    )
    too_wide = torch.tensor([[-3e38, 3e38]])  # a width beyond float32: torch's arithmetic
    observer = ActivationFakeQuant()
    for low, high in torch.cat([special, too_wide, ranges]).tolist():
        observer.min_val.fill_(low)
        observer.max_val.fill_(high)
        scale, zero_point = observer.qparams()
        host_scale, host_zero_point = observer.host_qparams()
        assert torch.equal(bits_of(torch.tensor(host_scale)), bits_of(scale)), (low, high)
        assert host_zero_point == int(zero_point), (low, high)


@pytest.mark.parametrize("build", [Net, ResNet], ids=["net", "resnet"])
def test_qat_training_is_the_reference_path_bit_for_bit(build):
    """A few SGD steps of QAT (observing, then frozen ranges) with `forward` and with the
    pre-issue-11 `reference_forward` (tensor qparams, torch's kernel) at every site: the same
    weights, BatchNorm, observer ranges, activation scales and zero points, bit for bit."""
    students = {}
    for path in ("fast", "reference"):
        model = with_stats(build())
        callback = QuantizationCallback(start_epoch=0, observer_freeze_epoch=1)
        callback.attach(model, inputs(2))
        if path == "reference":
            for observer in observers_of(model).values():
                observer.forward = observer.reference_forward  # type: ignore[method-assign]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        targets = torch.arange(16) % NUM_CLASSES
        for step in range(6):
            callback.enter_epoch(model, step // 4)  # steps 4, 5: ranges frozen
            model.train()
            freeze_batchnorm(model)
            optimizer.zero_grad()
            F.cross_entropy(model(inputs(16, seed=10 + step) * (1 + step)), targets).backward()
            optimizer.step()
        students[path] = (model, callback)
    (fast, fast_callback), (reference, reference_callback) = students["fast"], students["reference"]
    fast_state, reference_state = fast.state_dict(), reference.state_dict()
    assert fast_state.keys() == reference_state.keys()
    for key, value in fast_state.items():
        assert torch.equal(bits_of(value), bits_of(reference_state[key])), key
    assert fast_callback.quantizer.qparams(fast) == reference_callback.quantizer.qparams(reference)
    probe = inputs(8, seed=3)
    assert torch.equal(fast.eval()(probe), reference.eval()(probe))


# -- activation sites --------------------------------------------------------------------------

SEQUENTIAL_SITES = [INPUT_SITE, "2", "5", "6", "8"]
SEQUENTIAL_FOLDS = {"0": "1", "3": "4"}
RESNET_SITES = [INPUT_SITE, "relu", "block.relu1", "block.bn2", "block", "pool", "fc"]
RESNET_FOLDS = {"conv": "bn", "block.conv1": "block.bn1", "block.conv2": "block.bn2"}


def test_sites_of_a_sequential_model():
    model = features()
    sites = find_activation_sites(model, inputs(2))
    # Folded convs and the BatchNorms feeding a ReLU are not sites; the ReLUs, pool and
    # linear are; Flatten (a view) is not.
    assert sites.names == SEQUENTIAL_SITES
    assert sites.folds == SEQUENTIAL_FOLDS
    assert model.training  # the recording pass puts the mode back


def test_sites_of_a_residual_block_with_a_functional_add():
    sites = find_activation_sites(ResNet(), inputs(2))
    # bn2 feeds the functional add (its output is a DequantizeLinear input), and the block's
    # output is the only handle on relu(out + x).
    assert sites.names == RESNET_SITES
    assert sites.folds == RESNET_FOLDS


@pytest.mark.parametrize("build", [Net, ResNet], ids=["net", "resnet"])
def test_sites_are_the_same_with_masks_and_fake_quant_attached(build):
    plain_sites = find_activation_sites(build(), inputs(2))
    model = build()
    pruning = channel_pruning(model)
    pruning.apply(model, t=0)
    assert pruning.layers  # something was masked
    parametrized = [m for m in model.modules() if parametrize.is_parametrized(m)]
    assert any(isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d for m in parametrized)
    assert any(
        isinstance(m, nn.BatchNorm2d) and type(m) is not nn.BatchNorm2d for m in parametrized
    )
    masked_sites = find_activation_sites(model, inputs(2))
    assert masked_sites.names == plain_sites.names
    assert masked_sites.folds == plain_sites.folds
    # And with enabled weight fake-quant on top of the masks.
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            quant = WeightFakeQuant(8)
            quant.enabled.fill_(True)
            parametrize.register_parametrization(module, "weight", quant)
    quant_sites = find_activation_sites(model, inputs(2))
    assert (quant_sites.names, quant_sites.folds) == (plain_sites.names, plain_sites.folds)


def test_inplace_relu_outputs_are_sites():
    sites = find_activation_sites(features(inplace=True), inputs(2))
    assert sites.names == SEQUENTIAL_SITES


class Gate(nn.Module):
    """Squeeze-and-excitation written as a user would: a functional multiply ends forward."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1)
        self.sigmoid = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.sigmoid(self.fc(self.pool(x)))


def mobile_features() -> nn.Sequential:
    """Conv-BN-Hardswish, depthwise conv-BN-ReLU6, SiLU, a gate, pool, Linear: plain torch
    containers, so only module types (never a class of ours) can make sites of them."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 1),
        nn.SiLU(),
        Gate(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    )


class Mobile(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.features = mobile_features()

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def test_sites_of_hardswish_depthwise_relu6_and_a_gated_multiply():
    sites = find_activation_sites(mobile_features(), inputs(2))
    # A BatchNorm feeding hard-swish is a site (its output is the float op's input, and onnxruntime
    # has no int8 hard-swish); one feeding ReLU6 is not (Clip drops before QuantizeLinear). The
    # gate's Hardsigmoid output and its product (the custom module's output) are sites, so the
    # multiply's inputs and output are all quantized.
    assert sites.names == [
        INPUT_SITE,
        *["1", "2", "5", "6", "7"],
        *["8.pool", "8.fc", "8.sigmoid", "8"],
        *["9", "11"],
    ]
    assert sites.folds == {"0": "1", "3": "4"}


# -- QuantizationCallback: settings ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"weight_bits": 9}, "quantization.weight_bits"),
        ({"weight_bits": 1}, "quantization.weight_bits"),
        ({"weight_bits": True}, "quantization.weight_bits"),
        ({"layer_bits": {"features.3": 9}}, "quantization.layer_bits.features.3"),
        ({"start_epoch": 2, "observer_freeze_epoch": 2}, "quantization.observer_freeze_epoch"),
        ({"start_epoch": 2, "observer_freeze_epoch": 1}, "quantization.observer_freeze_epoch"),
        ({"batchnorm": "bogus"}, "quantization.batchnorm"),
        ({"start_epoch": -1}, "quantization.start_epoch"),
        ({"calibration_batches": 0}, "quantization.calibration_batches"),
        ({"observer_interval": 0}, "quantization.observer_interval"),
        ({"observer_interval": 2.5}, "quantization.observer_interval"),
    ],
)
def test_bad_settings_are_refused_at_construction(kwargs, field):
    with pytest.raises(ConfigError) as error:
        QuantizationCallback(**kwargs)
    assert error.value.field == field


def test_a_layer_bits_pattern_matching_nothing_is_refused_at_attach():
    callback = QuantizationCallback(layer_bits={"classifier*": 7})
    model = Net()
    with pytest.raises(ConfigError) as error:
        callback.attach(model, inputs(2))
    assert error.value.field == "quantization.layer_bits.classifier*"
    assert "features.0" in str(error.value)  # the names it could have matched


def test_a_bad_observer_momentum_is_refused_at_attach():
    # Checked when the observers are made (attach, before any training), not at construction.
    callback = QuantizationCallback(observer_momentum=0.0)
    with pytest.raises(ConfigError) as error:
        callback.attach(Net(), inputs(2))
    assert error.value.field == "quantization.observer_momentum"


def test_check_exportable_names_the_low_bit_layer():
    callback = QuantizationCallback(weight_bits=8, layer_bits={"features.3": 4, "features.8": 7})
    callback.attach(Net(), inputs(2))
    assert callback.layers == {"features.0": 8, "features.3": 4, "features.8": 7}
    with pytest.raises(ConfigError) as error:
        callback.check_exportable()
    assert error.value.field == "quantization.layer_bits[features.3]"
    assert error.value.value == 4 and "features.3" in str(error.value)
    for bits in (7, 8):
        exportable = QuantizationCallback(weight_bits=bits, layer_bits={"features.8": 8})
        exportable.attach(Net(), inputs(2))
        exportable.check_exportable()


def test_layer_bits_null_leaves_a_layer_in_float_and_the_last_pattern_wins():
    callback = QuantizationCallback(layer_bits={"features.*": 7, "features.8": None})
    model = Net()
    callback.attach(model, inputs(2))
    assert callback.layers == {"features.0": 7, "features.3": 7}
    assert get_weight_fake_quant(model.features[0]).bits == 7
    assert get_weight_fake_quant(model.features[8]) is None
    assert not parametrize.is_parametrized(model.features[8])
    callback.enter_epoch(model, 0)
    assert bool(get_weight_fake_quant(model.features[3]).enabled)


# -- QuantizationCallback: phases --------------------------------------------------------------


def test_phases_switch_weights_and_observers_epoch_by_epoch():
    model = with_stats(Net())
    reference = copy.deepcopy(model)
    callback = QuantizationCallback(start_epoch=1, observer_freeze_epoch=3, batchnorm="freeze")
    callback.attach(model, inputs(2))
    observers = observers_of(model)
    assert list(observers) == [INPUT_SITE, "features.2", "features.5", "features.6", "features.8"]
    quantizers = [get_weight_fake_quant(model.get_submodule(name)) for name in LAYERS]
    batch, probe = inputs(16, seed=2), inputs(8, seed=3)

    def train_step(net: nn.Module, epoch: int) -> None:
        net.train()
        if epoch >= callback.batchnorm_epoch:
            freeze_batchnorm(net)
        with torch.no_grad():
            net(batch * (1 + epoch))

    # Epoch 0: float warm-up, nothing observes or rounds: the float model's outputs, exactly.
    callback.enter_epoch(model, 0)
    assert not any(bool(q.enabled) for q in quantizers)
    assert not any(bool(o.enabled) or bool(o.observing) for o in observers.values())
    train_step(model, 0)
    train_step(reference, 0)
    assert not any(bool(o.initialized) for o in observers.values())
    assert model.features[1].training  # BatchNorm still learns its statistics
    assert torch.equal(model.eval()(probe), reference.eval()(probe))

    # Epoch 1: weights and activations fake-quantized, observers running, BN frozen.
    callback.enter_epoch(model, 1)
    assert all(bool(q.enabled) for q in quantizers)
    assert all(bool(o.enabled) and bool(o.observing) for o in observers.values())
    running_mean = model.features[1].running_mean.clone()
    train_step(model, 1)
    assert not model.features[1].training
    assert torch.equal(model.features[1].running_mean, running_mean)
    assert all(bool(o.initialized) for o in observers.values())
    quantized = model.eval()(probe)
    assert not torch.equal(quantized, reference.eval()(probe))
    assert torch.allclose(quantized, reference(probe), atol=0.1)

    # Epoch 2: still observing, ranges move.
    callback.enter_epoch(model, 2)
    before = {s: (o.min_val.clone(), o.max_val.clone()) for s, o in observers.items()}
    train_step(model, 2)
    assert not torch.equal(observers[INPUT_SITE].max_val, before[INPUT_SITE][1])

    # Epoch 3: ranges frozen, still quantizing.
    callback.enter_epoch(model, 3)
    assert all(bool(q.enabled) for q in quantizers)
    assert all(bool(o.enabled) and not bool(o.observing) for o in observers.values())
    frozen = {s: (o.min_val.clone(), o.max_val.clone()) for s, o in observers.items()}
    train_step(model, 3)
    for site, observer in observers.items():
        assert torch.equal(observer.min_val, frozen[site][0]), site
        assert torch.equal(observer.max_val, frozen[site][1]), site
    # Idempotent: entering the same epoch again changes nothing.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    callback.enter_epoch(model, 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_observer_interval_observes_every_kth_step_and_never_set_ranges():
    """observer_interval=3: ranges move at global steps 0, 3, 6 only (a run starting at step 1
    sets them at once), and stop in the frozen epoch; the default observes every step."""

    def run(interval: int, first_step: int) -> list[tuple[float, float]]:
        model = with_stats(Net())
        callback = QuantizationCallback(
            start_epoch=0, observer_freeze_epoch=1, observer_interval=interval
        )
        callback.attach(model, inputs(2))
        observer = observers_of(model)[INPUT_SITE]
        ranges = []
        for step in range(first_step, 9):
            epoch = step // 7  # steps 7, 8: ranges frozen
            trainer = SimpleNamespace(current_epoch=epoch, global_step=step)
            callback.enter_epoch(model, epoch)
            callback.on_train_batch_start(trainer, SimpleNamespace(student=model), None, step)
            model.train()
            with torch.no_grad():
                model(inputs(4, seed=20 + step) * (1 + step))
            ranges.append((float(observer.min_val), float(observer.max_val)))
        return ranges

    every, third = run(1, 0), run(3, 0)
    moved = [step for step in range(1, 9) if third[step] != third[step - 1]]
    assert moved == [3, 6]
    assert third[0] == every[0] and third[2] == every[0]
    assert len(set(every[:7])) == 7 and every[7] == every[8] == every[6]  # default: every step
    late = run(3, 1)  # first step 1: not due, but the range was never set
    assert late[0] != (0.0, 0.0) and [s for s in range(1, 8) if late[s] != late[s - 1]] == [2, 5]


def test_weight_only_qat_with_batchnorm_folding():
    model = with_stats(Net())
    callback = QuantizationCallback(activations=False, start_epoch=0, batchnorm="fold")
    callback.attach(model, inputs(2))
    callback.enter_epoch(model, 0)
    assert callback.folded


def test_qat_on_a_sequential_student():
    model = with_stats(features())
    callback = QuantizationCallback(start_epoch=0)
    callback.attach(model, inputs(2))
    callback.enter_epoch(model, 0)
    assert model(inputs(4)).shape == (4, NUM_CLASSES)


# -- BatchNorm folding -------------------------------------------------------------------------


def test_folding_keeps_outputs_keys_and_pruned_channels():
    model = with_stats(Net())
    pruning = channel_pruning(model)
    pruning.apply(model, t=0)
    kept = get_mask(model.features[3]).mask.flatten(1).any(dim=1)
    assert int((~kept).sum()) == 4
    model.eval()
    probe = inputs(8, seed=3)
    before = model(probe)
    keys = list(model.state_dict())
    sites = find_activation_sites(model, inputs(2))

    fold_batchnorm_in_place(model, sites.folds)
    assert list(model.state_dict()) == keys
    assert torch.allclose(model(probe), before, atol=1e-5)
    captured = {}
    model.features[4].register_forward_hook(lambda m, a, out: captured.setdefault("bn", out))
    model(probe)
    assert torch.all(captured["bn"][:, ~kept] == 0)  # pruned channels exactly zero
    assert torch.all(model.features[3].weight[~kept] == 0)
    for norm in (model.features[1], model.features[4]):
        assert torch.all(norm.running_mean == 0)
        assert torch.all(norm.running_var == 1 - norm.eps)
    assert torch.equal(model.features[4].weight, kept.float())
    assert torch.equal(model.features[1].weight, torch.ones(8))


def _deployed(batchnorm: str, build=Net) -> tuple[nn.Module, nn.Module, QuantizationCallback]:
    """(fake-quant student after calibration, its int8 QDQ model, the callback)."""
    model = with_stats(build())
    callback = QuantizationCallback(start_epoch=0, batchnorm=batchnorm)
    callback.attach(model, inputs(2))
    callback.enter_epoch(model, 0)
    assert callback.folded == (batchnorm == "fold")
    model.train()
    freeze_batchnorm(model)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(32, *IMAGE, generator=generator))
    model.eval()
    qparams = {}
    for site, observer in observers_of(model).items():
        scale, zero_point = observer.qparams()
        qparams[site] = (float(scale), int(zero_point))
    sites = callback.sites
    plain = bake_into(model, with_stats(build())).eval()
    qdq_model = build_qdq_model(plain, sites.names, qparams, dict(callback.layers), sites.folds)
    return model, qdq_model, callback


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv1d(3, 4, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(3, 6, 3, padding=1, groups=3, padding_mode="reflect"),
        nn.Conv3d(3, 4, 3, padding=1, bias=False),
        nn.Linear(3, 4),
    ],
    ids=["conv1d-circular", "conv2d-grouped-reflect", "conv3d", "linear"],
)
def test_qdq_layer_computes_the_layer_with_its_int8_weight(layer):
    torch.manual_seed(0)
    qdq_layer = QDQLayer(layer, 8)
    with torch.no_grad():
        layer.weight.copy_(qdq_layer.dequantized_weight())
        x = torch.randn(2, 3, *[5] * (layer.weight.dim() - 2))
        torch.testing.assert_close(qdq_layer(x), layer(x))


def test_folded_and_frozen_batchnorm_deploy_the_same_int8_weights():
    _, folded, callback = _deployed("fold")
    _, frozen, _ = _deployed("freeze")
    for name in callback.layers:
        a, b = folded.get_submodule(name), frozen.get_submodule(name)
        assert isinstance(a, QDQLayer) and isinstance(b, QDQLayer)
        assert torch.equal(a.qweight, b.qweight), name
        assert torch.allclose(a.scale, b.scale, rtol=1e-5), name
    # Directly: per-channel symmetric integers are unchanged by a per-channel factor.
    model = with_stats(Net())
    conv, norm = model.features[3], model.features[4]
    factor = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
    quant = WeightFakeQuant(8)
    q, scale = quant.quantize(conv.weight.detach())
    q_folded, scale_folded = quant.quantize(conv.weight.detach() * factor.view(-1, 1, 1, 1))
    assert torch.equal(q, q_folded)
    assert torch.allclose(scale_folded, scale * factor.abs(), rtol=1e-5)


# -- the int8 QDQ model simulates the fake-quant student ---------------------------------------


@pytest.mark.parametrize("batchnorm", ["fold", "freeze"])
@pytest.mark.parametrize("build", [Net, ResNet, Mobile], ids=["net", "resnet", "mobile"])
def test_qdq_model_matches_the_fake_quant_student(batchnorm, build):
    student, qdq_model, callback = _deployed(batchnorm, build)
    float_model = with_stats(build()).eval()
    for name in callback.layers:
        assert isinstance(qdq_model.get_submodule(name), QDQLayer)
    probe = torch.randn(256, *IMAGE, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        simulated, deployed, floating = student(probe), qdq_model(probe), float_model(probe)
    logits_site = callback.sites.names[-1]  # the classifier's output
    assert logits_site in ("fc", "features.8", "features.11")
    output_step = float(observers_of(student)[logits_site].qparams()[0])
    diff = (deployed - simulated).abs().max()
    # At most one step of the uint8 logits grid apart, and far closer than the float model.
    assert diff <= output_step * 1.01
    assert diff < (floating - simulated).abs().max()
    agreement = (deployed.argmax(1) == simulated.argmax(1)).float().mean()
    assert agreement >= 0.99


# -- exact resume ------------------------------------------------------------------------------


def loader(shuffle: bool = True) -> ResumableDataLoader:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(
        torch.randn(32, *IMAGE, generator=generator),
        torch.randint(0, NUM_CLASSES, (32,), generator=generator),
    )
    return ResumableDataLoader(
        dataset, batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(1)
    )


class CountBatches(pl.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, *args) -> None:
        self.count += 1


def batches_trained(trainer: pl.Trainer) -> int:
    return next(c for c in trainer.callbacks if isinstance(c, CountBatches)).count


def fit_qat(
    *,
    shuffle: bool = True,
    ckpt_path=None,
    checkpoint_dir=None,
    every_n_train_steps: int | None = None,
    quantize: bool = True,
) -> tuple[pl.Trainer, DistillationModule, QuantizationCallback | None]:
    """4 epochs of 4 batches; channel pruning at epoch 2, QAT from epoch 1 (BN folded),
    observers frozen from epoch 3. Checkpoints (all kept) at every epoch end, or every n steps."""
    student = Net()
    pruning = PruningCallback(ChannelPruning(), OneShotSchedule(sparsity=0.5, at=2))
    pruning.attach(student, inputs(2))
    callbacks: list[pl.Callback] = [pruning, CountBatches()]
    quantization = None
    if quantize:
        quantization = QuantizationCallback(
            start_epoch=1, observer_freeze_epoch=3, batchnorm="fold"
        )
        quantization.attach(student, inputs(2))
        callbacks.append(quantization)
    if checkpoint_dir is not None:
        checkpoint = pl.callbacks.ModelCheckpoint(
            dirpath=checkpoint_dir, save_top_k=-1, every_n_train_steps=every_n_train_steps
        )
        callbacks.append(checkpoint)
    module = DistillationModule(
        student,
        WeightedSum({"ce": CrossEntropy()}),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3),
        num_classes=NUM_CLASSES,
    )
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoint_dir is not None,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(module, train_dataloaders=loader(shuffle), ckpt_path=ckpt_path)
    return trainer, module, quantization


def assert_same_students(expected_model: nn.Module, actual_model: nn.Module) -> None:
    expected, actual = expected_model.state_dict(), actual_model.state_dict()
    assert list(expected) == list(actual)
    assert any(key.endswith(".mask") for key in expected)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


@pytest.mark.parametrize("resume", ["epoch_end", "mid_epoch"])
def test_resumed_qat_run_ends_with_the_same_student(resume, tmp_path):
    if resume == "epoch_end":
        # From the end of epoch 2 (index 1, before observers freeze, after BN folding).
        run = fit_qat
        _, reference, reference_callback = run(checkpoint_dir=tmp_path)
        path, remaining = tmp_path / "epoch=1-step=8.ckpt", 8
    else:
        # Shuffled, from step 6: 2 batches into epoch 1.
        run = fit_qat
        _, reference, reference_callback = run(checkpoint_dir=tmp_path, every_n_train_steps=6)
        path, remaining = tmp_path / "epoch=1-step=6.ckpt", 10
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["callbacks"]["QuantizationCallback"]["folded"] is True
    resumed, module, callback = run(ckpt_path=path)

    assert resumed.current_epoch == 4 and resumed.global_step == 16
    assert batches_trained(resumed) == remaining  # it did resume, not start over
    assert callback.folded and reference_callback.folded
    assert callback.state_dict() == reference_callback.state_dict()
    assert_same_students(reference.student, module.student)
    assert any(key.endswith("min_val") for key in module.student.state_dict())
    # The run did what the phases say: observers ran then froze, BN folded, channels pruned.
    student = module.student
    observers = observers_of(student).values()
    assert all(bool(o.initialized) and bool(o.enabled) and not bool(o.observing) for o in observers)
    assert all(bool(get_weight_fake_quant(student.get_submodule(n)).enabled) for n in LAYERS)
    assert torch.all(student.features[1].running_mean == 0)
    assert int((~get_mask(student.features[3]).mask.flatten(1).any(dim=1)).sum()) == 4


def test_epoch_based_resume_from_an_end_of_epoch_checkpoint_is_exact(tmp_path):
    _, reference, _ = fit_qat(checkpoint_dir=tmp_path, quantize=False)
    run, resumed, _ = fit_qat(ckpt_path=tmp_path / "epoch=1-step=8.ckpt", quantize=False)
    assert batches_trained(run) == 8
    assert_same_students(reference.student, resumed.student)


@pytest.mark.parametrize(
    ("max_epochs", "start", "freeze"), [(60, 40, 55), (5, 3, 4), (2, 1, None), (1, 0, None)]
)
def test_fractions_of_the_run_resolve_to_epochs(max_epochs, start, freeze):
    callback = QuantizationCallback(start_epoch=0.67, observer_freeze_epoch=0.92)
    assert not callback.epochs_resolved
    callback.resolve_epochs(max_epochs)
    assert (callback.start_epoch, callback.observer_freeze_epoch) == (start, freeze)
    assert callback.batchnorm_epoch == start  # defaults to the QAT start


def test_fractions_need_max_epochs_and_must_lie_in_zero_one():
    with pytest.raises(ConfigError, match=r"quantization.start_epoch=0.5.*max_epochs"):
        QuantizationCallback(start_epoch=0.5).resolve_epochs(None)
    with pytest.raises(ConfigError, match=r"quantization.start_epoch=1.5"):
        QuantizationCallback(start_epoch=1.5)
    with pytest.raises(ConfigError, match=r"quantization.observer_freeze_epoch=3"):
        QuantizationCallback(start_epoch=3, observer_freeze_epoch=3)


def test_a_deep_copy_of_a_qat_student_observes_into_its_own_observers():
    # EMA / SWA callbacks deep-copy the student; the copy must not update the original.
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    callback = QuantizationCallback(start_epoch=0)
    callback.attach(model, torch.randn(2, 1, 8, 8))
    callback.enter_epoch(model, 0)
    copy_ = copy.deepcopy(model).train()
    copy_(torch.randn(4, 1, 8, 8))
    assert all(bool(o.initialized) for o in observers_of(copy_).values())
    assert not any(bool(o.initialized) for o in observers_of(model).values())


def test_weight_sharing_clusters_once_at_its_epoch_and_keeps_pruned_zeros(tmp_path):
    from distill.compression.sharing import get_weight_sharing
    from distill.deploy.compressed import save_compressed

    model = with_stats(Net())
    pruning = channel_pruning(model)
    pruning.apply(model, t=0)
    callback = QuantizationCallback(start_epoch=0, weight_sharing={"bits": 2, "epoch": 0.5})
    callback.resolve_epochs(4)  # sharing from epoch 2
    callback.attach(model, inputs(2))
    pruned = {name: get_mask(model.get_submodule(name)) for name in pruning.layers}

    callback.enter_epoch(model, 1)
    assert not callback.clustered
    assert not any(bool(get_weight_sharing(model.get_submodule(n)).active) for n in callback.layers)
    callback.enter_epoch(model, 2)
    assert callback.clustered and callback.state_dict()["clustered"]
    for name in callback.layers:
        module = model.get_submodule(name)
        with callback.float_weights(model):
            weight = module.weight.detach()
        # 2 bits: at most 4 shared values among the nonzero weights, pruned ones stay 0.
        assert torch.unique(weight[weight != 0]).numel() <= 4, name
        if name in pruned:
            assert torch.all(weight[~pruned[name].mask] == 0), name
    sharing = get_weight_sharing(model.get_submodule(next(iter(callback.layers))))
    centroids = sharing.centroids.detach().clone()
    with torch.no_grad():
        sharing.centroids.add_(1.0)  # as if trained; a later epoch must not re-cluster
    callback.enter_epoch(model, 3)
    assert torch.equal(sharing.centroids.detach(), centroids + 1.0)

    entry = save_compressed(model, tmp_path / "student.dcmp")
    assert entry["encodings"]["codebook"] == len(callback.layers)


def test_int8_model_of_a_transformer_keeps_attention_output_projection_float():
    # MultiheadAttention reads out_proj.weight itself; replacing out_proj would break it.
    from distill.compression.masks import bake_into
    from distill.models import TransformerClassifier

    torch.manual_seed(0)
    student = TransformerClassifier(input_shape=(1, 40), num_classes=NUM_CLASSES)
    callback = QuantizationCallback(start_epoch=0)
    callback.attach(student, torch.randn(2, 1, 40))
    callback.enter_epoch(student, 0)
    student.train()
    student(torch.randn(16, 1, 40))  # observers see one batch
    student.eval()
    plain = bake_into(student, TransformerClassifier(input_shape=(1, 40), num_classes=NUM_CLASSES))
    qparams = {site: tuple(map(float, o.qparams())) for site, o in observers_of(student).items()}
    qparams = {site: (scale, int(zero_point)) for site, (scale, zero_point) in qparams.items()}
    sites = callback.sites
    int8 = build_qdq_model(plain, sites.names, qparams, dict(callback.layers), sites.folds)
    out_projections = [name for name in callback.layers if name.endswith("out_proj")]
    assert out_projections
    assert all(not isinstance(int8.get_submodule(n), QDQLayer) for n in out_projections)
    assert any(isinstance(m, QDQLayer) for m in int8.modules())
    inputs = torch.randn(8, 1, 40)
    with torch.no_grad():
        assert (int8(inputs).argmax(1) == student(inputs).argmax(1)).float().mean() >= 0.75
