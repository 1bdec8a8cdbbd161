"""Technique ``kmeans``: weight sharing by k-means, as in Deep Compression (Han et al. 2016).

The kept (non-zero) weights of each chosen Linear, Conv or Embedding layer are clustered into
2^bits centroids (pruned zeros are not clustered and stay exactly 0.0); every weight is
replaced by its centroid. Then the centroids can be fine-tuned: each chosen weight becomes a
parametrization ``weight = centroids[labels]`` where kept, 0 where pruned, so autograd sums
the gradients of all weights of a cluster into its centroid (Deep Compression, Fig. 3). The
cluster of every weight and the zero pattern stay fixed; biases and other parameters train as
usual. At the end the final values are written back as plain float32 weights (state_dict keys
unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_choice
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.quant.grid import clear_grid_hint
from modelzip.quant.kmeans import CKMEANS_MAX_K, INITS, kmeans_1d, kmeans_1d_optimal
from modelzip.quant.targets import (
    check_layer_bits,
    is_conv,
    kept_masks,
    layer_of,
    normalise_layers,
    plan_bits,
    quantizable_weights,
    train_shared_values,
)
from modelzip.registry import Context, register_technique
from modelzip.train import TrainConfig

__all__ = ["CONV_BITS", "EMBEDDING_BITS", "FC_BITS", "METHODS", "WeightSharingConfig",
           "default_bits", "weight_sharing"]

METHODS = ("lloyd", "optimal")
CODEBOOK_DTYPES = ("float32", "float16")  # how the file stores the shared values
CONV_BITS, FC_BITS = 8, 5  # Deep Compression's choice for AlexNet/VGG and the LeNets
# An embedding row reaches the next layer as it is, not summed with many others over a
# fan-in that averages errors out: give it the conv layers' 8 bits.
EMBEDDING_BITS = 8
MIN_BITS, MAX_BITS = 1, 8


@dataclass(frozen=True)
class WeightSharingConfig:
    """k-means weight sharing of each layer's kept weights into 2^bits shared values.

    - ``bits``: one number for all chosen layers, or a mapping layer (name or pattern) ->
      bits that names the layers; default 8 for conv and 5 for fully connected layers
      (Deep Compression), 8 for embeddings;
    - ``method``: ``lloyd`` (Lloyd's iterations from ``init``: linear | density | random,
      at most ``iters`` rounds; ``seed`` for random) or ``optimal`` (exact 1-D k-means by
      dynamic programming; at most 255 clusters, so 8 bits give 255);
    - ``finetune``: centroid fine-tuning on the context's training data (gradients of a
      cluster summed into its centroid); settings left out come from the context's
      fine-tuning. None (the default) or ``{epochs: 0}``: no fine-tuning. It wants a small
      ``lr`` (e.g. ``{epochs: 2, lr: 0.001}``);
    - ``codebook_dtype``: ``float32`` (default) or ``float16``: each shared value rounded to
      the nearest float16 (after the fine-tuning too), which the .mzip file then stores in 2
      bytes instead of 4 (a relative change below 2^-11; on a small model's file the
      codebooks are a few per cent of it);
    - ``layers``: which layers (a ``LayerSelector``: names or patterns, types, ignore;
      default every Linear, Conv and Embedding weight)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "finetune_epochs": "finetune: {epochs: N}",
        "lr": "finetune: {lr: X} (the centroid fine-tuning's learning rate)",
    }

    bits: int | dict[str, int] | None = None
    init: str = "linear"
    method: str = "lloyd"
    iters: int = 1000
    seed: int = 0
    finetune: FinetuneConfig | None = None
    codebook_dtype: str = "float32"
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "kmeans"
        check_layer_bits(self.bits, MIN_BITS, MAX_BITS, name)
        check_choice(self.init, INITS, name, "init")
        check_choice(self.method, METHODS, name, "method")
        check_choice(self.codebook_dtype, CODEBOOK_DTYPES, name, "codebook_dtype")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 0:
            raise ConfigError(f"{name}: iters must be an integer >= 0, got {self.iters!r}")
        normalise_layers(self, name)


class _SharedWeight(nn.Module):
    """Parametrization: the weight is its cluster's centroid where kept, 0.0 where pruned;
    the layer's own weight tensor is ignored (it holds the same values at the start)."""

    def __init__(self, centroids: torch.Tensor, labels: torch.Tensor,
                 keep: torch.Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.clone())
        self.register_buffer("labels", labels)
        self.register_buffer("keep", keep)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # Indexing sums the gradients of every weight of a cluster into its centroid.
        return torch.where(self.keep, self.centroids[self.labels], 0.0)


@dataclass
class _Clustered:
    centroids: torch.Tensor  # the shared values, in the weight's dtype (float32)
    labels: torch.Tensor  # int64, the weight's shape (0 where pruned)
    keep: torch.Tensor  # bool, the weight's shape


def _cluster(w: torch.Tensor, keep: torch.Tensor, k: int, config: WeightSharingConfig
             ) -> _Clustered:
    values = w.detach()[keep]
    if config.method == "optimal":
        centroids, labels = kmeans_1d_optimal(values, k)
    else:
        centroids, labels = kmeans_1d(values, k, config.init, config.iters, config.seed)
    full = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    full[keep] = labels
    return _Clustered(_stored(centroids, w.dtype, config.codebook_dtype), full, keep.clone())


