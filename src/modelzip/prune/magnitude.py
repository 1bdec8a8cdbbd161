"""Unstructured magnitude pruning, one-shot or with retraining.

Techniques (see each config):

- ``magnitude``: remove the smallest weights once: Han et al.'s threshold (quality x std of
  the layer), an exact sparsity per layer, or one sparsity over all layers (global ranking);
- ``iterative-magnitude``: Han et al. 2015, "Learning both Weights and Connections": N rounds
  of prune -> retrain with L2, optionally with their dropout adjustment;
- ``agp``: Zhu & Gupta 2017, automated gradual pruning: the sparsity rises along a cubic curve
  every k optimizer steps while the network trains, then a fine-tune at the final sparsity.

All of them only ever shrink masks (a pruned weight stays pruned), keep the masks in
``ctx.masks`` so that later fine-tuning keeps them, and never touch biases. The mask math is
in the plain tensor functions at the top; the module surgery is below them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.selection import LayerSelector, select, select_values
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.prune.masks import MaskKeeper, apply_masks, layer_of, prunable_weights
from modelzip.prune.schedules import (
    ROUND_SCHEDULES,
    agp_prune_steps,
    agp_sparsity,
    check_sparsity,
    han_dropout,
    round_sparsities,
)
from modelzip.registry import Context, normalise_layers, register_technique

__all__ = [
    "AGPConfig",
    "IterativeMagnitudeConfig",
    "MagnitudePruneConfig",
    "agp_prune",
    "global_sparsity_masks",
    "iterative_magnitude_prune",
    "magnitude_prune",
    "n_pruned",
    "prune_threshold",
    "quality_threshold",
    "sparsity_mask",
    "threshold_mask",
]


# ============================================================================ mask math
def n_pruned(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity removes: round(sparsity * n), Python's rounding
    (half to even), as ``torch.nn.utils.prune`` does."""
    return round(check_sparsity(sparsity) * n)


def quality_threshold(weight: torch.Tensor, quality: float) -> float:
    """Han et al. 2015: threshold = quality x the standard deviation of the layer's weights
    (the sample std, n - 1 in the denominator, over every entry of the tensor, zeros of
    earlier pruning included). Computed in float64."""
    if not math.isfinite(quality) or quality < 0:
        raise ConfigError(f"quality must be a number >= 0, got {quality!r}")
    if weight.numel() < 2:
        raise ConfigError(f"the std of a tensor of {weight.numel()} element(s) is undefined")
    return float(quality * weight.detach().double().std())


