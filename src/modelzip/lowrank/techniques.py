"""Techniques ``svd``, ``tucker2``, ``cp`` and ``separable`` (kind "factorize"): each replaces
the chosen layers by a sequence of smaller layers (``modelzip.lowrank.surgery``) with factors
from ``modelzip.lowrank.decompose``, optionally fine-tunes, and records per layer the rank,
parameters and MACs before and after and the relative reconstruction error.

Ranks are given (one value, or a mapping layer name/pattern -> value that names the layers),
or chosen per layer: by an energy fraction of the singular values (svd), by EVBMF (tucker2),
or by a ``budget``: the fraction of each layer's MACs (or parameters) to keep, taking the
largest rank within it. A budget that even rank 1 exceeds is refused, naming the smallest
reachable fraction. Nothing is changed when a step fails.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.core.dataset import call_model, first_batch_inputs
from modelzip.core.registry import normalise_layers
from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_choice
from modelzip.finetune import FinetuneConfig
from modelzip.lowrank.common import (
    check_energy,
    check_rank_option,
    finish,
    geometries,
    pick_layers,
    profile_before,
    rank_of,
)
from modelzip.lowrank.decompose import (
    check_rank,
    cp,
    cp_max_rank,
    fit_separable,
    rank_for_energy,
    relative_error,
    separable_weights,
    singular_values,
    svd_factors,
    tucker2,
    tucker2_vbmf_ranks,
)
from modelzip.lowrank.surgery import (
    ConvGeometry,
    conv_padding,
    conv_svd_module,
    cp_cost,
    cp_module,
    linear_svd_module,
    original_cost,
    replace_module,
    separable_cost,
    separable_module,
    svd_cost,
    tucker2_cost,
    tucker2_module,
)
from modelzip.registry import Context, register_technique

__all__ = ["CPConfig", "SVDConfig", "SeparableConfig", "Tucker2Config", "cp_factorize",
           "proportional_ranks", "separable_factorize", "svd_factorize", "tucker2_factorize"]

METRICS = ("macs", "params")
HINT = ("; give ranks per layer (a mapping layer name or pattern -> rank) or leave this layer "
        "out (layers: {ignore: [name]})")


def _check_one_of(config: Any, keys: tuple[str, ...], technique: str,
                  default: str | None = None) -> None:
    given = [k for k in keys if getattr(config, k) is not None]
    if len(given) > 1 or (not given and default is None):
        raise ConfigError(f"{technique}: give exactly one of {', '.join(keys)}"
                          + (f" (got {', '.join(given)})" if given else ""))


def _check_budget(config: Any, technique: str) -> None:
    """A ``budget`` (a fraction in (0, 1]) and its ``budget_metric`` (macs | params)."""
    check_energy(config.budget, technique, "budget")
    check_choice(config.budget_metric, METRICS, technique, "budget_metric")


def _budget_rank(budget: float, metric: str, g: ConvGeometry, max_rank: int,
                 cost: Callable[[ConvGeometry, Any], tuple[int, int]], rank_at: Callable[[int],
                                                                                         Any],
                 technique: str, name: str) -> Any:
    """The largest rank (rank_at(k), k = 1..max_rank, costs growing with k) whose cost is at
    most ``budget`` of the layer's; refuses a budget below rank 1's."""
    index = 1 if metric == "macs" else 0  # the cost functions give (params, macs)
    limit = budget * original_cost(g)[index]
    best = None
    for k in range(1, max_rank + 1):
        if cost(g, rank_at(k))[index] <= limit:
            best = rank_at(k)
    if best is None:
        smallest = cost(g, rank_at(1))[index] / original_cost(g)[index]
        raise ConfigError(f"{technique}: budget {budget:g} of layer {name!r}'s {metric} cannot "
                          f"be met: rank {rank_at(1)} already keeps {smallest:.4f} of them; "
                          f"the smallest reachable budget is {smallest:.4f}")
    return best


def _layer_record(name: str, module: nn.Module, method: str, rank: Any, g: ConvGeometry,
                  new_cost: tuple[int, int], error: float, **extra: Any) -> dict[str, Any]:
    params, macs = original_cost(g)
    return {"layer": name, "type": type(module).__name__, "method": method,
            "rank": list(rank) if isinstance(rank, tuple) else rank,
            "params_before": params, "params_after": new_cost[0],
            "macs_before": macs, "macs_after": new_cost[1], "rel_error": error, **extra}


def _matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1)


# ---------------------------------------------------------------------------- svd
@dataclass(frozen=True)
class SVDConfig:
    """Truncated SVD of Linear layers (and of Conv2d as an N x C*kh*kw matrix: a kh x kw conv
    to r channels, then 1x1).

    - ``rank``: one rank, or a mapping layer (name or pattern) -> rank naming the layers;
    - ``energy``: per layer, the smallest rank keeping this fraction (0, 1] of the squared
      singular values;
    - ``budget``: per layer, the largest rank within this fraction (0, 1] of its
      ``budget_metric`` (macs | params);
    - ``layers``: which layers (default: every Linear; name Conv2d layers or ``types:
      [Conv2d]`` to factorize convolutions);
    - ``finetune``: fine-tuning after the factorization (default none).

    With energy or budget, a layer whose factors would not be smaller is left as it is."""

    rank: int | dict[str, int] | None = None
    energy: float | None = None
    budget: float | None = None
    budget_metric: str = "macs"
    layers: LayerSelector | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        name = "svd"
        _check_one_of(self, ("rank", "energy", "budget"), name)
        if self.rank is not None:
            check_rank_option(self.rank, name)
        check_energy(self.energy, name)
        _check_budget(self, name)
        normalise_layers(self, name, per_layer="rank", verb="factorize")


def _default_linear(selector: LayerSelector | None) -> LayerSelector:
    """Without layer names or types, svd takes the Linear layers only."""
    if selector is None:
        return LayerSelector(types=("Linear",))
    if not selector.names and not selector.types:
        return LayerSelector(types=("Linear",), ignore=selector.ignore)
    return selector


@register_technique("svd", SVDConfig, kind="factorize")
def svd_factorize(model: nn.Module, config: SVDConfig, ctx: Context) -> nn.Module:
    """Truncated SVD: a Linear (or Conv2d as a matrix) becomes two layers of rank r.

    r is given, or chosen per layer by an energy fraction or a MAC/parameter budget."""
    name = "svd"
    selector = config.layers if isinstance(config.rank, dict) else \
        _default_linear(config.layers)
    names, ranks = pick_layers(model, name, selector, name, config.rank)
    geo = geometries(model, names, ctx)
    before = profile_before(model, ctx)
    modules = dict(model.named_modules())
    layers, skipped = [], []
    for layer in names:
        module, g = modules[layer], geo[layer]
        w = _matrix(module)
        rows, cols = w.shape
        max_rank = min(rows, cols)
        s = singular_values(w)
        if config.rank is not None:
            r = check_rank(rank_of(config.rank, ranks, layer), max_rank, f"{name}: layer "
                           f"{layer!r} ({rows} x {cols})", HINT)
        elif config.energy is not None:
            r = rank_for_energy(s, config.energy)
        else:
            r = _budget_rank(config.budget, config.budget_metric, g, max_rank, svd_cost,
                             lambda k: k, name, layer)
        cost = svd_cost(g, r)
        if config.rank is None and cost[0] >= original_cost(g)[0]:
            skipped.append({"layer": layer, "rank": r, "why": "the factors would not be "
                            "smaller than the layer"})
            continue
        a, b = svd_factors(w, r)
        new = linear_svd_module(module, a, b) if isinstance(module, nn.Linear) else \
            conv_svd_module(module, a, b)
        error = float((s[r:] ** 2).sum().sqrt() / s.pow(2).sum().sqrt()) if s.sum() > 0 else 0.0
        replace_module(model, layer, new)
        layers.append(_layer_record(layer, module, name, r, g, cost, error,
                                    max_rank=max_rank))
    extra = {"skipped": skipped} if skipped else {}
    if not layers:
        ctx.log(f"{name}: no layer is smaller factorized at these settings; nothing changed")
    return finish(model, ctx, name, layers, config.finetune, before, extra)


# ---------------------------------------------------------------------------- tucker2
def proportional_ranks(g: ConvGeometry, k: int) -> tuple[int, int]:
    """(R_out, R_in) = k/K of (N, C), rounded up, K = max(N, C): the ladder a budget climbs."""
    top = max(g.out_features, g.in_features)
    return (max(1, math.ceil(k * g.out_features / top)),
            max(1, math.ceil(k * g.in_features / top)))


@dataclass(frozen=True)
class Tucker2Config:
    """Tucker-2 of k x k convolutions (Kim et al. 2016): 1x1 (C -> R_in), k x k (R_in ->
    R_out), 1x1 (R_out -> N).

    - ``ranks``: [R_out, R_in] (or one number for both), or a mapping layer -> ranks; default
      (with no ``budget``): EVBMF on the output- and input-mode unfoldings, times
      ``vbmf_scale``;
    - ``budget``: per layer, the largest ranks proportional to (N, C) within this fraction of
      its ``budget_metric`` (macs | params);
    - ``n_iter_max``: HOOI iterations (tensorly ``partial_tucker``);
    - ``layers``, ``finetune``: as every technique."""

    ranks: int | tuple[int, int] | dict[str, Any] | None = None
    vbmf_scale: float = 1.0
    budget: float | None = None
    budget_metric: str = "macs"
    n_iter_max: int = 100
    layers: LayerSelector | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        name = "tucker2"
        _check_one_of(self, ("ranks", "budget"), name, default="vbmf")
        if self.ranks is not None:
            check_rank_option(self.ranks, name, "ranks")
            values = self.ranks.values() if isinstance(self.ranks, dict) else [self.ranks]
            for v in values:
                if isinstance(v, tuple | list) and len(v) != 2:
                    raise ConfigError(f"{name}: ranks are [R_out, R_in] (two numbers) or one "
                                      f"number for both, got {list(v)}")
        if not self.vbmf_scale > 0:
            raise ConfigError(f"{name}: vbmf_scale must be > 0, got {self.vbmf_scale}")
        _check_budget(self, name)
        if self.n_iter_max < 1:
            raise ConfigError(f"{name}: n_iter_max must be >= 1, got {self.n_iter_max}")
        normalise_layers(self, name, per_layer="ranks", verb="factorize")


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def apply_tucker2(model: nn.Module, layer: str, g: ConvGeometry, ranks: tuple[int, int],
                  n_iter_max: int = 100, technique: str = "tucker2", **extra: Any
                  ) -> dict[str, Any]:
    """Replace one conv by its Tucker-2 factorization; returns the layer's record."""
    module = model.get_submodule(layer)
    n, c = module.weight.shape[:2]
    where = f"{technique}: layer {layer!r} ({n} out x {c} in channels)"
    check_rank(ranks[0], n, f"{where}: output rank", HINT)
    check_rank(ranks[1], c, f"{where}: input rank", HINT)
    result = tucker2(module.weight.detach(), ranks, n_iter_max=n_iter_max)
    replace_module(model, layer, tucker2_module(module, result))
    return _layer_record(layer, module, "tucker2", ranks, g, tucker2_cost(g, ranks),
                         result.error, **extra)


