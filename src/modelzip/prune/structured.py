"""Structured (filter/channel) pruning that physically removes channels.

Three layers, kept apart as Torch-Pruning keeps them:

- importance: plain functions on weight tensors (``filter_norms``, ``l1_importance``,
  ``l2_importance``; Li et al. 2017 rank the filters of a layer by their L1 norm);
- surgery: ``remove_output_channels`` removes given output channels of one layer and everything
  coupled to them, through Torch-Pruning's ``DependencyGraph`` (no home-made tracer);
  ``channel_groups`` / ``prunable_channel_layers`` say what can be pruned;
- the technique ``l1-filter`` (``StructuredPruneConfig``): per-layer or global ratios, L1 or
  L2 criterion, ``round_to``; the result is a smaller dense model.

One registration, named ``l1-filter`` after the CLI method: the registry maps a config class
back to its technique, so a second name for the same ``StructuredPruneConfig`` would make that
mapping ambiguous and list the same technique twice. ``criterion="l2"`` is accepted there too.

Channel groups. Pruning output channel ``i`` of a layer forces removals elsewhere: its
BatchNorm, the input channel ``i`` of every consumer (through pooling, flatten and
concatenation, with the index shifted to the concatenated position), the other end of a
residual addition, and a depthwise convolution together with its own outputs. Torch-Pruning
computes that set; we call it a group, rooted at the first layer (in execution order) whose
output channels it shrinks. ``ratio`` applies to the root's output channels: the group keeps
``round(n * (1 - ratio))`` channels, rounded to the nearest multiple of ``round_to`` (never
fewer than ``round_to``, never more than ``n``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.errors import ConfigError
from modelzip.registry import Context, register_technique

__all__ = [
    "IMPORTANCE",
    "ChannelGroup",
    "StructuredPruneConfig",
    "channel_groups",
    "example_input_for",
    "filter_norms",
    "group_importance",
    "kept_channels",
    "l1_importance",
    "l2_importance",
    "prunable_channel_layers",
    "prune_in_place",
    "remove_output_channels",
    "round_channels",
    "structured_prune",
]

_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# ---------------------------------------------------------------------------- importance
def filter_norms(weight: torch.Tensor, p: int = 1, *, transposed: bool = False) -> torch.Tensor:
    """The ``p``-norm of every output filter of a Conv/Linear weight: shape (out_channels,).
    ``transposed``: a ConvTranspose weight, whose output channels are on dim 1."""
    w = weight.detach()
    if transposed:
        w = w.transpose(0, 1)
    return w.flatten(1).norm(p=p, dim=1)


def l1_importance(weight: torch.Tensor) -> torch.Tensor:
    """Sum of absolute weights per output filter (Li et al. 2017)."""
    return filter_norms(weight, 1)


def l2_importance(weight: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per output filter."""
    return filter_norms(weight, 2)


IMPORTANCE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": l1_importance,
    "l2": l2_importance,
}


def group_importance(channels: int,
                     parts: Sequence[tuple[torch.Tensor, Sequence[int]]]) -> torch.Tensor:
    """One score per root channel of a group, from the filter scores of the layers whose
    outputs shrink with it.

    ``parts``: per such layer, the scores of the channels it shares with the group and the
    root channel index of each. A layer's scores are divided by their mean first, so that a
    residual partner or a depthwise conv with smaller weights counts as much as the root; a
    root channel's score is the mean over the layers that hold it."""
    total = torch.zeros(channels, dtype=torch.float64)
    count = torch.zeros(channels, dtype=torch.float64)
    for scores, root_idxs in parts:
        s = scores.to(torch.float64)
        s = s / s.mean().clamp_min(1e-12)
        idx = torch.as_tensor(list(root_idxs), dtype=torch.int64)
        total.index_add_(0, idx, s)
        count.index_add_(0, idx, torch.ones_like(s))
    return total / count.clamp_min(1.0)


