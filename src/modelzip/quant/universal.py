"""Technique ``universal``: universal (randomized, dithered) quantization, after Choi,
El-Khamy & Lee, "Universal deep neural network compression" (2020).

Each chosen weight gets a uniform random dither u in [-1/2, 1/2), drawn from a seed that the
.mzip file stores instead of the dither: ``w_hat = step * round(w / step + u) - step * u``
(``modelzip.codec.dither``). The dither makes the quantization error uniform and independent
of the weight, whatever the weight distribution. With ``lattice: a2`` consecutive kept weights are
quantized in pairs on the hexagonal lattice with a 2-D dither (a denser packing than the
square grid: less error per bit). Then (lattice z) the shared quantized values (the levels
``step * k``) can be fine-tuned with the dither and every weight's level fixed, as k-means
centroids are: autograd sums the gradients of a level's weights into it. Pruned weights are
not dithered and stay exactly 0.0.

The codec stores per layer the seed, the step, the level indices (entropy-coded by modelzip's
coders) and, after fine-tuning, the levels. Each record also gives the bytes a universal
lossless coder from the standard library (lzma, bz2) takes for the same indices, beside
modelzip's coders, as the paper codes them with a universal coder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.codec.dither import (
    LATTICES,
    MAX_SEED,
    a2_quantize,
    a2_values,
    dither_levels,
    dither_noise,
    dither_values,
    index_coder_bytes,
)
from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_choice, check_integer
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.quant.grid import set_grid_hint
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

__all__ = ["UniversalQuantConfig", "dithered_quantize", "lattice_quantize",
           "universal_quantize"]

DEFAULT_BITS = 4
MIN_BITS, MAX_BITS = 1, 12


@dataclass(frozen=True)
class UniversalQuantConfig:
    """Universal (dithered uniform) quantization of each layer's kept weights.

    - ``bits``: the step is the kept weights' range / (2^bits - 1) (about 2^bits + 1
      levels with the dither), 1..12; one number or a mapping layer (name or pattern) ->
      bits that names the layers (default 4);
    - ``seed``: the dither's seed (layer i of the plan uses seed + i), 0..2^32-1;
    - ``lattice``: ``z`` (each weight on its own, the default) or ``a2`` (consecutive kept
      weights in pairs on the hexagonal lattice, with a 2-D dither; no fine-tuning);
    - ``finetune``: fine-tuning of the shared levels with the dither and the level of every
      weight fixed (biases and unquantized layers train too); None: no fine-tuning;
    - ``layers``: which layers (a ``LayerSelector``; default every Linear, Conv and
      Embedding weight)."""

    bits: int | dict[str, int] | None = None
    seed: int = 0
    lattice: str = "z"
    finetune: FinetuneConfig | None = None
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "universal"
        check_choice(self.lattice, LATTICES, name, "lattice")
        if self.lattice != "z" and self.finetune is not None:
            raise ConfigError(f"{name}: fine-tuning the shared levels works with lattice z "
                              f"only; leave finetune out for lattice {self.lattice}")
        check_layer_bits(self.bits, MIN_BITS, MAX_BITS, name)
        check_integer(self.seed, 0, MAX_SEED, name, "seed")
        normalise_layers(self, name)


@dataclass
class _Dithered:
    indices: np.ndarray  # int64, the weight's shape: level index (0 where pruned)
    keep: np.ndarray  # bool, the weight's shape
    noise: np.ndarray  # float32, the weight's shape: the dither u
    step: np.float32
    zero_point: int
    levels: np.ndarray  # float32: the shared values
    seed: int

    def values(self) -> np.ndarray:
        """The quantized weight, exactly as the .mzip decoder computes it."""
        out = np.zeros(self.keep.shape, dtype=np.float32)
        out[self.keep] = dither_values(self.levels, self.indices[self.keep], self.step,
                                       self.noise[self.keep])
        return out


def dithered_quantize(w: np.ndarray, keep: np.ndarray, bits: int, seed: int) -> _Dithered:
    """Dithered uniform quantization of the kept entries of ``w`` (float32 numpy):
    ``k = round(w / step + u)``, shifted so the smallest is 0; step = range / (2^bits - 1)."""
    w = np.asarray(w, dtype=np.float32)
    kept = w[keep].astype(np.float64)
    span = float(kept.max() - kept.min()) if kept.size else 0.0
    if span == 0.0:
        span = float(np.abs(kept).max()) if kept.size and kept.any() else 1.0
    step = np.float32(span / (2**bits - 1))
    noise = dither_noise(seed, w.size).reshape(w.shape)
    steps = np.rint(w.astype(np.float64) / float(step) + noise).astype(np.int64)
    zero_point = -int(steps[keep].min()) if kept.size else 0
    indices = np.where(keep, steps + zero_point, 0)
    count = int(indices.max()) + 1
    return _Dithered(indices, keep, noise, step, zero_point,
                     dither_levels(count, zero_point, step), seed)


@dataclass
class _Lattice:
    """A layer quantized on the hexagonal lattice: its values stream and the weight."""

    symbols: np.ndarray  # int64: k1, k2 per pair of kept weights, zero point included
    zero_point: int
    step: np.float32
    seed: int
    weight: np.ndarray  # float32, the weight's shape, as the decoder computes it


def lattice_quantize(w: np.ndarray, keep: np.ndarray, bits: int, seed: int) -> _Lattice:
    """Dithered quantization of the kept entries of ``w`` in pairs on the hexagonal (a2)
    lattice, step = range / (2^bits - 1) (``modelzip.codec.dither``)."""
    w = np.asarray(w, dtype=np.float32)
    kept = w[keep]
    span = float(kept.max()) - float(kept.min()) if kept.size else 0.0
    step = np.float32(span / (2**bits - 1) if span > 0 else 1.0)
    pairs = (kept.size + 1) // 2
    noise = dither_noise(seed, 2 * pairs)
    k, _ = a2_quantize(kept, float(step), noise)
    zero_point = -int(k.min()) if k.size else 0
    symbols = k + zero_point
    out = np.zeros(w.shape, dtype=np.float32)
    out[keep] = a2_values(symbols, zero_point, float(step), noise, kept.size)
    return _Lattice(symbols, zero_point, step, seed, out)


class _DitheredWeight(nn.Module):
    """Parametrization: the weight is its level minus its fixed dither where kept, 0 where
    pruned; the levels are the trainable shared values."""

    def __init__(self, d: _Dithered) -> None:
        super().__init__()
        self.levels = nn.Parameter(torch.from_numpy(d.levels.copy()))
        self.register_buffer("indices", torch.from_numpy(d.indices))
        self.register_buffer("offset", torch.from_numpy(d.step * d.noise))
        self.register_buffer("keep", torch.from_numpy(d.keep))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return torch.where(self.keep, self.levels[self.indices] - self.offset, 0.0)


def _hint(d: _Dithered, tuned: bool) -> dict[str, Any]:
    # no indices: the encoder finds each weight's level from the weight and its dither,
    # which keeps the hint (and a checkpoint that saves it) small
    hint = {"kind": "dither", "seed": d.seed, "step": float(d.step),
            "zero_point": d.zero_point}
    if tuned:
        hint["levels"] = d.levels
    return hint


def _layer_record(param: str, bits: int, d: _Dithered, before: np.ndarray) -> dict[str, Any]:
    after = d.values()
    err = (after.astype(np.float64) - before)[d.keep]
    return {"layer": layer_of(param) or param, "param": param, "params": int(before.size),
            "bits": bits, "seed": d.seed, "step": float(d.step), "levels": int(d.levels.size),
            "kept": int(d.keep.sum()),
            "rmse": float(np.sqrt((err**2).mean())) if err.size else 0.0,
            "index_bytes": index_coder_bytes(d.indices[d.keep], int(d.levels.size))}


@register_technique("universal", UniversalQuantConfig, kind="quantize")
def universal_quantize(model: nn.Module, config: UniversalQuantConfig, ctx: Context
                       ) -> nn.Module:
    """Universal quantization: uniform quantization with a seeded random dither, shared levels.

    Each chosen layer's kept weights are quantized with a dither that the .mzip file
    regenerates from its seed; with ``finetune`` the shared levels are then fine-tuned."""
    name = "universal"
    tune = resolve_finetune(config.finetune, None, ctx.finetune) \
        if config.finetune is not None else None
    if tune is not None:
        ctx.require("train_data", "universal (level fine-tuning)")
    plan = plan_bits(model, name, config.bits, config.layers, lambda _: DEFAULT_BITS)
    masks = kept_masks(model, list(plan), ctx)
    weights = quantizable_weights(model)
    modules = dict(model.named_modules())
    originals, dithered = {}, {}
    lattice: dict[str, _Lattice] = {}
    for i, (p, bits) in enumerate(plan.items()):
        assert bits is not None
        w = weights[p].detach().to(torch.float32).cpu().numpy()
        originals[p] = w.astype(np.float64)
        seed = (config.seed + i) % (MAX_SEED + 1)
        keep = masks[p].cpu().numpy()
        if config.lattice == "a2":
            lattice[p] = lattice_quantize(w, keep, bits, seed)
            values = lattice[p].weight
        else:
            dithered[p] = dithered_quantize(w, keep, bits, seed)
            values = dithered[p].values()
        with torch.no_grad():
            weights[p].copy_(torch.from_numpy(values))
    record: dict[str, Any] = {"step": name, "seed": config.seed, "lattice": config.lattice,
                              "finetune_epochs": tune.epochs if tune is not None else 0}
    if tune is not None and dithered:
        shared = {p: _DitheredWeight(d) for p, d in dithered.items()}
        hist = train_shared_values(model, shared, ctx, tune, ctx.train_data,
                                   "universal (level fine-tuning)")
        for p, s in shared.items():
            dithered[p].levels = s.levels.detach().to(torch.float32).cpu().numpy().copy()
            with torch.no_grad():  # the decoder's own float32 arithmetic, bit for bit
                weights[p].copy_(torch.from_numpy(dithered[p].values()))
        record.update(train=tune.to_dict(), wall_time_s=round(hist.wall_time_s, 2))
    for p, d in dithered.items():
        set_grid_hint(modules[layer_of(p)], "weight", _hint(d, tune is not None))
    layers = [_layer_record(p, plan[p] or DEFAULT_BITS, d, originals[p])
              for p, d in dithered.items()]
    for p, lat in lattice.items():
        set_grid_hint(modules[layer_of(p)], "weight", {
            "kind": "dither", "lattice": "a2", "seed": lat.seed, "step": float(lat.step),
            "indices": lat.symbols, "zero_point": lat.zero_point})
        keep = masks[p].cpu().numpy()
        err = (lat.weight.astype(np.float64) - originals[p])[keep]
        levels = int(lat.symbols.max()) + 1 if lat.symbols.size else 1
        layers.append({"layer": layer_of(p) or p, "param": p, "params": int(keep.size),
                       "bits": plan[p], "seed": lat.seed, "step": float(lat.step),
                       "levels": levels, "kept": int(keep.sum()),
                       "rmse": float(np.sqrt((err**2).mean())) if err.size else 0.0,
                       "index_bytes": index_coder_bytes(lat.symbols, levels)})
    record["layers"] = layers
    record["index_bytes"] = {coder: sum(r["index_bytes"][coder] for r in layers)
                             for coder in (layers[0]["index_bytes"] if layers else {})}
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        per = ", ".join(f"{r['layer']} {r['levels']} levels (rmse {r['rmse']:.2e})"
                        for r in layers)
        ctx.log(f"{name}: {per}; index bytes {record['index_bytes']}")
    return model
