"""Technique ``transform-coding``: transform coding of weights as an image codec codes pixels,
after Laude, Richter & Ostermann, "Neural network compression using transform coding and
clustering" (2018).

Each chosen weight is cut into blocks (a conv weight: its k x k filters; a fully connected or
embedding weight: each row in pieces of ``block``), every block goes through an orthonormal
2-D or 1-D DCT-II, and the coefficients are quantized: uniformly (one step per layer) or by
k-means clustering (one codebook per layer). The .mzip file stores the level indices,
entropy-coded, and the step or codebook (``modelzip.codec.transform``). The weight is set to
exactly what the torch-free decoder computes from them (the inverse DCT in numpy float32), so
a packed model unpacks bit for bit.

Padding: a row whose length ``block`` does not divide is padded to the next multiple by
mirroring its tail; the decoder drops the padded positions. The DCT spreads a weight over its
block, so a pruned weight's zeros are not kept: the layer ends dense (its pruning mask is
dropped from the context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.codec.dither import dither_levels
from modelzip.codec.transform import MAX_BLOCK, forward_dct, padded_shape, reconstruct
from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_choice
from modelzip.quant.grid import set_grid_hint
from modelzip.quant.kmeans import kmeans_1d
from modelzip.quant.targets import (
    check_layer_bits,
    is_conv,
    layer_of,
    normalise_layers,
    plan_bits,
    quantizable_weights,
)
from modelzip.registry import Context, register_technique

__all__ = ["QUANTIZERS", "TransformCodingConfig", "transform_block", "transform_coding",
           "transform_quantize"]

QUANTIZERS = ("uniform", "kmeans")
DEFAULT_BITS = 6
MIN_BITS, MAX_BITS = 1, 12
MAX_KMEANS_BITS = 8


@dataclass(frozen=True)
class TransformCodingConfig:
    """DCT transform coding of each chosen layer's weight.

    - ``bits``: the coefficient quantizer's resolution: uniform: step = coefficient range /
      (2^bits - 1) (1..12); kmeans: 2^bits clusters (1..8); one number or a mapping
      layer (name or pattern) -> bits that names the layers (default 6);
    - ``block``: the block length B of a fully connected (or embedding) weight's rows, 1..64
      (default 8); a conv weight's blocks are its k x k filters (k up to 64);
    - ``quantizer``: ``uniform`` or ``kmeans`` (clustering of the coefficients);
    - ``layers``: which layers (a ``LayerSelector``; default every Linear, Conv and
      Embedding weight)."""

    bits: int | dict[str, int] | None = None
    block: int = 8
    quantizer: str = "uniform"
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "transform-coding"
        check_choice(self.quantizer, QUANTIZERS, name, "quantizer")
        top = MAX_KMEANS_BITS if self.quantizer == "kmeans" else MAX_BITS
        check_layer_bits(self.bits, MIN_BITS, top, name, f" for the {self.quantizer} quantizer")
        if isinstance(self.block, bool) or not isinstance(self.block, int) \
                or not 1 <= self.block <= MAX_BLOCK:
            raise ConfigError(f"{name}: block must be an integer from 1 to {MAX_BLOCK} (the "
                              f"DCT length of a fully connected row's pieces), got "
                              f"{self.block!r}")
        normalise_layers(self, name)


def transform_block(module: nn.Module, shape: tuple[int, ...], block: int) -> tuple[int, ...]:
    """The DCT block of a layer's weight: a conv's filter (k x k, or k for a 1-D conv), or
    ``block`` along a fully connected or embedding row. ConfigError for other shapes."""
    if is_conv(module):
        if len(shape) not in (3, 4):
            raise ConfigError(f"transform-coding: a conv weight of shape {list(shape)} has no "
                              "1-D or 2-D filter to transform (Conv1d and Conv2d only)")
        kernel = tuple(shape[2:])
        if max(kernel) > MAX_BLOCK:
            raise ConfigError(f"transform-coding: a {'x'.join(map(str, kernel))} filter is "
                              f"larger than the largest block, {MAX_BLOCK}")
        return kernel
    if len(shape) != 2:
        raise ConfigError(f"transform-coding: a weight of shape {list(shape)} is not a matrix")
    return (block,)


@dataclass
class _Coded:
    indices: np.ndarray  # int64, one per coefficient (padded_shape)
    step: np.float32
    zero_point: int
    codebook: np.ndarray | None  # float32, for the kmeans quantizer
    values: np.ndarray  # float32, the weight's shape: the decoder's output


def transform_quantize(w: np.ndarray, block: tuple[int, ...], bits: int,
                       quantizer: str = "uniform", seed: int = 0) -> _Coded:
    """The DCT coefficients of ``w``'s blocks, quantized, and the weight they decode to."""
    coefficients = forward_dct(w, block)
    flat = coefficients.ravel()
    if quantizer == "kmeans":
        centroids, labels = kmeans_1d(torch.from_numpy(flat.astype(np.float32)), 2**bits,
                                      "linear", 1000, seed)
        book = centroids.to(torch.float32).numpy()
        indices = labels.numpy().astype(np.int64).reshape(coefficients.shape)
        values = reconstruct(indices, book, tuple(w.shape), block)
        return _Coded(indices, np.float32(0), 0, book, values)
    span = float(flat.max() - flat.min())
    step = np.float32(span / (2**bits - 1) if span > 0 else max(float(np.abs(flat).max()), 1.0))
    steps = np.rint(coefficients / float(step)).astype(np.int64)
    zero_point = -int(steps.min())
    indices = steps + zero_point
    levels = dither_levels(int(indices.max()) + 1, zero_point, step)
    return _Coded(indices, step, zero_point, None, reconstruct(indices, levels,
                                                              tuple(w.shape), block))


