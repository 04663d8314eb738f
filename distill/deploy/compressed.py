"""The `compressed` artifact: the smallest file that restores the plain (baked) student exactly.

Loading gives back, bit for bit, the state dict `bake_into` would: every tensor with its dtype
and shape. What makes the file small is what the run already did to the weights:

- `int8`: a weight whose last parametrization is an enabled `WeightFakeQuant` is stored as its
  integers and per-channel fp32 scales; `q.float() * scale` is the fake-quantized weight exactly
  (`WeightFakeQuant.quantize`).
- `codebook`: a weight with active `SharedWeights` is stored as the fp32 codebook and each
  weight's index, packed at `bits` bits; a fake quantizer after the sharing is re-run on the
  decoded tensor (the same op on the same input, so the same result).
- `float`: any other parametrized (masked) weight, as its float values.
- `raw`: everything else (biases, BatchNorm, buffers), as stored bytes with dtype and shape.

The first three store only the nonzero entries, plus a bitmask of where they are (no mask when
there are no zeros). Every encoding is decoded once on save and compared bit for bit with the
baked tensor; one that does not reproduce it falls back to `float`, then `raw`, with a warning.
Tensors of `training_only` modules (activation observers) are not part of the plain student and
are left out.

File: `MAGIC`, the format version (uint16), then an lzma stream of: the JSON header length
(uint64), the JSON header (format version, model config, one entry per tensor with its parts'
offsets) and the concatenated parts. Loading reads JSON and raw little-endian bytes only: no
pickle, no `torch.load`, nothing in the file runs. The model config names a class to construct,
as any Hydra config does; pass `model` to `load_compressed` to construct the model yourself.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression.fake_quant import WeightFakeQuant
from distill.compression.masks import effective_state_dict
from distill.compression.sharing import SharedWeights
from distill.config import build
from distill.errors import ConfigError
from distill.files import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"DISTILLZ"
FORMAT_VERSION = 1
# xz (lzma) was 10-15% smaller than zlib and bz2 at level 9 on sparse int8 students. Preset 9
# only widens the dictionary, which gained nothing (payloads of resnet20 and wrn_40_2 are well
# under preset 6's 8 MiB) at 7x the memory (674 MiB to compress); EXTREME gained 0.25% for
# milliseconds. The xz container's CRC64 makes a damaged file fail to load.
LZMA_PRESET = 6 | lzma.PRESET_EXTREME
ENCODINGS = ("int8", "codebook", "float", "raw")
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}

Parts = dict[str, bytes]


# ------------------------------------------------------------------------------------ saving


def save_compressed(
    student: nn.Module, path: str | Path, model_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the plain student of `student` (with its parametrizations) to `path`, atomically.

    `model_config` is the student's config (`_target_` and arguments), stored so that
    `load_compressed(path)` can build the model. Returns the artifact entry: path (file name),
    bytes, bytes_dense_fp32 (the size of `torch.save` of the baked fp32 tensors as a plain dict,
    measured), ratio (dense / bytes), and how many tensors got each encoding.
    """
    path = Path(path)
    config = _plain_config(model_config)
    state, chains = _plain_state(student)
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for key, tensor in state.items():
        meta, parts = _encode(key, tensor, chains.get(key))
        meta["parts"] = {}
        for name, blob in parts.items():
            meta["parts"][name] = [offset, len(blob)]
            blobs.append(blob)
            offset += len(blob)
        entries.append(meta)
    header = {"format": FORMAT_VERSION, "model_config": config, "tensors": entries}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    payload = struct.pack("<Q", len(header_bytes)) + header_bytes + b"".join(blobs)
    data = MAGIC + struct.pack("<H", FORMAT_VERSION) + lzma.compress(payload, preset=LZMA_PRESET)
    atomic_write(path, lambda handle: handle.write(data))

    dense = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, dense)
    encodings = dict.fromkeys(ENCODINGS, 0)
    for entry in entries:
        encodings[entry["encoding"]] += 1
    return {
        "path": path.name,
        "bytes": len(data),
        "bytes_dense_fp32": dense.tell(),
        "ratio": dense.tell() / len(data),
        "encodings": encodings,
    }