def round_channels(keep: int, n: int, round_to: int = 1) -> int:
    """``keep`` moved to the nearest multiple of ``round_to`` (at least ``round_to``), never
    above ``n``."""
    if round_to > 1:
        keep = max(round_to, round_to * math.floor(keep / round_to + 0.5))
    return min(keep, n)


def kept_channels(n: int, ratio: float, round_to: int = 1) -> int:
    """Channels a layer of ``n`` keeps when a fraction ``ratio`` is pruned: round(n(1-r)),
    then ``round_channels``. May be 0 only with ``round_to == 1`` (the caller reports it)."""
    return round_channels(math.floor(n * (1.0 - ratio) + 0.5), n, round_to)


# ---------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that Torch-Pruning removes together.

    ``root``: the layer whose output channel indices address the group; ``channels``: how many
    it has; ``layers``: every Conv/Linear whose output channels shrink with it (the root, a
    residual partner, a depthwise conv); ``reason``: why it cannot be pruned, or None."""

    root: str
    channels: int
    layers: tuple[str, ...]
    reason: str | None = None

    @property
    def prunable(self) -> bool:
        return self.reason is None


def _tp():
    import torch_pruning as tp

    return tp


def _to_input(example_input: torch.Tensor) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError("example_input must be a tensor with a batch dimension")
    return example_input.detach()


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> Any:
    """Trace ``model`` with Torch-Pruning; a graph it cannot trace is a ConfigError."""
    tp = _tp()
    was_training = model.training
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A tuple, so that Torch-Pruning calls model(x) and never model(*x).
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=(_to_input(example_input),), verbose=False)
    except Exception as exc:  # any failure inside the tracer means "cannot handle"
        raise ConfigError(f"Torch-Pruning cannot trace this model ({type(exc).__name__}: "
                          f"{exc}); structured pruning needs a graph it can follow") from None
    finally:
        model.train(was_training)  # the tracer puts the model in eval mode
    return graph


@dataclass
class _Run:
    """What one forward pass tells: Conv/Linear layers in call order, their MACs for one
    sample, and the output shape."""

    order: list[nn.Module]
    macs: dict[str, int]
    out_shape: torch.Size


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    # Multiply-accumulates per sample, as torch.utils.flop_counter counts conv and matmul.
    per_sample = out.numel() // max(out.shape[0], 1)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    if module.transposed:
        return 0  # no transposed conv in the zoo; not worth a formula
    return per_sample * math.prod(module.kernel_size) * module.in_channels // module.groups


def _run(model: nn.Module, example_input: torch.Tensor) -> _Run:
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    macs: dict[str, int] = {}

    def hook(module: nn.Module, _inputs: Any, out: Any) -> None:
        order.append(module)
        if isinstance(out, torch.Tensor):
            name = names.get(module, "?")
            macs[name] = macs.get(name, 0) + _layer_macs(module, out)

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, _LAYER_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(_to_input(example_input))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    unique: dict[nn.Module, None] = dict.fromkeys(order)
    return _Run(list(unique), macs,
                out.shape if isinstance(out, torch.Tensor) else torch.Size())


def _output_layers(graph: Any) -> set[nn.Module]:
    """Conv/Linear layers whose outputs reach the model output without passing another
    Conv/Linear: their output channels are the model's outputs (the final classifier)."""
    stack = [n for n in graph.module2node.values() if not n.outputs]
    seen: set[int] = set()
    found: set[nn.Module] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, _LAYER_TYPES):
            found.add(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _is_out_pruned(graph: Any, handler: Any) -> bool:
    return bool(graph.is_out_channel_pruning_fn(handler))


def _unsupported_conv(module: nn.Module) -> bool:
    """Grouped convs that are not depthwise: Torch-Pruning 1.6 slices their weights wrongly."""
    return (isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1
            and not (module.groups == module.in_channels == module.out_channels))


@dataclass
class _Group:
    """A ChannelGroup with the module references needed for surgery."""

    root: nn.Module
    root_name: str
    channels: int
    layers: list[tuple[nn.Module, str, list[int], list[int]]]  # module, name, idxs, root idxs
    reason: str | None = None

    def public(self) -> ChannelGroup:
        return ChannelGroup(self.root_name, self.channels,
                            tuple(name for _, name, _, _ in self.layers), self.reason)


def _analyse(model: nn.Module, graph: Any, order: list[nn.Module]) -> list[_Group]:
    """Every channel group, rooted in execution order (``order``), with a reason where it
    cannot be pruned."""
    names = {m: n for n, m in model.named_modules()}
    outputs = _output_layers(graph)
    groups: list[_Group] = []
    visited: set[nn.Module] = set()
    for module in order:
        if module in visited or module not in graph.module2node:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        n = pruner.get_out_channels(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
        layers = []
        reason = None
        for item in group:
            target = item.dep.target.module
            tname = names.get(target) if isinstance(target, nn.Module) else None
            if _unsupported_conv(target):
                reason = (f"its channels reach grouped convolution {tname} "
                          f"(groups={target.groups}), which Torch-Pruning cannot prune")
            if isinstance(target, _LAYER_TYPES) and _is_out_pruned(graph, item.dep.handler):
                visited.add(target)
                layers.append((target, tname or "?", list(item.idxs), list(item.root_idxs)))
                if target in outputs:
                    reason = f"{tname} produces the model output"
        if reason is None and n < 2:
            reason = f"{names[module]} has a single output channel"
        groups.append(_Group(module, names[module], n, layers, reason))
    return groups


def _find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not isinstance(modules[name], _LAYER_TYPES):
        valid = [n for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
        raise ConfigError(f"no Conv/Linear layer named {name!r}; layers: {', '.join(valid)}")
    return modules[name]


def channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """The channel groups of ``model`` (see the module docstring), in execution order, each
    with the reason it cannot be pruned where that is so (e.g. it produces the model
    output). ``example_input`` is one batch, e.g. ``torch.randn(1, 3, 64, 64)``."""
    graph = _build_graph(model, example_input)
    return [g.public() for g in _analyse(model, graph, _run(model, example_input).order)]


def prunable_channel_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the Conv/Linear layers whose output channels can be removed, in module order.

    A layer is listed when Torch-Pruning can trace the channel dependencies of its outputs
    and removing some of them leaves the model's output untouched: the final classifier (and
    any layer coupled to it, e.g. by a residual addition into the logits) is excluded, as are
    layers whose channels reach a grouped, non-depthwise convolution. A residual partner or a
    depthwise conv is listed too: removing its output channels removes the coupled channels
    of the other layers (see ``remove_output_channels``). ``example_input`` is one batch of
    the model's input shape, used only to trace the graph."""
    groups = channel_groups(model, example_input)
    prunable = {name for g in groups if g.prunable for name in g.layers}
    return [n for n, m in model.named_modules() if n in prunable and isinstance(m, _LAYER_TYPES)]


# ---------------------------------------------------------------------------- surgery
def _pruned_dim(module: nn.Module, pname: str, out: bool) -> int | None:
    """Which dim of parameter ``pname`` of ``module`` an out/in-channel removal slices; None
    when the parameter is untouched or the slicing is not a plain index selection."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        depthwise = module.groups > 1 and module.groups == module.out_channels
        if depthwise:
            return 0
        if module.groups > 1:
            return None
        if pname == "bias":
            return 0 if out else -1
        return (1 if module.transposed else 0) if out else (0 if module.transposed else 1)
    if isinstance(module, nn.Linear):
        if pname == "bias":
            return 0 if out else -1
        return 0 if out else 1
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return 0
    return None


def _reindexed_masks(graph: Any, group: Any, masks: dict[str, torch.Tensor],
                     names: dict[nn.Module, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Masks of the group's layers cut the way the group will cut their weights (computed
    before the cut), and the names of masks that cannot be carried over."""
    updated: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue
        prefix = names[module] + "." if names[module] else ""
        out = _is_out_pruned(graph, item.dep.handler)
        for pname, param in module.named_parameters(recurse=False):
            key = prefix + pname
            if key not in masks:
                continue
            dim = _pruned_dim(module, pname, out)
            mask = updated.get(key, masks[key])
            if dim == -1:
                continue
            if dim is None or mask.shape[dim] != param.shape[dim]:
                dropped.append(key)
                continue
            drop = set(int(i) for i in item.idxs)
            keep = torch.tensor([i for i in range(mask.shape[dim]) if i not in drop],
                                dtype=torch.int64)
            updated[key] = mask.index_select(dim, keep)
    return updated, dropped


def _check_group(graph: Any, group: Any, names: dict[Any, str]) -> None:
    for item in group:
        target = item.dep.target.module
        tname = names.get(target, str(target)) if isinstance(target, nn.Module) else "parameter"
        if _unsupported_conv(target):
            raise ConfigError(f"the channels reach grouped convolution {tname} "
                              f"(groups={target.groups}), which Torch-Pruning cannot prune")
        if _is_out_pruned(graph, item.dep.handler) and isinstance(target, _LAYER_TYPES):
            n = graph.get_out_channels(target)
            if n is not None and len(item.idxs) >= n:
                raise ConfigError(f"this would remove every output channel of {tname} "
                                  f"({n}); keep at least one")


def _prune_group(model: nn.Module, graph: Any, root: nn.Module, idxs: Sequence[int],
                 masks: dict[str, torch.Tensor] | None, example_input: torch.Tensor,
                 out_shape: torch.Size, log: Callable[[str], None] | None = None,
                 check: bool = True) -> None:
    names = {m: n for n, m in model.named_modules()}
    pruner = graph.get_pruner_of_module(root)
    group = graph.get_pruning_group(root, pruner.prune_out_channels, sorted(set(idxs)))
    _check_group(graph, group, names)
    updated, dropped = _reindexed_masks(graph, group, masks or {}, names)
    try:
        group.prune()
    except Exception as exc:
        raise ConfigError(f"Torch-Pruning failed to remove channels of {names[root]} "
                          f"({type(exc).__name__}: {exc})") from None
    if masks is not None:
        for key in dropped:
            masks.pop(key, None)
            updated.pop(key, None)
        masks.update(updated)
        if dropped and log is not None:
            log(f"dropped the pruning masks of {', '.join(sorted(set(dropped)))}: their "
                "layout cannot be re-indexed")
    if not check:
        return
    # A graph Torch-Pruning misread shows up as a failing or reshaped forward pass.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = model(_to_input(example_input))
    except Exception as exc:
        raise ConfigError(f"after removing channels of {names[root]} the model no longer "
                          f"runs ({type(exc).__name__}: {exc}); an operation that consumes "
                          "them is not one Torch-Pruning handles") from None
    finally:
        model.train(was_training)
    if isinstance(result, torch.Tensor) and result.shape != out_shape:
        raise ConfigError(f"removing channels of {names[root]} changed the output shape from "
                          f"{tuple(out_shape)} to {tuple(result.shape)}")


def remove_output_channels(model: nn.Module, layer_name: str, indices: Sequence[int],
                           example_input: torch.Tensor, *,
                           masks: dict[str, torch.Tensor] | None = None) -> None:
    """Physically remove output channels ``indices`` of Conv/Linear layer ``layer_name``, in
    place, and everything that depends on them.

    Torch-Pruning's ``DependencyGraph`` is traced with ``example_input`` (one batch of the
    model's input) and removes, together with the filters: the BatchNorm entries, the input
    channels of every consumer (through pooling and flatten, with indices shifted through a
    concatenation), the same channels of the other end of a residual addition, and the
    matching channels of a depthwise conv (and, for a depthwise ``layer_name``, of the
    branches feeding it). Layer attributes (``out_channels``, ``in_features``, ``groups``,
    ``num_features``) are updated, so ``zoo.layer_shapes`` records the new shapes and a
    checkpoint reloads. Parameters are replaced by new tensors: build optimizers afterwards.
    ``masks`` (pruning masks keyed by parameter name, as ``Context.masks``) are re-indexed
    in place; masks whose layout cannot be re-indexed are dropped. Raises ConfigError for an
    unknown or unprunable layer (the final classifier), indices out of range, a removal that
    would empty a layer, or a graph Torch-Pruning cannot handle; in the last case the model
    may be left partly changed (prune a copy when that matters)."""
    layer = _find_layer(model, layer_name)
    idxs = sorted({int(i) for i in indices})
    graph = _build_graph(model, example_input)
    if layer not in graph.module2node:
        raise ConfigError(f"layer {layer_name!r} is not used by the forward pass")
    pruner = graph.get_pruner_of_module(layer)
    n = pruner.get_out_channels(layer)
    bad = [i for i in idxs if not 0 <= i < n]
    if bad:
        raise ConfigError(f"channel indices {bad} out of range for {layer_name} ({n} output "
                          "channels)")
    if len(idxs) >= n:
        raise ConfigError(f"this would remove every output channel of {layer_name} ({n}); "
                          "keep at least one")
    if not idxs:
        return
    outputs = _output_layers(graph)
    if layer in outputs:
        raise ConfigError(f"{layer_name} produces the model output; its channels cannot be "
                          "removed")
    names = {m: nm for nm, m in model.named_modules()}
    group = graph.get_pruning_group(layer, pruner.prune_out_channels, idxs)
    for item in group:
        target = item.dep.target.module
        if target in outputs and _is_out_pruned(graph, item.dep.handler):
            raise ConfigError(f"removing channels of {layer_name} would remove outputs of "
                              f"{names[target]}, which produces the model output")
    _prune_group(model, graph, layer, idxs, masks, example_input,
                 _run(model, example_input).out_shape)


# ---------------------------------------------------------------------------- technique
@dataclass(frozen=True)
class StructuredPruneConfig:
    """Filter pruning (Li et al. 2017) with physical removal of channels.

    ``ratio``: fraction of output channels removed from every prunable layer, or a mapping
    layer name -> fraction (layers not named are left alone). ``criterion``: "l1" or "l2"
    norm of the filters. ``global_ranking``: rank the filters of all layers together (scores
    normalised per group) and remove ``ratio`` of all channels, so layers differ; needs a
    single float ratio. ``round_to``: kept channel counts are multiples of this (8 suits SIMD
    kernels). ``ignored``: layers whose output channels are kept."""

    ratio: float | dict[str, float] = 0.5
    criterion: str = "l1"
    global_ranking: bool = False
    round_to: int = 1
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.criterion not in IMPORTANCE:
            raise ConfigError(f"criterion must be one of {', '.join(IMPORTANCE)}, got "
                              f"{self.criterion!r}")
        if isinstance(self.ratio, dict):
            for name, r in self.ratio.items():
                if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 <= r < 1.0:
                    raise ConfigError(f"ratio of layer {name!r} must be in [0, 1), got {r!r}")
            object.__setattr__(self, "ratio", {str(k): float(v) for k, v in self.ratio.items()})
            if self.global_ranking:
                raise ConfigError("global_ranking needs one ratio for the whole model, not a "
                                  "per-layer mapping")
        elif (isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float)
              or not 0.0 <= self.ratio < 1.0):
            raise ConfigError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) \
                or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        object.__setattr__(self, "ignored", tuple(self.ignored))


