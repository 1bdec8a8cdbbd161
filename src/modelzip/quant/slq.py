"""Techniques ``slq`` and ``mlq``: single- and multiple-level network quantization (Xu, Wang,
Cheng, Chen, Zhou & Zha 2018), incremental weight sharing by clustering.

SLQ, per round and in every chosen layer at once: cluster the layer's float (not yet fixed)
kept weights into the shared values it has left, rank the clusters by their quantization
loss (the summed squared distance of their weights to the centroid), fix the weights of the
low-loss part (``portion`` of the clusters, at least one) to their centroids, and retrain the
rest so that they make up for it. The last round fixes every cluster that is left, so each
layer ends with at most 2^bits shared values (pruned weights stay exactly 0.0).

MLQ goes incrementally across layers as well as within a layer's width (its clusters): the
layers are quantized one after another, each by SLQ's rounds, and every retraining trains all
weights not fixed yet, the later layers' included, which compensate the earlier ones' loss.
The paper uses it for 2-3 bits, where quantizing every layer at once loses too much.

Both leave plain float32 weights holding exactly the shared values, which the .mzip encoder
stores as a codebook, as it does after ``kmeans``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_choice, check_integer
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.prune.masks import MaskKeeper
from modelzip.quant.grid import clear_grid_hint, grid_hint, set_grid_hint
from modelzip.quant.kmeans import INITS, kmeans_1d
from modelzip.quant.targets import (
    check_layer_bits,
    kept_masks,
    layer_of,
    normalise_layers,
    plan_bits,
    quantizable_weights,
)
from modelzip.quant.uniform import affine_params, dequantize, quantize
from modelzip.registry import Context, register_technique

__all__ = ["MLQConfig", "SLQConfig", "cluster_losses", "mlq", "partition_clusters", "slq"]

MIN_BITS, MAX_BITS = 1, 8
ORDERS = ("model", "largest", "smallest")
# Retraining between rounds: a short, gentle run (the fixed weights anchor the rest).
DEFAULT_TRAIN = FinetuneConfig(epochs=1, lr=0.001)


def cluster_losses(values: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor
                   ) -> torch.Tensor:
    """Each cluster's quantization loss: the summed squared distance of its values to its
    centroid (float64, one per centroid)."""
    err = (values.double() - centroids.double()[labels]).pow(2)
    return torch.zeros(centroids.numel(), dtype=torch.float64).index_add_(0, labels, err)


def partition_clusters(losses: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` clusters with the lowest loss (ties: the lower index), as a bool mask:
    the group fixed to its centroids in this round."""
    order = sorted(range(losses.numel()), key=lambda i: (float(losses[i]), i))
    chosen = torch.zeros(losses.numel(), dtype=torch.bool)
    chosen[order[:count]] = True
    return chosen


def _check_common(config: Any, name: str) -> None:
    check_layer_bits(config.bits, MIN_BITS, MAX_BITS, name)
    p = config.portion
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
        raise ConfigError(f"{name}: portion (the share of the clusters left that each round "
                          f"fixes) must be in (0, 1], got {p!r}")
    check_choice(config.init, INITS, name, "init")
    if config.bias_bits is not None:
        check_integer(config.bias_bits, MIN_BITS, MAX_BITS, name, "bias_bits", " (or left out)")
    if not isinstance(config.bias_grid, bool):
        raise ConfigError(f"{name}: bias_grid must be true or false, got {config.bias_grid!r}")
    if config.bias_grid and config.bias_bits is None:
        raise ConfigError(f"{name}: bias_grid needs bias_bits (the grid's 2^bias_bits levels)")
    normalise_layers(config, name)


@dataclass(frozen=True)
class SLQConfig:
    """Single-level quantization: every chosen layer's weights fixed to shared values in
    rounds, the low-loss clusters first, with retraining of the rest between rounds.

    - ``bits``: 2^bits shared values per layer (1..8; one number or a mapping layer -> bits
      that names the layers; default 4);
    - ``portion``: the share of the clusters still open that a round fixes (default 0.5: half,
      then half of the rest, ...; 1 fixes all at once, which is plain k-means);
    - ``finetune``: the retraining after each round but the last (default 1 epoch at lr
      0.001; ``{epochs: 0}``: none);
    - ``init``: k-means initialisation (linear | density | random);
    - ``bias_bits``: also share each chosen layer's non-zero biases, at the end, among
      2^bias_bits values (1..8; default None: biases stay float). A small model's biases
      are a large part of its file;
    - ``bias_grid``: the biases' shared values are an affine grid of 2^bias_bits levels over
      [min(b, 0), max(b, 0)] per layer instead of k-means centroids: the file then stores a
      scale and a zero point instead of a codebook of floats (on a small model that is most
      of a bias's bytes); a bias within half a step of 0 becomes 0;
    - ``layers``: which layers (default every Linear, Conv and Embedding weight)."""

    bits: int | dict[str, int] | None = 4
    portion: float = 0.5
    finetune: FinetuneConfig | None = None
    init: str = "linear"
    bias_bits: int | None = None
    bias_grid: bool = False
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        _check_common(self, "slq")


