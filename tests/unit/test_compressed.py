"""The compressed student file: exact round trips per encoding, size, and refusing bad files."""

from __future__ import annotations

import io
import lzma
import pickle
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression.fake_quant import ActivationFakeQuant, WeightFakeQuant
from distill.compression.masks import attach_mask, bake_into, effective_state_dict, set_mask
from distill.compression.sharing import attach_weight_sharing, cluster_weight_sharing
from distill.deploy import compressed
from distill.deploy.compressed import (
    MAGIC,
    load_compressed,
    load_compressed_state,
    save_compressed,
)
from distill.errors import ConfigError
from distill.models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ("conv", "fc")


class TinyNet(nn.Module):
    """Conv → BatchNorm → ReLU → Linear on 3x8x8 inputs: 49,584 conv and linear weights."""

    def __init__(self, channels: int = 16, num_classes: int = 48) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels * 8 * 8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


def trained_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial BatchNorm statistics and counter, as after training."""
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1.0, 1.0)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.bn.num_batches_tracked.fill_(1234)
    return net


def prune(model: nn.Module, layers: tuple[str, ...], sparsity: float = 0.9) -> None:
    """Masks on `layers`, keeping the largest (1 - sparsity) of each layer's weights."""
    for name in layers:
        module = model.get_submodule(name)
        attach_mask(module)
        weight = module.parametrizations.weight.original.detach()
        keep = round(weight.numel() * (1.0 - sparsity))
        threshold = weight.abs().flatten().kthvalue(weight.numel() - keep).values
        set_mask(module, "weight", weight.abs() > threshold)


def fake_quantize(model: nn.Module, layers: tuple[str, ...], bits: int) -> None:
    for name in layers:
        quantizer = WeightFakeQuant(bits)
        quantizer.enabled.fill_(True)
        parametrize.register_parametrization(model.get_submodule(name), "weight", quantizer)


def share(model: nn.Module, layers: tuple[str, ...], bits: int) -> None:
    for name in layers:
        attach_weight_sharing(model.get_submodule(name), bits)
        cluster_weight_sharing(model.get_submodule(name))


def assert_bit_identical(loaded: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        got = loaded[key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        assert torch.equal(got, value), key
        as_bytes = (t.contiguous().reshape(-1).view(torch.uint8) for t in (got, value))
        assert torch.equal(*as_bytes), f"{key}: equal values, different bits"


def round_trip(student: nn.Module, tmp_path: Path) -> dict:
    """Save, load into a fresh TinyNet and compare with baking; returns save's report."""
    path = tmp_path / "student.dz"
    report = save_compressed(student, path)
    loaded = load_compressed(path, TinyNet())
    expected = bake_into(student, TinyNet()).state_dict()
    assert_bit_identical(loaded.state_dict(), expected)
    assert not loaded.training
    return report


def test_plain_float_model_is_stored_raw_and_exactly(tmp_path: Path) -> None:
    report = round_trip(trained_net(), tmp_path)
    assert report["encodings"] == {"int8": 0, "codebook": 0, "float": 0, "raw": 9}


def test_masked_sparse_float_weights_round_trip(tmp_path: Path) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    report = round_trip(student, tmp_path)
    assert report["encodings"] == {"int8": 0, "codebook": 0, "float": 2, "raw": 7}


@pytest.mark.parametrize("bits", [8, 7])
def test_masked_int8_weights_round_trip(tmp_path: Path, bits: int) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, LAYERS, bits)
    report = round_trip(student, tmp_path)
    # int8 for both layers means the decoded weights matched bit for bit (no fallback).
    assert report["encodings"] == {"int8": 2, "codebook": 0, "float": 0, "raw": 7}


@pytest.mark.parametrize("quant_bits", [None, 8])
def test_shared_weights_round_trip(tmp_path: Path, quant_bits: int | None) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    share(student, LAYERS, 4)
    if quant_bits is not None:
        fake_quantize(student, LAYERS, quant_bits)
    report = round_trip(student, tmp_path)
    assert report["encodings"] == {"int8": 0, "codebook": 2, "float": 0, "raw": 7}
    _, header = load_compressed_state(tmp_path / "student.dz")
    entry = next(e for e in header["tensors"] if e["key"] == "fc.weight")
    assert (entry["bits"], entry["fake_quant_bits"]) == (4, quant_bits)
    kept = int((student.fc.weight != 0).sum())  # 4,915 of 49,152
    assert entry["parts"]["indices"][1] == (kept * 4 + 7) // 8  # 4 bits per index, packed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_student_on_the_gpu_is_saved_exactly(tmp_path: Path) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    share(student, ("conv",), 4)
    fake_quantize(student, LAYERS, 8)
    student.cuda()
    report = save_compressed(student, tmp_path / "student.dz")
    # The CPU decoding reproduced the CUDA fake-quant bit for bit: no fallback to float.
    assert report["encodings"] == {"int8": 1, "codebook": 1, "float": 0, "raw": 7}
    expected = bake_into(student, TinyNet().cuda()).state_dict()
    loaded = load_compressed(tmp_path / "student.dz", TinyNet()).state_dict()
    assert_bit_identical(loaded, {key: value.cpu() for key, value in expected.items()})


def test_training_only_modules_are_left_out(tmp_path: Path) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, LAYERS, 8)
    observers = nn.ModuleDict({"<input>": ActivationFakeQuant(), "bn": ActivationFakeQuant()})
    student.add_module("activation_quant", observers)
    save_compressed(student, tmp_path / "student.dz")
    state, _ = load_compressed_state(tmp_path / "student.dz")
    assert not any(key.startswith("activation_quant.") for key in state)
    assert not any(".parametrizations." in key for key in state)
    plain = {k: v for k, v in effective_state_dict(student).items() if k in state}
    assert_bit_identical(state, plain)
    assert_bit_identical(load_compressed(tmp_path / "student.dz", TinyNet()).state_dict(), plain)