def example_input_for(model: nn.Module, ctx: Context | None = None) -> torch.Tensor:
    """One seeded random batch of the model's input shape (from its zoo spec, else from the
    context's data)."""
    spec = getattr(model, "modelzip_spec", None)
    shape = tuple(getattr(spec, "input_shape", ()) or ())
    if not shape and ctx is not None:
        for data in (ctx.train_data, ctx.val_data, ctx.test_data):
            if data is not None:
                shape = tuple(data.input_shape)
                break
    if not shape:
        raise ConfigError("structured pruning needs the model's input shape: build the model "
                          "with modelzip.zoo.build_model or put a dataset in the Context")
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))


def _layer_importance(module: nn.Module, criterion: str) -> torch.Tensor:
    p = 1 if criterion == "l1" else 2
    return filter_norms(module.weight, p, transposed=bool(getattr(module, "transposed", False)))


def _scores(group: _Group, criterion: str) -> torch.Tensor:
    parts = []
    for module, _, idxs, root_idxs in group.layers:
        scores = _layer_importance(module, criterion)
        parts.append((scores[torch.as_tensor(idxs, dtype=torch.int64)], root_idxs))
    return group_importance(group.channels, parts)


def _member_limits(group: _Group) -> list[list[int]]:
    """For each Conv/Linear whose outputs shrink with the group, the root channels it holds."""
    return [list(root_idxs) for _, _, _, root_idxs in group.layers]