def threshold_mask(weight: torch.Tensor, threshold: float,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the weights with |w| > threshold that ``mask`` (if given) still keeps."""
    keep = weight.detach().abs().double() > threshold
    return keep & mask.to(keep.device) if mask is not None else keep


def _keep_all_but_lowest(magnitudes: torch.Tensor, pruned: torch.Tensor, k: int) -> torch.Tensor:
    # Already-pruned entries sort first (key -1 < any |w|) so they stay pruned; a stable sort
    # breaks ties among equal magnitudes by position, so the result is deterministic.
    key = torch.where(pruned, torch.full_like(magnitudes, -1.0), magnitudes)
    k = max(k, int(pruned.sum()))
    order = torch.sort(key, stable=True).indices
    keep = torch.ones_like(pruned)
    keep[order[:k]] = False
    return keep


def sparsity_mask(weight: torch.Tensor, sparsity: float,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep all but the round(sparsity * n) smallest |w|: exactly that many zeros, ties
    broken by position (lower flat index pruned first). Entries ``mask`` already prunes
    stay pruned and count towards the zeros; if they are more than requested the result is
    ``mask`` itself (masks only shrink)."""
    w = weight.detach()
    pruned = (~mask.to(w.device).flatten() if mask is not None
              else torch.zeros(w.numel(), dtype=torch.bool, device=w.device))
    keep = _keep_all_but_lowest(w.abs().double().flatten(), pruned, n_pruned(w.numel(), sparsity))
    return keep.view(w.shape)


def global_sparsity_masks(weights: Mapping[str, torch.Tensor], sparsity: float,
                          masks: Mapping[str, torch.Tensor] | None = None
                          ) -> dict[str, torch.Tensor]:
    """One magnitude ranking over all ``weights``: exactly round(sparsity * total) zeros
    across them, ties broken by (order of ``weights``, position). Each layer ends up with the
    sparsity its magnitudes earn. Entries ``masks`` already prunes stay pruned."""
    masks = masks or {}
    names = list(weights)
    if not names:
        return {}
    mags, pruned = [], []
    for name in names:
        w = weights[name].detach()
        mags.append(w.abs().double().flatten())
        pruned.append(~masks[name].to(w.device).flatten() if name in masks
                      else torch.zeros(w.numel(), dtype=torch.bool, device=w.device))
    total = sum(m.numel() for m in mags)
    keep = _keep_all_but_lowest(torch.cat(mags), torch.cat(pruned), n_pruned(total, sparsity))
    out, start = {}, 0
    for name in names:
        n = weights[name].numel()
        out[name] = keep[start:start + n].view(weights[name].shape).clone()
        start += n
    return out


def prune_threshold(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """The magnitude cut a mask made: the largest |w| among the weights it removes (0.0 if
    none). Weights below it are all pruned, weights above it all kept."""
    pruned = ~mask.to(weight.device)
    if not bool(pruned.any()):
        return 0.0
    return float(weight.detach().abs()[pruned].max())


# ============================================================================ configs
def _check_targets(technique: str, sparsity: Any, global_sparsity: Any,
                   quality: Any = None, *, with_quality: bool = True) -> None:
    """Exactly one pruning target, each value in range."""
    modes = ["sparsity", "global_sparsity", *(["quality"] if with_quality else [])]
    values = {"sparsity": sparsity, "global_sparsity": global_sparsity, "quality": quality}
    given = [m for m in modes if values[m] is not None]
    if len(given) != 1:
        raise ConfigError(f"{technique}: give exactly one of {', '.join(modes)}; got "
                          f"{' and '.join(given) if given else 'none'}")
    if isinstance(sparsity, Mapping):
        if not sparsity:
            raise ConfigError(f"{technique}: the sparsity mapping is empty; name at least one "
                              "layer")
        for name, value in sparsity.items():
            check_sparsity(value, f"{technique}: sparsity of layer {name!r}")
    elif sparsity is not None:
        check_sparsity(sparsity, f"{technique}: sparsity")
    if global_sparsity is not None:
        check_sparsity(global_sparsity, f"{technique}: global_sparsity")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int | float)
                                or not math.isfinite(quality) or quality < 0):
        raise ConfigError(f"{technique}: quality must be a number >= 0, got {quality!r}")


def _normalise_layers(config: Any, technique: str) -> None:
    normalise_layers(config, technique, "sparsity", "prune")


# Options of the retraining techniques that moved into their ``finetune`` settings.
_RETRAIN_RENAMED = {
    **{key: f"finetune: {{{key}: ...}}" for key in ("lr", "weight_decay", "batch_size",
                                                    "momentum", "optimizer", "augment",
                                                    "seed")},
    "lr_schedule": "finetune: {schedule: ...}",
}


def _check_epochs(technique: str, key: str, settings: FinetuneConfig | None,
                  minimum: int) -> None:
    if settings is not None and settings.epochs is not None and settings.epochs < minimum:
        raise ConfigError(f"{technique}: {key}: epochs must be >= {minimum}, got "
                          f"{settings.epochs}")