def _plain_config(model_config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if model_config is None:
        return None
    if isinstance(model_config, DictConfig):
        model_config = cast(dict[str, Any], OmegaConf.to_container(model_config, resolve=True))
    config = dict(model_config)
    allowed = "the student's config: a mapping with a _target_ and JSON-serializable arguments"
    if "_target_" not in config:
        raise ConfigError("model_config", config, allowed)
    try:
        json.dumps(config)
    except (TypeError, ValueError) as error:
        raise ConfigError("model_config", config, allowed) from error
    return config


def _plain_state(student: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The baked state dict without training-only tensors, and each parametrized key's chain."""
    skipped: list[str] = []
    chains: dict[str, Any] = {}
    for name, module in student.named_modules(remove_duplicate=False):
        prefix = f"{name}." if name else ""
        if getattr(module, "training_only", False):
            skipped.append(prefix)
        elif parametrize.is_parametrized(module):
            for tensor_name, chain in module.parametrizations.items():
                chains[f"{prefix}{tensor_name}"] = chain
    state = {
        key: value.detach().cpu()
        for key, value in effective_state_dict(student).items()
        if not key.startswith(tuple(skipped))
    }
    return state, chains


def _encode(key: str, tensor: Tensor, chain: Any) -> tuple[dict[str, Any], Parts]:
    """The first candidate encoding that decodes to `tensor` bit for bit."""
    meta = {"key": key, "dtype": _dtype_name(key, tensor), "shape": list(tensor.shape)}
    candidates = []
    if chain is not None:
        candidates = [*_candidates(chain), ("float", lambda: _encode_float(tensor))]
    candidates.append(("raw", lambda: _encode_raw(tensor)))
    for encoding, encode in candidates:
        fields, parts = encode()
        candidate = {**meta, "encoding": encoding, **fields}
        if _same_bits(DECODERS[encoding](candidate, parts), tensor):
            return candidate, parts
        log.warning("%s: the %s encoding is not exact, trying the next one", key, encoding)
    raise AssertionError(f"{key}: no exact encoding")  # raw is always exact


def _candidates(chain: Any) -> list[tuple[str, Callable[[], tuple[dict[str, Any], Parts]]]]:
    """The int8 or codebook encoding a parametrization chain allows, if any."""
    steps = list(chain)
    with torch.no_grad():
        inputs = [chain.original.detach()]
        for step in steps:
            inputs.append(step(inputs[-1]))
    inputs = [tensor.cpu() for tensor in inputs]
    shared = [i for i, step in enumerate(steps) if _active_sharing(step)]
    if shared:
        at = shared[-1]
        after = steps[at + 1 :]
        quantizers = [step for step in after if _enabled_quantizer(step)]
        if len(quantizers) > 1 or not all(isinstance(step, WeightFakeQuant) for step in after):
            return []
        bits = quantizers[0].bits if quantizers else None
        return [("codebook", lambda: _encode_codebook(inputs[at + 1], steps[at], bits))]
    if _enabled_quantizer(steps[-1]):
        return [("int8", lambda: _encode_int8(inputs[-1], steps[-1], inputs[-2]))]
    return []


def _active_sharing(step: nn.Module) -> bool:
    return isinstance(step, SharedWeights) and bool(step.active)


def _enabled_quantizer(step: nn.Module) -> bool:
    return isinstance(step, WeightFakeQuant) and bool(step.enabled)


def _dtype_name(key: str, tensor: Tensor) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ConfigError(key, tensor.dtype, f"a tensor of one of the types {sorted(_DTYPES)}")
    return name


def _same_bits(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_byte_view(a), _byte_view(b))


# ------------------------------------------------------------------------------ the encodings


def _encode_raw(tensor: Tensor) -> tuple[dict[str, Any], Parts]:
    return {}, {"data": _to_bytes(tensor)}


def _encode_float(tensor: Tensor) -> tuple[dict[str, Any], Parts]:
    keep, parts = _sparse(tensor)
    return {}, {**parts, "values": _to_bytes(tensor.reshape(-1)[keep])}


def _encode_int8(
    tensor: Tensor, quantizer: WeightFakeQuant, weight: Tensor
) -> tuple[dict[str, Any], Parts]:
    """`tensor` = quantizer(weight): the integers at its nonzero entries and all the scales."""
    keep, parts = _sparse(tensor)
    q, scale = quantizer.quantize(weight)
    return {}, {**parts, "q": _to_bytes(q.reshape(-1)[keep]), "scale": _to_bytes(scale)}


def _encode_codebook(
    tensor: Tensor, sharing: SharedWeights, fake_quant_bits: int | None
) -> tuple[dict[str, Any], Parts]:
    """`tensor` = sharing(...): the codebook and the packed indices of its nonzero entries."""
    keep, parts = _sparse(tensor)
    centroids, indices = (tensor.cpu() for tensor in sharing.codebook_encoding())
    packed = _pack_bits(indices.reshape(-1)[keep].to(torch.uint8).numpy(), sharing.bits)
    fields = {"bits": sharing.bits, "fake_quant_bits": fake_quant_bits}
    return fields, {**parts, "centroids": _to_bytes(centroids.float()), "indices": packed}


def _decode_raw(meta: Mapping[str, Any], parts: Parts) -> Tensor:
    shape = meta["shape"]
    return _from_bytes(parts["data"], _DTYPES[meta["dtype"]], math.prod(shape)).view(shape)


def _decode_float(meta: Mapping[str, Any], parts: Parts) -> Tensor:
    keep = _positions(meta, parts)
    dtype = _DTYPES[meta["dtype"]]
    return _scatter(_from_bytes(parts["values"], dtype, int(keep.sum())), keep, meta)


def _decode_int8(meta: Mapping[str, Any], parts: Parts) -> Tensor:
    keep = _positions(meta, parts)
    shape = meta["shape"]
    q = _scatter(_from_bytes(parts["q"], torch.int8, int(keep.sum())).float(), keep, meta)
    channels = shape[0] if len(shape) > 1 else math.prod(shape)
    scale = _from_bytes(parts["scale"], torch.float32, channels)
    return (q * scale.view(-1, *[1] * (len(shape) - 1))).to(_DTYPES[meta["dtype"]])


def _decode_codebook(meta: Mapping[str, Any], parts: Parts) -> Tensor:
    keep = _positions(meta, parts)
    bits, fake_quant_bits = meta["bits"], meta["fake_quant_bits"]
    centroids = _from_bytes(parts["centroids"], torch.float32, 2**bits)
    indices = _unpack_bits(parts["indices"], bits, int(keep.sum()))
    weight = _scatter(centroids[torch.from_numpy(indices).long()], keep, meta)
    if fake_quant_bits is not None:
        quantizer = WeightFakeQuant(fake_quant_bits)
        quantizer.enabled.fill_(True)
        weight = quantizer(weight)
    return weight.to(_DTYPES[meta["dtype"]])


DECODERS: dict[str, Callable[[Mapping[str, Any], Parts], Tensor]] = {
    "int8": _decode_int8,
    "codebook": _decode_codebook,
    "float": _decode_float,
    "raw": _decode_raw,
}


# ----------------------------------------------------------------------------- byte helpers


def _byte_view(tensor: Tensor) -> Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _to_bytes(tensor: Tensor) -> bytes:
    return _byte_view(tensor.cpu()).numpy().tobytes()


def _from_bytes(blob: bytes, dtype: torch.dtype, count: int) -> Tensor:
    if len(blob) != count * dtype.itemsize:
        raise ValueError(f"{len(blob)} bytes for {count} values of {dtype}")
    if count == 0:  # torch.frombuffer refuses an empty buffer
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(blob), dtype=dtype)


def _sparse(tensor: Tensor) -> tuple[Tensor, Parts]:
    """Which flat entries to store (all but the zeros) and their bitmask, if any are left out.

    -0.0 is stored: its bits are not zero, and the decoder fills with +0.0.
    """
    flat = tensor.detach().reshape(-1)
    keep = (flat != 0) | torch.signbit(flat)
    if bool(keep.all()):
        return keep, {}
    return keep, {"nonzero": np.packbits(keep.numpy()).tobytes()}


def _positions(meta: Mapping[str, Any], parts: Parts) -> Tensor:
    """The flat bitmask `_sparse` wrote (all True when the tensor has no zeros)."""
    numel = math.prod(meta["shape"])
    if "nonzero" not in parts:
        return torch.ones(numel, dtype=torch.bool)
    if len(parts["nonzero"]) != math.ceil(numel / 8):
        raise ValueError(f"a {len(parts['nonzero'])}-byte bitmask for {numel} entries")
    bits = np.unpackbits(np.frombuffer(parts["nonzero"], dtype=np.uint8), count=numel)
    return torch.from_numpy(bits.astype(bool))


def _scatter(values: Tensor, keep: Tensor, meta: Mapping[str, Any]) -> Tensor:
    """`values` at the kept flat positions, +0.0 elsewhere, in the entry's shape."""
    out = torch.zeros(keep.numel(), dtype=values.dtype)
    out[keep] = values
    return out.view(meta["shape"])


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """The low `bits` bits of each uint8 value, back to back."""
    planes = np.unpackbits(values.reshape(-1, 1), axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes).tobytes()


def _unpack_bits(blob: bytes, bits: int, count: int) -> np.ndarray:
    if len(blob) != math.ceil(count * bits / 8):
        raise ValueError(f"{len(blob)} bytes for {count} values of {bits} bits")
    flat = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=count * bits)
    return np.packbits(flat.reshape(count, bits), axis=1, bitorder="little").reshape(count)


