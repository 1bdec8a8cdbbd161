"""Sensitivity analysis: how much accuracy each layer loses when pruned alone, without
fine-tuning, and per-layer pruning levels chosen from it.

- ``magnitude_sensitivity``: accuracy vs the unstructured sparsity of one layer (its smallest
  weights zeroed, every other layer intact), as in Han et al. 2015, Fig. 6;
- ``channel_sensitivity``: accuracy vs the fraction of output channels removed (L1 filter
  pruning, physically, through ``modelzip.prune.structured``) from one channel group, as in
  Li et al. 2017, Fig. 2;
- ``SensitivityCurves.save_json`` / ``plot_sensitivity``: JSON and PNG;
- ``allocate``: per-layer levels for a target overall sparsity or a target FLOPs fraction.

The allocation rule (one tolerance for all layers). Each curve is first made monotone (the
drop at a level is the worst drop at that level or any lower one, and 0 at level 0). For a
tolerance ``t`` in accuracy points, every layer gets the highest level whose drop stays
within ``t``, interpolated linearly between measured levels, never beyond the highest level
measured (or ``max_level``). Insensitive layers are thus pruned hard and sensitive ones
little. ``t`` is the smallest tolerance that meets the target, found by bisection; the target
is checked on the real result (for channels: a pruned copy, so rounding and coupled layers
count). This is the "prune each layer as far as its own sensitivity allows" recipe of Li et al.
with one knob instead of hand-picked ratios.

The technique ``auto-structured`` (``AutoStructuredConfig``) measures channel sensitivity on
the context's validation data, allocates ratios for a FLOPs or parameter target and applies
``l1-filter`` with them.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.selection import LayerSelector, as_selector, matches, select
from modelzip.data import ImageDataset
from modelzip.errors import ConfigError
from modelzip.prune.structured import (
    ChannelGroup,
    ExampleInputs,
    StructuredPruneConfig,
    channel_groups,
    example_input_for,
    kept_channels,
    prune_in_place,
    structured_prune,
)
from modelzip.registry import Context, normalise_layers, register_technique
from modelzip.train import evaluate

__all__ = [
    "DEFAULT_RATIOS",
    "DEFAULT_SPARSITIES",
    "Allocation",
    "AutoStructuredConfig",
    "SensitivityCurves",
    "allocate",
    "allowed_level",
    "auto_structured_prune",
    "channel_sensitivity",
    "load_sensitivity",
    "magnitude_sensitivity",
    "monotone_drops",
    "plot_sensitivity",
]

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


@dataclass
class SensitivityCurves:
    """Accuracy of the model with one layer pruned at a time.

    ``kind``: "magnitude" (levels are the sparsity of the layer's weight) or "channels"
    (levels are the fraction of the group's output channels removed). ``accuracy_pct[layer]``
    has one value per level; ``achieved[layer]`` the level really reached (channel counts
    are whole numbers); ``sizes[layer]``: weights (magnitude) or output channels (channels)."""

    kind: str
    levels: tuple[float, ...]
    baseline_accuracy_pct: float
    accuracy_pct: dict[str, list[float]]
    achieved: dict[str, list[float]]
    sizes: dict[str, int]
    images: int
    data: str = ""
    criterion: str = "magnitude"
    round_to: int = 1

    def drops(self, layer: str) -> list[float]:
        """Accuracy drop in points at each level (negative: better than the baseline)."""
        return [self.baseline_accuracy_pct - a for a in self.accuracy_pct[layer]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityCurves:
        d = dict(d)
        d["levels"] = tuple(d["levels"])
        return cls(**d)

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        from modelzip.checkpoint import write_atomic

        write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return Path(path)


def load_sensitivity(path: str | os.PathLike[str], key: str | None = None
                     ) -> SensitivityCurves:
    """Read curves written by ``SensitivityCurves.save_json``, or, with ``key``, one entry of
    a JSON object holding several (e.g. {"channels": ..., "magnitude": ...})."""
    try:
        doc = json.loads(Path(path).read_text())
        return SensitivityCurves.from_dict(doc[key] if key is not None else doc)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a sensitivity JSON file ({type(exc).__name__}: "
                          f"{exc})") from None


def _check_levels(levels: Sequence[float], what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in levels)
    if not out or any(not 0.0 < v < 1.0 for v in out) or list(out) != sorted(set(out)):
        raise ConfigError(f"{what} must be increasing values in (0, 1), got {list(levels)}")
    return out


def _accuracy(model: nn.Module, data: ImageDataset, batch_size: int) -> float:
    return evaluate(model, data, batch_size=batch_size).accuracy_pct


@torch.no_grad()
def magnitude_sensitivity(model: nn.Module, data: ImageDataset, *,
                          sparsities: Sequence[float] = DEFAULT_SPARSITIES,
                          layers: LayerSelector | Sequence[str] | None = None,
                          batch_size: int = 500,
                          progress: Callable[[str], None] | None = None) -> SensitivityCurves:
    """Accuracy on ``data`` with the smallest-magnitude fraction ``s`` of one layer's weights
    zeroed, for each layer (Conv/Linear, by module name; ``layers``: a ``LayerSelector`` or
    names/patterns) and each ``s``; the weights are restored after each measurement."""
    from modelzip.prune.magnitude import sparsity_mask
    from modelzip.prune.masks import layer_of, prunable_weights

    levels = _check_levels(sparsities, "sparsities")
    weights = {layer_of(name): w for name, w in prunable_weights(model).items()}
    modules = dict(model.named_modules())
    chosen = select(_selector(layers), {n: modules[n] for n in weights},
                    technique="sensitivity", model=model, kind="prunable layers",
                    takes="Linear and Conv layers")
    was_training = model.training
    model.eval()
    baseline = _accuracy(model, data, batch_size)
    acc: dict[str, list[float]] = {}
    achieved: dict[str, list[float]] = {}
    try:
        for name in chosen:
            w = weights[name]
            saved = w.detach().clone()
            acc[name], achieved[name] = [], []
            for s in levels:
                mask = sparsity_mask(saved, s)
                w.copy_(saved * mask)
                acc[name].append(_accuracy(model, data, batch_size))
                achieved[name].append(1.0 - float(mask.float().mean()))
            w.copy_(saved)
            if progress is not None:
                progress(f"sensitivity {name}: " + ", ".join(
                    f"{s:.2f}->{a:.2f}%" for s, a in zip(levels, acc[name], strict=True)))
    finally:
        model.train(was_training)
    return SensitivityCurves("magnitude", levels, baseline, acc, achieved,
                             {n: weights[n].numel() for n in chosen}, len(data),
                             f"{data.name}/{data.split}")


def channel_sensitivity(model: nn.Module, data: ImageDataset, *,
                        ratios: Sequence[float] = DEFAULT_RATIOS,
                        criterion: str = "l1", round_to: int = 1,
                        layers: LayerSelector | Sequence[str] | None = None,
                        batch_size: int = 500,
                        example_input: ExampleInputs | None = None,
                        progress: Callable[[str], None] | None = None) -> SensitivityCurves:
    """Accuracy on ``data`` with a fraction ``r`` of one channel group's output channels
    (lowest ``criterion`` norm first) physically removed, for each prunable group (keyed by
    its root layer, see ``modelzip.prune.structured.channel_groups``) and each ``r``.
    ``layers`` (a ``LayerSelector`` or names/patterns) limits the groups: any chosen layer
    of a group selects it, and a group holding a layer of its ``ignore`` is left out. A
    level that would leave no channel is recorded as accuracy 0. ``example_input``: one
    batch of the model's inputs that the graph is traced on (a tensor, a tuple or a dict of
    keyword tensors); by default a random batch of the zoo's input shape."""
    levels = _check_levels(ratios, "ratios")
    example = example_input if example_input is not None else example_input_for(model)
    groups = _chosen_groups(model, channel_groups(model, example), _selector(layers))
    model = copy.deepcopy(model).eval()
    baseline = _accuracy(model, data, batch_size)
    acc: dict[str, list[float]] = {}
    achieved: dict[str, list[float]] = {}
    for g in groups:
        acc[g.root], achieved[g.root] = [], []
        for r in levels:
            keep = kept_channels(g.channels, r, round_to)
            if keep in (0, g.channels):
                achieved[g.root].append(1.0 - keep / g.channels)
                acc[g.root].append(0.0 if keep == 0 else baseline)
                continue
            pruned = copy.deepcopy(model)
            rec = prune_in_place(pruned, StructuredPruneConfig(ratio={g.root: r},
                                                               criterion=criterion,
                                                               round_to=round_to),
                                 example, check_each_group=False)
            # What was really removed: whole units (grouped convs, heads) may round it.
            kept = next(row["out_after"] for row in rec["layers"] if row["layer"] == g.root)
            achieved[g.root].append(1.0 - kept / g.channels)
            acc[g.root].append(_accuracy(pruned, data, batch_size))
        if progress is not None:
            progress(f"sensitivity {g.root}: " + ", ".join(
                f"{r:.2f}->{a:.2f}%" for r, a in zip(levels, acc[g.root], strict=True)))
    return SensitivityCurves("channels", levels, baseline, acc, achieved,
                             {g.root: g.channels for g in groups}, len(data),
                             f"{data.name}/{data.split}", criterion, round_to)


def _selector(layers: LayerSelector | Sequence[str] | None) -> LayerSelector | None:
    return as_selector(layers, "sensitivity: layers")


def _chosen_groups(model: nn.Module, groups: list[ChannelGroup],
                   selector: LayerSelector | None) -> list[ChannelGroup]:
    """The prunable groups that ``selector`` chooses (a chosen layer in them, no ignored
    one); a name or pattern that takes no layer of a prunable group is an error."""
    selector = selector or LayerSelector()
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)}
    chosen = set(select(selector, layers, technique="sensitivity", model=model,
                        kind="Conv/Linear layers", takes="Conv and Linear layers"))
    groups = [g for g in groups if g.prunable and not any(selector.ignores(n) for n in g.layers)]
    known = {n for g in groups for n in g.layers}
    unprunable = [e for e in selector.names if not any(matches(e, n) for n in known)]
    if unprunable:
        raise ConfigError(f"sensitivity: unknown or unprunable layer(s) "
                          f"{', '.join(unprunable)}; prunable layers: "
                          f"{', '.join(n for n in layers if n in known)}")
    return [g for g in groups if set(g.layers) & chosen]