@dataclass(frozen=True)
class MagnitudePruneConfig:
    """One-shot magnitude pruning. Give exactly one target:

    - ``sparsity``: fraction of each layer's weights to remove, exactly round(s * n); one
      number for all layers or a mapping layer name (or pattern) -> sparsity;
    - ``global_sparsity``: fraction of all chosen weights, ranked together by magnitude;
    - ``quality``: Han et al.'s threshold, quality x std of each layer's weights.

    ``layers``: which Linear and Conv layers to prune (a ``LayerSelector``: names or
    patterns, types, ignore); default every one. Biases are never pruned; weights pruned
    before stay pruned."""

    sparsity: float | dict[str, float] | None = None
    global_sparsity: float | None = None
    quality: float | None = None
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        _check_targets("magnitude", self.sparsity, self.global_sparsity, self.quality)
        _normalise_layers(self, "magnitude")


@dataclass(frozen=True)
class IterativeMagnitudeConfig:
    """Han et al. 2015: ``rounds`` of (prune to the round's target -> retrain), the targets
    rising along ``sparsity_schedule`` (linear | geometric | cubic) to the final ``sparsity``
    (per layer: a number or a mapping layer -> sparsity) or ``global_sparsity``.

    ``finetune``: the retraining after each round (None: 2 epochs; settings left out come
    from the context's fine-tuning, e.g. ``{epochs: 1, lr: 0.01, weight_decay: 1e-4}`` for
    Han's L2); ``final_finetune``: overrides of it for the last round (None: the same).
    ``scale_dropout`` sets each Dropout's rate by Han's D_r = D_o sqrt(C_r / C_o), C the
    connections of the layer whose outputs it drops. ``layers``: as for ``magnitude``."""

    RENAMED: ClassVar[dict[str, str]] = {
        **_RETRAIN_RENAMED,
        "epochs": "finetune: {epochs: N} (epochs of each round)",
        "final_epochs": "final_finetune: {epochs: N}",
    }
    DEFAULT_FINETUNE: ClassVar[FinetuneConfig] = FinetuneConfig(epochs=2)

    sparsity: float | dict[str, float] | None = None
    global_sparsity: float | None = None
    rounds: int = 3
    sparsity_schedule: str = "geometric"
    finetune: FinetuneConfig | None = None
    final_finetune: FinetuneConfig | None = None
    scale_dropout: bool = False
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "iterative-magnitude"
        _check_targets(name, self.sparsity, self.global_sparsity, with_quality=False)
        _normalise_layers(self, name)
        if self.rounds < 1:
            raise ConfigError(f"{name}: rounds must be >= 1, got {self.rounds}")
        if self.sparsity_schedule not in ROUND_SCHEDULES:
            raise ConfigError(f"{name}: sparsity_schedule must be one of "
                              f"{', '.join(ROUND_SCHEDULES)}, got {self.sparsity_schedule!r}")
        _check_epochs(name, "finetune", self.finetune, 1)  # every round retrains
        _check_epochs(name, "final_finetune", self.final_finetune, 1)

    def round_finetune(self, final: bool) -> FinetuneConfig:
        """The settings of a round's retraining (still over the context's)."""
        each = (self.finetune or FinetuneConfig()).over(self.DEFAULT_FINETUNE)
        return (self.final_finetune or FinetuneConfig()).over(each) if final else each