def _hint(c: _Coded, block: tuple[int, ...]) -> dict[str, Any]:
    hint = {"kind": "transform", "block": list(block), "step": float(c.step),
            "indices": c.indices.astype(np.int32), "zero_point": c.zero_point}
    if c.codebook is not None:
        hint["levels"] = c.codebook
    return hint


@register_technique("transform-coding", TransformCodingConfig, kind="quantize")
def transform_coding(model: nn.Module, config: TransformCodingConfig, ctx: Context
                     ) -> nn.Module:
    """Transform coding: a DCT over weight blocks, then uniform or k-means coefficient levels.

    Conv filters and pieces of fully connected rows are DCT-transformed, their coefficients
    quantized; each weight becomes what the .mzip decoder rebuilds from the levels."""
    name = "transform-coding"
    plan = plan_bits(model, name, config.bits, config.layers, lambda _: DEFAULT_BITS)
    weights = quantizable_weights(model)
    modules = dict(model.named_modules())
    blocks = {p: transform_block(modules[layer_of(p)], tuple(weights[p].shape), config.block)
              for p in plan}  # every shape checked before any weight changes
    layers = []
    for p, bits in plan.items():
        assert bits is not None
        w = weights[p].detach().to(torch.float32).cpu().numpy()
        coded = transform_quantize(w, blocks[p], bits, config.quantizer)
        with torch.no_grad():
            weights[p].copy_(torch.from_numpy(coded.values))
        set_grid_hint(modules[layer_of(p)], "weight", _hint(coded, blocks[p]))
        ctx.masks.pop(p, None)  # dense now: a later fine-tuning must not re-zero it
        k = coded.indices
        zero_level = coded.zero_point if coded.codebook is None else None
        err = coded.values.astype(np.float64) - w
        layers.append({
            "layer": layer_of(p) or p, "param": p, "params": int(w.size), "bits": bits,
            "block": list(blocks[p]), "coefficients": int(k.size),
            "padded": int(np.prod(padded_shape(tuple(w.shape), blocks[p]))) - int(w.size),
            "levels": int(k.max()) + 1,
            "zero_coefficients": int((k == zero_level).sum()) if zero_level is not None
            else None,
            "was_sparse": bool((w == 0).any()),
            "rmse": float(np.sqrt((err**2).mean()))})
    record: dict[str, Any] = {"step": name, "quantizer": config.quantizer,
                              "block": config.block, "layers": layers}
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        per = ", ".join(f"{r['layer']} {r['levels']} levels (rmse {r['rmse']:.2e})"
                        for r in layers)
        ctx.log(f"{name}: {config.quantizer}: {per}")
    return model