def _choose(scores: torch.Tensor, keep: int, limits: list[list[int]]) -> list[int]:
    """Root channels to remove: the lowest scores, but never all channels of one member
    (possible when a group spans a concatenation)."""
    order = torch.argsort(scores, stable=True).tolist()
    remove = set(order[: len(order) - keep])
    for held in limits:
        if held and all(i in remove for i in held):
            remove.discard(max(held, key=lambda i: float(scores[i])))
    return sorted(remove)


def _group_ratio(group: _Group, ratio: dict[str, float]) -> float | None:
    named = {name: ratio[name] for _, name, _, _ in group.layers if name in ratio}
    if not named:
        return None
    if len(set(named.values())) > 1:
        pairs = ", ".join(f"{k}={v}" for k, v in named.items())
        raise ConfigError(f"layers {', '.join(named)} share their output channels (one "
                          f"channel group) but were given different ratios: {pairs}")
    return next(iter(named.values()))


def _plan(groups: list[_Group], config: StructuredPruneConfig
          ) -> list[tuple[_Group, list[int]]]:
    """Root channel indices to remove, per prunable group."""
    plan: list[tuple[_Group, list[int]]] = []
    if config.global_ranking:
        scores = {id(g): _scores(g, config.criterion) for g in groups}
        flat = sorted(((float(s), id(g), i) for g in groups
                       for i, s in enumerate(scores[id(g)].tolist())))
        total = sum(g.channels for g in groups)
        n_remove = math.floor(total * float(config.ratio) + 0.5)  # type: ignore[arg-type]
        removed: dict[int, int] = {}
        for _, gid, _ in flat[:n_remove]:
            removed[gid] = removed.get(gid, 0) + 1
        for g in groups:
            keep = round_channels(max(1, g.channels - removed.get(id(g), 0)), g.channels,
                                  config.round_to)
            if keep < g.channels:
                plan.append((g, _choose(scores[id(g)], keep, _member_limits(g))))
        return plan
    for g in groups:
        r = (_group_ratio(g, config.ratio) if isinstance(config.ratio, dict)
             else float(config.ratio))
        if not r:
            continue
        keep = kept_channels(g.channels, r, config.round_to)
        if keep == 0:
            raise ConfigError(f"ratio {r} would remove every one of the {g.channels} output "
                              f"channels of {g.root_name}; use a smaller ratio")
        if keep < g.channels:
            plan.append((g, _choose(_scores(g, config.criterion), keep, _member_limits(g))))
    return plan


