"""Structured (filter/channel) pruning that physically removes channels, on any traceable
PyTorch model: the zoo's CNNs, a user's own network, ResNet/MobileNet/ConvNeXt/ViT/BERT.

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

Example inputs. Every function that runs the model takes one batch of example inputs, batch
first: a tensor (``model(x)``), a tuple of positional tensors (``model(*x)``) or a dict of
keyword tensors (``model(**x)``); the technique takes ``Context.example_inputs``, else a random
batch of the zoo's input shape. The model is run on them (and on the same inputs with other
values: a forward pass that takes another path for other values, i.e. data-dependent Python
control flow, cannot be pruned from one trace and is refused).

Channel groups. Pruning output channel ``i`` of a layer forces removals elsewhere: its
BatchNorm/LayerNorm entries, the input channel ``i`` of every consumer (through pooling,
flatten and concatenation, with the index shifted to the concatenated position), the other end
of a residual addition (a whole residual stream, with layer-scale and position-embedding
parameters, is one group), and a depthwise convolution together with its own outputs.
Torch-Pruning computes that set; we call it a group, rooted at the first layer (in execution
order) whose output channels it shrinks. ``ratio`` applies to the root's output channels: the
group keeps ``round(n * (1 - ratio))`` channels, rounded to the nearest multiple of
``round_to`` (never fewer than ``round_to``, never more than ``n``).

Units. Some channels can only go together, and a group is pruned in whole units:

- a grouped convolution (``groups=g``, not depthwise) keeps ``g`` equal groups: the channels at
  the same position of each of its groups (input or output side) form one unit, so every group
  loses the same positions (which is also the only slicing Torch-Pruning 1.6 does right);
  positions whose partners belong to another channel group are kept;
- attention heads: the query/key/value projections of a module with an integer
  ``num_attention_heads`` (or ``num_heads``) attribute lose whole heads, together with the
  matching input features of the output projection, and that attribute (with
  ``all_head_size`` where present) is set to the heads kept. A head keeps its dimension.

Everything a pruned model needs to be rebuilt lies in ordinary module attributes (ints,
tuples) and parameter shapes, so a fresh copy of the architecture with those set loads the
pruned state dict.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.dataset import call_model, first_batch_inputs
from modelzip.core.selection import LayerSelector, select, select_values
from modelzip.errors import ConfigError
from modelzip.registry import Context, normalise_layers, register_technique

__all__ = [
    "IMPORTANCE",
    "ChannelGroup",
    "ExampleInputs",
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
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Integer attributes that hold an attention module's head count / head size.
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")

# One batch, batch first: a tensor, a tuple of positional tensors or a dict of keyword tensors.
ExampleInputs = Any


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


# ---------------------------------------------------------------------------- inputs
def _inputs(example_inputs: ExampleInputs) -> ExampleInputs:
    """The example inputs, detached, as a tensor, a tuple or a dict; anything else is a
    ConfigError."""
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.detach()
    if isinstance(example_inputs, Mapping):
        values = {str(k): v.detach() if isinstance(v, torch.Tensor) else v
                  for k, v in example_inputs.items()}
        tensors = list(values.values())
    elif isinstance(example_inputs, tuple | list):
        values = tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in example_inputs)
        tensors = list(values)
    else:
        raise ConfigError("example inputs must be a tensor, a tuple of tensors or a dict of "
                          f"keyword tensors (batch first), got {type(example_inputs).__name__}")
    if not any(isinstance(v, torch.Tensor) for v in tensors):
        raise ConfigError("example inputs hold no tensor; give one batch of the model's "
                          "inputs (a tensor, a tuple of tensors or a dict of keyword tensors)")
    return values


def _why(exc: BaseException) -> str:
    """An exception as one short line, for a one-line ConfigError."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _output_shapes(out: Any) -> tuple[tuple[int, ...], ...]:
    """Shapes of every tensor in a model output (a tensor, or tuples, lists and dicts of them,
    e.g. a ``transformers`` ModelOutput), in order."""
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape),)
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return tuple(s for v in out for s in _output_shapes(v))
    return ()


def _shapes_text(shapes: tuple[tuple[int, ...], ...]) -> str:
    return str(shapes[0]) if len(shapes) == 1 else ", ".join(str(s) for s in shapes)


def _other_values(example_inputs: ExampleInputs) -> list[ExampleInputs]:
    """The same inputs with other values, twice: float tensors negated, then scaled by 4;
    integer tensors reversed, then rolled by one along their last dimension (token ids and
    masks stay valid)."""
    def negated(v: torch.Tensor) -> torch.Tensor:
        if v.is_floating_point() or v.is_complex():
            return -v
        return v.flip(-1) if v.ndim else v

    def scaled(v: torch.Tensor) -> torch.Tensor:
        if v.is_floating_point() or v.is_complex():
            return 4 * v
        return v.roll(1, -1) if v.ndim else v

    def apply(change: Callable[[torch.Tensor], torch.Tensor]) -> ExampleInputs:
        def one(v: Any) -> Any:
            return change(v) if isinstance(v, torch.Tensor) else v

        if isinstance(example_inputs, Mapping):
            return {k: one(v) for k, v in example_inputs.items()}
        if isinstance(example_inputs, tuple):
            return tuple(one(v) for v in example_inputs)
        return one(example_inputs)

    return [apply(negated), apply(scaled)]


