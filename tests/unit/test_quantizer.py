"""The Quantizer's two steps on a tiny conv model (prepare -> calibrate -> qparams -> convert),
its frozen settings, and the order of the parametrization chain."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression import (
    QuantizationSettings,
    Quantizer,
    WeightFakeQuant,
    WeightMask,
    WeightSharingSettings,
    attach_mask,
    attach_weight_sharing,
    bake_into,
    get_mask,
    get_weight_fake_quant,
    get_weight_sharing,
)
from distill.compression.activation_sites import INPUT_SITE, observers_of
from distill.compression.parametrizations import CHAIN, register
from distill.compression.qdq import QDQLayer
from distill.compression.shared_weights import SharedWeights
from distill.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 8, 8)


def tiny_conv(seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU-Conv-BN-ReLU-pool-Linear, with trained-looking BatchNorm statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    return model


def batches(count: int, seed: int = 3) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(16, *SHAPE, generator=generator) for _ in range(count)]


# -- prepare -> calibrate -> qparams -> convert ----------------------------------------------


def test_converted_qdq_model_computes_what_the_frozen_fake_quant_model_computes():
    model = tiny_conv()
    quantizer = Quantizer(QuantizationSettings(calibration_batches=4))
    quantizer.prepare(model, batches(1)[0][:2])
    assert quantizer.layers == {"0": 8, "3": 8, "8": 8}
    assert quantizer.sites is not None and quantizer.sites.folds == {"0": "1", "3": "4"}
    assert list(observers_of(model)) == [INPUT_SITE, "2", "5", "6", "8"]

    # QAT as the callback drives it: quantize and observe, BatchNorm folded in place.
    quantizer.set_phase(model, quantize=True, observe=True)
    quantizer.fold_batchnorm(model)
    assert quantizer.calibrate(model, batches(10)) == 4  # calibration_batches caps it
    assert model.training  # its mode as before
    assert all(bool(o.observing) for o in observers_of(model).values())  # flags restored
    quantizer.set_phase(model, quantize=True, observe=False)  # observers frozen
    qparams = quantizer.qparams(model)
    assert set(qparams) == set(observers_of(model))
    for site, observer in observers_of(model).items():
        scale, zero_point = observer.qparams()
        assert qparams[site] == (float(scale), int(zero_point))

    plain = bake_into(model, tiny_conv()).eval()
    int8 = quantizer.convert(plain, qparams)
    assert all(isinstance(int8.get_submodule(name), QDQLayer) for name in quantizer.layers)
    probe = torch.randn(256, *SHAPE, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        simulated, deployed = model.eval()(probe), int8(probe)
    # Measured: 0.0 apart (the same integers and scales, the same float ops), against an output
    # grid step of ~3.4e-3; the bound leaves room only for another CPU's float kernels.
    assert float((deployed - simulated).abs().max()) <= 1e-6
    assert qparams["8"][0] > 1e-3
    assert torch.equal(deployed.argmax(1), simulated.argmax(1))


def test_static_calibration_of_a_float_model_leaves_it_alone():
    plain = tiny_conv().eval()
    before = {key: value.clone() for key, value in plain.state_dict().items()}
    quantizer = Quantizer()  # defaults: 8-bit weights, 32 calibration batches
    calibration = quantizer.prepare_static(plain, batches(1)[0][:2])
    assert calibration is not plain and not hasattr(plain, "activation_quant")
    assert not any(parametrize.is_parametrized(m) for m in calibration.modules())
    assert quantizer.calibrate(calibration, batches(3)) == 3
    observer = observers_of(calibration)[INPUT_SITE]
    inputs = torch.cat(batches(3))
    # The first batch sets the range, the next two move it by the calibration momentum 0.1.
    expected_max = batches(3)[0].max()
    for batch in batches(3)[1:]:
        expected_max = torch.lerp(expected_max, batch.max(), 0.1)
    assert torch.equal(observer.max_val, expected_max)
    assert float(observer.max_val) <= float(inputs.max())
    assert all(torch.equal(value, plain.state_dict()[key]) for key, value in before.items())
    qparams = quantizer.qparams(calibration)
    int8 = quantizer.convert(plain, qparams)
    with torch.no_grad():
        agreement = (int8(inputs).argmax(1) == plain(inputs).argmax(1)).float().mean()
    assert agreement >= 0.9


def test_qparams_name_the_observer_that_never_ran():
    model = tiny_conv()
    quantizer = Quantizer()
    quantizer.prepare(model, batches(1)[0][:2])
    with pytest.raises(ConfigError, match="never ran") as error:
        quantizer.qparams(model)
    assert error.value.field == "quantization.start_epoch"


def test_a_quantizer_prepares_one_model_and_calibrates_only_observers():
    quantizer = Quantizer(QuantizationSettings(activations=False))
    model = tiny_conv()
    quantizer.prepare(model, batches(1)[0][:2])
    with pytest.raises(ConfigError, match="one per model"):
        quantizer.prepare(tiny_conv(), batches(1)[0][:2])
    with pytest.raises(ConfigError) as error:
        quantizer.calibrate(model, batches(1))
    assert error.value.field == "quantization.activations"
    with pytest.raises(ConfigError, match="prepared a model first"):
        Quantizer().convert(tiny_conv(), {})


def test_float_weights_switch_weight_fake_quant_off_for_the_block():
    model = tiny_conv()
    quantizer = Quantizer()
    quantizer.prepare(model, batches(1)[0][:2])
    quantizer.set_phase(model, quantize=True, observe=False)
    float_weight = model[0].parametrizations.weight.original.detach().clone()
    with quantizer.float_weights(model):
        assert torch.equal(model[0].weight, float_weight)
    assert not torch.equal(model[0].weight, float_weight)
    assert bool(get_weight_fake_quant(model[0]).enabled)


# -- settings ---------------------------------------------------------------------------------


def test_settings_are_frozen_and_copy_their_layer_bits():
    layer_bits = {"0": 7}
    settings = QuantizationSettings(layer_bits=layer_bits, weight_sharing={"bits": 2})
    layer_bits["3"] = 4
    assert dict(settings.layer_bits) == {"0": 7}
    assert settings.weight_sharing == WeightSharingSettings(bits=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.weight_bits = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"activations": "yes"}, "quantization.activations"),
        ({"calibration_batches": True}, "quantization.calibration_batches"),
        ({"batchnorm_epoch": 1.5}, "quantization.batchnorm_epoch"),
        ({"weight_sharing": {"bits": 9}}, "quantization.weight_sharing.bits"),
        ({"weight_sharing": {"epoch": -1}}, "quantization.weight_sharing.epoch"),
        ({"weight_sharing": {"include": "conv*"}}, "quantization.weight_sharing.include"),
    ],
)
def test_bad_settings_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as error:
        QuantizationSettings(**kwargs)
    assert error.value.field == field


def test_settings_resolve_fractions_of_the_run():
    settings = QuantizationSettings(
        start_epoch=0.5, observer_freeze_epoch=0.75, weight_sharing={"bits": 4, "epoch": 0.25}
    )
    assert settings.has_fractions
    epochs = settings.resolve_epochs(8)
    assert (epochs.start, epochs.batchnorm, epochs.observer_freeze, epochs.weight_sharing) == (
        4,
        4,
        6,
        2,
    )


# -- the chain's order ------------------------------------------------------------------------


def test_the_chain_is_mask_then_sharing_then_fake_quant():
    assert (WeightMask, SharedWeights, WeightFakeQuant) == CHAIN
    layer = nn.Linear(4, 3)
    attach_mask(layer)
    attach_weight_sharing(layer, 2)
    register(layer, "weight", WeightFakeQuant(8))
    assert [type(p) for p in layer.parametrizations.weight] == list(CHAIN)
    assert get_mask(layer) is layer.parametrizations.weight[0]
    assert get_weight_sharing(layer) is layer.parametrizations.weight[1]
    assert get_weight_fake_quant(layer) is layer.parametrizations.weight[2]


def test_a_mask_after_fake_quant_is_refused():
    layer = nn.Linear(4, 3)
    register(layer, "weight", WeightFakeQuant(8))
    with pytest.raises(ConfigError, match="mask -> weight sharing -> fake-quant") as error:
        register(layer, "weight", WeightMask((3, 4)))
    assert error.value.field == "tensor_name"
    with pytest.raises(ConfigError) as error:
        attach_mask(layer)
    assert error.value.field == "tensor_name"
    with pytest.raises(ConfigError) as error:
        register(layer, "weight", WeightFakeQuant(8))  # a second link of one kind
    assert error.value.field == "tensor_name"
    assert [type(p) for p in layer.parametrizations.weight] == [WeightFakeQuant]


def test_register_refuses_what_is_not_a_link_of_the_chain():
    with pytest.raises(ConfigError) as error:
        register(nn.Linear(4, 3), "weight", nn.Identity())
    assert error.value.field == "parametrization"
