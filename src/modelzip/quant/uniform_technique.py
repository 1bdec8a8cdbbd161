"""Technique ``uniform``: quantize Linear, Conv and Embedding weights to a uniform grid
(affine, symmetric, binary, ternary), optionally with quantization-aware fine-tuning.

Without fine-tuning every chosen weight is replaced by its quantized values at once. With
``finetune`` (quantization-aware training) each chosen weight becomes a parametrization
``weight = fake_quantize(latent)``: the forward pass sees the quantized values, the backward
pass reaches the float latent copy through the straight-through estimator, and the scales
follow the latent weights (min/max or mean |w|, recomputed every step). Pruned entries of the
latent copy are held at zero by a ``MaskKeeper``. At the end the quantized values of the final
latent weights are written back as plain float32 weights (state_dict keys unchanged) and the
latent copy is dropped.

Each quantized module keeps a grid hint (``modelzip.quant.grid``): its scales and zero
points, with which the .mzip encoder stores the weight as its integer codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.prune.masks import MaskKeeper
from modelzip.quant.grid import grid_hint, set_grid_hint
from modelzip.quant.targets import (
    kept_masks,
    layer_of,
    normalise_layers,
    parametrized_name,
    parametrized_weights,
    plan_bits,
    quantizable_weights,
)
from modelzip.quant.uniform import (
    SCHEMES,
    QuantParams,
    check_bits,
    dequantize,
    fake_quantize,
    quant_params,
    quantize,
)
from modelzip.registry import Context, register_technique

__all__ = ["UniformQuantConfig", "uniform_quantize"]

DEFAULT_BITS = 8
_GRID_SCHEMES = ("affine", "symmetric")  # the schemes that take a bit width


@dataclass(frozen=True)
class UniformQuantConfig:
    """Uniform weight quantization.

    - ``scheme``: affine (min/max, integer zero point) | symmetric | binary | ternary;
    - ``bits``: 2..8 for affine and symmetric (default 8), one number or a mapping
      layer (name or pattern) -> bits that names the layers to quantize; leave it out for
      binary and ternary;
    - ``per_channel``: one scale (and zero point) per row along axis 0 instead of per tensor
      (an output channel; a token's vector of an Embedding);
    - ``layers``: which layers (a ``LayerSelector``: names or patterns, types, ignore;
      default every Linear, Conv and Embedding weight);
    - ``finetune``: quantization-aware fine-tuning (straight-through estimator) on the
      context's training data; settings left out come from the context's fine-tuning. None
      (the default) or ``{epochs: 0}``: no QAT.

    Pruned weights stay exactly 0; kept weights within half a step of 0 become 0 too (each
    layer's record counts them as ``rounded_to_zero``)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "qat_epochs": "finetune: {epochs: N} (quantization-aware training)",
        "lr": "finetune: {lr: X} (the QAT learning rate)",
    }

    bits: int | dict[str, int] | None = None
    scheme: str = "affine"
    per_channel: bool = False
    layers: LayerSelector | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        name = "uniform"
        if self.scheme not in SCHEMES:
            raise ConfigError(f"{name}: scheme must be one of {', '.join(SCHEMES)}, got "
                              f"{self.scheme!r}")
        if self.scheme in _GRID_SCHEMES:
            values = self.bits.items() if isinstance(self.bits, Mapping) else \
                [(None, self.bits)] if self.bits is not None else []
            for layer, bits in values:
                check_bits(bits, f"{name}: bits" + (f" of layer {layer!r}" if layer else ""))
        elif self.bits is not None:
            raise ConfigError(f"{name}: a {self.scheme} weight has no bit width to choose; "
                              "leave bits out (use layers to pick the layers)")
        normalise_layers(self, name)


class _FakeQuantWeight(nn.Module):
    """Parametrization: the weight the layer uses is the fake-quantized latent weight."""

    def __init__(self, scheme: str, bits: int | None, per_channel: bool) -> None:
        super().__init__()
        self.scheme, self.bits, self.per_channel = scheme, bits, per_channel

    def params(self, latent: torch.Tensor) -> QuantParams:
        return quant_params(latent.detach(), self.scheme, self.bits, self.per_channel)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return fake_quantize(latent, self.params(latent))


def _effective_bits(scheme: str, bits: int | None) -> float:
    if scheme == "binary":
        return 1.0
    if scheme == "ternary":
        return math.log2(3)
    assert bits is not None
    return float(bits)


def _layer_record(param: str, latent: torch.Tensor, quantized: torch.Tensor,
                  params: QuantParams, scheme: str, bits: int | None) -> dict[str, Any]:
    nonzero = quantized[quantized != 0]
    record: dict[str, Any] = {
        "layer": layer_of(param) or param, "param": param, "params": latent.numel(),
        "bits": _effective_bits(scheme, bits), "levels": params.levels,
        "nonzero": int(nonzero.numel()), "distinct_nonzero": int(torch.unique(nonzero).numel()),
        # kept weights within half a step of 0 round to 0: quantization prunes them too
        "rounded_to_zero": int(((latent != 0) & (quantized == 0)).sum()),
        "rmse": float((quantized.double() - latent.double()).pow(2).mean().sqrt()),
    }
    if params.per_channel:
        record["scale_min"] = float(params.scale.min())
        record["scale_max"] = float(params.scale.max())
    else:
        record["scale"] = float(params.scale)
        if scheme == "affine":
            record["zero_point"] = int(params.zero_point)
    return record


def _summary(config: UniformQuantConfig, layers: list[dict[str, Any]]) -> str:
    per = ", ".join(f"{r['layer']} {r['distinct_nonzero']} values (rmse {r['rmse']:.2e})"
                    for r in layers)
    grain = "per channel" if config.per_channel else "per tensor"
    return f"uniform: {config.scheme} {grain}: {per}"


@register_technique("uniform", UniformQuantConfig, kind="quantize")
def uniform_quantize(model: nn.Module, config: UniformQuantConfig, ctx: Context) -> nn.Module:
    """Uniform weight quantization: affine/symmetric 2-8 bits, binary, ternary; optional QAT.

    Chosen weights end as float32 tensors holding their quantized values; with
    ``finetune`` they are first fine-tuned through a straight-through estimator."""
    name = "uniform"
    cfg = resolve_finetune(config.finetune, None, ctx.finetune) \
        if config.finetune is not None else None
    grid = config.scheme in _GRID_SCHEMES
    plan = plan_bits(model, name, config.bits, config.layers,
                     lambda _: DEFAULT_BITS if grid else None)
    names = list(plan)
    masks = kept_masks(model, names, ctx)
    weights = quantizable_weights(model)
    modules = dict(model.named_modules())
    record: dict[str, Any] = {"step": name, "scheme": config.scheme,
                              "per_channel": config.per_channel,
                              "qat_epochs": cfg.epochs if cfg is not None else 0}
    layers = []
    if cfg is None:
        with torch.no_grad():
            for p, bits in plan.items():
                w = weights[p]
                params = quant_params(w, config.scheme, bits, config.per_channel)
                quantized = dequantize(quantize(w, params), params, w.dtype)
                layers.append(_layer_record(p, w.detach(), quantized, params, config.scheme,
                                            bits))
                w.copy_(quantized)
                set_grid_hint(modules[layer_of(p)], "weight", grid_hint(params, bits))
    else:
        train = ctx.require("train_data", name)
        fakes = {p: _FakeQuantWeight(config.scheme, bits, config.per_channel)
                 for p, bits in plan.items()}
        with parametrized_weights(model, fakes):
            # Pruned entries of the latent weights stay zero (0 quantizes to exactly 0), and
            # the masks of layers that are not quantized are kept as in any fine-tuning.
            keep = {parametrized_name(p): m for p, m in masks.items() if not bool(m.all())}
            keep.update({p: m for p, m in ctx.masks.items() if p not in plan})
            with MaskKeeper(model, keep) as keeper:
                hist = ctx.train(model, cfg, data=train, step_callbacks=[keeper],
                                 technique="uniform (QAT)")
            with torch.no_grad():
                for p, bits in plan.items():
                    module = modules[layer_of(p)]
                    latent = module.parametrizations.weight.original.detach()
                    params = fakes[p].params(latent)
                    layers.append(_layer_record(p, latent, module.weight, params, config.scheme,
                                                bits))
                    set_grid_hint(module, "weight", grid_hint(params, bits))
        record["train"] = cfg.to_dict()
        record["wall_time_s"] = round(hist.wall_time_s, 2)
    record["layers"] = layers
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        ctx.log(_summary(config, layers))
    return model