def _stored(centroids: torch.Tensor, dtype: torch.dtype, codebook_dtype: str) -> torch.Tensor:
    """The shared values as the weight holds them: in ``dtype``, rounded to float16 first
    for ``codebook_dtype`` float16. A value of exactly 0 would turn kept weights into
    pruned-looking ones; it becomes the smallest normal number of its sign instead (of
    float16 when rounded so: a cluster mean of exactly 0 is rare)."""
    rounded = centroids.to(torch.float16) if codebook_dtype == "float16" else centroids
    tiny = torch.finfo(rounded.dtype if codebook_dtype == "float16" else dtype).tiny
    shared = rounded.to(dtype)
    return torch.where(shared == 0, torch.where(centroids < 0, -tiny, tiny), shared)


def _shared_values(c: _Clustered) -> torch.Tensor:
    return torch.where(c.keep, c.centroids[c.labels], 0.0)


def _layer_record(param: str, bits: int, k: int, c: _Clustered, before: torch.Tensor
                  ) -> dict[str, Any]:
    after = _shared_values(c)
    kept = int(c.keep.sum())
    err = (after.double() - before.double())[c.keep]
    return {"layer": layer_of(param) or param, "param": param, "params": before.numel(),
            "bits": bits, "k": k, "centroids": int(c.centroids.numel()), "kept": kept,
            "distinct_nonzero": int(torch.unique(after[after != 0]).numel()),
            "rmse": float(err.pow(2).mean().sqrt()) if kept else 0.0}


def _finetune(model: nn.Module, clustered: dict[str, _Clustered], cfg: TrainConfig,
              ctx: Context, codebook_dtype: str) -> dict[str, Any]:
    """Train the centroids (and every parameter that is not shared) with the clusters and
    zero patterns fixed; returns what the run did. ``clustered`` gets the final centroids."""
    train = ctx.require("train_data", "kmeans")
    shared = {p: _SharedWeight(c.centroids, c.labels, c.keep) for p, c in clustered.items()}
    hist = train_shared_values(model, shared, ctx, cfg, train, "kmeans (centroid fine-tuning)")
    moved = {}
    for p, s in shared.items():
        new = _stored(s.centroids.detach(), clustered[p].centroids.dtype, codebook_dtype)
        moved[layer_of(p) or p] = float((new - clustered[p].centroids).abs().max())
        clustered[p].centroids = new
    return {"train": cfg.to_dict(), "wall_time_s": round(hist.wall_time_s, 2),
            "centroid_max_shift": moved}


def default_bits(module: nn.Module) -> int:
    """The bits of a layer that the config does not give: 8 conv, 8 embedding, 5 otherwise."""
    if is_conv(module):
        return CONV_BITS
    return EMBEDDING_BITS if isinstance(module, nn.Embedding) else FC_BITS


@register_technique("kmeans", WeightSharingConfig, kind="quantize")
def weight_sharing(model: nn.Module, config: WeightSharingConfig, ctx: Context) -> nn.Module:
    """Deep Compression weight sharing: k-means per layer on the kept weights, centroid tuning.

    Each chosen layer's non-zero weights are clustered into 2^bits shared values; with
    ``finetune`` the shared values are then fine-tuned (clusters and zeros fixed)."""
    name = "kmeans"
    tune = resolve_finetune(config.finetune, None, ctx.finetune) \
        if config.finetune is not None else None
    if tune is not None:  # before the clustering, which takes a while
        ctx.require("train_data", "kmeans (centroid fine-tuning)")
    plan = plan_bits(model, name, config.bits, config.layers, default_bits)
    masks = kept_masks(model, list(plan), ctx)
    weights = quantizable_weights(model)
    modules = dict(model.named_modules())
    originals = {p: weights[p].detach().clone() for p in plan}
    clustered: dict[str, _Clustered] = {}
    ks: dict[str, int] = {}
    for p, bits in plan.items():
        k = 2**bits
        if config.method == "optimal" and k > CKMEANS_MAX_K:
            ctx.log(f"{name}: {layer_of(p)}: optimal k-means handles at most {CKMEANS_MAX_K} "
                    f"clusters; using {CKMEANS_MAX_K} for {bits} bits")
            k = CKMEANS_MAX_K
        ks[p] = k
        if not bool(masks[p].any()):
            ctx.log(f"{name}: {layer_of(p)} has no kept weight; nothing to share")
            continue
        clustered[p] = _cluster(weights[p], masks[p], k, config)
        with torch.no_grad():
            weights[p].copy_(_shared_values(clustered[p]))
        clear_grid_hint(modules[layer_of(p)], "weight")  # off any uniform grid now
    record: dict[str, Any] = {"step": name, "method": config.method,
                              "codebook_dtype": config.codebook_dtype,
                              "init": config.init if config.method == "lloyd" else None,
                              "iters": config.iters if config.method == "lloyd" else None,
                              "finetune_epochs": tune.epochs if tune is not None else 0}
    clustering = {p: _layer_record(p, plan[p], ks[p], c, originals[p])
                  for p, c in clustered.items()}
    if tune is not None and clustered:
        record.update(_finetune(model, clustered, tune, ctx, config.codebook_dtype))
        with torch.no_grad():  # the fine-tuned values, as stored (rounded for float16)
            for p, c in clustered.items():
                weights[p].copy_(_shared_values(c))
    layers = []
    for p, c in clustered.items():
        final = _layer_record(p, plan[p], ks[p], c, originals[p])
        final["clustering_rmse"] = clustering[p]["rmse"]
        layers.append(final)
    record["layers"] = layers
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        per = ", ".join(f"{r['layer']} {r['bits']} bits ({r['distinct_nonzero']} values)"
                        for r in layers)
        ctx.log(f"{name}: {per}")
    return model