@dataclass(frozen=True)
class AGPConfig:
    """Zhu & Gupta 2017: train while the sparsity rises from ``initial_sparsity`` to the
    final ``sparsity`` (per layer) or ``global_sparsity`` along
    s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, raised every ``prune_every`` (dt)
    optimizer steps from ``start_step`` (t0) for ``n_prunes`` (n; None: as many as fit in
    the epochs); then a fine-tune at the final sparsity.

    ``finetune``: the training run during which pruning happens (None: 4 epochs; settings
    left out come from the context's fine-tuning); ``final_finetune``: overrides of it for
    the fine-tune at the end (None: 1 epoch; ``{epochs: 0}``: none). ``layers``: as for
    ``magnitude``."""

    RENAMED: ClassVar[dict[str, str]] = {
        **_RETRAIN_RENAMED,
        "epochs": "finetune: {epochs: N} (the training run during which pruning happens)",
        "final_epochs": "final_finetune: {epochs: N}",
    }
    DEFAULT_FINETUNE: ClassVar[FinetuneConfig] = FinetuneConfig(epochs=4)
    DEFAULT_FINAL_FINETUNE: ClassVar[FinetuneConfig] = FinetuneConfig(epochs=1)

    sparsity: float | dict[str, float] | None = None
    global_sparsity: float | None = None
    initial_sparsity: float = 0.0
    prune_every: int = 100
    start_step: int = 0
    n_prunes: int | None = None
    finetune: FinetuneConfig | None = None
    final_finetune: FinetuneConfig | None = None
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "agp"
        _check_targets(name, self.sparsity, self.global_sparsity, with_quality=False)
        _normalise_layers(self, name)
        check_sparsity(self.initial_sparsity, f"{name}: initial_sparsity")
        finals = (list(self.sparsity.values()) if isinstance(self.sparsity, dict)
                  else [self.sparsity if self.sparsity is not None else self.global_sparsity])
        if any(self.initial_sparsity > s for s in finals):
            raise ConfigError(f"{name}: initial_sparsity {self.initial_sparsity} is above the "
                              f"final sparsity {min(finals)}")
        _check_epochs(name, "finetune", self.finetune, 1)  # pruning happens while it trains
        if self.prune_every < 1:
            raise ConfigError(f"{name}: prune_every must be >= 1 step, got {self.prune_every}")
        if self.start_step < 0:
            raise ConfigError(f"{name}: start_step must be >= 0, got {self.start_step}")
        if self.n_prunes is not None and self.n_prunes < 0:
            raise ConfigError(f"{name}: n_prunes must be >= 0, got {self.n_prunes}")

    def pruning_finetune(self) -> FinetuneConfig:
        """The settings of the training run during which the sparsity rises."""
        return (self.finetune or FinetuneConfig()).over(self.DEFAULT_FINETUNE)

    def end_finetune(self) -> FinetuneConfig:
        """The settings of the fine-tune at the final sparsity (epochs 0: none)."""
        final = (self.final_finetune or FinetuneConfig()).over(self.DEFAULT_FINAL_FINETUNE)
        return final.over(self.pruning_finetune())


# ============================================================================ module surgery
def _prunable_layers(model: nn.Module) -> tuple[dict[str, str], dict[str, nn.Module]]:
    """Prunable weights as (layer name -> parameter name, layer name -> module)."""
    modules = dict(model.named_modules())
    params = {layer_of(p): p for p in prunable_weights(model)}
    return params, {n: modules[n] for n in params}


def _chosen(model: nn.Module, technique: str, config: Any
            ) -> tuple[list[str], dict[str, float] | None]:
    """The parameter names to prune (model order) and, for a per-layer sparsity mapping,
    each one's final sparsity. Names or patterns that match no prunable layer raise a
    ConfigError that lists the prunable ones."""
    params, layers = _prunable_layers(model)
    options = {"technique": technique, "model": model, "kind": "prunable layers",
               "takes": "Linear and Conv layers"}
    if not layers:
        raise ConfigError(f"{technique}: this model has no Linear or Conv weight to prune")
    if isinstance(config.sparsity, dict):
        values = select_values(config.sparsity, layers, selector=config.layers, **options)
        return [params[n] for n in values], {params[n]: float(s) for n, s in values.items()}
    return [params[n] for n in select(config.layers, layers, **options)], None