def _layer_table(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            out[name] = {"in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
    return out


def prune_in_place(model: nn.Module, config: StructuredPruneConfig,
                   example_input: torch.Tensor, *,
                   masks: dict[str, torch.Tensor] | None = None,
                   log: Callable[[str], None] | None = None,
                   check_each_group: bool = True) -> dict[str, Any]:
    """The ``l1-filter`` technique on ``model`` itself (no copy); returns its record: the
    per-layer channels and MACs before and after, and the groups not pruned with the reason.
    ``check_each_group``: run the model after each group (names the layer whose removal
    broke it) rather than once at the end."""
    run = _run(model, example_input)
    graph = _build_graph(model, example_input)
    groups = _analyse(model, graph, run.order)
    layer_names = [n for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
    named = set(config.ignored) | (set(config.ratio) if isinstance(config.ratio, dict)
                                   else set())
    unknown = sorted(named - set(layer_names))
    if unknown:
        prunable = sorted({n for g in groups if g.reason is None for n in g.public().layers},
                          key=layer_names.index)
        raise ConfigError(f"unknown layer(s) {', '.join(unknown)}; prunable layers: "
                          f"{', '.join(prunable)} (Conv/Linear layers: {', '.join(layer_names)})")
    usable, skipped = [], []
    for g in groups:
        hit = sorted(set(config.ignored) & {name for _, name, _, _ in g.layers})
        if g.reason is None and hit:
            g.reason = f"coupled to ignored layer(s) {', '.join(hit)}"
        (usable if g.reason is None else skipped).append(g)
    if skipped and log is not None:
        log("l1-filter: not pruned: " + "; ".join(
            f"{', '.join(g.public().layers)} ({g.reason})" for g in skipped))
    before_layers = _layer_table(model)
    params_before = sum(p.numel() for p in model.parameters())
    plan = _plan(usable, config)
    for g, idxs in plan:
        _prune_group(model, graph, g.root, idxs, masks, example_input, run.out_shape, log,
                     check=check_each_group)
    try:
        after = _run(model, example_input)
    except Exception as exc:
        roots = ", ".join(g.root_name for g, _ in plan)
        raise ConfigError(f"after removing channels of {roots} the model no longer runs "
                          f"({type(exc).__name__}: {exc}); an operation that consumes them is "
                          "not one Torch-Pruning handles") from None
    if after.out_shape != run.out_shape:
        raise ConfigError(f"pruning changed the output shape from {tuple(run.out_shape)} to "
                          f"{tuple(after.out_shape)}")
    after_layers = _layer_table(model)
    layers = []
    for name, before in before_layers.items():
        now = after_layers[name]
        layers.append({"layer": name, "in_before": before["in"], "in_after": now["in"],
                       "out_before": before["out"], "out_after": now["out"],
                       "macs_before": run.macs.get(name, 0), "macs_after": after.macs.get(name, 0)})
    macs_before, macs_after = sum(run.macs.values()), sum(after.macs.values())
    return {
        "step": "l1-filter", "criterion": config.criterion,
        "ratio": config.ratio, "global_ranking": config.global_ranking,
        "round_to": config.round_to, "macs_before": macs_before, "macs_after": macs_after,
        "macs_ratio": macs_after / max(macs_before, 1), "params_before": params_before,
        "params_after": sum(p.numel() for p in model.parameters()), "layers": layers,
        "skipped": [{"layers": list(g.public().layers), "reason": g.reason}
                    for g in groups if g.reason is not None],
    }


@register_technique("l1-filter", StructuredPruneConfig)
def structured_prune(model: nn.Module, config: StructuredPruneConfig,
                     ctx: Context) -> nn.Module:
    """Filter pruning (Li et al. 2017): remove the filters with the smallest L1/L2 norm.

    The coupled channels go with them (see ``remove_output_channels``); returns a smaller
    dense copy of the model. MACs in the record are those of the Conv/Linear layers, per
    sample."""
    example = example_input_for(model, ctx)
    model = copy.deepcopy(model)  # a failure half-way must not leave the caller's model broken
    ctx.records.append(prune_in_place(model, config, example, masks=ctx.masks, log=ctx.log))
    model.eval()
    return model
