"""A generic, pickle-free record of the structural changes that techniques make to a model,
replayed onto a freshly built copy of the user's model (the *skeleton*).

Techniques that resize or replace modules (structured pruning, low-rank factorization) change
only three kinds of things, whatever the module type:

- simple attributes of a module (``in_channels``, ``num_features``, ``normalized_shape``,
  ``num_attention_heads``, ...): ints, floats, bools, strings, None and tuples of these;
- the shapes of its own parameters and buffers (including bare ``nn.Parameter`` such as a
  class token, a position embedding or a layer-scale vector);
- the module itself, replaced by another one (a Linear by two, a block by ``nn.Identity``).

``architecture(model)`` describes a model in those terms; ``structure_changes(base, now)``
diffs two descriptions into ``{module: {"attrs": {name: [before, after]},
"tensors": {name: [shape_before, shape_after]}}}`` or ``{module: {"replace": spec}}``; and
``apply_structure(skeleton, changes)`` replays them, checking every "before" value against
the skeleton so that a skeleton of another architecture or width is named at its first
mismatching layer instead of being silently resized. Torch-Pruning restores pruned models
onto a skeleton in the same spirit; nothing here is pickled or evaluated.

A replaced module is rebuilt without calling its constructor: an instance of its class is
made with ``nn.Module.__init__`` only, given the recorded attributes, empty parameters and
buffers of the recorded shapes (the weights are loaded afterwards) and its rebuilt children.
That holds for every ``torch.nn`` layer and modelzip's own layers, whose ``forward`` reads
nothing else; classes are only taken from those two packages.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from modelzip.errors import CheckpointError

__all__ = [
    "BASE_ATTR",
    "apply_structure",
    "architecture",
    "base_architecture",
    "build_module",
    "mark_base",
    "module_spec",
    "structure_changes",
]

BASE_ATTR = "modelzip_base"  # the architecture before the first structural change
# modelzip's own bookkeeping on modules (base, source, zoo spec, quantization grids) is not
# structure: attributes with this prefix are never recorded.
_OWN_PREFIX = "modelzip_"
# Classes a record may name: PyTorch's own layers and modelzip's.
_ALLOWED_PREFIXES = ("torch.nn.", "modelzip.")
# nn.Module's own bookkeeping (training flag, hook dicts, ...): never part of a record.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SIMPLE = (bool, int, float, str, type(None))


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data if it is simple (scalars and nested tuples/lists of them),
    else a sentinel ``_NOT_SIMPLE``."""
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, torch.Size | tuple | list):
        items = [_plain(v) for v in value]
        return _NOT_SIMPLE if any(v is _NOT_SIMPLE for v in items) else items
    return _NOT_SIMPLE


_NOT_SIMPLE = object()


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _simple_attrs(module: nn.Module) -> dict[str, Any]:
    out = {}
    for key, value in vars(module).items():
        if key in _MODULE_INTERNALS or key.startswith(_OWN_PREFIX):
            continue
        plain = _plain(value)
        if plain is not _NOT_SIMPLE:
            out[key] = plain
    return out


def _own_tensors(module: nn.Module) -> dict[str, list[int]]:
    out = {n: list(p.shape) for n, p in module._parameters.items() if p is not None}
    out.update({n: list(b.shape) for n, b in module._buffers.items() if b is not None})
    return out