@dataclass
class _Plan:
    """Which weights a technique prunes and to what final target (resolved on the model)."""

    technique: str
    model: nn.Module
    weights: dict[str, nn.Parameter]  # parameter name -> weight, in model order
    per_layer: dict[str, float] | None = None  # parameter name -> final sparsity
    global_sparsity: float | None = None
    quality: float | None = None

    @property
    def mode(self) -> str:
        if self.quality is not None:
            return "quality"
        return "global_sparsity" if self.global_sparsity is not None else "sparsity"

    def target(self) -> Any:
        if self.per_layer is not None:
            return {layer_of(p) or p: s for p, s in self.per_layer.items()}
        return self.global_sparsity if self.global_sparsity is not None else self.quality

    def scaled(self, at: Callable[[float], float]) -> _Plan:
        """The same layers with every final sparsity s replaced by ``at(s)``."""
        return dataclasses.replace(
            self,
            per_layer=None if self.per_layer is None else
            {p: at(s) for p, s in self.per_layer.items()},
            global_sparsity=None if self.global_sparsity is None else at(self.global_sparsity))


def _make_plan(model: nn.Module, technique: str, config: Any, ctx: Context) -> _Plan:
    prunable = prunable_weights(model)
    names, per_layer = _chosen(model, technique, config)
    if per_layer is None and config.sparsity is not None:
        per_layer = dict.fromkeys(names, float(config.sparsity))
    if config.layers is None and not isinstance(config.sparsity, dict):
        pruned_layers = {layer_of(p) for p in prunable}
        others = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
                  if n not in pruned_layers and any(True for _ in m.parameters(recurse=False))]
        if others:
            ctx.log(f"{technique}: not pruned (only Linear and Conv weights are): "
                    f"{', '.join(others)}")
    quality = getattr(config, "quality", None)
    if quality is not None:  # a std needs two values
        tiny = [p for p in names if prunable[p].numel() < 2]
        if tiny:
            ctx.log(f"{technique}: skipping layer(s) with fewer than 2 weights (no std for the "
                    f"quality threshold): {', '.join(tiny)}")
            names = [p for p in names if p not in tiny]
    if not names:
        raise ConfigError(f"{technique}: this model has no Linear or Conv weight to prune")
    return _Plan(technique, model, {p: prunable[p] for p in names}, per_layer=per_layer,
                 global_sparsity=config.global_sparsity, quality=quality)


