"""Adaptive-binning estimates of the mutual information a layer's activations T hold about
the input X and the label Y (Chelombiev, Houghton & O'Donnell 2019, "Adaptive estimators
show information compression in deep neural networks").

A fixed grid of bins over an unbounded activation (ReLU, a linear pre-activation) puts
most samples into a few bins and the estimates then depend on where the grid ends. Adaptive
binning chooses the edges from the data instead, so that every bin holds the same number of
distinct observed activation levels (the binned variable then has close to maximum entropy;
without ties this is the same number of samples per bin). ReLU outputs are exactly zero for
a large share of samples: zero gets a bin of its own and the positive levels are binned
adaptively above it; activations with negative values (unbounded ones) are binned
adaptively over their whole range. Edges are shared by all units of a layer (``scope=
"layer"``, as in the paper) or set per unit (``scope="unit"``).

With T binned to integer codes, every quantity is a plug-in entropy of discrete patterns (in
bits): ``I(A;B) = H(A) + H(B) - H(A,B)``. The network is deterministic and its inputs are
distinct samples, so ``I(X;T) = H(T)`` (``x=None``); ``I(T;Y) = H(T) - H(T|Y)``. Both are
bounded by ``log2(N)`` for N samples: a wide layer whose binned patterns are all distinct
reaches the bound (``saturated``), which says the estimate, not the layer, ran out of
samples. ``unit_information`` estimates each unit on its own and averages, which does not
saturate that way and so compares wide layers.

Plain tensor functions; capturing a model's activations is ``modelzip.search.signals``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from modelzip.errors import ConfigError, check_choice

__all__ = ["DEFAULT_BINS", "Information", "adaptive_bin_edges", "binned_codes", "entropy_bits",
           "layer_information", "mutual_information_bits", "unit_information"]

DEFAULT_BINS = 30
SCOPES = ("layer", "unit")


@dataclass(frozen=True)
class Information:
    """Estimates for one layer, in bits: ``i_xt`` = I(X;T), ``i_ty`` = I(T;Y), ``h_y`` =
    H(Y) (the most I(T;Y) can be), ``max_bits`` = log2(samples) (the most any of them can
    be); ``saturated``: every sample's binned pattern is distinct (``i_xt == max_bits``)."""

    i_xt: float
    i_ty: float
    h_y: float
    max_bits: float
    samples: int
    units: int
    bins: int
    relu: bool
    saturated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_codes(values: torch.Tensor, what: str) -> torch.Tensor:
    """Discrete values as an (N, D) integer tensor (a 1-D tensor is one column)."""
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    if values.dim() == 1:
        values = values[:, None]
    if values.dim() != 2 or not len(values):
        raise ConfigError(f"{what} must be a non-empty (samples,) or (samples, units) tensor, "
                          f"got shape {tuple(values.shape)}")
    if values.is_floating_point():
        raise ConfigError(f"{what} must hold discrete codes (integers); bin continuous "
                          "activations first (binned_codes)")
    return values.long()


def entropy_bits(codes: torch.Tensor) -> float:
    """Plug-in entropy (bits) of the rows of ``codes``: each distinct row is one symbol."""
    codes = _as_codes(codes, "codes")
    _, counts = torch.unique(codes, dim=0, return_counts=True)
    p = counts.double() / len(codes)
    return max(0.0, float(-(p * p.log2()).sum()))


