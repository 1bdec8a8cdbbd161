"""1-D k-means: initializations, Lloyd's monotone sum of squares, the optimal solution
(ckmeans) never worse than Lloyd, determinism, and the degenerate cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.quant.kmeans import (
    INITS,
    assign,
    init_centroids,
    kmeans_1d,
    kmeans_1d_optimal,
    within_sse,
)


def _mixture(n: int = 5000, seed: int = 0) -> torch.Tensor:
    """Pruned-layer-like weights: two lobes away from 0, plus a few large ones."""
    gen = torch.Generator().manual_seed(seed)
    lobes = torch.randn(n, generator=gen) * 0.02 + 0.05 * torch.sign(torch.randn(n, generator=gen))
    return torch.cat([lobes, torch.tensor([0.4, -0.35, 0.5])])


def _check_partition(values: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> None:
    assert centroids.dtype == torch.float64 and labels.dtype == torch.int64
    assert labels.shape == values.shape
    assert bool((centroids[1:] > centroids[:-1]).all())  # sorted and distinct
    assert torch.equal(torch.bincount(labels, minlength=len(centroids)) > 0,
                       torch.ones(len(centroids), dtype=torch.bool))  # every centroid used
    assert torch.equal(labels, assign(values.double(), centroids))  # nearest centroid


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("k", [2, 16, 64])
def test_each_init_gives_k_distinct_centroids_on_spread_data(init: str, k: int) -> None:
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(k)) * 2 - 1
    start = init_centroids(values, k, init, seed=1)
    assert len(start) == k and len(torch.unique(start)) == k
    assert bool((start[1:] > start[:-1]).all())
    centroids, labels = kmeans_1d(values, k, init, seed=1)
    assert len(centroids) == k
    _check_partition(values, centroids, labels)


def test_inits_are_what_deep_compression_describes() -> None:
    values = _mixture()
    linear = init_centroids(values, 5, "linear")
    assert torch.allclose(linear, torch.linspace(float(values.min()), float(values.max()), 5,
                                                 dtype=torch.float64))
    density = init_centroids(values, 4, "density")
    cdf = torch.tensor([float((values.double() <= c).float().mean()) for c in density])
    assert torch.allclose(cdf, torch.tensor([0.125, 0.375, 0.625, 0.875]), atol=1e-3)
    forgy = init_centroids(values, 8, "random", seed=3)
    assert bool(torch.isin(forgy, values.double()).all())  # drawn from the data


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("k", [4, 32])
def test_lloyd_never_increases_the_sum_of_squares(init: str, k: int) -> None:
    values = _mixture(3000, seed=k)
    sse = []
    for iters in [*range(12), 20, 50, 100, 1000]:
        centroids, labels = kmeans_1d(values, k, init, iters=iters, seed=2)
        sse.append(within_sse(values, centroids, labels))
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(sse)), sse
    assert sse[-1] < sse[0]


def test_empty_clusters_are_reseeded_without_raising_the_sum_of_squares() -> None:
    # A big gap: linear init puts most centroids where there is no data.
    gen = torch.Generator().manual_seed(4)
    values = torch.cat([torch.randn(500, generator=gen) * 0.01, torch.tensor([10.0, 10.5])])
    sse = []
    for iters in range(30):
        centroids, labels = kmeans_1d(values, 16, "linear", iters=iters)
        sse.append(within_sse(values, centroids, labels))
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(sse)), sse
    centroids, labels = kmeans_1d(values, 16, "linear")
    assert len(centroids) == 16  # every cluster in use again
    _check_partition(values, centroids, labels)


def test_converged_centroids_are_the_means_of_their_clusters() -> None:
    values = _mixture(2000, seed=9).double()
    centroids, labels = kmeans_1d(values, 8, "density")
    means = torch.bincount(labels, weights=values) / torch.bincount(labels)
    assert torch.allclose(centroids, means, rtol=0, atol=1e-12)


_arrays = st.lists(st.floats(-1000.0, 1000.0, allow_nan=False, width=32), min_size=1,
                   max_size=300)


@settings(max_examples=150, deadline=None)
@given(values=_arrays, k=st.integers(1, 12), init=st.sampled_from(INITS))
def test_optimal_is_never_worse_than_lloyd(values: list[float], k: int, init: str) -> None:
    data = np.asarray(values, dtype=np.float32)
    opt_c, opt_l = kmeans_1d_optimal(data, k)
    lloyd_c, lloyd_l = kmeans_1d(data, k, init, seed=0)
    assert len(opt_c) <= k and len(lloyd_c) <= k
    opt = within_sse(data, opt_c, opt_l)
    lloyd = within_sse(data, lloyd_c, lloyd_l)
    assert opt <= lloyd * (1 + 1e-9) + 1e-9
    _check_partition(torch.from_numpy(data), opt_c, opt_l)


def test_optimal_on_a_known_example() -> None:
    centroids, labels = kmeans_1d_optimal([1.0, 2.0, 3.0, 4.0, 100.0, 101.0, 102.0, 103.0], 2)
    assert centroids.tolist() == [2.5, 101.5]
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_deterministic_with_a_seed() -> None:
    values = _mixture(4000, seed=1)
    for init in INITS:
        a = kmeans_1d(values, 16, init, seed=7)
        b = kmeans_1d(values, 16, init, seed=7)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(init_centroids(values, 16, "random", seed=7),
                           init_centroids(values, 16, "random", seed=8))
    a, b = kmeans_1d_optimal(values, 16), kmeans_1d_optimal(values, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("cluster", [kmeans_1d, kmeans_1d_optimal])
def test_k_at_least_the_number_of_distinct_values(cluster) -> None:
    values = torch.tensor([0.5, -0.25, 0.5, 0.125, -0.25, 0.5])
    for k in (3, 4, 256):
        centroids, labels = cluster(values, k)
        assert centroids.tolist() == [-0.25, 0.125, 0.5]
        assert torch.equal(centroids[labels].float(), values)  # lossless
    centroids, labels = cluster(torch.full((10,), 0.3), 4)  # constant input
    assert centroids.tolist() == [pytest.approx(0.3)] and labels.tolist() == [0] * 10
    centroids, labels = cluster(torch.tensor([2.0]), 1)
    assert centroids.tolist() == [2.0] and labels.tolist() == [0]


@pytest.mark.parametrize("cluster", [kmeans_1d, kmeans_1d_optimal])
def test_one_cluster_is_the_mean(cluster) -> None:
    values = _mixture(100).double()
    centroids, labels = cluster(values, 1)
    assert centroids.tolist() == [pytest.approx(float(values.mean()), rel=1e-12)]
    assert bool((labels == 0).all())


def test_accepts_numpy_and_tensors_alike() -> None:
    values = _mixture(500)
    a = kmeans_1d(values, 8)
    b = kmeans_1d(values.numpy(), 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="1-D"):
        kmeans_1d(torch.zeros(3, 3), 2)
    with pytest.raises(ValueError, match="empty"):
        kmeans_1d(torch.zeros(0), 2)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d_optimal([1.0, float("nan")], 2)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            kmeans_1d([1.0, 2.0], k)
    with pytest.raises(ValueError, match="init"):
        kmeans_1d([1.0, 2.0, 3.0], 2, init="kmeans++")
    with pytest.raises(ValueError, match="iters"):
        kmeans_1d([1.0, 2.0, 3.0], 2, iters=-1)
    with pytest.raises(ValueError, match="at most 255"):
        kmeans_1d_optimal(torch.arange(300.0), 256)


def test_optimal_centroids_stay_distinct_for_nearly_equal_values() -> None:
    """Found by hypothesis: tiny values whose cluster means collide in float32."""
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1.5, 0.5, 1e-12, 6.377492600981376e-38,
              -3.2595803601213678e-24, -3.2595803601213678e-24]
    data = np.asarray(values, dtype=np.float32)
    centroids, labels = kmeans_1d_optimal(data, 12)
    assert bool((centroids[1:] > centroids[:-1]).all())
    _check_partition(torch.from_numpy(data), centroids, labels)
