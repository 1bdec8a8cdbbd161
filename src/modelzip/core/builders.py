"""Reaching a user's own model class from the shell: ``"package.module:function"`` names a
function (or class) that builds the model, called with keyword arguments. The model remembers
how it was built (``modelzip_source``), so that checkpoints and artifacts record it and the
CLI can build the skeleton again in another process.

Importing the named module runs the user's code: only ever a target the user typed, never one
read from a file (a file's record is shown to the user, who passes it back with ``--model``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from modelzip.errors import ConfigError

__all__ = ["SOURCE_ATTR", "build_from_target", "load_target", "source_of"]

SOURCE_ATTR = "modelzip_source"


def load_target(target: str) -> Callable[..., nn.Module]:
    """The callable that ``"package.module:name"`` names (the current folder is importable,
    as with ``python -m``)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model {target!r}: expected MODULE:FUNCTION, e.g. "
                          "mypkg.nets:build_net, or a zoo model name")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {target!r}: cannot import {module_name} ({exc}); run from "
                          "the folder that holds it or install it") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"--model {target!r}: {module_name} has no {attr}")
    if not callable(obj):
        raise ConfigError(f"--model {target!r}: {attr} is not callable")
    return obj


def build_from_target(target: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the builder ``target`` with ``kwargs``; the model records both."""
    builder = load_target(target)
    kwargs = dict(kwargs or {})
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"--model {target}: the builder does not take these arguments "
                          f"({exc})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {target}: the builder returned a "
                          f"{type(model).__name__}, not a torch.nn.Module")
    object.__setattr__(model, SOURCE_ATTR, {"builder": target, "kwargs": kwargs})
    return model


def source_of(model: nn.Module) -> dict[str, Any] | None:
    """How ``model`` can be built again: {"zoo": name, "kwargs": ...} or {"builder": target,
    "kwargs": ...}; None for a model built by code modelzip never saw."""
    source = getattr(model, SOURCE_ATTR, None)
    if isinstance(source, dict):
        return dict(source)
    spec = getattr(model, "modelzip_spec", None)
    if spec is not None and hasattr(spec, "name"):
        return {"zoo": spec.name, "kwargs": dict(spec.kwargs)}
    return None
