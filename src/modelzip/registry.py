"""The technique registry: one frozen config dataclass + one apply function per technique.

    @register_technique("magnitude", MagnitudePruneConfig)
    def magnitude_prune(model, config, ctx) -> nn.Module: ...

    model = apply_technique(model, MagnitudePruneConfig(sparsity=0.9), ctx)

Recipes and the CLI reach a technique by its name; ``config_from_dict`` builds its config
from YAML/CLI values and names any unknown key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from modelzip.errors import ConfigError

__all__ = [
    "Context",
    "Technique",
    "apply_technique",
    "config_from_dict",
    "get_technique",
    "list_techniques",
    "normalise_layers",
    "register_technique",
]


@dataclass
class Context:
    """What a technique may need besides the model: data, fine-tuning settings, masks of
    unstructured pruning (kept through later fine-tuning), and a log of what each step did."""

    train_data: Any = None  # ImageDataset used for fine-tuning
    val_data: Any = None  # held out from training: for choices made on accuracy
    test_data: Any = None  # only for reporting
    finetune: Any = None  # TrainConfig for fine-tuning steps
    progress: bool = True
    masks: dict[str, Any] = field(default_factory=dict)  # parameter name -> bool tensor
    records: list[dict[str, Any]] = field(default_factory=list)

    def log(self, message: str) -> None:
        from rich.console import Console

        Console().print(message)  # stdout: stderr is kept for the one-line error

    def require(self, what: str, technique: str) -> Any:
        value = getattr(self, what)
        if value is None:
            raise ConfigError(f"{technique} needs {what.replace('_', ' ')}; pass a dataset "
                              "(e.g. --dataset mnist) or set it in the Context")
        return value


@dataclass(frozen=True)
class Technique:
    name: str
    config_cls: type
    apply: Callable[[nn.Module, Any, Context], nn.Module]
    summary: str


_TECHNIQUES: dict[str, Technique] = {}


def register_technique(name: str, config_cls: type):
    """Register ``apply(model, config, ctx) -> model`` under ``name`` for ``config_cls``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} must be a dataclass")

    def wrap(fn: Callable[[nn.Module, Any, Context], nn.Module]):
        if name in _TECHNIQUES:
            raise ValueError(f"technique {name!r} registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _TECHNIQUES[name] = Technique(name, config_cls, fn, summary)
        return fn

    return wrap


def _load_all() -> None:
    # Importing the technique packages registers them.
    import modelzip.finetune
    import modelzip.prune
    import modelzip.quant
    import modelzip.runtime.qat  # noqa: F401


def list_techniques() -> list[str]:
    _load_all()
    return sorted(_TECHNIQUES)


def get_technique(name: str) -> Technique:
    _load_all()
    if name not in _TECHNIQUES:
        raise ConfigError(f"unknown technique {name!r}; known: {', '.join(sorted(_TECHNIQUES))}")
    return _TECHNIQUES[name]


def _technique_for_config(config: Any) -> Technique:
    _load_all()
    for tech in _TECHNIQUES.values():
        if type(config) is tech.config_cls:
            return tech
    raise ConfigError(f"no technique is registered for {type(config).__name__}")


def apply_technique(model: nn.Module, config: Any, ctx: Context | None = None) -> nn.Module:
    """Apply the technique that ``config`` belongs to; returns the (possibly new) model."""
    tech = _technique_for_config(config)
    return tech.apply(model, config, ctx or Context())


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


def normalise_layers(config: Any, technique: str, per_layer: str, verb: str) -> None:
    """Fix up a frozen config's ``layers`` (a name -> a tuple; empty refused) and its
    per-layer mapping field ``per_layer`` (-> a plain dict), refusing both together: the
    mapping names the layers. ``verb`` words the message ("prune", "quantize")."""
    layers = config.layers
    mapping = getattr(config, per_layer)
    if isinstance(layers, str):
        layers = (layers,)
    if layers is not None:
        layers = tuple(layers)
        if not layers:
            raise ConfigError(f"{technique}: layers is empty; leave it out to {verb} every "
                              "Linear and Conv weight")
        if isinstance(mapping, Mapping):
            raise ConfigError(f"{technique}: give either layers or a per-layer {per_layer} "
                              "mapping, not both (the mapping names the layers)")
    object.__setattr__(config, "layers", layers)  # frozen dataclass
    if isinstance(mapping, Mapping):
        object.__setattr__(config, per_layer, dict(mapping))


def config_from_dict(name: str, values: dict[str, Any] | None) -> Any:
    """Build the config of technique ``name`` from plain values, naming unknown keys."""
    tech = get_technique(name)
    values = dict(values or {})
    hints = typing.get_type_hints(tech.config_cls)
    allowed = {f.name for f in dataclasses.fields(tech.config_cls) if f.init}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    kwargs = {k: _coerce(v, hints[k], k, name) for k, v in values.items()}
    try:
        return tech.config_cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{name}: {exc}") from None
