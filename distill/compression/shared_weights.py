"""Weight sharing: each layer's nonzero weights clustered into 2^b shared values.

Han, Mao and Dally 2016, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding" (ICLR), section 3: the surviving weights of a layer are
clustered with k-means (linear initialization between the smallest and largest weight, which the
paper found best because it keeps the rare large weights), every weight is replaced by its
cluster's centroid, and fine-tuning updates only the centroids, each by the sum of its members'
gradients. A layer is then stored as a codebook of 2^b floats plus b bits per weight.

`SharedWeights` is a parametrization registered after the pruning mask (`WeightMask`) and before
fake quantization (`WeightFakeQuant`): mask, then share, then quantize. Positions that are zero on
its input stay exactly zero, so pruning done before or after clustering is respected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.errors import ConfigError
from distill.validate import require_int

SHARING_BITS = range(1, 9)  # 2 to 256 shared values; indices fit in a uint8
BITS_FIELD = "quantization.weight_sharing.bits"


def check_sharing_bits(bits: object, field: str = BITS_FIELD) -> int:
    return require_int(
        field,
        bits,
        SHARING_BITS.start,
        SHARING_BITS.stop - 1,
        allowed="an integer number of index bits from 1 to 8 (2 to 256 shared values per layer; "
        "Deep Compression used 8 for conv and 5 for fully connected layers)",
    )


def _assign(values: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid for every value; ties go to the lower index.

    `centroids` is sorted, so the nearest one is found by binary search among the midpoints
    between neighbours: O(n log k) time and O(n) memory, where an n x k distance matrix would
    need gigabytes for a large layer at 8 bits. The midpoints of float32 centroids are exact in
    float64, so the assignment is exact for the float32 centroids that are returned.
    """
    midpoints = (centroids[:-1] + centroids[1:]) / 2
    # right=False: a value exactly on a midpoint goes to the lower cluster, as argmin would.
    return torch.bucketize(values, midpoints, right=False)


