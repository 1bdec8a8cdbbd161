"""The technique registry: one frozen config dataclass + one apply function per technique,
registered by name and kind.

    @register_technique("magnitude", MagnitudePruneConfig, kind="prune")
    def magnitude_prune(model, config, ctx) -> nn.Module: ...

    pruned = apply(model, MagnitudePruneConfig(sparsity=0.9), ctx)

One rule for every technique: ``apply`` never changes the caller's model. The technique works
on a copy and its result is returned; if it fails half-way, the model and the context's masks
and records are as they were. Recipes and the CLI reach a technique by its name;
``config_from_dict`` builds its config from YAML/CLI values and names any unknown key.

The registry knows no technique: ``modelzip.techniques`` imports the built-in ones and the
third-party ones of the ``modelzip.techniques`` entry-point group.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from modelzip.core.context import Context
from modelzip.core.modelrec import mark_base
from modelzip.core.selection import as_selector
from modelzip.errors import ConfigError

__all__ = [
    "KINDS",
    "Technique",
    "apply",
    "apply_technique",
    "config_from_dict",
    "get_technique",
    "list_techniques",
    "normalise_layers",
    "register_technique",
]

# What a technique does to a model; the CLI groups its commands and help by kind.
KINDS = ("prune", "quantize", "factorize", "distill", "train", "export", "search")


@dataclass(frozen=True)
class Technique:
    name: str
    kind: str
    config_cls: type
    apply: Callable[[nn.Module, Any, Context], nn.Module]
    summary: str  # the first paragraph of the apply function's docstring
    plugin: str | None = None  # the distribution of a third-party technique


_TECHNIQUES: dict[str, Technique] = {}


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def register_technique(name: str, config_cls: type, *, kind: str,
                       plugin: str | None = None) -> Callable[[Callable[..., nn.Module]],
                                                               Callable[..., nn.Module]]:
    """Register ``apply(model, config, ctx) -> model`` under ``name`` for ``config_cls``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} must be a dataclass")
    if kind not in KINDS:
        raise ValueError(f"technique {name!r}: kind must be one of {', '.join(KINDS)}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _TECHNIQUES:
            raise ValueError(f"technique {name!r} registered twice")
        _TECHNIQUES[name] = Technique(name, kind, config_cls, fn, _first_paragraph(fn.__doc__),
                                      plugin)
        return fn

    return wrap


def _load() -> None:
    from modelzip.techniques import load_techniques

    load_techniques()


def list_techniques(kind: str | None = None) -> list[str]:
    _load()
    return sorted(n for n, t in _TECHNIQUES.items() if kind is None or t.kind == kind)


def get_technique(name: str) -> Technique:
    _load()
    if name not in _TECHNIQUES:
        raise ConfigError(f"unknown technique {name!r}; known: {', '.join(sorted(_TECHNIQUES))}")
    return _TECHNIQUES[name]


def technique_for_config(config: Any) -> Technique:
    _load()
    for tech in _TECHNIQUES.values():
        if type(config) is tech.config_cls:
            return tech
    raise ConfigError(f"no technique is registered for {type(config).__name__}")


def apply(model: nn.Module, config: Any, ctx: Context | None = None) -> nn.Module:
    """Apply the technique that ``config`` belongs to on a copy of ``model``; returns the new
    model. On failure the model and ``ctx`` (masks, records) are unchanged."""
    tech = technique_for_config(config)
    ctx = ctx if ctx is not None else Context()
    work = copy.deepcopy(model)
    mark_base(work)  # structural changes are recorded against the model as it came in
    saved_masks, saved_records = dict(ctx.masks), list(ctx.records)
    try:
        result = tech.apply(work, config, ctx)
    except BaseException:
        ctx.masks.clear()
        ctx.masks.update(saved_masks)
        ctx.records[:] = saved_records
        raise
    if not isinstance(result, nn.Module):
        raise TypeError(f"technique {tech.name!r} returned {type(result).__name__}, not a "
                        "module")
    for key in ("modelzip_spec", "modelzip_source"):  # how to rebuild it stays with it
        if hasattr(model, key) and not hasattr(result, key):
            object.__setattr__(result, key, getattr(model, key))
    mark_base(result)
    return result


apply_technique = apply  # the name recipes and older code use


def _coerce(value: Any, annotation: Any, key: str, technique: str) -> Any:
    """Turn YAML/CLI values into the declared field type (lists to tuples, ints to floats)."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:  # Optional[X]: X's own message is the clearest
            return _coerce(value, args[0], key, technique)
        for arg in args:
            try:
                return _coerce(value, arg, key, technique)
            except ConfigError:
                continue
        raise ConfigError(f"{technique}: {key}={value!r} has the wrong type")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{technique}: {key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key, technique) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{technique}: {key} must be a mapping, got {value!r}")
        _, vt = typing.get_args(hint) or (Any, Any)
        return {str(k): _coerce(v, vt, key, technique) for k, v in value.items()}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        where = f"{technique}: {key}"
        from_value = getattr(hint, "from_value", None)
        if from_value is not None:  # a type with short forms too (a LayerSelector's list)
            return from_value(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        try:
            return _build(hint, value, where)
        except ConfigError as exc:  # say which option of which technique it was
            message = str(exc)
            raise ConfigError(message if message.startswith(where) else f"{where}: {message}"
                              ) from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{technique}: {key} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{technique}: {key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{technique}: {key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{technique}: {key} must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    # A config's RENAMED (old option -> what to write now) turns an old recipe's key into
    # a one-line hint instead of "unknown option".
    renamed = getattr(cls, "RENAMED", {})
    for key in values:
        if key in renamed:
            raise ConfigError(f"{where}: {key} is now {renamed[key]}")
    hints = typing.get_type_hints(cls)
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    kwargs = {k: _coerce(v, hints[k], k, where) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def normalise_layers(config: Any, technique: str, per_layer: str | None = None,
                     verb: str = "take") -> None:
    """Fix up a frozen config's ``layers`` (a name, a list or a mapping -> a
    ``LayerSelector``; an empty list refused) and its per-layer mapping field ``per_layer``
    (-> a plain dict), refusing layer names and the mapping together: the mapping names the
    layers (``types`` and ``ignore`` may go with it). ``verb`` words the message ("prune",
    "quantize")."""
    layers = config.layers
    if isinstance(layers, list | tuple) and not layers:
        raise ConfigError(f"{technique}: layers is empty; leave it out to {verb} every layer "
                          "the technique can handle")
    layers = as_selector(layers, f"{technique}: layers")
    mapping = getattr(config, per_layer) if per_layer is not None else None
    if layers is not None and layers.names and isinstance(mapping, Mapping):
        raise ConfigError(f"{technique}: give either layer names or a per-layer {per_layer} "
                          "mapping, not both (the mapping names the layers; layers: {types, "
                          "ignore} may go with it)")
    object.__setattr__(config, "layers", layers)  # frozen dataclass
    if per_layer is not None and isinstance(mapping, Mapping):
        object.__setattr__(config, per_layer, dict(mapping))


def config_from_dict(name: str, values: dict[str, Any] | None) -> Any:
    """Build the config of technique ``name`` from plain values, naming unknown keys."""
    tech = get_technique(name)
    return _build(tech.config_cls, dict(values or {}), name)
