"""k-means clustering of 1-D values (weight sharing), as plain functions on tensors/arrays.

- ``kmeans_1d``: Lloyd's algorithm. In one dimension the clusters of sorted centroids are
  intervals split at the midpoints between neighbours, so an assignment is one
  ``torch.bucketize`` / ``searchsorted`` and a round of Lloyd costs O(k log n) on the sorted
  values. Initializations compared by
  Han et al. 2016 (Deep Compression, Sec. 3.1): ``linear`` (evenly spaced over [min, max],
  their best: it keeps centroids for the few large weights), ``density`` (evenly spaced
  quantiles of the CDF), ``random`` (Forgy: k distinct values drawn from the data).
- ``kmeans_1d_optimal``: the exact minimum of the within-cluster sum of squares by dynamic
  programming (Wang & Song 2011, the ``ckmeans`` package).

Both return ``(centroids, labels)``: distinct centroids sorted ascending (float64), every one
used by some value, and the index of each value's centroid (int64). When the data has at most
k distinct values, those values are the centroids. An empty cluster in Lloyd's algorithm is
re-seeded at the distinct value farthest from its centroid (largest squared error), which
never raises the sum of squares and involves no randomness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "CKMEANS_MAX_K",
    "INITS",
    "assign",
    "init_centroids",
    "kmeans_1d",
    "kmeans_1d_optimal",
    "within_sse",
]

INITS = ("linear", "density", "random")
CKMEANS_MAX_K = 255  # the ckmeans package's limit on the number of clusters


def _values_1d(values: Any) -> torch.Tensor:
    """A float64 1-D tensor of finite values (from a tensor, array or sequence)."""
    if isinstance(values, torch.Tensor):
        t = values.detach().to(device="cpu", dtype=torch.float64)
    else:
        t = torch.from_numpy(np.asarray(values, dtype=np.float64))
    if t.ndim != 1:
        raise ValueError(f"expected 1-D values, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError("cannot cluster an empty set of values")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("cannot cluster values that include NaN or infinity")
    return t.contiguous()


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return k


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``centroids`` for each value (a value exactly
    half-way goes to the lower one)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)


def within_sse(values: Any, centroids: Any, labels: Any) -> float:
    """Within-cluster sum of squares: sum of (value - centroid of its label)^2, in float64."""
    v = _values_1d(values)
    c = torch.as_tensor(centroids, dtype=torch.float64)
    lab = torch.as_tensor(labels, dtype=torch.int64)
    return float(((v - c[lab]) ** 2).sum())


def init_centroids(values: Any, k: int, init: str = "linear", seed: int = 0) -> torch.Tensor:
    """k initial centroids, sorted: ``linear`` over [min, max], ``density`` at the CDF levels
    (i + 1/2) / k, or ``random`` (k distinct data values drawn with ``seed``)."""
    v = _values_1d(values)
    k = _check_k(k)
    if init == "linear":
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    if init == "density":
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(v, levels)
    if init == "random":
        distinct = torch.unique(v)
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(distinct.numel(), generator=gen)[:k]
        return distinct[pick].sort().values
    raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def _each_distinct(distinct: torch.Tensor, inverse: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    return distinct, inverse.to(torch.int64)


def _drop_unused(centroids: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove centroids that no value uses and renumber the labels (order kept)."""
    used = torch.bincount(labels, minlength=centroids.numel()) > 0
    if bool(used.all()):
        return centroids, labels
    new_index = torch.cumsum(used.to(torch.int64), 0) - 1
    return centroids[used], new_index[labels]


def _cluster_edges(sorted_values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Where each cluster starts and ends in ``sorted_values`` (k + 1 indices), with the
    same tie rule as ``assign``: cluster j holds midpoint[j-1] < x <= midpoint[j]."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    inner = torch.searchsorted(sorted_values, midpoints, right=True)
    n = torch.tensor([sorted_values.numel()])
    return torch.cat([torch.zeros(1, dtype=torch.int64), inner, n])


def _update(prefix: torch.Tensor, edges: torch.Tensor, centroids: torch.Tensor,
            distinct: torch.Tensor) -> torch.Tensor:
    """New sorted centroids: the mean of each cluster (from prefix sums of the sorted values);
    each empty cluster re-seeded at one of the distinct values farthest from their current
    centroids."""
    counts = edges[1:] - edges[:-1]
    sums = prefix[edges[1:]] - prefix[edges[:-1]]
    empty = counts == 0
    new = torch.where(empty, centroids, sums / counts.clamp(min=1))
    n_empty = int(empty.sum())
    if n_empty:  # rare, so the O(n) search for far values is affordable
        error = (distinct - centroids[assign(distinct, centroids)]) ** 2
        order = torch.sort(error, descending=True, stable=True).indices
        far = order[error[order] > 0][:n_empty]  # values that sit on a centroid do not help
        slots = torch.nonzero(empty).flatten()[:far.numel()]
        new[slots] = distinct[far]
    return new.sort().values


def kmeans_1d(values: Any, k: int, init: str = "linear", iters: int = 1000,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on 1-D ``values`` with ``k`` clusters: at most ``iters`` rounds of
    (centroids <- cluster means, values <- nearest centroid), stopping early once no value
    changes cluster. ``iters=0`` gives the initial centroids and their assignment. The sum of
    squares never rises from one round to the next. ``seed`` only matters for ``random``.
    Returns (sorted distinct centroids, float64; labels, int64).

    The values are sorted once; a cluster is then a slice of them, found by a binary search
    per centroid, and its sum a difference of prefix sums, so a round costs O(k log n)
    however many values there are (Lloyd can need hundreds of rounds in 1-D)."""
    v = _values_1d(values)
    k = _check_k(k)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    distinct, inverse = torch.unique(v, return_inverse=True)
    if distinct.numel() <= k:
        return distinct, inverse.to(torch.int64)
    sorted_values = v.sort().values
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(sorted_values, 0)])
    centroids = init_centroids(v, k, init, seed)
    edges = _cluster_edges(sorted_values, centroids)
    for _ in range(iters):
        centroids = _update(prefix, edges, centroids, distinct)
        new_edges = _cluster_edges(sorted_values, centroids)
        if torch.equal(new_edges, edges):
            break
        edges = new_edges
    return _drop_unused(centroids, assign(v, centroids))


def kmeans_1d_optimal(values: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The clustering of 1-D ``values`` into at most ``k`` clusters with the least
    within-cluster sum of squares (exact, by dynamic programming: ``ckmeans``; k <= 255).
    Returns (sorted distinct centroids, float64; labels, int64)."""
    import ckmeans

    v = _values_1d(values)
    k = _check_k(k)
    distinct, inverse = torch.unique(v, return_inverse=True)
    if distinct.numel() <= k:
        return distinct, inverse.to(torch.int64)
    if k > CKMEANS_MAX_K:
        raise ValueError(f"optimal 1-D k-means handles at most {CKMEANS_MAX_K} clusters, got "
                         f"k={k}; use Lloyd's algorithm (kmeans_1d) for more")
    clusters = ckmeans.ckmeans(v.numpy(), k)
    # Means in float64, and distinct: two clusters of (nearly) equal values can round to the
    # same mean; one centroid serves both at the same sum of squares.
    centroids = torch.unique(torch.tensor([float(np.mean(np.asarray(c, dtype=np.float64)))
                                           for c in clusters], dtype=torch.float64))
    # Each value of an optimal partition is nearest to its own cluster's mean; assigning by
    # nearest mean keeps that partition (and could only lower the sum of squares).
    return _drop_unused(centroids, assign(v, centroids))