def kmeans_1d(values: Tensor, num_clusters: int, iterations: int = 30) -> tuple[Tensor, Tensor]:
    """Deterministic 1-D k-means (Lloyd) with linear initialization, as in Deep Compression.

    Returns `(centroids, indices)`: float32 centroids of shape `(num_clusters,)`, sorted
    ascending, and int64 indices of `values`' shape, each the nearest centroid (ties to the lower
    index). The centroids start evenly spaced from `values.min()` to `values.max()`; each
    iteration moves every centroid to the mean of its members and reassigns, stopping once no
    assignment changes or after `iterations` updates (`iterations=0` returns the linear
    initialization). A cluster that loses all its members keeps its previous centroid, so with
    fewer distinct values than clusters some centroids go unused (or repeat, when every value is
    the same). An empty `values` gives zero centroids and no indices.
    """
    if not isinstance(values, Tensor) or values.dim() != 1 or not values.is_floating_point():
        described = (
            f"{values.dtype} tensor of shape {tuple(values.shape)}"
            if isinstance(values, Tensor)
            else type(values).__name__
        )
        raise ConfigError("values", described, "a 1-D floating-point tensor")
    num_clusters = require_int("num_clusters", num_clusters, minimum=1)
    iterations = require_int("iterations", iterations, minimum=0)
    device = values.device
    if values.numel() == 0:
        return (
            torch.zeros(num_clusters, dtype=torch.float32, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
        )
    if not bool(torch.isfinite(values).all()):
        raise ConfigError("values", "a tensor holding inf or NaN", "finite values")

    # Sums in float64: a float32 running sum over a million weights loses the low digits, and
    # identical members must average back to exactly their own value.
    points = values.detach().to(torch.float64)
    low, high = points.min(), points.max()
    centroids = torch.linspace(low.item(), high.item(), num_clusters, dtype=torch.float64)
    centroids = centroids.to(device).float().double()  # float32 values, float64 arithmetic
    indices = _assign(points, centroids)
    for _ in range(iterations):
        sums = torch.zeros(num_clusters, dtype=torch.float64, device=device)
        sums.index_add_(0, indices, points)
        counts = torch.bincount(indices, minlength=num_clusters)
        means = sums / counts.clamp_min(1)
        # Each mean lies between its cluster's smallest and largest member, both float32, so
        # rounding to float32 keeps it there and the centroids stay sorted. The sort is a no-op
        # that `_assign` relies on; it costs nothing at k <= 256.
        centroids = torch.where(counts > 0, means, centroids).float().double().sort().values
        new_indices = _assign(points, centroids)
        if torch.equal(new_indices, indices):
            break
        indices = new_indices
    return centroids.float(), indices


class SharedWeights(nn.Module):
    """Parametrization: every nonzero weight replaced by its cluster's shared value, once active.

    Register it after the `WeightMask` and before any `WeightFakeQuant`, with
    `attach_weight_sharing`, at setup: `centroids` (a parameter, zeros until `cluster`) and the
    `indices` and `active` buffers exist from construction, so checkpoint keys and the
    optimizer's parameter list are the same before and after clustering. Until `cluster` is
    called it is the identity.

    Once active, gradients reach only the centroids: indexing's backward sums the gradients of
    all weights of a cluster into its centroid, which is the paper's centroid update (equation 3),
    and the original weight gets an all-zero gradient (still in the graph, so DDP without
    `find_unused_parameters` keeps working).
    """

    indices: Tensor
    active: Tensor

    def __init__(
        self,
        shape: Sequence[int],
        bits: int = 4,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.bits = check_sharing_bits(bits)
        self.centroids = nn.Parameter(torch.zeros(2**bits, dtype=torch.float32, device=device))
        # uint8: the index costs a byte per weight in checkpoints, an eighth of int64.
        self.register_buffer("indices", torch.zeros(tuple(shape), dtype=torch.uint8, device=device))
        self.register_buffer("active", torch.tensor(False, device=device))

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.active):
            return x
        shared = self.centroids[self.indices.long()].to(x.dtype)
        # Zeros on the input (pruned now, or by a mask set after clustering) stay exactly zero.
        # `x * 0` rather than `x` there: the same zero, but an unpruned weight that happens to be
        # exactly 0 gets no gradient either, so it cannot drift off zero and suddenly take
        # centroid 0's value (its index is meaningless).
        return torch.where(x == 0, x * 0, shared)

    @torch.no_grad()
    def cluster(self, weight: Tensor, iterations: int = 30) -> None:
        """Cluster `weight`'s nonzero entries into `2**bits` shared values and turn sharing on.

        `weight` is this parametrization's input (the masked weight, see
        `cluster_weight_sharing`), not the effective one. Zero entries get index 0, which is never
        read. Calling it again re-clusters from `weight`, discarding fine-tuned centroids.
        """
        if weight.shape != self.indices.shape:
            raise ConfigError(
                "weight",
                f"tensor of shape {tuple(weight.shape)}",
                f"a tensor of shape {tuple(self.indices.shape)}, the shape sharing was built for",
            )
        nonzero = weight != 0
        self.centroids.zero_()
        self.indices.zero_()
        if bool(nonzero.any()):
            centroids, indices = kmeans_1d(weight[nonzero], 2**self.bits, iterations)
            # copy_ into the existing parameter: the optimizer holds this very tensor.
            self.centroids.copy_(centroids)
            self.indices[nonzero] = indices.to(torch.uint8)
        self.active.fill_(True)

    def codebook_encoding(self) -> tuple[Tensor, Tensor]:
        """`(centroids, indices)` to store: float32 codebook and uint8 index per weight.

        The effective weight is `centroids[indices]` wherever the mask (or the input) is nonzero,
        and zero elsewhere.
        """
        return self.centroids.detach().float().clone(), self.indices.clone()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, active={bool(self.active)}"