@register_technique("tucker2", Tucker2Config, kind="factorize")
def tucker2_factorize(model: nn.Module, config: Tucker2Config, ctx: Context) -> nn.Module:
    """Tucker-2 factorization of convolutions, ranks from EVBMF (Kim et al. 2016), given, or
    within a per-layer MAC/parameter budget."""
    name = "tucker2"
    names, ranks = pick_layers(model, name, config.layers, name, config.ranks)
    geo = geometries(model, names, ctx)
    before = profile_before(model, ctx)
    layers = []
    for layer in names:
        module, g = model.get_submodule(layer), geo[layer]
        source: dict[str, Any] = {}
        if config.ranks is not None:
            pair = _pair(rank_of(config.ranks, ranks, layer))
        elif config.budget is not None:
            pair = _budget_rank(config.budget, config.budget_metric, g,
                                max(g.out_features, g.in_features), tucker2_cost,
                                lambda k, g=g: proportional_ranks(g, k), name, layer)
        else:
            pair = tucker2_vbmf_ranks(module.weight.detach(), config.vbmf_scale)
            source = {"rank_source": "vbmf", "vbmf_scale": config.vbmf_scale}
        layers.append(apply_tucker2(model, layer, g, pair, config.n_iter_max, name, **source))
    return finish(model, ctx, name, layers, config.finetune, before)


