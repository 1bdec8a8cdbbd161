"""Technique ``weightless``: a pruned layer's kept weights clustered and stored in a Bloomier
filter, after Reagen et al., "Weightless: lossy weight encoding for deep neural network
compression" (ICML 2018).

The kept (non-zero) weights of each chosen layer are clustered by k-means into 2^bits shared
values; the map position -> cluster is then stored in a Bloomier filter
(``modelzip.codec.bloomier``) instead of a sparse index and values. A query of a pruned
position can return a valid cluster (a false positive, about 2^bits / 2^cell_bits of them):
that weight then takes the cluster's value. The weight is set to exactly what the filter
decodes to, false positives included, and with ``finetune`` the shared values are retrained
with every position's cluster fixed, which makes the network tolerate the false positives.
``cell_bits`` and ``cells_per_weight`` trade the filter's bytes against false positives and
against the chance that the filter cannot be built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.codec.bloomier import (
    MAX_CELL_BITS,
    MAX_SEED,
    FilterSizeError,
    bloomier_weights,
    build_bloomier,
    query_bloomier,
)
from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_integer
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.quant.grid import set_grid_hint
from modelzip.quant.kmeans import kmeans_1d
from modelzip.quant.targets import (
    check_layer_bits,
    kept_masks,
    layer_of,
    normalise_layers,
    plan_bits,
    quantizable_weights,
    train_shared_values,
)
from modelzip.registry import Context, register_technique

__all__ = ["WeightlessConfig", "weightless"]

DEFAULT_BITS = 3
MIN_BITS, MAX_BITS = 1, 8
MIN_LOAD = 1.0
# Small filters need room beyond the asymptotic 1.23 per key to peel (XOR filters add 32).
SLACK_CELLS = 32


@dataclass(frozen=True)
class WeightlessConfig:
    """Weightless: k-means clusters of the kept weights, the cluster map in a Bloomier filter.

    - ``bits``: 2^bits clusters per layer, 1..8 (default 3); one number or a mapping layer
      (name or pattern) -> bits that names the layers;
    - ``cell_bits``: the filter's cell width, 1..16 (default 8), above ``bits`` (values
      1..2^bits must fit): each more bit halves the false positives and costs a bit per
      cell;
    - ``cells_per_weight``: the filter's size in cells per kept weight (default 1.25; the
      peeling construction needs about 1.23); the table has ``cells_per_weight`` x kept
      + 32 cells, rounded up to a multiple of 3;
    - ``seed``: the filter's hash seed (layer i of the plan uses seed + i);
    - ``finetune``: retraining of the shared values with the false positives in place
      (every position's cluster fixed); None: no retraining;
    - ``layers``: which layers (a ``LayerSelector``; default every Linear, Conv and
      Embedding weight)."""

    bits: int | dict[str, int] | None = None
    cell_bits: int = 8
    cells_per_weight: float = 1.25
    seed: int = 0
    finetune: FinetuneConfig | None = None
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "weightless"
        check_integer(self.cell_bits, 1, MAX_CELL_BITS, name, "cell_bits")
        bits_given = self.bits if self.bits is not None else DEFAULT_BITS
        for layer, bits in check_layer_bits(bits_given, MIN_BITS, MAX_BITS, name):
            where = f" of layer {layer!r}" if layer else ""
            if bits >= self.cell_bits:
                raise ConfigError(f"{name}: bits{where} = {bits} needs cells of at least "
                                  f"{bits + 1} bits (cluster numbers 1..{2**bits}), got "
                                  f"cell_bits = {self.cell_bits}")
        if isinstance(self.cells_per_weight, bool) \
                or not isinstance(self.cells_per_weight, int | float) \
                or not math.isfinite(self.cells_per_weight) \
                or self.cells_per_weight < MIN_LOAD:
            raise ConfigError(f"{name}: cells_per_weight must be a number >= {MIN_LOAD} "
                              f"(about 1.23 is needed), got {self.cells_per_weight!r}")
        check_integer(self.seed, 0, MAX_SEED, name, "seed")
        normalise_layers(self, name)


@dataclass
class _Filtered:
    table: np.ndarray  # int64 cells
    seed: int
    cell_bits: int
    codebook: np.ndarray  # float32 cluster values (non-zero)
    labels: np.ndarray  # int64, the weight's shape: the query value (0: zero)

    def values(self) -> np.ndarray:
        return bloomier_weights(self.table, self.labels.size, self.seed, self.cell_bits,
                                self.codebook).reshape(self.labels.shape)


def _nonzero(centroids: np.ndarray) -> np.ndarray:
    # a shared value of exactly 0 would read as pruned; take the smallest normal instead
    tiny = np.finfo(np.float32).tiny
    return np.where(centroids == 0, tiny, centroids).astype(np.float32)


def _filter(param: str, w: np.ndarray, keep: np.ndarray, bits: int, config: WeightlessConfig,
            seed: int) -> _Filtered:
    positions = np.flatnonzero(keep)
    centroids, labels = kmeans_1d(torch.from_numpy(w[keep].astype(np.float64)), 2**bits)
    book = _nonzero(centroids.to(torch.float32).numpy())
    cells = 3 * math.ceil((config.cells_per_weight * positions.size + SLACK_CELLS) / 3)
    try:
        table = build_bloomier(positions, labels.numpy() + 1, cells, config.cell_bits, seed)
    except FilterSizeError as exc:
        raise FilterSizeError(f"weightless: layer {layer_of(param) or param}: {exc}; raise "
                              "cells_per_weight") from None
    queried = query_bloomier(table, w.size, seed, config.cell_bits)
    queried[queried > book.size] = 0
    return _Filtered(table, seed, config.cell_bits, book, queried.reshape(w.shape))


class _FilteredWeight(nn.Module):
    """Parametrization: the weight is the shared value of the cluster its position queries
    to (0: zero); the shared values train, the map (false positives included) is fixed."""

    def __init__(self, f: _Filtered) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.from_numpy(f.codebook.copy()))
        self.register_buffer("labels", torch.from_numpy(np.maximum(f.labels - 1, 0)))
        self.register_buffer("keep", torch.from_numpy(f.labels > 0))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, self.codebook[self.labels], 0.0)


@register_technique("weightless", WeightlessConfig, kind="quantize")
def weightless(model: nn.Module, config: WeightlessConfig, ctx: Context) -> nn.Module:
    """Weightless: cluster the kept weights, store position -> cluster in a Bloomier filter.

    Each chosen layer's kept weights are clustered into 2^bits values and mapped through a
    Bloomier filter whose false positives become weights too; ``finetune`` retrains the
    shared values with them in place."""
    name = "weightless"
    tune = resolve_finetune(config.finetune, None, ctx.finetune) \
        if config.finetune is not None else None
    if tune is not None:
        ctx.require("train_data", "weightless (retraining)")
    plan = plan_bits(model, name, config.bits, config.layers, lambda _: DEFAULT_BITS)
    masks = kept_masks(model, list(plan), ctx)
    weights = quantizable_weights(model)
    modules = dict(model.named_modules())
    filtered: dict[str, _Filtered] = {}
    kept: dict[str, int] = {}
    for i, (p, bits) in enumerate(plan.items()):
        assert bits is not None
        keep = masks[p].cpu().numpy()
        kept[p] = int(keep.sum())
        if not kept[p]:
            ctx.log(f"{name}: {layer_of(p)} has no kept weight; left as it is")
            continue
        w = weights[p].detach().to(torch.float32).cpu().numpy()
        filtered[p] = _filter(p, w, keep, bits, config, (config.seed + i) % (MAX_SEED + 1))
    for p, f in filtered.items():  # only once every filter is built: nothing half-done
        with torch.no_grad():
            weights[p].copy_(torch.from_numpy(f.values()))
    record: dict[str, Any] = {"step": name, "cell_bits": config.cell_bits,
                              "cells_per_weight": config.cells_per_weight,
                              "finetune_epochs": tune.epochs if tune is not None else 0}
    if tune is not None and filtered:
        shared = {p: _FilteredWeight(f) for p, f in filtered.items()}
        hist = train_shared_values(model, shared, ctx, tune, ctx.train_data,
                                   "weightless (retraining)")
        for p, s in shared.items():
            filtered[p].codebook = _nonzero(s.codebook.detach().to(torch.float32).numpy())
            with torch.no_grad():  # the decoder's own arithmetic, bit for bit
                weights[p].copy_(torch.from_numpy(filtered[p].values()))
        record.update(train=tune.to_dict(), wall_time_s=round(hist.wall_time_s, 2))
    layers = []
    for p, f in filtered.items():
        set_grid_hint(modules[layer_of(p)], "weight",
                      {"kind": "bloomier", "table": f.table, "cell_bits": f.cell_bits,
                       "seed": f.seed, "codebook": f.codebook})
        nonzero = f.labels > 0
        ctx.masks[p] = torch.from_numpy(nonzero).to(weights[p].device)
        pruned = f.labels.size - kept[p]
        false_positives = int(nonzero.sum()) - kept[p]
        layers.append({
            "layer": layer_of(p) or p, "param": p, "params": int(f.labels.size),
            "bits": plan[p], "clusters": int(f.codebook.size), "kept": kept[p],
            "cells": int(f.table.size), "table_bits": int(f.table.size) * f.cell_bits,
            "false_positives": false_positives,
            "false_positive_rate": false_positives / pruned if pruned else 0.0})
    record["layers"] = layers
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        per = ", ".join(f"{r['layer']} {r['cells']} cells, {r['false_positives']} false "
                        "positives" for r in layers)
        ctx.log(f"{name}: {per}")
    return model