def mutual_information_bits(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plug-in I(A;B) = H(A) + H(B) - H(A,B) in bits, from paired discrete samples."""
    a, b = _as_codes(a, "a"), _as_codes(b, "b")
    if len(a) != len(b):
        raise ConfigError(f"paired samples needed: {len(a)} and {len(b)} rows")
    joint = torch.cat([a, b], dim=1)
    return max(0.0, entropy_bits(a) + entropy_bits(b) - entropy_bits(joint))


def _is_relu(values: torch.Tensor) -> bool:
    return bool((values >= 0).all() and (values == 0).any())


def adaptive_bin_edges(values: torch.Tensor, bins: int = DEFAULT_BINS, *,
                       relu: bool | None = None) -> torch.Tensor:
    """Inner bin edges (ascending) for ``values``: each of ``bins`` bins holds the same
    number of distinct observed levels (within one). ``relu`` (default: the values are >= 0
    with exact zeros) gives zero a bin of its own below the adaptive ones. Use with
    ``torch.bucketize(values, edges, right=True)``."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ConfigError(f"bins must be an integer >= 2, got {bins!r}")
    values = torch.as_tensor(values).reshape(-1).double()
    if not len(values) or not torch.isfinite(values).all():
        raise ConfigError("adaptive binning needs a non-empty set of finite activations")
    relu = _is_relu(values) if relu is None else relu
    levels = torch.unique(values)  # sorted
    if relu:
        levels = levels[levels > 0]
    inner = torch.empty(0, dtype=torch.float64)
    if len(levels) > 1:
        # the first level of each bin after the first: bins of len(levels) / bins levels
        starts = (torch.arange(1, bins, dtype=torch.float64) * len(levels) / bins).floor()
        inner = levels[torch.unique(starts.long().clamp(1, len(levels) - 1))]
    if relu:  # zero alone in bin 0: every positive value lies at or above the first edge
        first = levels[:1] if len(levels) else torch.tensor([1.0], dtype=torch.float64)
        inner = torch.unique(torch.cat([first, inner]))
    return inner


def binned_codes(activations: torch.Tensor, bins: int = DEFAULT_BINS, *,
                 scope: str = "layer", relu: bool | None = None) -> torch.Tensor:
    """(N, D) activations (a 4-D (N, C, H, W) map: flatten or pool it first) to (N, D)
    integer bin codes, the edges from ``adaptive_bin_edges`` over the whole layer or per
    unit (``scope``)."""
    check_choice(scope, SCOPES, "binned_codes", "scope")
    t = torch.as_tensor(activations).detach().double()
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2:
        raise ConfigError(f"activations must be (samples, units), got shape {tuple(t.shape)}")
    relu = _is_relu(t) if relu is None else relu
    if scope == "layer":
        return torch.bucketize(t.contiguous(), adaptive_bin_edges(t, bins, relu=relu), right=True)
    return torch.stack([torch.bucketize(col.contiguous(), adaptive_bin_edges(col, bins, relu=relu),
                                        right=True) for col in t.T], dim=1)


def _labels(y: torch.Tensor, n: int) -> torch.Tensor:
    y = torch.as_tensor(y).reshape(-1)
    if len(y) != n:
        raise ConfigError(f"one label per sample needed: {n} samples, {len(y)} labels")
    return y.long()


def layer_information(activations: torch.Tensor, y: torch.Tensor, *,
                      x: torch.Tensor | None = None, bins: int = DEFAULT_BINS,
                      scope: str = "layer", relu: bool | None = None) -> Information:
    """I(X;T) and I(T;Y) of one layer's (N, D) activations ``activations`` and labels ``y``.
    ``x``: discrete input ids when inputs repeat (default: every sample a distinct input, so
    I(X;T) = H(T))."""
    t = torch.as_tensor(activations).detach()
    relu = _is_relu(t) if relu is None else relu
    codes = binned_codes(t, bins, scope=scope, relu=relu)
    n = len(codes)
    labels = _labels(y, n)
    i_xt = entropy_bits(codes) if x is None else mutual_information_bits(
        _as_codes(torch.as_tensor(x).reshape(n, -1), "x"), codes)
    max_bits = math.log2(n)
    return Information(i_xt=i_xt, i_ty=mutual_information_bits(codes, labels),
                       h_y=entropy_bits(labels), max_bits=max_bits, samples=n,
                       units=codes.shape[1], bins=bins, relu=relu,
                       saturated=bool(torch.unique(codes, dim=0).shape[0] == n))


def unit_information(activations: torch.Tensor, y: torch.Tensor, *,
                     bins: int = DEFAULT_BINS, relu: bool | None = None) -> dict[str, float]:
    """Per-unit estimates averaged over a layer's units (each unit binned adaptively on its
    own): ``i_xt`` the mean H(T_i), ``i_ty`` the mean I(T_i;Y), in bits."""
    t = torch.as_tensor(activations).detach().double()
    if t.dim() == 1:
        t = t[:, None]
    labels = _labels(y, len(t))
    relu = _is_relu(t) if relu is None else relu
    i_xt, i_ty = [], []
    for col in t.T:
        codes = binned_codes(col, bins, relu=relu)
        i_xt.append(entropy_bits(codes))
        i_ty.append(mutual_information_bits(codes, labels))
    return {"i_xt": sum(i_xt) / len(i_xt), "i_ty": sum(i_ty) / len(i_ty),
            "units": len(i_xt)}
