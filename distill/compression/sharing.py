"""Weight sharing on a layer: attach the inactive `SharedWeights` link at setup, cluster it later.

The parametrization itself and the k-means (Han et al. 2016, Deep Compression) are in
`shared_weights.py`; its place in the chain (after the mask, before fake-quant) in
`parametrizations.py`.
"""

from __future__ import annotations

from torch import nn

from distill.compression.parametrizations import get_weight_sharing, input_of, register, tensor_of
from distill.compression.shared_weights import (
    BITS_FIELD,
    SHARING_BITS,
    SharedWeights,
    check_sharing_bits,
    kmeans_1d,
)
from distill.errors import ConfigError

__all__ = [
    "SHARING_BITS",
    "SharedWeights",
    "attach_weight_sharing",
    "check_sharing_bits",
    "cluster_weight_sharing",
    "get_weight_sharing",
    "kmeans_1d",
]


def attach_weight_sharing(
    module: nn.Module, bits: int, tensor_name: str = "weight"
) -> SharedWeights:
    """Register an inactive `SharedWeights` on `module.<tensor_name>` and return it (idempotent).

    Attach the mask first and fake quantization after (`parametrizations.register` refuses
    sharing on a tensor that already has a `WeightFakeQuant`: quantizing before sharing would
    cluster grid values and then move them off the grid).
    """
    bits = check_sharing_bits(bits)
    existing = get_weight_sharing(module, tensor_name)
    if existing is not None:
        if existing.bits != bits:
            raise ConfigError(
                BITS_FIELD, bits, f"{existing.bits}, the bits of the sharing already attached"
            )
        return existing
    tensor = tensor_of(module, tensor_name)
    sharing = SharedWeights(tensor.shape, bits, device=tensor.device)
    register(module, tensor_name, sharing)
    return sharing


def cluster_weight_sharing(
    module: nn.Module, tensor_name: str = "weight", iterations: int = 30
) -> SharedWeights:
    """Cluster the `SharedWeights` on `module.<tensor_name>` from its current input.

    The input is the original tensor passed through the parametrizations before the sharing (the
    mask), so pruned weights are left out of the clustering.
    """
    sharing = get_weight_sharing(module, tensor_name)
    if sharing is None:
        raise ConfigError(
            "tensor_name",
            tensor_name,
            "a tensor with weight sharing attached; call attach_weight_sharing at setup",
        )
    sharing.cluster(input_of(module, tensor_name, sharing), iterations)
    return sharing