# ---------------------------------------------------------------------------- cp
@dataclass(frozen=True)
class CPConfig:
    """CP decomposition of k x k convolutions (Lebedev et al. 2015): 1x1 (C -> R), depthwise
    kh x 1, depthwise 1 x kw, 1x1 (R -> N), by tensorly's ``parafac``.

    - ``rank``: R, or a mapping layer -> R;
    - ``budget``: per layer, the largest R within this fraction of its ``budget_metric``;
    - ``n_iter_max``, ``tol``: ALS stopping; when ALS does not converge, random restarts with
      line search are tried and the best factors kept (the record says so);
    - ``ridge``: the ALS penalty on the factors' norms, times ||W||^2 / R (0: plain ALS).
      Plain CP of a conv kernel is degenerate (components far larger than the kernel that
      cancel; the record's ``degeneracy``) and fine-tuning then diverges; the penalty bounds
      them at almost the same reconstruction error (``modelzip.lowrank.decompose.cp``);
    - ``layers``, ``finetune``: as every technique; fine-tuning without an ``lr`` of its own
      runs at ``finetune_lr_scale`` times the context's lr (Lebedev et al. fine-tune CP
      layers at a much smaller rate than the network was trained with)."""

    rank: int | dict[str, int] | None = None
    budget: float | None = None
    budget_metric: str = "macs"
    n_iter_max: int = 100
    tol: float = 1e-5
    ridge: float = 0.01
    finetune_lr_scale: float = 0.1
    layers: LayerSelector | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        name = "cp"
        _check_one_of(self, ("rank", "budget"), name)
        if self.rank is not None:
            check_rank_option(self.rank, name)
        _check_budget(self, name)
        if self.n_iter_max < 1 or not self.tol > 0:
            raise ConfigError(f"{name}: n_iter_max must be >= 1 and tol > 0")
        if not (0 <= self.ridge < math.inf):
            raise ConfigError(f"{name}: ridge must be a finite number >= 0, got {self.ridge}")
        if not 0 < self.finetune_lr_scale <= 1:
            raise ConfigError(f"{name}: finetune_lr_scale must be in (0, 1], got "
                              f"{self.finetune_lr_scale}")
        normalise_layers(self, name, per_layer="rank", verb="factorize")