def _call_sequence(model: nn.Module, example_inputs: ExampleInputs) -> list[str]:
    """Names of the modules one forward pass calls, in order."""
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    seq: list[str] = []

    def hook(module: nn.Module, _args: Any) -> None:
        seq.append(names[module])

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seq


def _check_fixed_path(model: nn.Module, example_inputs: ExampleInputs) -> None:
    """Refuse a forward pass that calls other modules for other input values: one trace of
    it cannot tell what pruning a layer does to the path not taken."""
    try:
        first = _call_sequence(model, example_inputs)
    except Exception as exc:
        raise ConfigError(f"the model fails on the example inputs ({_why(exc)}); structured "
                          "pruning traces one forward pass of them") from None
    for other in _other_values(example_inputs):
        try:
            second = _call_sequence(model, other)
        except Exception:
            continue  # not valid inputs for this model: nothing to compare
        if second != first:
            break
    else:
        return
    i = next((k for k, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
             min(len(first), len(second)))
    where = f"after {first[i - 1]} it calls" if i else "it starts with"
    one = first[i] if i < len(first) else "nothing more"
    two = second[i] if i < len(second) else "nothing more"
    raise ConfigError(f"cannot trace this model for structured pruning: its forward pass "
                      f"depends on the input values ({where} {one} for the example inputs but "
                      f"{two} for others); remove data-dependent control flow such as "
                      "`if x.sum() > 0:` from forward")


# ---------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that Torch-Pruning removes together.

    ``root``: the layer whose output channel indices address the group; ``channels``: how many
    it has; ``layers``: every Conv/Linear whose output channels shrink with it (the root, a
    residual partner, a depthwise conv, the other attention projections); ``reason``: why it
    cannot be pruned, or None. ``units``: the sets of root channels that can be removed, each
    only as a whole (one channel each, except across a grouped convolution or an attention
    head); root channels in no unit are always kept."""

    root: str
    channels: int
    layers: tuple[str, ...]
    reason: str | None = None
    units: tuple[tuple[int, ...], ...] = ()

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def channelwise(self) -> bool:
        """Every channel can be removed on its own (no grouped convolution or head ties)."""
        return len(self.units) == self.channels and all(len(u) == 1 for u in self.units)


def _tp():
    import torch_pruning as tp

    return tp


def _build_graph(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Trace ``model`` with Torch-Pruning; a graph it cannot trace is a ConfigError."""
    tp = _tp()
    x = _inputs(example_inputs)
    was_training = model.training
    # Torch-Pruning follows autograd: frozen parameters would hide their layers.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        model.eval()
        _check_fixed_path(model, x)
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=x, forward_fn=lambda m, inputs: call_model(m, inputs),
                verbose=False)
    except ConfigError:
        raise
    except Exception as exc:  # any failure inside the tracer means "cannot handle"
        raise ConfigError(f"Torch-Pruning cannot trace this model ({_why(exc)}); structured "
                          "pruning needs a graph it can follow") from None
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)  # the tracer puts the model in eval mode
    return graph


@dataclass
class _Run:
    """What one forward pass tells: Conv/Linear layers in call order, their MACs for one
    sample, and the shapes of the outputs."""

    order: list[nn.Module]
    macs: dict[str, int]
    out_shapes: tuple[tuple[int, ...], ...]


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    # Multiply-accumulates per sample, as torch.utils.flop_counter counts conv and matmul.
    per_sample = out.numel() // max(out.shape[0], 1)
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    if module.transposed:
        return 0  # no transposed conv in the zoo; not worth a formula
    return per_sample * math.prod(module.kernel_size) * module.in_channels // module.groups


def _run(model: nn.Module, example_inputs: ExampleInputs) -> _Run:
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
            out = call_model(model, _inputs(example_inputs))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    unique: dict[nn.Module, None] = dict.fromkeys(order)
    return _Run(list(unique), macs, _output_shapes(out))


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


