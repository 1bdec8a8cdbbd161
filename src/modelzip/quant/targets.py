"""Which weights a quantization technique touches, at how many bits, and which of their
entries are kept (non-pruned). Shared by the ``uniform`` and ``kmeans`` techniques.

The quantizable weights are those of Linear, Conv (1d/2d/3d, transposed too) and Embedding
layers: a wider set than pruning's ``prunable_weights``, since an embedding table (half the
parameters of a small text encoder) quantizes row by row like any weight."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.core.selection import LayerSelector, select, select_values
from modelzip.errors import ConfigError, check_integer
from modelzip.prune.masks import MaskKeeper, layer_of
from modelzip.registry import Context
from modelzip.registry import normalise_layers as normalise_layer_choice

__all__ = ["QUANTIZABLE", "is_conv", "kept_masks", "layer_of", "normalise_layers",
           "parametrized_name", "parametrized_weights", "plan_bits", "quantizable_weights"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)
QUANTIZABLE = (nn.Linear, *_CONVS, nn.Embedding)


def is_conv(module: nn.Module) -> bool:
    """A convolution, transposed or not."""
    return isinstance(module, _CONVS)


def quantizable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of Linear, Conv, ConvTranspose and Embedding layers by parameter name, in model
    order (biases and norms are left in float). Per channel means per row along axis 0: an
    output channel, a token's vector of an Embedding, an input channel of a ConvTranspose."""
    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, QUANTIZABLE):
            out[f"{mname}.weight" if mname else "weight"] = module.weight
    return out


def normalise_layers(config: Any, technique: str) -> None:
    """``layers`` and a per-layer ``bits`` mapping, as for pruning; an empty mapping too."""
    normalise_layer_choice(config, technique, "bits", "quantize")
    if isinstance(config.bits, Mapping) and not config.bits:
        raise ConfigError(f"{technique}: the bits mapping is empty; name at least one layer")


def check_layer_bits(bits: int | Mapping[str, int] | None, low: int, high: int,
                     technique: str, note: str = "") -> list[tuple[str | None, int]]:
    """A config's ``bits`` (one for every layer, one per layer name, or None) checked to be
    integers from ``low`` to ``high``; returns the (layer or None, bits) pairs."""
    pairs = list(bits.items()) if isinstance(bits, Mapping) else \
        [(None, bits)] if bits is not None else []
    for layer, value in pairs:
        where = f" of layer {layer!r}" if layer else ""
        check_integer(value, low, high, technique, f"bits{where}", note)
    return pairs


def plan_bits(model: nn.Module, technique: str, bits: int | dict[str, int] | None,
              layers: LayerSelector | None,
              default_bits: Callable[[nn.Module], int | None]) -> dict[str, int | None]:
    """Weight parameter name -> bits, in model order. A ``bits`` mapping (keys: names or
    patterns) names the layers; otherwise the layers ``layers`` selects (default: every
    quantizable weight, see ``quantizable_weights``) get ``bits``, or
    ``default_bits(module)`` when ``bits`` is None. ``layers``' types and ignore apply
    either way."""
    weights = quantizable_weights(model)
    if not weights:
        raise ConfigError(f"{technique}: this model has no Linear, Conv or Embedding weight "
                          "to quantize")
    modules = dict(model.named_modules())
    candidates = {layer_of(p): modules[layer_of(p)] for p in weights}
    options = {"technique": technique, "model": model, "kind": "quantizable layers",
               "takes": "Linear, Conv and Embedding layers"}
    if isinstance(bits, dict):
        chosen = select_values(bits, candidates, selector=layers, **options)
        return {f"{n}.weight" if n else "weight": b for n, b in chosen.items()}
    return {f"{n}.weight" if n else "weight":
            bits if bits is not None else default_bits(candidates[n])
            for n in select(layers, candidates, **options)}


def kept_masks(model: nn.Module, names: list[str], ctx: Context) -> dict[str, torch.Tensor]:
    """Which entries of each named weight are kept: not pruned in ``ctx.masks`` and not zero
    (a pruned weight is stored as exactly 0). Layers with pruned entries get their mask into
    ``ctx.masks`` too, so that later fine-tuning steps keep them zero."""
    weights = quantizable_weights(model)
    out = {}
    for p in names:
        keep = weights[p].detach() != 0
        has_zeros = not bool(keep.all())
        if p in ctx.masks:
            keep = keep & ctx.masks[p].to(keep.device)
        out[p] = keep
        if has_zeros or p in ctx.masks:
            ctx.masks[p] = keep
    return out


def parametrized_name(param_name: str) -> str:
    """The name a weight's latent tensor has while a parametrization is registered on it."""
    layer = layer_of(param_name)
    return f"{layer}.parametrizations.weight.original" if layer else \
        "parametrizations.weight.original"


@contextmanager
def parametrized_weights(model: nn.Module, parametrizations: Mapping[str, nn.Module]
                         ) -> Iterator[None]:
    """Inside the block, each named weight is computed by its parametrization from a latent
    tensor (``parametrized_name``). Afterwards each weight's current value is baked into a
    plain ``weight`` parameter again, in its old place, so the state_dict has the same keys
    in the same order."""
    modules = dict(model.named_modules())
    orders: dict[str, list[str]] = {}
    try:
        for p, parametrization in parametrizations.items():
            module = modules[layer_of(p)]
            orders[p] = list(module._parameters)
            parametrize.register_parametrization(module, "weight", parametrization)
        yield
    finally:
        for p, order in orders.items():
            module = modules[layer_of(p)]
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(True)
            params = dict(module._parameters)
            module._parameters.clear()
            module._parameters.update({k: params[k] for k in order})


def train_shared_values(model: nn.Module, shared: Mapping[str, nn.Module], ctx: Context,
                        config: Any, data: Any, technique: str) -> Any:
    """Train what ``shared``'s parametrizations compute the named weights from (centroids,
    levels: the values the file shares), the latent weights kept out of the optimizer and
    the other layers' masks kept; returns ``ctx.train``'s history. Afterwards each weight is
    a plain parameter again, holding its parametrization's last value."""
    modules = dict(model.named_modules())
    with parametrized_weights(model, shared):
        for p in shared:
            modules[layer_of(p)].parametrizations.weight.original.requires_grad_(False)
        others = {p: m for p, m in ctx.masks.items() if p not in shared}
        with MaskKeeper(model, others) as keeper:
            return ctx.train(model, config, data=data, step_callbacks=[keeper],
                             technique=technique)