# ----------------------------------------------------------------------------------- loading


def load_compressed_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The plain student's state dict stored in `path`, and the file's JSON header."""
    data = Path(path).read_bytes()
    prefix = len(MAGIC) + 2
    if len(data) < prefix or data[: len(MAGIC)] != MAGIC:
        raise ConfigError("path", str(path), "a distill compressed student (save_compressed)")
    (version,) = struct.unpack_from("<H", data, len(MAGIC))
    if not 1 <= version <= FORMAT_VERSION:
        raise ConfigError(
            "path",
            str(path),
            f"a compressed student of format version 1 to {FORMAT_VERSION}; this file says "
            f"version {version} (written by a newer distill?)",
        )
    try:
        payload = lzma.decompress(data[prefix:])
        (size,) = struct.unpack_from("<Q", payload)
        header = json.loads(payload[8 : 8 + size])
        blobs = memoryview(payload)[8 + size :]
        state = {entry["key"]: _decode(entry, blobs) for entry in header["tensors"]}
    except (
        lzma.LZMAError,
        struct.error,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        RuntimeError,
    ) as error:
        raise ConfigError(
            "path", str(path), f"an intact compressed student ({type(error).__name__}: {error})"
        ) from error
    return state, header


def load_compressed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The plain student in `path`, loaded (strict) into `model`, or into a model built from the
    stored config when `model` is None; in eval mode."""
    state, header = load_compressed_state(path)
    if model is None:
        if header.get("model_config") is None:
            raise ConfigError(
                "model", None, f"a model to load into: {path} was saved without a model config"
            )
        model = build(OmegaConf.create(header["model_config"]), "student")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _decode(entry: Mapping[str, Any], blobs: memoryview) -> Tensor:
    parts = {}
    for name, (offset, length) in entry["parts"].items():
        if offset < 0 or length < 0 or offset + length > len(blobs):
            raise ValueError(f"{entry['key']}.{name}: bytes {offset}+{length} are not in the file")
        parts[name] = bytes(blobs[offset : offset + length])
    if not all(isinstance(size, int) and size >= 0 for size in entry["shape"]):
        raise ValueError(f"{entry['key']}: shape {entry['shape']}")
    return DECODERS[entry["encoding"]](entry, parts)