@dataclass(frozen=True)
class MLQConfig:
    """Multiple-level quantization: layer after layer (``order``), each in SLQ's rounds; every
    retraining trains all weights not fixed yet, later layers' included.

    - ``bits``: 2^bits shared values per layer (1..8, the paper's MLQ is for 2-3; default 3);
    - ``portion``, ``finetune``, ``init``, ``bias_bits``, ``bias_grid``, ``layers``: as for
      ``slq``;
    - ``order``: model (the model's order) | largest (most kept weights first: the layers
      that can absorb most) | smallest."""

    bits: int | dict[str, int] | None = 3
    portion: float = 0.5
    finetune: FinetuneConfig | None = None
    init: str = "linear"
    bias_bits: int | None = None
    bias_grid: bool = False
    order: str = "model"
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        _check_common(self, "mlq")
        check_choice(self.order, ORDERS, "mlq", "order")


class _Hold:
    """Keeps fixed weights at their shared values and pruned ones at 0.0 during training:
    their gradients are zeroed (no optimizer state builds up) and their values rewritten
    after every step."""

    def __init__(self, weights: dict[str, nn.Parameter]) -> None:
        self.weights = weights
        self.frozen = {p: torch.zeros_like(w, dtype=torch.bool) for p, w in weights.items()}
        self.values = {p: torch.zeros_like(w) for p, w in weights.items()}
        self._handles: list[Any] = []

    def fix(self, p: str, where: torch.Tensor, values: torch.Tensor) -> None:
        self.frozen[p] = self.frozen[p] | where
        self.values[p] = torch.where(where, values, self.values[p])
        self(None, 0)

    @torch.no_grad()
    def __call__(self, model: nn.Module | None, step: int) -> None:
        for p, w in self.weights.items():
            w.copy_(torch.where(self.frozen[p], self.values[p], w))

    def __enter__(self) -> _Hold:
        for p, w in self.weights.items():
            self._handles.append(w.register_hook(
                lambda g, p=p: g.masked_fill(self.frozen[p], 0.0)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class _Layer:
    param: str
    k: int  # shared values allowed
    open_k: int  # shared values not used yet
    centroids: list[float]  # fixed so far


def _round(layer: _Layer, w: torch.Tensor, float_mask: torch.Tensor, portion: float,
           init: str, hold: _Hold) -> int:
    """One round on one layer: cluster its float weights, fix the low-loss clusters; returns
    how many clusters it fixed."""
    values = w.detach()[float_mask]
    k = min(layer.open_k, int(values.numel()))
    centroids, labels = kmeans_1d(values, k, init)
    k = centroids.numel()
    last = layer.open_k <= 1 or portion >= 1 or math.ceil(portion * layer.open_k) >= k
    count = k if last else max(1, math.ceil(portion * layer.open_k))
    chosen = partition_clusters(cluster_losses(values, centroids, labels), count)
    shared = centroids.to(w.dtype)
    # a centroid of exactly 0 would make kept weights look pruned (as in kmeans)
    tiny = torch.finfo(w.dtype).tiny
    shared = torch.where(shared == 0, torch.where(centroids < 0, -tiny, tiny), shared)
    fixed_values = torch.where(chosen[labels], shared[labels], values.to(w.dtype))
    where = torch.zeros_like(float_mask)
    where[float_mask] = chosen[labels]
    full = torch.zeros_like(w.detach())
    full[float_mask] = fixed_values
    hold.fix(layer.param, where, full)
    layer.centroids += [float(c) for c in shared[chosen]]
    layer.open_k -= int(chosen.sum()) if not last else layer.open_k
    return int(chosen.sum())


@torch.no_grad()
def _share_biases(modules: list[nn.Module], bits: int, init: str, grid: bool
                  ) -> dict[int, int]:
    """Each module's non-zero biases shared among at most 2^bits values: k-means centroids
    (zeros stay 0.0, non-zeros stay non-zero) or, with ``grid``, an affine grid per module
    whose hint tells the encoder to store its scale and zero point. Returns module index ->
    distinct non-zero biases afterwards."""
    out = {}
    for i, module in enumerate(modules):
        bias = getattr(module, "bias", None)
        if not isinstance(bias, torch.Tensor) or not bool((bias != 0).any()):
            continue
        kept = bias != 0
        if grid:
            params = affine_params(bias[kept], bits)
            bias.copy_(torch.where(kept, dequantize(quantize(bias, params), params,
                                                    bias.dtype), 0.0))
            set_grid_hint(module, "bias", grid_hint(params, bits))
        else:
            centroids, labels = kmeans_1d(bias[kept], min(2**bits, int(kept.sum())), init)
            shared = centroids.to(bias.dtype)
            tiny = torch.finfo(bias.dtype).tiny
            shared = torch.where(shared == 0, torch.where(centroids < 0, -tiny, tiny), shared)
            bias[kept] = shared[labels]
            clear_grid_hint(module, "bias")
        out[i] = int(torch.unique(bias[bias != 0]).numel())
    return out


def _incremental(model: nn.Module, name: str, config: Any, levels: list[list[str]],
                 ctx: Context) -> nn.Module:
    """Quantize ``levels`` (lists of weight names) one after another, each in rounds."""
    tune = resolve_finetune(config.finetune, DEFAULT_TRAIN, ctx.finetune)
    if tune is not None and config.portion < 1:  # portion 1: one round, nothing to retrain
        ctx.require("train_data", f"{name} (retraining)")
    plan = plan_bits(model, name, config.bits, config.layers, lambda m: 4)
    masks = kept_masks(model, list(plan), ctx)
    weights = quantizable_weights(model)
    modules = dict(model.named_modules())
    layers = {p: _Layer(p, 2**plan[p], 2**plan[p], []) for p in plan if bool(masks[p].any())}
    hold = _Hold({p: weights[p] for p in layers})
    rounds: list[dict[str, Any]] = []
    others = {p: m for p, m in ctx.masks.items() if p not in layers}
    for level in levels:
        level = [p for p in level if p in layers]
        while any(layers[p].open_k > 0 for p in level):
            fixed = {}
            for p in level:
                if layers[p].open_k > 0:
                    float_mask = masks[p] & ~hold.frozen[p]
                    if not bool(float_mask.any()):
                        layers[p].open_k = 0
                        continue
                    fixed[layer_of(p)] = _round(layers[p], weights[p], float_mask,
                                                config.portion, config.init, hold)
            open_left = sum(int((masks[p] & ~hold.frozen[p]).sum()) for p in layers)
            entry: dict[str, Any] = {"fixed_clusters": fixed, "float_weights_left": open_left}
            if tune is not None and open_left:
                with hold, MaskKeeper(model, {**others, **{p: masks[p] for p in layers}}
                                      ) as keeper:
                    ctx.train(model, tune, step_callbacks=[keeper, hold],
                              technique=f"{name} (retraining)")
                if ctx.val_data is not None:
                    entry["val_error_pct"] = ctx.val_error(model)
            rounds.append(entry)
            if ctx.progress:
                ctx.log(f"{name}: round {len(rounds)}: fixed {fixed}, {open_left:,} float "
                        "weights left")
    for p in layers:
        clear_grid_hint(modules[layer_of(p)], "weight")
    biases = _share_biases([modules[layer_of(p)] for p in plan], config.bias_bits,
                           config.init, config.bias_grid) \
        if config.bias_bits is not None else {}
    per_layer = []
    for p, layer in layers.items():
        w = weights[p].detach()
        per_layer.append({"layer": layer_of(p), "param": p, "bits": plan[p], "k": layer.k,
                          "kept": int(masks[p].sum()),
                          "distinct_nonzero": int(torch.unique(w[w != 0]).numel())})
    record: dict[str, Any] = {"step": name, "portion": config.portion,
                              "finetune_epochs": tune.epochs if tune is not None else 0,
                              "rounds": rounds, "layers": per_layer,
                              "bias_values": {layer_of(p): biases[i]
                                              for i, p in enumerate(plan) if i in biases}}
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    return model


@register_technique("slq", SLQConfig, kind="quantize")
def slq(model: nn.Module, config: SLQConfig, ctx: Context) -> nn.Module:
    """Single-level quantization (Xu et al. 2018): cluster, fix the low-loss clusters to
    their centroids, retrain the rest, repeat until every weight is shared.

    All chosen layers advance together; each ends with at most 2^bits shared values."""
    plan = plan_bits(model, "slq", config.bits, config.layers, lambda m: 4)
    return _incremental(model, "slq", config, [list(plan)], ctx)


@register_technique("mlq", MLQConfig, kind="quantize")
def mlq(model: nn.Module, config: MLQConfig, ctx: Context) -> nn.Module:
    """Multiple-level quantization (Xu et al. 2018): SLQ's rounds layer after layer, the
    layers not quantized yet retrained with the rest.

    For low bit widths (2-3), where quantizing all layers at once loses too much."""
    plan = plan_bits(model, "mlq", config.bits, config.layers, lambda m: 3)
    weights = quantizable_weights(model)
    order = list(plan)
    if config.order != "model":
        size = {p: int((weights[p] != 0).sum()) for p in order}
        order.sort(key=lambda p: size[p], reverse=config.order == "largest")
    return _incremental(model, "mlq", config, [[p] for p in order], ctx)