def test_model_is_rebuilt_from_the_stored_config(tmp_path: Path) -> None:
    config = {"_target_": "distill.models.MLP", "input_shape": [1, 8, 8], "num_classes": 10}
    config["hidden_sizes"] = [32, 32]
    torch.manual_seed(0)
    student = MLP((1, 8, 8), 10, (32, 32))
    prune(student, ("features.0", "features.3", "classifier"), 0.8)
    fake_quantize(student, ("features.0", "features.3"), 8)
    save_compressed(student, tmp_path / "mlp.dz", model_config=config)
    loaded = load_compressed(tmp_path / "mlp.dz")
    assert isinstance(loaded, MLP) and not loaded.training
    expected = bake_into(student, MLP((1, 8, 8), 10, (32, 32))).state_dict()
    assert_bit_identical(loaded.state_dict(), expected)


def test_loading_without_model_or_config_is_refused(tmp_path: Path) -> None:
    save_compressed(trained_net(), tmp_path / "student.dz")
    with pytest.raises(ConfigError, match="without a model config"):
        load_compressed(tmp_path / "student.dz")
    with pytest.raises(ConfigError, match="_target_"):
        save_compressed(trained_net(), tmp_path / "other.dz", model_config={"channels": 16})


def test_sparse_int8_file_is_over_ten_times_smaller_than_dense_fp32(tmp_path: Path) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, LAYERS, 8)
    report = save_compressed(student, tmp_path / "student.dz")
    dense = io.BytesIO()
    torch.save(dict(bake_into(student, TinyNet()).state_dict()), dense)  # without _metadata
    assert report["path"] == "student.dz"
    assert report["bytes"] == (tmp_path / "student.dz").stat().st_size
    assert report["bytes_dense_fp32"] == dense.tell()
    assert report["ratio"] == pytest.approx(dense.tell() / report["bytes"])
    assert report["ratio"] >= 10.0


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (16, 40), (12,)])
def test_int8_decoding_is_exactly_the_fake_quantized_weight(
    bits: int, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(shape) * torch.rand(shape[0]).view(-1, *[1] * (len(shape) - 1))
    weight[weight.abs() < 0.3] = 0.0
    quantizer = WeightFakeQuant(bits)
    quantizer.enabled.fill_(True)
    effective = quantizer(weight)
    meta = {"dtype": "float32", "shape": list(shape)}
    fields, parts = compressed._encode_int8(effective, quantizer, weight)
    decoded = compressed._decode_int8({**meta, **fields}, parts)
    assert_bit_identical({"w": decoded}, {"w": effective})


def test_fully_pruned_layers_and_negative_zeros_round_trip(tmp_path: Path) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, ("fc",), 8)
    set_mask(student.fc, "weight", torch.zeros_like(student.fc.weight, dtype=torch.bool))
    with torch.no_grad():
        student.conv.parametrizations.weight[0].mask[0, 0, 0, 0] = True
        student.conv.parametrizations.weight.original[0, 0, 0, 0] = -0.0
        student.bn.bias[:4] = -0.0
    assert torch.signbit(student.conv.weight[0, 0, 0, 0])
    report = round_trip(student, tmp_path)
    assert report["encodings"] == {"int8": 1, "codebook": 0, "float": 1, "raw": 7}