def plot_sensitivity(curves: SensitivityCurves | Sequence[SensitivityCurves],
                     path: str | os.PathLike[str], title: str = "") -> Path:
    """One panel per set of curves: accuracy vs level, one line per layer, the unpruned
    accuracy dashed. Written atomically as PNG (Agg backend)."""
    from modelzip.report.plots import _pyplot, save_figure

    sets = [curves] if isinstance(curves, SensitivityCurves) else list(curves)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, c in zip(axes[0], sets, strict=True):
        for layer, acc in c.accuracy_pct.items():
            ax.plot([0.0, *c.achieved[layer]], [c.baseline_accuracy_pct, *acc], marker="o",
                    markersize=3, label=layer)
        ax.axhline(c.baseline_accuracy_pct, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("weights pruned (sparsity of the layer)" if c.kind == "magnitude"
                      else f"output channels removed ({c.criterion.upper()} filter pruning)")
        ax.set_ylabel(f"accuracy % ({c.data}, {c.images} images)")
        ax.set_title(("unstructured, one layer at a time" if c.kind == "magnitude"
                      else "channels, one group at a time") + ", no fine-tuning")
        ax.set_ylim(bottom=max(0.0, min(min(a) for a in c.accuracy_pct.values()) - 5)
                    if c.accuracy_pct else 0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- allocation
def monotone_drops(drops: Sequence[float]) -> list[float]:
    """The running maximum of the drops, starting from 0 (level 0 loses nothing): a curve that
    recovers at a higher level is not trusted to."""
    out, worst = [], 0.0
    for d in drops:
        worst = max(worst, float(d))
        out.append(worst)
    return out


def allowed_level(levels: Sequence[float], drops: Sequence[float], tolerance: float,
                  max_level: float = 1.0) -> float:
    """The highest level whose (monotone) drop stays within ``tolerance`` points, linear
    between measured levels, at most the last measured level and ``max_level``."""
    env = monotone_drops(drops)
    xs, ys = [0.0, *levels], [0.0, *env]
    best = 0.0
    for i in range(1, len(xs)):
        if ys[i] <= tolerance:
            best = xs[i]
            continue
        if ys[i] > ys[i - 1]:  # tolerance lies between ys[i-1] and ys[i]
            best = xs[i - 1] + (xs[i] - xs[i - 1]) * (tolerance - ys[i - 1]) / (ys[i] - ys[i - 1])
        break
    return min(best, max_level)


@dataclass
class Allocation:
    """Per-layer levels chosen by ``allocate`` and what they achieve."""

    levels: dict[str, float]
    tolerance_points: float  # the common accuracy-drop tolerance (points, no fine-tuning)
    target: str  # e.g. "flops <= 0.5" or "sparsity >= 0.9"
    achieved: float  # the FLOPs fraction kept, or the sparsity reached
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bisect(levels_for: Callable[[float], dict[str, float]],
            meets: Callable[[dict[str, float]], tuple[bool, float]],
            t_max: float, steps: int) -> tuple[float, dict[str, float], float]:
    ok, value = meets(levels_for(t_max))
    if not ok:
        raise ConfigError(f"the target cannot be reached within the measured levels: at "
                          f"the highest of them the model gets {value:.4f}; measure higher "
                          "levels or raise max_level")
    lo, hi = 0.0, t_max
    ok0, value0 = meets(levels_for(0.0))
    if ok0:
        return 0.0, levels_for(0.0), value0
    best = (t_max, levels_for(t_max), value)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok, value = meets(levels_for(mid))
        if ok:
            hi, best = mid, (mid, levels_for(mid), value)
        else:
            lo = mid
    return best


def allocate(curves: SensitivityCurves, *, target_flops: float | None = None,
             target_sparsity: float | None = None, model: nn.Module | None = None,
             max_level: float = 1.0, steps: int = 16,
             example_input: ExampleInputs | None = None,
             layers: LayerSelector | None = None) -> Allocation:
    """Per-layer levels for one target, by the rule in the module docstring.

    ``target_sparsity`` (fraction of weights removed): with "magnitude" curves, over the
    weights of the layers measured (computed); with "channels" curves, over all parameters
    of ``model`` (measured on a pruned copy). ``target_flops`` (fraction of MACs kept, e.g.
    0.5): "channels" curves only, measured on a pruned copy of ``model``. ``layers``: only
    its ``ignore`` counts here (the pruned copies keep those layers' channels)."""
    keep = LayerSelector(ignore=layers.ignore) if layers is not None and layers.ignore \
        else None
    if (target_flops is None) == (target_sparsity is None):
        raise ConfigError("give exactly one of target_flops and target_sparsity")
    if target_flops is not None and not 0.0 < target_flops < 1.0:
        raise ConfigError(f"target_flops must be in (0, 1), got {target_flops}")
    if target_sparsity is not None and not 0.0 < target_sparsity < 1.0:
        raise ConfigError(f"target_sparsity must be in (0, 1), got {target_sparsity}")
    layers = list(curves.accuracy_pct)
    if not layers:
        raise ConfigError("the sensitivity curves hold no layer")
    drops = {n: curves.drops(n) for n in layers}
    achieved = curves.achieved

    def levels_for(t: float) -> dict[str, float]:
        return {n: allowed_level(achieved[n], drops[n], t, max_level) for n in layers}

    t_max = max(max(monotone_drops(d)) for d in drops.values()) + 1e-9
    if curves.kind == "magnitude":
        if target_flops is not None:
            raise ConfigError("unstructured sparsity does not reduce dense FLOPs; use channel "
                              "sensitivity curves for a FLOPs target")
        total = sum(curves.sizes[n] for n in layers)

        def meets(lv: dict[str, float]) -> tuple[bool, float]:
            s = sum(lv[n] * curves.sizes[n] for n in layers) / total
            return s >= target_sparsity - 1e-9, s

        t, lv, value = _bisect(levels_for, meets, t_max, max(steps, 30))
        return Allocation(lv, t, f"sparsity >= {target_sparsity}", value)

    if model is None:
        raise ConfigError("allocating channel ratios needs the model (pruned copies measure "
                          "the FLOPs and parameters)")
    example = example_input if example_input is not None else example_input_for(model)
    base = copy.deepcopy(model).eval()
    cache: dict[tuple, dict[str, Any]] = {}

    def prune_copy(lv: dict[str, float]) -> dict[str, Any]:
        key = tuple(round(lv[n], 9) for n in layers)
        if key not in cache:
            ratio = {n: r for n, r in lv.items() if r > 0}
            cfg = StructuredPruneConfig(ratio=ratio, criterion=curves.criterion
                                        if curves.criterion in ("l1", "l2") else "l1",
                                        round_to=curves.round_to, layers=keep)
            cache[key] = prune_in_place(copy.deepcopy(base), cfg, example,
                                        check_each_group=False)
        return cache[key]

    def meets(lv: dict[str, float]) -> tuple[bool, float]:
        rec = prune_copy(lv)
        if target_flops is not None:
            value = rec["macs_after"] / rec["macs_before"]
            return value <= target_flops + 1e-12, value
        value = 1.0 - rec["params_after"] / rec["params_before"]
        return value >= target_sparsity - 1e-12, value

    t, lv, value = _bisect(levels_for, meets, t_max, steps)
    rec = prune_copy(lv)
    target = (f"flops <= {target_flops}" if target_flops is not None
              else f"sparsity >= {target_sparsity}")
    return Allocation(lv, t, target, value,
                      {"macs_before": rec["macs_before"], "macs_after": rec["macs_after"],
                       "params_before": rec["params_before"],
                       "params_after": rec["params_after"]})


# ---------------------------------------------------------------------------- technique
@dataclass(frozen=True)
class AutoStructuredConfig:
    """Sensitivity-driven filter pruning: per-layer ratios from channel sensitivity on the
    context's validation data (see the module docstring), then ``l1-filter`` with them.

    Exactly one target: ``flops_kept`` (fraction of MACs to keep, e.g. 0.5; the name says
    "kept" because ``sparsity`` and ``l1-filter``'s ``ratio`` say what is removed) or
    ``sparsity`` (fraction of parameters to remove). ``levels``: channel ratios measured per group;
    ``max_ratio``: no group loses more; ``val_images``: how many validation images measure
    the accuracy (a seeded, stratified subset). ``layers``: which channel groups may be
    pruned (a ``LayerSelector``, as for ``l1-filter``: a group holding a chosen layer, none
    of ``ignore``)."""

    RENAMED: ClassVar[dict[str, str]] = {"ignored": "layers: {ignore: [...]}"}

    flops_kept: float | None = None
    sparsity: float | None = None
    criterion: str = "l1"
    round_to: int = 1
    levels: tuple[float, ...] = DEFAULT_RATIOS
    max_ratio: float = 0.75
    val_images: int = 2000
    layers: LayerSelector | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.flops_kept is None) == (self.sparsity is None):
            raise ConfigError("auto-structured needs exactly one target: flops_kept (fraction "
                              "of MACs kept) or sparsity (fraction of parameters removed)")
        for name in ("flops_kept", "sparsity"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {v}")
        StructuredPruneConfig(ratio=0.0, criterion=self.criterion, round_to=self.round_to)
        object.__setattr__(self, "levels", _check_levels(self.levels, "levels"))
        normalise_layers(self, "auto-structured", verb="prune")
        if not 0.0 < self.max_ratio < 1.0:
            raise ConfigError(f"max_ratio must be in (0, 1), got {self.max_ratio}")
        if self.val_images < 10:
            raise ConfigError(f"val_images must be >= 10, got {self.val_images}")


def _val_subset(data: ImageDataset, n: int, seed: int) -> ImageDataset:
    if n >= len(data):
        return data
    from modelzip.data import stratified_split

    _, idx = stratified_split(data.labels.numpy(), n / len(data), seed)
    return data.subset(torch.from_numpy(idx))


@register_technique("auto-structured", AutoStructuredConfig, kind="prune")
def auto_structured_prune(model: nn.Module, config: AutoStructuredConfig,
                          ctx: Context) -> nn.Module:
    """Filter pruning with per-layer ratios from measured sensitivity, for a FLOPs target.

    Or a parameter target; sensitive layers are pruned less (see the module docstring)."""
    val = _val_subset(ctx.require("val_data", "auto-structured"), config.val_images,
                      config.seed)
    example = example_input_for(model, ctx)
    log = ctx.log if ctx.progress else None
    curves = channel_sensitivity(model, val, ratios=config.levels, criterion=config.criterion,
                                 round_to=config.round_to, layers=config.layers,
                                 example_input=example, progress=log)
    alloc = allocate(curves, target_flops=config.flops_kept, target_sparsity=config.sparsity,
                     model=model, max_level=config.max_ratio, example_input=example,
                     layers=config.layers)
    ratios = {n: r for n, r in alloc.levels.items() if r > 0}
    ctx.log(f"auto-structured: tolerance {alloc.tolerance_points:.2f} points, ratios " +
            ", ".join(f"{n}={r:.2f}" for n, r in ratios.items()))
    ctx.records.append({"step": "auto-structured", "target": alloc.target,
                        "tolerance_points": alloc.tolerance_points, "ratios": ratios,
                        "predicted": alloc.achieved, "sensitivity": curves.to_dict()})
    if not ratios:
        return model
    # The ratios name the layers; ignore still keeps the channels coupled to those layers.
    keep = LayerSelector(ignore=config.layers.ignore) \
        if config.layers is not None and config.layers.ignore else None
    return structured_prune(model, StructuredPruneConfig(
        ratio=ratios, criterion=config.criterion, round_to=config.round_to, layers=keep), ctx)