def architecture(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every module by qualified name ("" for the root): its type, simple attributes, own
    parameter/buffer shapes and child names."""
    return {name: {"type": _type_name(m), "attrs": _simple_attrs(m),
                   "tensors": _own_tensors(m), "children": list(m._modules)}
            for name, m in model.named_modules(remove_duplicate=False)}


def mark_base(model: nn.Module) -> None:
    """Remember ``model``'s architecture as the base of later structural changes, unless one
    is remembered already (a plain attribute: it follows ``copy.deepcopy``)."""
    if not isinstance(getattr(model, BASE_ATTR, None), dict):
        object.__setattr__(model, BASE_ATTR, architecture(model))


def base_architecture(model: nn.Module) -> dict[str, dict[str, Any]] | None:
    base = getattr(model, BASE_ATTR, None)
    return base if isinstance(base, dict) else None


def module_spec(module: nn.Module, where: str = "") -> dict[str, Any]:
    """How to rebuild ``module`` (and its children) without its constructor; refuses a class
    outside torch.nn and modelzip or one that holds non-simple state."""
    type_name = _type_name(module)
    if not type_name.startswith(_ALLOWED_PREFIXES):
        raise CheckpointError(f"module {where or '(root)'} was replaced by a {type_name}, "
                              "which a record cannot rebuild (only torch.nn and modelzip "
                              "layers can replace modules)")
    for key, value in vars(module).items():
        if key not in _MODULE_INTERNALS and _plain(value) is _NOT_SIMPLE and \
                not key.startswith(_OWN_PREFIX):
            raise CheckpointError(f"module {where or '(root)'} ({type_name}) holds attribute "
                                  f"{key!r} of type {type(value).__name__}, which a record "
                                  "cannot rebuild")
    return {"type": type_name, "attrs": _simple_attrs(module),
            # None: a slot the layer reads but leaves empty (Linear(bias=False).bias)
            "parameters": {n: None if p is None else list(p.shape)
                           for n, p in module._parameters.items()},
            "buffers": {n: None if b is None else list(b.shape)
                        for n, b in module._buffers.items()},
            "children": {n: module_spec(c, f"{where}.{n}" if where else n)
                         for n, c in module._modules.items() if c is not None}}


def _class(type_name: str, where: str) -> type[nn.Module]:
    if not isinstance(type_name, str) or not type_name.startswith(_ALLOWED_PREFIXES):
        raise CheckpointError(f"{where}: the record names class {type_name!r}; only torch.nn "
                              "and modelzip layers are rebuilt")
    module_name, _, qualname = type_name.rpartition(".")
    try:
        cls: Any = getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError, ValueError):
        raise CheckpointError(f"{where}: class {type_name} does not exist in this "
                              "installation") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"{where}: {type_name} is not a torch module class")
    return cls


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not (isinstance(value, list) and all(isinstance(d, int) and 0 <= d < 2**31
                                            for d in value)):
        raise CheckpointError(f"{where}: bad tensor shape {value!r} in the record")
    return tuple(value)


def build_module(spec: dict[str, Any], where: str = "module", *,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """A module from ``module_spec`` output, on the meta device when called under
    ``torch.device("meta")``; parameters and buffers are left uninitialised."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: a module record must be a mapping")
    cls = _class(spec.get("type"), where)
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    attrs = spec.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise CheckpointError(f"{where}: attrs must be a mapping")
    for key, value in attrs.items():
        if key in _MODULE_INTERNALS or _plain(value) is _NOT_SIMPLE:
            raise CheckpointError(f"{where}: attribute {key!r} cannot be set from a record")
        # lists come back from JSON; the layers keep tuples (kernel_size, stride, ...)
        object.__setattr__(module, key, _as_tuple(value))
    for key, shape in (spec.get("parameters") or {}).items():
        module.register_parameter(key, None if shape is None else nn.Parameter(
            torch.empty(_shape(shape, where), dtype=dtype)))
    for key, shape in (spec.get("buffers") or {}).items():
        module.register_buffer(key, None if shape is None else
                               torch.empty(_shape(shape, where), dtype=dtype))
    for key, child in (spec.get("children") or {}).items():
        module.add_module(key, build_module(child, f"{where}.{key}", dtype=dtype))
    return module


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def structure_changes(base: dict[str, dict[str, Any]], model: nn.Module
                      ) -> dict[str, dict[str, Any]]:
    """What changed in ``model`` since ``base`` (an ``architecture``), per module."""
    now = architecture(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    changes: dict[str, dict[str, Any]] = {}
    replaced: list[str] = []
    for name in now:
        if any(name.startswith(r + ".") for r in replaced):
            continue  # inside a replaced module: rebuilt with it
        before, after = base.get(name), now[name]
        if before is None or before["type"] != after["type"]:
            changes[name] = {"replace": module_spec(modules[name], name)}
            replaced.append(name)
            continue
        entry: dict[str, Any] = {}
        attrs = {k: [before["attrs"].get(k), v] for k, v in after["attrs"].items()
                 if before["attrs"].get(k) != v}
        tensors = {k: [before["tensors"].get(k), v] for k, v in after["tensors"].items()
                   if before["tensors"].get(k) != v}
        if attrs:
            entry["attrs"] = attrs
        if tensors:
            entry["tensors"] = tensors
        removed = [c for c in before["children"] if c not in after["children"]]
        if removed:
            entry["removed"] = removed
        if entry:
            changes[name] = entry
    return changes


def _mismatch(name: str, what: str) -> CheckpointError:
    return CheckpointError(f"the model does not match the record at layer {name or '(root)'!r}:"
                           f" {what}; build it with the same arguments as the packed model")


def apply_structure(model: nn.Module, changes: dict[str, Any]) -> nn.Module:
    """Replay ``structure_changes`` output onto ``model`` (a freshly built skeleton) in place;
    returns it. Checks each recorded "before" value first."""
    if not isinstance(changes, dict):
        raise CheckpointError("the structure record must be a mapping")
    # parents first, so that a replaced block is in place before anything inside it
    for name in sorted(changes, key=lambda n: (n.count(".") + (n != ""), n)):
        entry = changes[name]
        if not isinstance(entry, dict):
            raise CheckpointError(f"the structure record of layer {name!r} must be a mapping")
        if "replace" in entry:
            if not name:
                raise _mismatch(name, "the root module cannot be replaced")
            parent_name, _, child = name.rpartition(".")
            try:
                parent = model.get_submodule(parent_name) if parent_name else model
            except AttributeError:
                raise _mismatch(parent_name, "no such module in this model") from None
            old = parent._modules.get(child)
            dtype = _float_dtype(old) if old is not None else _float_dtype(model)
            parent.add_module(child, build_module(entry["replace"], name, dtype=dtype))
            continue
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError:
            raise _mismatch(name, "no such module in this model") from None
        for key, pair in (entry.get("attrs") or {}).items():
            before, after = _pair(pair, name, key)
            current = _plain(getattr(module, key, None))
            if current != before:
                raise _mismatch(name, f"{key} is {current!r} here but {before!r} in the "
                                      "model it was packed from")
            object.__setattr__(module, key, _as_tuple(after))
        for key, pair in (entry.get("tensors") or {}).items():
            before, after = _pair(pair, name, key)
            tensor = module._parameters.get(key, module._buffers.get(key))
            current = list(tensor.shape) if tensor is not None else None
            if current != before:
                raise _mismatch(name, f"{key} has shape {current} here but {before} in the "
                                      "model it was packed from")
            empty = torch.empty(_shape(after, name), dtype=tensor.dtype, device=tensor.device)
            if key in module._parameters:
                module._parameters[key] = nn.Parameter(empty, tensor.requires_grad)
            else:
                module._buffers[key] = empty
        for child in entry.get("removed") or []:
            if child not in module._modules:
                raise _mismatch(name, f"it has no child {child!r} to remove")
            del module._modules[child]
    return model


def _pair(value: Any, name: str, key: str) -> tuple[Any, Any]:
    if not (isinstance(value, list) and len(value) == 2):
        raise CheckpointError(f"the structure record of {name}.{key} must be [before, after]")
    return value[0], value[1]


def _float_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