class Doubled(nn.Module):
    """A parametrization this format has no encoding for."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x


def test_unknown_parametrizations_fall_back_to_float(tmp_path: Path) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, LAYERS, 8)
    parametrize.register_parametrization(student.fc, "weight", Doubled())
    report = round_trip(student, tmp_path)
    assert report["encodings"] == {"int8": 1, "codebook": 0, "float": 1, "raw": 7}


def test_an_inexact_encoding_is_replaced_on_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, LAYERS, 8)
    decode = compressed.DECODERS["int8"]
    monkeypatch.setitem(compressed.DECODERS, "int8", lambda meta, parts: decode(meta, parts) * 1.5)
    report = save_compressed(student, tmp_path / "student.dz")
    assert report["encodings"] == {"int8": 0, "codebook": 0, "float": 2, "raw": 7}
    assert "int8 encoding is not exact" in caplog.text
    monkeypatch.undo()
    loaded = load_compressed(tmp_path / "student.dz", TinyNet())
    assert_bit_identical(loaded.state_dict(), bake_into(student, TinyNet()).state_dict())


def test_loading_runs_no_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    fake_quantize(student, LAYERS, 8)
    save_compressed(student, tmp_path / "student.dz")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling while loading a compressed student")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    load_compressed(tmp_path / "student.dz", TinyNet())


def corrupt_payload(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def newer_version(data: bytes) -> bytes:
    return MAGIC + (compressed.FORMAT_VERSION + 1).to_bytes(2, "little") + data[len(MAGIC) + 2 :]


def foreign(data: bytes) -> bytes:
    buffer = io.BytesIO()
    torch.save(TinyNet().state_dict(), buffer)
    return buffer.getvalue()


def bad_header(data: bytes) -> bytes:
    prefix = MAGIC + compressed.FORMAT_VERSION.to_bytes(2, "little")
    return prefix + lzma.compress(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt_payload, "intact"),
        (lambda data: data[: len(data) - 40], "intact"),
        (bad_header, "intact"),
        (newer_version, "newer"),
        (foreign, "distill compressed student"),
        (lambda data: b"", "distill compressed student"),
    ],
)
def test_damaged_or_foreign_files_are_refused(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "student.dz"
    save_compressed(trained_net(), path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError, match=message) as caught:
        load_compressed_state(path)
    assert str(path) in str(caught.value)


def test_failure_while_encoding_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    student = trained_net()
    prune(student, LAYERS, 0.9)
    path = tmp_path / "student.dz"

    def fail(tensor: Tensor) -> None:
        raise RuntimeError("encoding failed")

    monkeypatch.setattr(compressed, "_encode_float", fail)
    with pytest.raises(RuntimeError, match="encoding failed"):
        save_compressed(student, path)
    assert list(tmp_path.iterdir()) == []

    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="encoding failed"):
        save_compressed(student, path)
    assert list(tmp_path.iterdir()) == [path] and path.read_bytes() == b"previous"