@register_technique("cp", CPConfig, kind="factorize")
def cp_factorize(model: nn.Module, config: CPConfig, ctx: Context) -> nn.Module:
    """CP factorization of convolutions into four thin layers (Lebedev et al. 2015), with a
    fallback when CP-ALS does not converge."""
    name = "cp"
    names, ranks = pick_layers(model, name, config.layers, name, config.rank)
    geo = geometries(model, names, ctx)
    before = profile_before(model, ctx)
    layers = []
    for layer in names:
        module, g = model.get_submodule(layer), geo[layer]
        shape = tuple(module.weight.shape)
        max_rank = cp_max_rank(shape)
        if config.rank is not None:
            r = check_rank(rank_of(config.rank, ranks, layer), max_rank,
                           f"{name}: layer {layer!r} (kernel {shape})", HINT)
        else:
            r = _budget_rank(config.budget, config.budget_metric, g, max_rank, cp_cost,
                             lambda k: k, name, layer)
        result = cp(module.weight.detach(), r, n_iter_max=config.n_iter_max, tol=config.tol,
                    ridge=config.ridge)
        if result.note:
            ctx.log(f"{name}: layer {layer}: {result.note}")
        replace_module(model, layer, cp_module(module, result))
        layers.append(_layer_record(layer, module, name, r, g, cp_cost(g, r), result.error,
                                    converged=result.converged, cp_method=result.method,
                                    degeneracy=round(result.degeneracy, 3),
                                    **({"note": result.note} if result.note else {})))
    return finish(model, ctx, name, layers, config.finetune, before,
                  {"ridge": config.ridge, "finetune_lr_scale": config.finetune_lr_scale},
                  lr_scale=config.finetune_lr_scale)