def _prune(plan: _Plan, masks: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Prune ``plan``'s weights to its current target, merging with (and updating) ``masks``;
    zero the pruned weights. Returns one record per layer."""
    weights = plan.weights
    thresholds: dict[str, float] = {}
    if plan.quality is not None:
        new = {}
        for p, w in weights.items():
            thresholds[p] = quality_threshold(w, plan.quality)
            new[p] = threshold_mask(w, thresholds[p], masks.get(p))
    elif plan.global_sparsity is not None:
        new = global_sparsity_masks(weights, plan.global_sparsity, masks)
    else:
        assert plan.per_layer is not None
        new = {p: sparsity_mask(w, plan.per_layer[p], masks.get(p)) for p, w in weights.items()}
    records = []
    for p, w in weights.items():
        keep = new[p].to(w.device)
        threshold = thresholds.get(p, prune_threshold(w, keep))
        masks[p] = keep
        kept = int(keep.sum())
        records.append({"layer": layer_of(p) or p, "param": p, "params": w.numel(),
                        "kept": kept, "sparsity": 1.0 - kept / w.numel(),
                        "threshold": threshold})
    apply_masks(plan.model, {p: masks[p] for p in weights})
    return records


def _summary(technique: str, records: list[dict[str, Any]]) -> str:
    total = sum(r["params"] for r in records)
    kept = sum(r["kept"] for r in records)
    per = ", ".join(f"{r['layer']} {100.0 * r['kept'] / r['params']:.1f}%" for r in records)
    return (f"{technique}: kept {per}; {kept:,} of {total:,} weights "
            f"({total / max(kept, 1):.1f}x fewer)")


@register_technique("magnitude", MagnitudePruneConfig, kind="prune")
def magnitude_prune(model: nn.Module, config: MagnitudePruneConfig, ctx: Context) -> nn.Module:
    """Remove the smallest-magnitude weights once (per layer, global, or Han's threshold)."""
    plan = _make_plan(model, "magnitude", config, ctx)
    layers = _prune(plan, ctx.masks)
    ctx.records.append({"step": "magnitude", "mode": plan.mode, "target": plan.target(),
                        "layers": layers})
    if ctx.progress:
        ctx.log(_summary("magnitude", layers))
    return model


# ---------------------------------------------------------------------------- dropout (Han)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

def _execution_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the leaf modules in the order one forward pass calls them."""
    order: list[str] = []
    handles = [m.register_forward_hook(lambda *_, n=n: order.append(n))
               for n, m in model.named_modules() if not any(True for _ in m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def _dropout_layers(model: nn.Module, example: torch.Tensor, weights: Mapping[str, Any],
                    technique: str, ctx: Context) -> dict[str, str]:
    """Dropout module name -> parameter name of the pruned layer whose outputs it drops (the
    last pruned Linear/Conv called before it, as Caffe's drop6 follows fc6)."""
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    last: str | None = None
    unmatched = []
    for name in _execution_order(model, example):
        if f"{name}.weight" in weights or (not name and "weight" in weights):
            last = f"{name}.weight" if name else "weight"
        elif isinstance(modules[name], _DROPOUTS):
            if last is None:
                unmatched.append(name)
            else:
                out[name] = last
    if unmatched:
        ctx.log(f"{technique}: dropout not scaled (no pruned layer before it): "
                f"{', '.join(unmatched)}")
    return out


# ---------------------------------------------------------------------------- retraining
@register_technique("iterative-magnitude", IterativeMagnitudeConfig, kind="prune")
def iterative_magnitude_prune(model: nn.Module, config: IterativeMagnitudeConfig,
                              ctx: Context) -> nn.Module:
    """Han et al. 2015: rounds of magnitude pruning, each followed by retraining."""
    name = "iterative-magnitude"
    train = ctx.require("train_data", name)
    plan = _make_plan(model, name, config, ctx)
    dropouts: dict[str, str] = {}
    if config.scale_dropout:
        example = next(train.batches(1))[0]
        dropouts = _dropout_layers(model, example, plan.weights, name, ctx)
        modules = dict(model.named_modules())
        d_orig = {d: float(modules[d].p) for d in dropouts}
        c_orig = {p: int(torch.count_nonzero(plan.weights[p].detach()))
                  for p in set(dropouts.values())}
    rounds = []
    for k in range(config.rounds):
        # Round k's target for a layer whose final sparsity is s.
        def at(s: float, k: int = k) -> float:
            return round_sparsities(s, config.rounds, config.sparsity_schedule)[k]

        layers = _prune(plan.scaled(at), ctx.masks)
        info: dict[str, Any] = {"round": k + 1, "layers": layers,
                                "sparsity": 1.0 - sum(r["kept"] for r in layers)
                                / sum(r["params"] for r in layers)}
        if dropouts:
            info["dropout"] = {}
            for d, p in dropouts.items():
                c_now = int(ctx.masks[p].sum())
                modules[d].p = han_dropout(d_orig[d], c_orig[p], min(c_now, c_orig[p]))
                info["dropout"][d] = modules[d].p
        cfg = config.round_finetune(final=k == config.rounds - 1).merged(ctx.finetune)
        start = time.perf_counter()
        with MaskKeeper(model, ctx.masks) as keeper:
            ctx.train(model, cfg, data=train, step_callbacks=[keeper], validate=False)
        info["epochs"] = cfg.epochs
        info["wall_time_s"] = round(time.perf_counter() - start, 2)
        if ctx.val_data is not None:
            info["val_error_pct"] = ctx.val_error(model)
        if ctx.progress:
            val = (f", val error {info['val_error_pct']:.2f}%" if "val_error_pct" in info
                   else "")
            ctx.log(f"{name}: round {k + 1}/{config.rounds}: sparsity "
                    f"{100 * info['sparsity']:.2f}%{val}")
        rounds.append(info)
    ctx.records.append({"step": name, "mode": plan.mode, "target": plan.target(),
                        "rounds": rounds, "layers": rounds[-1]["layers"],
                        "epochs_total": sum(r["epochs"] for r in rounds),
                        "train": config.round_finetune(final=False).merged(ctx.finetune)
                        .to_dict()})
    return model


class _GradualPruner:
    """A fit step callback: raises the sparsity at the scheduled steps and otherwise keeps
    the masks (a fresh MaskKeeper per change, so gradient hooks use the current masks)."""

    def __init__(self, model: nn.Module, plan: _Plan, ctx: Context,
                 sparsity_at: Callable[[int, float], float], steps: Iterable[int]) -> None:
        self.model, self.plan, self.ctx, self.sparsity_at = model, plan, ctx, sparsity_at
        self.steps = set(steps)
        self.events: list[dict[str, Any]] = []
        self.layers: list[dict[str, Any]] = []  # per-layer records of the latest raise
        self.keeper = MaskKeeper(model, ctx.masks)

    def prune(self, step: int) -> None:
        layers = _prune(self.plan.scaled(lambda s: self.sparsity_at(step, s)), self.ctx.masks)
        self.layers = layers
        total = sum(r["params"] for r in layers)
        self.events.append({"step": step,
                            "sparsity": 1.0 - sum(r["kept"] for r in layers) / total})
        self.keeper.remove()
        self.keeper = MaskKeeper(self.model, self.ctx.masks)

    def __call__(self, model: nn.Module, step: int) -> None:
        if step in self.steps:
            self.prune(step)
        else:
            self.keeper(model, step)

    def remove(self) -> None:
        self.keeper.remove()


@register_technique("agp", AGPConfig, kind="prune")
def agp_prune(model: nn.Module, config: AGPConfig, ctx: Context) -> nn.Module:
    """Zhu & Gupta 2017: gradual pruning along a cubic schedule while training."""
    name = "agp"
    train = ctx.require("train_data", name)
    plan = _make_plan(model, name, config, ctx)
    cfg = config.pruning_finetune().merged(ctx.finetune)
    final = resolve_finetune(config.end_finetune(), None, ctx.finetune)
    total_steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    every, t0 = config.prune_every, config.start_step
    n = config.n_prunes if config.n_prunes is not None else max((total_steps - t0) // every, 0)
    if t0 + n * every > total_steps:
        raise ConfigError(f"{name}: the schedule ends at step {t0 + n * every} "
                          f"(start_step + n_prunes x prune_every) but {cfg.epochs} epoch(s) "
                          f"have only {total_steps} steps; lower n_prunes or prune_every, or "
                          "raise finetune: {epochs: N}")

    def sparsity_at(step: int, final: float) -> float:
        return agp_sparsity(step, initial=config.initial_sparsity, final=final,
                            start_step=t0, n_prunes=n, every=every)

    steps = agp_prune_steps(t0, n, every)
    pruner = _GradualPruner(model, plan, ctx, sparsity_at, (s for s in steps if s > 0))
    try:
        if steps[0] == 0:
            pruner.prune(0)
        start = time.perf_counter()
        ctx.train(model, cfg, data=train, step_callbacks=[pruner], validate=False)
    finally:
        pruner.remove()
    if final is not None:
        with MaskKeeper(model, ctx.masks) as keeper:
            ctx.train(model, final, data=train, step_callbacks=[keeper], validate=False)
    wall = time.perf_counter() - start
    layers = pruner.layers  # the last raise reached the final sparsity
    record: dict[str, Any] = {"step": name, "mode": plan.mode, "target": plan.target(),
                              "initial_sparsity": config.initial_sparsity, "start_step": t0,
                              "prune_every": every, "n_prunes": n, "events": pruner.events,
                              "layers": layers,
                              "epochs_total": cfg.epochs + (final.epochs if final else 0),
                              "wall_time_s": round(wall, 2), "train": cfg.to_dict()}
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        ctx.log(_summary(name, layers))
    return model