def _int_attr(module: Any, attrs: Sequence[str]) -> int | None:
    for a in attrs:
        v = getattr(module, a, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _tp_depthwise(module: nn.Module) -> bool:
    """What Torch-Pruning prunes as a depthwise conv (input channel i is output channel i)."""
    return (isinstance(module, _CONV_TYPES) and module.groups == module.out_channels
            and module.out_channels > 1)


def _grouped(module: Any) -> bool:
    """A grouped convolution that is not depthwise: its groups must stay equal."""
    return isinstance(module, _CONV_TYPES) and module.groups > 1 and not _tp_depthwise(module)


def _unsupported_conv(module: Any) -> str | None:
    """Why Torch-Pruning 1.6 would slice this conv wrongly, or None."""
    if not isinstance(module, _CONV_TYPES) or module.groups == 1:
        return None
    if module.transposed:
        return f"grouped transposed convolution (groups={module.groups})"
    if _tp_depthwise(module) and module.in_channels != module.out_channels:
        return (f"convolution with groups = out_channels = {module.groups} but "
                f"{module.in_channels} input channels")
    return None


def _attention_of(model: nn.Module) -> dict[nn.Module, tuple[nn.Module, str]]:
    """Each Linear inside a module with an integer head count (``num_attention_heads``,
    ``num_heads``): that module (the innermost such) and its name."""
    found: dict[nn.Module, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():  # parents first: inner modules override
        if _int_attr(module, _HEAD_ATTRS) is None:
            continue
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                found[sub] = (module, name)
    return found


@dataclass
class _Attention:
    """Query/key/value projections of one attention module that lose whole heads."""

    module: nn.Module
    name: str
    heads: int
    head_dim: int
    projections: list[nn.Linear]
    heads_before: int = field(init=False)

    def __post_init__(self) -> None:
        self.heads_before = self.heads


@dataclass
class _Traced:
    """A model traced once: the graph and what every group description needs."""

    model: nn.Module
    inputs: ExampleInputs
    graph: Any
    names: dict[Any, str]
    outputs: set[nn.Module]
    attention: dict[nn.Module, tuple[nn.Module, str]]

    @classmethod
    def of(cls, model: nn.Module, example_inputs: ExampleInputs) -> _Traced:
        inputs = _inputs(example_inputs)
        graph = _build_graph(model, inputs)
        return cls(model, inputs, graph, {m: n for n, m in model.named_modules()},
                   _output_layers(graph), _attention_of(model))


@dataclass
class _Group:
    """A ChannelGroup with the module references needed for surgery."""

    root: nn.Module
    root_name: str
    channels: int
    layers: list[tuple[nn.Module, str, list[int], list[int]]]  # module, name, idxs, root idxs
    reason: str | None = None
    units: list[list[int]] = field(default_factory=list)  # removable sets of root channels
    notes: list[str] = field(default_factory=list)  # why channels are tied into units
    attention: list[_Attention] = field(default_factory=list)

    def public(self) -> ChannelGroup:
        return ChannelGroup(self.root_name, self.channels,
                            tuple(name for _, name, _, _ in self.layers), self.reason,
                            tuple(tuple(u) for u in self.units))


class _Ties:
    """Union-find over a group's root channels, with channels that must stay."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.pinned: set[int] = set()

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def tie(self, members: Sequence[int | None]) -> None:
        """These root channels go together; None: a partner outside the group, so they stay."""
        present = [m for m in members if m is not None]
        if len(present) < len(members):
            self.pinned.update(present)
        for m in present[1:]:
            self.parent[self.find(m)] = self.find(present[0])

    def units(self) -> list[list[int]]:
        parts: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            parts.setdefault(self.find(i), []).append(i)
        return sorted((p for p in parts.values() if not self.pinned & set(p)),
                      key=lambda p: p[0])


def _attention_units(tr: _Traced, group_maps: dict[tuple[Any, bool], dict[int, int]],
                     ties: _Ties) -> tuple[list[_Attention], str | None]:
    """Whole-head units for the attention projections among the group's out-pruned Linears
    (two or more, direct children of one module, inside a module with a head count)."""
    by_module: dict[nn.Module, list[nn.Linear]] = {}
    for (target, out) in group_maps:
        if out and isinstance(target, nn.Linear) and target in tr.attention:
            by_module.setdefault(tr.attention[target][0], []).append(target)
    found: list[_Attention] = []
    reason = None
    for module, projs in by_module.items():
        name = tr.attention[projs[0]][1]
        heads = _int_attr(module, _HEAD_ATTRS)
        head_dim = _int_attr(module, _HEAD_DIM_ATTRS)
        if len(projs) == 1 and head_dim and heads and projs[0].out_features > heads * head_dim \
                and projs[0].out_features % (heads * head_dim) == 0:
            reason = (f"{tr.names[projs[0]]} is a fused query/key/value projection, whose heads "
                      "are not pruned")
            continue
        parents = {tr.names[p].rpartition(".")[0] for p in projs}
        if len(projs) < 2 or len(parents) > 1:
            continue  # one projection: e.g. the output projection, part of a residual stream
        sizes = {p.out_features for p in projs}
        kv_heads = _int_attr(module, ("num_key_value_heads",))
        if kv_heads is not None and kv_heads != heads:
            reason = (f"{name} uses grouped-query attention ({kv_heads} key/value heads for "
                      f"{heads} heads), whose heads are not pruned")
            continue
        if head_dim is None and len(sizes) == 1 and next(iter(sizes)) % heads == 0:
            head_dim = next(iter(sizes)) // heads
        if head_dim is None or sizes != {heads * head_dim}:
            reason = (f"the projections of {name} ({', '.join(tr.names[p] for p in projs)}) "
                      f"do not split into its {heads} heads")
            continue
        for p in projs:
            mapping = group_maps[(p, True)]
            for h in range(heads):
                ties.tie([mapping.get(h * head_dim + j) for j in range(head_dim)])
        found.append(_Attention(module, name, heads, head_dim, projs))
    return found, reason


def _describe(tr: _Traced, module: nn.Module) -> _Group:
    """The channel group rooted at ``module``: its layers, units, and why it cannot be
    pruned (or None)."""
    graph, names = tr.graph, tr.names
    pruner = graph.get_pruner_of_module(module)
    n = pruner.get_out_channels(module)
    group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
    layers: list[tuple[nn.Module, str, list[int], list[int]]] = []
    maps: dict[tuple[Any, bool], dict[int, int]] = {}  # (target, out side) -> idx: root idx
    reason = None
    for item in group:
        target = item.dep.target.module
        out = _is_out_pruned(graph, item.dep.handler)
        if not isinstance(target, nn.Module):
            continue  # a bare parameter (layer scale, position embedding): sliced along
        tname = names.get(target, "?")
        maps.setdefault((target, out), {}).update(
            zip((int(i) for i in item.idxs), (int(r) for r in item.root_idxs), strict=True))
        bad = _unsupported_conv(target)
        if bad:
            reason = f"its channels reach {tname}, a {bad}, which Torch-Pruning cannot prune"
        if isinstance(target, _LAYER_TYPES) and out and all(target is not m for m, *_ in layers):
            layers.append((target, tname, list(item.idxs), list(item.root_idxs)))
            if target in tr.outputs:
                reason = f"{tname} produces the model output"
    ties = _Ties(n)
    notes = []
    for (target, out), mapping in maps.items():
        if _grouped(target):
            c = target.out_channels if out else target.in_channels
            size = c // target.groups
            for j in range(size):
                ties.tie([mapping.get(a * size + j) for a in range(target.groups)])
            notes.append(f"grouped convolution {names[target]} (groups={target.groups}) must "
                         "lose the same positions in each of its groups")
    attention, head_reason = _attention_units(tr, maps, ties)
    for att in attention:
        notes.append(f"attention heads of {att.name} go whole ({att.head_dim} channels each)")
    units = ties.units()
    if reason is None:
        reason = head_reason
    if reason is None and n < 2:
        reason = f"{names[module]} has a single output channel"
    if reason is None and not units:
        reason = (f"every channel of {names[module]} is tied to channels of another group ("
                  + "; ".join(notes) + ")")
    if reason is None and len(units) < 2 and not ties.pinned:
        reason = (f"the channels of {names[module]} can only be removed all together ("
                  + "; ".join(notes) + ")")
    return _Group(module, names[module], n, layers, reason, units, notes, attention)


def _analyse(tr: _Traced, order: list[nn.Module]) -> list[_Group]:
    """Every channel group, rooted in execution order (``order``), with a reason where it
    cannot be pruned."""
    groups: list[_Group] = []
    visited: set[nn.Module] = set()
    for module in order:
        if module in visited or module not in tr.graph.module2node:
            continue
        if tr.graph.get_pruner_of_module(module) is None:
            continue
        g = _describe(tr, module)
        visited.update(m for m, *_ in g.layers)
        groups.append(g)
    return groups


def _find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not isinstance(modules[name], _LAYER_TYPES):
        valid = [n for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)]
        raise ConfigError(f"no Conv/Linear layer named {name!r}; layers: {', '.join(valid)}")
    return modules[name]


def channel_groups(model: nn.Module, example_input: ExampleInputs) -> list[ChannelGroup]:
    """The channel groups of ``model`` (see the module docstring), in execution order, each
    with the reason it cannot be pruned where that is so (e.g. it produces the model
    output). ``example_input`` is one batch: a tensor (e.g. ``torch.randn(1, 3, 64, 64)``),
    a tuple of positional tensors or a dict of keyword tensors."""
    tr = _Traced.of(model, example_input)
    return [g.public() for g in _analyse(tr, _run(model, tr.inputs).order)]


def prunable_channel_layers(model: nn.Module, example_input: ExampleInputs) -> list[str]:
    """Names of the Conv/Linear layers whose output channels can be removed, in module order.

    A layer is listed when Torch-Pruning can trace the channel dependencies of its outputs
    and removing some of them leaves the model's output untouched: the final classifier (and
    any layer coupled to it, e.g. a residual stream that is the model's output) is excluded,
    as are layers whose channels cannot be removed in whole units (see the module docstring).
    A residual partner, a depthwise conv or a key/value projection is listed too: removing
    its output channels removes the coupled channels of the other layers (see
    ``remove_output_channels``). ``example_input`` is one batch of the model's inputs (see
    ``channel_groups``), used to trace the graph."""
    groups = channel_groups(model, example_input)
    prunable = {name for g in groups if g.prunable for name in g.layers}
    return [n for n, m in model.named_modules() if n in prunable and isinstance(m, _LAYER_TYPES)]


# ---------------------------------------------------------------------------- surgery
def _mask_cut(module: nn.Module, pname: str, param: torch.Tensor, out: bool,
              idxs: Sequence[int]) -> tuple[int, set[int]] | None:
    """How an out/in-channel removal slices parameter ``pname`` of ``module``: (dim, indices
    removed along it), (-1, {}) when it leaves the parameter alone, None when the slicing is
    not a plain index selection."""
    drop = {int(i) for i in idxs}
    if isinstance(module, _CONV_TYPES):
        if _tp_depthwise(module):
            return 0, drop
        if pname == "bias":
            return (0, drop) if out else (-1, set())
        if module.groups > 1 and module.transposed:
            return None
        if out:
            return (1 if module.transposed else 0), drop
        if module.groups > 1:  # the weight holds the input channels of one group
            size = module.in_channels // module.groups
            return 1, {i % size for i in drop}
        return (0 if module.transposed else 1), drop
    if isinstance(module, nn.Linear):
        if pname == "bias":
            return (0, drop) if out else (-1, set())
        return (0 if out else 1), drop
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm):
        return 0, drop
    if isinstance(module, nn.LayerNorm):
        return param.ndim - 1, drop
    if isinstance(module, nn.Embedding):
        return 1, drop
    return None


def _reindexed_masks(graph: Any, group: Any, masks: dict[str, torch.Tensor],
                     names: dict[Any, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
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
            cut = _mask_cut(module, pname, param, out, item.idxs)
            mask = updated.get(key, masks[key])
            if cut is not None and cut[0] == -1:
                continue
            if cut is None or mask.shape[cut[0]] != param.shape[cut[0]]:
                dropped.append(key)
                continue
            dim, drop = cut
            keep = torch.tensor([i for i in range(mask.shape[dim]) if i not in drop],
                                dtype=torch.int64)
            updated[key] = mask.index_select(dim, keep)
    return updated, dropped


def _check_group(tr: _Traced, group: Any, described: _Group) -> None:
    """Refuse a removal that Torch-Pruning would carry out wrongly (a safety net under the
    units of ``described``) or that would empty a layer."""
    graph, names = tr.graph, tr.names
    heads = {p: att for att in described.attention for p in att.projections}
    for item in group:
        target = item.dep.target.module
        if not isinstance(target, nn.Module):
            continue
        tname = names.get(target, type(target).__name__)
        out = _is_out_pruned(graph, item.dep.handler)
        bad = _unsupported_conv(target)
        if bad:
            raise ConfigError(f"the channels reach {tname}, a {bad}, which Torch-Pruning "
                              "cannot prune")
        idxs = sorted(int(i) for i in item.idxs)
        if _grouped(target):
            size = (target.out_channels if out else target.in_channels) // target.groups
            per_group = [sorted(i % size for i in idxs if i // size == a)
                         for a in range(target.groups)]
            if any(p != per_group[0] for p in per_group):
                raise ConfigError(f"the channels reach grouped convolution {tname} "
                                  f"(groups={target.groups}) unevenly; remove the same "
                                  "positions from each of its groups")
        if out and target in heads:
            d = heads[target].head_dim
            if set(idxs) != {h * d + j for h in {i // d for i in idxs} for j in range(d)}:
                raise ConfigError(f"removing channels of {tname} would split attention heads "
                                  f"of {heads[target].name}; remove whole heads of {d}")
        if out and isinstance(target, _LAYER_TYPES):
            n = graph.get_out_channels(target)
            if n is not None and len(idxs) >= n:
                raise ConfigError(f"this would remove every output channel of {tname} "
                                  f"({n}); keep at least one")


def _update_heads(described: _Group) -> None:
    """Set the head count attributes of the attention modules whose heads were removed."""
    for att in described.attention:
        kept = att.projections[0].out_features // att.head_dim
        if kept == att.heads:
            continue
        for a in (*_HEAD_ATTRS, "num_key_value_heads"):
            if _int_attr(att.module, (a,)) == att.heads:
                setattr(att.module, a, kept)
        if _int_attr(att.module, ("all_head_size",)) == att.heads * att.head_dim:
            att.module.all_head_size = kept * att.head_dim
        att.heads = kept


def _prune_group(tr: _Traced, described: _Group, idxs: Sequence[int],
                 masks: dict[str, torch.Tensor] | None,
                 out_shapes: tuple[tuple[int, ...], ...],
                 log: Callable[[str], None] | None = None, check: bool = True) -> None:
    model, graph, names = tr.model, tr.graph, tr.names
    root = described.root
    pruner = graph.get_pruner_of_module(root)
    group = graph.get_pruning_group(root, pruner.prune_out_channels, sorted(set(idxs)))
    _check_group(tr, group, described)
    updated, dropped = _reindexed_masks(graph, group, masks or {}, names)
    try:
        group.prune()
    except Exception as exc:
        raise ConfigError(f"Torch-Pruning failed to remove channels of {names[root]} "
                          f"({_why(exc)})") from None
    _update_heads(described)
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
            result = call_model(model, tr.inputs)
    except Exception as exc:
        raise ConfigError(f"after removing channels of {names[root]} the model no longer "
                          f"runs ({_why(exc)}); an operation that consumes "
                          "them is not one Torch-Pruning handles") from None
    finally:
        model.train(was_training)
    shapes = _output_shapes(result)
    if shapes != out_shapes:
        raise ConfigError(f"removing channels of {names[root]} changed the output shape from "
                          f"{_shapes_text(out_shapes)} to {_shapes_text(shapes)}")


def _check_units(described: _Group, layer_name: str, idxs: list[int]) -> None:
    """``idxs`` (root channels) must be whole units."""
    if all(len(u) == 1 for u in described.units) and len(described.units) == \
            described.channels:
        return
    chosen = set(idxs)
    covered = {i for u in described.units for i in u}
    if chosen - covered:
        raise ConfigError(f"channels {sorted(chosen - covered)} of {layer_name} cannot be "
                          "removed: they are tied to channels of another group ("
                          + "; ".join(described.notes) + ")")
    split = [u for u in described.units if 0 < len(chosen & set(u)) < len(u)]
    if split:
        raise ConfigError(f"channels of {layer_name} go in sets ("
                          + "; ".join(described.notes) + f"): e.g. {list(split[0])} "
                          "together")


def remove_output_channels(model: nn.Module, layer_name: str, indices: Sequence[int],
                           example_input: ExampleInputs, *,
                           masks: dict[str, torch.Tensor] | None = None) -> None:
    """Physically remove output channels ``indices`` of Conv/Linear layer ``layer_name``, in
    place, and everything that depends on them.

    Torch-Pruning's ``DependencyGraph`` is traced with ``example_input`` (one batch of the
    model's inputs: a tensor, a tuple or a dict, see ``channel_groups``) and removes, together
    with the filters: the BatchNorm/LayerNorm entries, the input channels of every consumer
    (through pooling and flatten, with indices shifted through a concatenation), the same
    channels of the other end of a residual addition (with layer-scale parameters), and the
    matching channels of a depthwise conv (and, for a depthwise ``layer_name``, of the
    branches feeding it). Where channels go in units (a grouped convolution, attention
    heads: see the module docstring), ``indices`` must be whole units. Layer attributes
    (``out_channels``, ``in_features``, ``groups``, ``num_features``, ``normalized_shape``,
    the head count) are updated, so a fresh copy with those attributes loads the state dict.
    Parameters are replaced by new tensors: build optimizers afterwards. ``masks`` (pruning
    masks keyed by parameter name, as ``Context.masks``) are re-indexed in place; masks
    whose layout cannot be re-indexed are dropped. Raises ConfigError for an unknown or
    unprunable layer (the final classifier), indices out of range or not whole units, a
    removal that would empty a layer, or a graph Torch-Pruning cannot handle; in the last
    case the model may be left partly changed (prune a copy when that matters)."""
    layer = _find_layer(model, layer_name)
    idxs = sorted({int(i) for i in indices})
    tr = _Traced.of(model, example_input)
    if layer not in tr.graph.module2node:
        raise ConfigError(f"layer {layer_name!r} is not used by the forward pass")
    pruner = tr.graph.get_pruner_of_module(layer)
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
    if layer in tr.outputs:
        raise ConfigError(f"{layer_name} produces the model output; its channels cannot be "
                          "removed")
    described = _describe(tr, layer)
    group = tr.graph.get_pruning_group(layer, pruner.prune_out_channels, idxs)
    for item in group:
        target = item.dep.target.module
        if target in tr.outputs and _is_out_pruned(tr.graph, item.dep.handler):
            raise ConfigError(f"removing channels of {layer_name} would remove outputs of "
                              f"{tr.names[target]}, which produces the model output")
    _check_group(tr, group, described)
    _check_units(described, layer_name, idxs)
    _prune_group(tr, described, idxs, masks, _run(model, tr.inputs).out_shapes)


# ---------------------------------------------------------------------------- technique
@dataclass(frozen=True)
class StructuredPruneConfig:
    """Filter pruning (Li et al. 2017) with physical removal of channels.

    ``ratio``: fraction of output channels removed from every prunable layer, or a mapping
    layer name (or pattern) -> fraction (layers not named are left alone). ``criterion``:
    "l1" or "l2" norm of the filters. ``global_ranking``: rank the filters of all layers
    together (scores normalised per group) and remove ``ratio`` of all channels, so layers
    differ; needs a single float ratio. ``round_to``: kept channel counts are multiples of
    this (8 suits SIMD kernels). ``layers``: which Conv/Linear layers to prune (a
    ``LayerSelector``; a channel group is pruned when it holds a chosen layer); its
    ``ignore`` keeps the output channels of those layers and of every layer coupled to them.
    Where channels go in units (a grouped convolution, attention heads), whole units are
    removed: the count nearest to the ratio."""

    RENAMED: ClassVar[dict[str, str]] = {"ignored": "layers: {ignore: [...]}"}

    ratio: float | dict[str, float] = 0.5
    criterion: str = "l1"
    global_ranking: bool = False
    round_to: int = 1
    layers: LayerSelector | None = None

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
        normalise_layers(self, "l1-filter", "ratio", "prune")


def example_input_for(model: nn.Module, ctx: Context | None = None) -> ExampleInputs:
    """The context's ``example_inputs`` when set (a tensor, tuple or dict, batch first); else
    one seeded random batch of the model's input shape (from its zoo spec, else from the
    context's image data), or the first batch of the context's other data."""
    given = getattr(ctx, "example_inputs", None) if ctx is not None else None
    if given is not None:
        return _inputs(given)
    spec = getattr(model, "modelzip_spec", None)
    shape = tuple(getattr(spec, "input_shape", ()) or ())
    if not shape and ctx is not None:
        for data in (ctx.train_data, ctx.val_data, ctx.test_data):
            if data is None:
                continue
            if not getattr(data, "input_shape", None):  # any other data: its first batch
                return _inputs(first_batch_inputs(data))
            shape = tuple(data.input_shape)
            break
    if not shape:
        raise ConfigError("structured pruning needs example inputs to trace the model: set "
                          "Context(example_inputs=...) to one batch (a tensor, tuple or dict), "
                          "or give the input shape (a zoo model or a dataset in the Context)")
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


def _unit_scores(group: _Group, scores: torch.Tensor) -> list[float]:
    return [float(scores[torch.as_tensor(u, dtype=torch.int64)].mean()) for u in group.units]


def _choose(group: _Group, scores: torch.Tensor, remove: int, round_to: int = 1) -> list[int]:
    """Root channels to remove: the units of lowest mean score, as close to ``remove``
    channels as whole units allow, but never every channel of the group or of one member
    (possible when a group spans a concatenation); with units larger than one channel, the
    kept count is also brought to a multiple of ``round_to`` by putting units back."""
    units, n = group.units, group.channels
    uscore = _unit_scores(group, scores)
    chosen: list[int] = []
    removed = 0
    for k in sorted(range(len(units)), key=lambda k: uscore[k]):
        size = len(units[k])
        if removed + size / 2 <= remove and removed + size < n:
            chosen.append(k)
            removed += size
    unit_of = {i: k for k, u in enumerate(units) for i in u}
    for _, _, _, held in group.layers:
        gone = {i for k in chosen for i in units[k]}
        if held and all(i in gone for i in held):
            best = max(held, key=lambda i: float(scores[i]))
            chosen.remove(unit_of[best])
    if round_to > 1 and any(len(u) > 1 for u in units):
        chosen.sort(key=lambda k: uscore[k])
        while chosen and (n - sum(len(units[k]) for k in chosen)) % round_to:
            chosen.pop()
    return sorted(i for k in chosen for i in units[k])


def _group_ratio(group: _Group, ratio: dict[str, float]) -> float | None:
    named = {name: ratio[name] for _, name, _, _ in group.layers if name in ratio}
    if not named:
        return None
    if len(set(named.values())) > 1:
        pairs = ", ".join(f"{k}={v}" for k, v in named.items())
        raise ConfigError(f"layers {', '.join(named)} share their output channels (one "
                          f"channel group) but were given different ratios: {pairs}")
    return next(iter(named.values()))


def _chosen_layers(model: nn.Module, config: StructuredPruneConfig, selector: LayerSelector
                   ) -> tuple[float | dict[str, float], set[str]]:
    """The ratio (a per-layer mapping resolved to layer names) and the Conv/Linear layers
    the config chooses; names or patterns that match none raise a ConfigError."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYER_TYPES)}
    options = {"technique": "l1-filter", "model": model, "kind": "Conv/Linear layers",
               "takes": "Conv and Linear layers"}
    if isinstance(config.ratio, dict):
        ratio = select_values(config.ratio, layers, selector=selector, **options)
        return ratio, set(ratio)
    if not layers:
        raise ConfigError("l1-filter: this model has no Conv or Linear layer to prune")
    return float(config.ratio), set(select(selector, layers, **options))


def _plan(groups: list[_Group], config: StructuredPruneConfig,
          ratio: float | dict[str, float]) -> list[tuple[_Group, list[int]]]:
    """Root channel indices to remove, per prunable group (``ratio``: the config's, a
    mapping resolved to layer names)."""
    plan: list[tuple[_Group, list[int]]] = []
    if config.global_ranking:
        scores = [_scores(g, config.criterion) for g in groups]
        flat = sorted((s, gi, k) for gi, g in enumerate(groups)
                      for k, s in enumerate(_unit_scores(g, scores[gi])))
        total = sum(g.channels for g in groups)
        n_remove = math.floor(total * float(ratio) + 0.5)  # type: ignore[arg-type]
        removed = [0] * len(groups)
        count = 0
        for _, gi, k in flat:
            size = len(groups[gi].units[k])
            if count + size / 2 <= n_remove:
                removed[gi] += size
                count += size
        for gi, g in enumerate(groups):
            keep = round_channels(max(1, g.channels - removed[gi]), g.channels,
                                  config.round_to)
            idxs = _choose(g, scores[gi], g.channels - keep, config.round_to)
            if idxs:
                plan.append((g, idxs))
        return plan
    for g in groups:
        r = _group_ratio(g, ratio) if isinstance(ratio, dict) else float(ratio)
        if not r:
            continue
        keep = kept_channels(g.channels, r, config.round_to)
        if keep == 0:
            raise ConfigError(f"ratio {r} would remove every one of the {g.channels} output "
                              f"channels of {g.root_name}; use a smaller ratio")
        if keep < g.channels:
            idxs = _choose(g, _scores(g, config.criterion), g.channels - keep, config.round_to)
            if idxs:
                plan.append((g, idxs))
    return plan


def _layer_table(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _CONV_TYPES):
            out[name] = {"in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
    return out


def prune_in_place(model: nn.Module, config: StructuredPruneConfig,
                   example_input: ExampleInputs, *,
                   masks: dict[str, torch.Tensor] | None = None,
                   log: Callable[[str], None] | None = None,
                   check_each_group: bool = True) -> dict[str, Any]:
    """The ``l1-filter`` technique on ``model`` itself (no copy); returns its record: the
    per-layer channels and MACs before and after, and the groups not pruned with the reason.
    ``example_input``: one batch of the model's inputs (a tensor, tuple or dict, see
    ``channel_groups``). ``check_each_group``: run the model after each group (names the
    layer whose removal broke it) rather than once at the end."""
    tr = _Traced.of(model, example_input)
    run = _run(model, tr.inputs)
    groups = _analyse(tr, run.order)
    selector = config.layers or LayerSelector()
    ratio, chosen = _chosen_layers(model, config, selector)
    ignored = {n for n, m in model.named_modules()
               if isinstance(m, _LAYER_TYPES) and selector.ignores(n)}
    usable, skipped = [], []
    for g in groups:
        members = {name for _, name, _, _ in g.layers}
        hit = sorted(ignored & members)
        if g.reason is None and hit:
            g.reason = f"coupled to ignored layer(s) {', '.join(hit)}"
        if g.reason is not None:
            skipped.append(g)
        elif members & chosen:
            usable.append(g)
    if skipped and log is not None:
        log("l1-filter: not pruned: " + "; ".join(
            f"{', '.join(g.public().layers)} ({g.reason})" for g in skipped))
    before_layers = _layer_table(model)
    params_before = sum(p.numel() for p in model.parameters())
    plan = _plan(usable, config, ratio)
    for g, idxs in plan:
        _prune_group(tr, g, idxs, masks, run.out_shapes, log, check=check_each_group)
    try:
        after = _run(model, tr.inputs)
    except Exception as exc:
        roots = ", ".join(g.root_name for g, _ in plan)
        raise ConfigError(f"after removing channels of {roots} the model no longer runs "
                          f"({_why(exc)}); an operation that consumes them is "
                          "not one Torch-Pruning handles") from None
    if after.out_shapes != run.out_shapes:
        raise ConfigError(f"pruning changed the output shape from "
                          f"{_shapes_text(run.out_shapes)} to {_shapes_text(after.out_shapes)}")
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
        "heads": [{"module": att.name, "heads_before": att.heads_before,
                   "heads_after": att.heads} for g, _ in plan for att in g.attention],
        "skipped": [{"layers": list(g.public().layers), "reason": g.reason}
                    for g in groups if g.reason is not None],
    }


@register_technique("l1-filter", StructuredPruneConfig, kind="prune")
def structured_prune(model: nn.Module, config: StructuredPruneConfig,
                     ctx: Context) -> nn.Module:
    """Filter pruning (Li et al. 2017): remove the filters with the smallest L1/L2 norm.

    The coupled channels go with them (see ``remove_output_channels``); returns a smaller
    dense copy of the model. The model is traced on ``ctx.example_inputs`` (else a random
    batch of the zoo's input shape). MACs in the record are those of the Conv/Linear layers,
    per sample."""
    example = example_input_for(model, ctx)
    model = copy.deepcopy(model)  # a failure half-way must not leave the caller's model broken
    ctx.records.append(prune_in_place(model, config, example, masks=ctx.masks, log=ctx.log))
    model.eval()
    return model