# ---------------------------------------------------------------------------- separable
FITS = ("data", "weights")


@dataclass(frozen=True)
class SeparableConfig:
    """Jaderberg et al. 2014, scheme 2: a kh x kw conv becomes kh x 1 (C -> K) then 1 x kw
    (K -> N).

    - ``rank``: K, or a mapping layer -> K; ``budget``: per layer, the largest K within this
      fraction of its ``budget_metric``;
    - ``fit``: ``data`` (default): start from the weight fit and minimise the error of the
      layer's outputs on real activations (``samples`` images of the calibration data, run
      through the model factorized so far, against the original model's outputs; ``steps``
      L-BFGS iterations); ``weights``: the closed-form weight fit only. The record gives the
      output error of both fits;
    - ``layers``, ``finetune``: as every technique."""

    rank: int | dict[str, int] | None = None
    budget: float | None = None
    budget_metric: str = "macs"
    fit: str = "data"
    samples: int = 128
    steps: int = 30
    layers: LayerSelector | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        name = "separable"
        _check_one_of(self, ("rank", "budget"), name)
        if self.rank is not None:
            check_rank_option(self.rank, name)
        _check_budget(self, name)
        check_choice(self.fit, FITS, name, "fit")
        if self.samples < 1 or self.steps < 0:
            raise ConfigError(f"{name}: samples must be >= 1 and steps >= 0")
        normalise_layers(self, name, per_layer="rank", verb="factorize")


@torch.no_grad()
def _layer_io(model: nn.Module, layer: str, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and output of ``layer`` when ``model`` runs on ``inputs`` (eval mode)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        seen.setdefault("in", args[0].detach())
        seen.setdefault("out", output.detach())

    handle = model.get_submodule(layer).register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        call_model(model, inputs)
    finally:
        handle.remove()
        model.train(was_training)
    return seen["in"], seen["out"]


@register_technique("separable", SeparableConfig, kind="factorize")
def separable_factorize(model: nn.Module, config: SeparableConfig, ctx: Context
                        ) -> nn.Module:
    """Separable filters (Jaderberg scheme 2): vertical then horizontal convolutions, fitted
    to the layer's outputs on real activations or to its weights."""
    name = "separable"
    names, ranks = pick_layers(model, name, config.layers, name, config.rank)
    geo = geometries(model, names, ctx)
    before = profile_before(model, ctx)
    inputs = original = None
    if config.fit == "data":
        data = ctx.calibration_data if ctx.calibration_data is not None else \
            ctx.require("train_data", f"{name} (fit: data; or fit: weights)")
        inputs = first_batch_inputs(data, config.samples)
        original = copy.deepcopy(model)
    layers = []
    for layer in names:
        module, g = model.get_submodule(layer), geo[layer]
        n, c, kh, kw = module.weight.shape
        max_rank = min(c * kh, n * kw)
        if config.rank is not None:
            r = check_rank(rank_of(config.rank, ranks, layer), max_rank,
                           f"{name}: layer {layer!r} ({n} x {c} x {kh} x {kw})", HINT)
        else:
            r = _budget_rank(config.budget, config.budget_metric, g, max_rank, separable_cost,
                             lambda k: k, name, layer)
        weight = module.weight.detach()
        if config.fit == "data":
            assert original is not None
            x, _ = _layer_io(model, layer, inputs)
            _, y = _layer_io(original, layer, inputs)
            factors, weight_err, data_err = fit_separable(
                weight, module.bias, r, x, stride=tuple(module.stride),
                padding=conv_padding(module), dilation=tuple(module.dilation), targets=y,
                steps=config.steps)
            extra = {"fit": "data", "output_error_weight_fit": weight_err,
                     "output_error_data_fit": data_err, "samples": int(x.shape[0])}
        else:
            factors = separable_weights(weight, r)
            extra = {"fit": "weights"}
        error = relative_error(weight, factors.reconstruct())
        replace_module(model, layer, separable_module(module, factors))
        layers.append(_layer_record(layer, module, name, r, g, separable_cost(g, r), error,
                                    **extra))
    return finish(model, ctx, name, layers, config.finetune, before)
