"""Weight sharing (Deep Compression k-means), checked exactly on tiny seeded tensors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from distill.compression.fake_quant import WeightFakeQuant
from distill.compression.masks import WeightMask, attach_mask, get_mask, set_mask
from distill.compression.sharing import (
    SharedWeights,
    attach_weight_sharing,
    cluster_weight_sharing,
    get_weight_sharing,
    kmeans_1d,
)
from distill.errors import ConfigError

# ------------------------------------------------------------------------------------ k-means


def test_kmeans_recovers_identical_points_exactly() -> None:
    torch.manual_seed(0)
    centers = [-2.0, -0.5, 0.7, 3.1]
    values = torch.tensor([-2.0] * 5 + [-0.5] * 3 + [0.7] * 4 + [3.1] * 6)
    values = values[torch.randperm(values.numel())]
    centroids, indices = kmeans_1d(values, 4)
    assert centroids.dtype == torch.float32 and centroids.shape == (4,)
    assert indices.dtype == torch.int64 and indices.shape == values.shape
    torch.testing.assert_close(centroids, torch.tensor(centers), atol=1e-5, rtol=0)
    assert torch.equal(centroids[indices], values)


def test_kmeans_recovers_noisy_well_separated_clusters() -> None:
    torch.manual_seed(1)
    centers = torch.tensor([-3.0, -1.0, 1.0, 4.0])
    labels = torch.arange(4).repeat_interleave(25)
    values = centers[labels] + 0.05 * torch.randn(100)
    order = torch.randperm(100)
    values, labels = values[order], labels[order]
    centroids, indices = kmeans_1d(values, 4)
    # The k-means partition is the true one, so the centroids are the groups' means.
    assert torch.equal(indices, labels)
    group_means = torch.stack([values[labels == k].double().mean() for k in range(4)]).float()
    torch.testing.assert_close(centroids, group_means, atol=1e-5, rtol=0)
    assert (centroids - centers).abs().max() < 0.05


def test_kmeans_assigns_each_value_to_its_nearest_centroid() -> None:
    torch.manual_seed(2)
    values = torch.randn(200)
    centroids, indices = kmeans_1d(values, 8)
    distances = (values.double()[:, None] - centroids.double()[None, :]).abs()
    assert torch.equal(indices, distances.argmin(dim=1))
    assert torch.equal(centroids, centroids.sort().values)
    # Converged: every used centroid is the mean of its members (Lloyd's fixed point).
    for k in indices.unique().tolist():
        mean = values[indices == k].double().mean().float()
        torch.testing.assert_close(centroids[k], mean, atol=1e-6, rtol=0)


def test_kmeans_is_deterministic() -> None:
    torch.manual_seed(3)
    values = torch.randn(300)
    first = kmeans_1d(values, 16)
    second = kmeans_1d(values.clone(), 16)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_kmeans_starts_from_linear_initialization() -> None:
    values = torch.tensor([-1.0, 0.1, 0.2, 2.0])
    centroids, indices = kmeans_1d(values, 4, iterations=0)
    assert torch.equal(centroids, torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert indices.tolist() == [0, 1, 1, 3]


def test_kmeans_with_fewer_distinct_values_than_clusters() -> None:
    centroids, indices = kmeans_1d(torch.full((5,), 1.5), 4)
    assert torch.equal(centroids, torch.full((4,), 1.5))
    assert torch.equal(indices, torch.zeros(5, dtype=torch.int64))

    # Empty clusters keep their (linear) initial centroids and are never used.
    values = torch.tensor([0.0, 3.0, 3.0, 0.0, 3.0])
    centroids, indices = kmeans_1d(values, 4)
    assert torch.equal(centroids, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert indices.tolist() == [0, 3, 3, 0, 3]

    centroids, indices = kmeans_1d(torch.tensor([0.25, -0.5]), 1)
    assert torch.equal(centroids, torch.tensor([-0.125])) and indices.tolist() == [0, 0]


def test_kmeans_of_nothing_is_zero_centroids() -> None:
    centroids, indices = kmeans_1d(torch.zeros(0), 4)
    assert torch.equal(centroids, torch.zeros(4)) and indices.shape == (0,)


@pytest.mark.parametrize(
    ("values", "num_clusters", "iterations", "field"),
    [
        (torch.zeros(2, 3), 4, 30, "values"),
        (torch.arange(4), 4, 30, "values"),
        (torch.tensor([1.0, float("nan")]), 4, 30, "values"),
        (torch.randn(4), 0, 30, "num_clusters"),
        (torch.randn(4), 2.0, 30, "num_clusters"),
        (torch.randn(4), 4, -1, "iterations"),
        (torch.randn(4), 4, True, "iterations"),
    ],
)
def test_kmeans_rejects_bad_input(
    values: Tensor, num_clusters: object, iterations: object, field: str
) -> None:
    with pytest.raises(ConfigError) as error:
        kmeans_1d(values, num_clusters, iterations)  # type: ignore[arg-type]
    assert error.value.field == field


# ----------------------------------------------------------------------------- SharedWeights


def pruned_linear(seed: int = 0, bits: int = 2) -> tuple[nn.Linear, Tensor, SharedWeights]:
    """A 4x6 linear layer with about a third of its weights pruned, then sharing attached."""
    torch.manual_seed(seed)
    layer = nn.Linear(6, 4)
    attach_mask(layer)
    mask = torch.rand(4, 6) > 0.35
    set_mask(layer, "weight", mask)
    sharing = attach_weight_sharing(layer, bits)
    return layer, mask, sharing


def masked_weight(layer: nn.Module) -> Tensor:
    """The input of the sharing: the original through the mask."""
    chain = layer.parametrizations.weight
    with torch.no_grad():
        return chain[0](chain.original)


def test_inactive_sharing_is_the_identity_with_stable_state() -> None:
    sharing = SharedWeights((4, 6), bits=4)
    assert isinstance(sharing.centroids, nn.Parameter)
    assert torch.equal(sharing.centroids, torch.zeros(16))
    assert sharing.indices.dtype == torch.uint8 and sharing.indices.shape == (4, 6)
    assert not sharing.indices.any() and not bool(sharing.active)
    x = torch.randn(4, 6)
    assert sharing(x) is x
    assert repr(sharing) == "SharedWeights(bits=4, active=False)"


def test_cluster_shares_values_and_keeps_the_zero_pattern() -> None:
    torch.manual_seed(4)
    layer = nn.Linear(6, 4)
    mask_module = WeightMask((4, 6))
    parametrize.register_parametrization(layer, "weight", mask_module)
    mask = torch.rand(4, 6) > 0.35
    set_mask(layer, "weight", mask)
    sharing = SharedWeights((4, 6), bits=2)
    parametrize.register_parametrization(layer, "weight", sharing)
    before = layer.weight.detach().clone()

    sharing.cluster(masked_weight(layer))
    weight = layer.weight.detach()
    assert bool(sharing.active)
    assert torch.equal(weight != 0, mask)
    assert weight[mask].unique().numel() <= 4
    assert torch.equal(weight[mask], sharing.centroids.detach()[sharing.indices.long()][mask])
    # Each surviving weight moved to its nearest centroid.
    distances = (before[mask][:, None] - sharing.centroids.detach()[None, :]).abs()
    assert torch.equal(sharing.indices.long()[mask], distances.argmin(dim=1))
    assert not sharing.indices[~mask].any()


def test_backward_sums_member_gradients_into_centroids() -> None:
    layer, mask, sharing = pruned_linear(seed=5)
    cluster_weight_sharing(layer)
    torch.manual_seed(6)
    x, r = torch.randn(3, 6), torch.randn(3, 4)
    (layer(x) * r).sum().backward()

    weight_grad = r.T @ x  # d/dW of sum(r * (x W^T + b))
    expected = torch.zeros(4).index_add_(0, sharing.indices.long()[mask], weight_grad[mask])
    torch.testing.assert_close(sharing.centroids.grad, expected, atol=1e-6, rtol=0)
    original = layer.parametrizations.weight.original
    assert original.grad is not None and not original.grad.any()


def test_optimizer_step_moves_centroids_and_pruned_stay_zero() -> None:
    layer, mask, sharing = pruned_linear(seed=7)
    cluster_weight_sharing(layer)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    assert any(p is sharing.centroids for p in optimizer.param_groups[0]["params"])
    torch.manual_seed(8)
    x, r = torch.randn(3, 6), torch.randn(3, 4)
    for step in range(3):
        centroids_before = sharing.centroids.detach().clone()
        optimizer.zero_grad()
        (layer(x) * r).sum().backward()
        grad = sharing.centroids.grad.clone()
        optimizer.step()
        if step == 0:  # SGD's first step, momentum buffer = grad: exactly p - lr * grad
            expected = centroids_before - 0.1 * grad
            torch.testing.assert_close(sharing.centroids.detach(), expected, atol=1e-7, rtol=0)
        assert not torch.equal(sharing.centroids.detach(), centroids_before)
    weight = layer.weight.detach()
    assert torch.equal(weight != 0, mask)
    assert torch.equal(weight[mask], sharing.centroids.detach()[sharing.indices.long()][mask])
    assert weight[mask].unique().numel() <= 4


def test_pruning_after_clustering_is_respected() -> None:
    layer, mask, sharing = pruned_linear(seed=9)
    cluster_weight_sharing(layer)
    torch.manual_seed(10)
    later = mask & (torch.rand(4, 6) > 0.5)
    assert later.sum() < mask.sum()
    set_mask(layer, "weight", later)
    weight = layer.weight.detach()
    assert torch.equal(weight != 0, later)
    assert torch.equal(weight[later], sharing.centroids.detach()[sharing.indices.long()][later])


def test_state_dict_keys_stable_and_loading_restores_effective_weights() -> None:
    layer, _, _ = pruned_linear(seed=11)
    keys_before = list(layer.state_dict())
    assert "parametrizations.weight.1.centroids" in keys_before
    assert "parametrizations.weight.1.indices" in keys_before
    assert "parametrizations.weight.1.active" in keys_before
    cluster_weight_sharing(layer)
    assert list(layer.state_dict()) == keys_before

    fresh = nn.Linear(6, 4)
    attach_mask(fresh)
    fresh_sharing = attach_weight_sharing(fresh, 2)
    fresh.load_state_dict(layer.state_dict(), strict=True)
    assert bool(fresh_sharing.active)
    assert torch.equal(fresh.weight, layer.weight)
    assert fresh_sharing.centroids.dtype == torch.float32


def test_mask_then_sharing_then_fake_quant() -> None:
    layer, mask, sharing = pruned_linear(seed=12, bits=3)
    quant = WeightFakeQuant(bits=8)
    parametrize.register_parametrization(layer, "weight", quant)
    chain = [type(p) for p in layer.parametrizations.weight]
    assert chain == [WeightMask, SharedWeights, WeightFakeQuant]
    cluster_weight_sharing(layer)
    quant.enabled.fill_(True)
    weight = layer.weight.detach()
    assert torch.equal(weight != 0, mask)
    # Per-channel scales round a shared value differently in each row: the codebook holds per
    # row, not per layer (10 distinct values over the 4 rows here).
    for row in range(4):
        assert weight[row][mask[row]].unique().numel() <= 8
    shared = sharing.centroids.detach()[sharing.indices.long()]
    assert torch.equal(weight, quant(torch.where(mask, shared, torch.zeros(()))))


def test_attaching_after_fake_quant_is_refused() -> None:
    layer = nn.Linear(6, 4)
    attach_mask(layer)
    parametrize.register_parametrization(layer, "weight", WeightFakeQuant(bits=8))
    with pytest.raises(ConfigError) as error:
        attach_weight_sharing(layer, 4)
    assert error.value.field == "tensor_name"
    assert get_weight_sharing(layer) is None


@pytest.mark.parametrize("bits", [0, 9, 2.0, True, "4", None])
def test_bad_bits_are_refused(bits: object) -> None:
    with pytest.raises(ConfigError) as error:
        SharedWeights((4, 6), bits=bits)  # type: ignore[arg-type]
    assert error.value.field == "quantization.weight_sharing.bits"
    with pytest.raises(ConfigError) as error:
        attach_weight_sharing(nn.Linear(6, 4), bits)  # type: ignore[arg-type]
    assert error.value.field == "quantization.weight_sharing.bits"


def test_get_and_attach_are_idempotent() -> None:
    layer = nn.Linear(6, 4)
    assert get_weight_sharing(layer) is None
    attach_mask(layer)
    assert get_weight_sharing(layer) is None
    sharing = attach_weight_sharing(layer, 4)
    assert get_weight_sharing(layer) is sharing
    assert attach_weight_sharing(layer, 4) is sharing
    assert len(layer.parametrizations.weight) == 2
    with pytest.raises(ConfigError):
        attach_weight_sharing(layer, 5)
    with pytest.raises(ConfigError) as error:
        attach_weight_sharing(layer, 4, tensor_name="nope")
    assert error.value.field == "tensor_name"
    with pytest.raises(ConfigError) as error:
        cluster_weight_sharing(nn.Linear(2, 2))
    assert error.value.field == "tensor_name"


def test_all_zero_weight_becomes_active_with_zero_centroids() -> None:
    layer = nn.Linear(6, 4)
    attach_mask(layer)
    set_mask(layer, "weight", torch.zeros(4, 6, dtype=torch.bool))
    sharing = attach_weight_sharing(layer, 2)
    cluster_weight_sharing(layer)
    assert bool(sharing.active)
    assert torch.equal(sharing.centroids.detach(), torch.zeros(4))
    assert torch.equal(layer.weight, torch.zeros(4, 6))


def test_cluster_rejects_a_weight_of_the_wrong_shape() -> None:
    sharing = SharedWeights((4, 6), bits=2)
    with pytest.raises(ConfigError) as error:
        sharing.cluster(torch.randn(6, 4))
    assert error.value.field == "weight"
    assert not bool(sharing.active)


def test_codebook_encoding_reconstructs_the_effective_conv_weight() -> None:
    torch.manual_seed(13)
    conv = nn.Conv2d(2, 3, 3)
    attach_mask(conv)
    set_mask(conv, "weight", torch.rand(3, 2, 3, 3) > 0.3)
    sharing = attach_weight_sharing(conv, 1)
    centroids_parameter = sharing.centroids
    cluster_weight_sharing(conv)
    assert sharing.centroids is centroids_parameter
    centroids, indices = sharing.codebook_encoding()
    assert centroids.dtype == torch.float32 and not centroids.requires_grad
    assert indices.dtype == torch.uint8 and indices.shape == (3, 2, 3, 3)
    mask = get_mask(conv).mask
    rebuilt = torch.where(mask, centroids[indices.long()], torch.zeros(()))
    assert torch.equal(rebuilt, conv.weight.detach())
    assert conv.weight.detach()[mask].unique().numel() <= 2
    centroids.add_(1.0)  # a clone: the parameter is untouched
    assert not torch.equal(centroids, sharing.centroids.detach())
