"""One verb per technique family, in the spirit of torchao's ``quantize_(model, config)``:
``prune(model, config)``, ``quantize(model, config)`` and ``factorize(model, config)`` check
that the config is of that kind and return the changed copy (``modelzip.apply`` for any
registered technique)."""

from __future__ import annotations

from typing import Any

from torch import nn

from modelzip.core.context import Context
from modelzip.core.registry import apply, technique_for_config
from modelzip.errors import ConfigError

__all__ = ["factorize", "prune", "quantize"]


def _apply_kind(kind: str, model: nn.Module, config: Any, ctx: Context | None) -> nn.Module:
    tech = technique_for_config(config)
    if tech.kind != kind:
        raise ConfigError(f"{type(config).__name__} configures {tech.name}, a {tech.kind} "
                          f"technique; use modelzip.apply (or the {tech.kind} verb)")
    return apply(model, config, ctx)


def prune(model: nn.Module, config: Any, ctx: Context | None = None) -> nn.Module:
    """A pruned copy of ``model`` (``config``: a pruning technique's config)."""
    return _apply_kind("prune", model, config, ctx)


def quantize(model: nn.Module, config: Any, ctx: Context | None = None) -> nn.Module:
    """A quantized copy of ``model`` (``config``: a quantization technique's config)."""
    return _apply_kind("quantize", model, config, ctx)


def factorize(model: nn.Module, config: Any, ctx: Context | None = None) -> nn.Module:
    """A factorized copy of ``model`` (``config``: a low-rank technique's config)."""
    return _apply_kind("factorize", model, config, ctx)
