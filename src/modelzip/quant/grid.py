"""Grid hints: what uniform quantization tells the .mzip encoder about a weight.

A per-channel quantized weight has its own grid in every row, so as plain floats it has
about rows x 2^bits distinct values, and a codebook of them costs more than the weight is
worth. The ``uniform`` technique therefore leaves on each module it quantizes a plain Python
attribute (not a parameter or buffer: the state_dict is unchanged)::

    module.modelzip_grid = {"weight": {"scheme": "affine", "bits": 8, "axis": 0,
                                       "scale": float32 array, "zero_point": int64 array}}

``axis`` is 0 per channel (one scale per row along axis 0) and None per tensor (one scale).
``grid_hints(model)`` collects them by state_dict key for ``write_artifact(..., hints=...)``,
which then stores such a weight as its integers on the grid (``modelzip.codec.tensor``). The
encoder checks every element against the grid, so a hint that is out of date (the weight was
fine-tuned or shared afterwards) only costs the attempt; techniques that rewrite a weight
drop its hint anyway (``clear_grid_hint``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelzip.quant.uniform import QuantParams

__all__ = ["GRID_ATTR", "clear_grid_hint", "grid_hint", "grid_hints", "set_grid_hint"]

GRID_ATTR = "modelzip_grid"


def grid_hint(params: QuantParams, bits: int | None) -> dict[str, Any]:
    """The hint of a weight quantized with ``params``: its float32 scales (as ``dequantize``
    rounds them) and integer zero points, one per row along axis 0 or one in all."""
    return {
        "scheme": params.scheme, "bits": bits, "axis": 0 if params.per_channel else None,
        "scale": params.scale.detach().to(torch.float32).cpu().reshape(-1).numpy(),
        "zero_point": params.zero_point.detach().to(torch.int64).cpu().reshape(-1).numpy(),
    }


def set_grid_hint(module: nn.Module, name: str, hint: dict[str, Any]) -> None:
    """Record that ``module``'s parameter ``name`` lies on the grid of ``hint``."""
    hints = dict(getattr(module, GRID_ATTR, None) or {})
    hints[name] = hint
    setattr(module, GRID_ATTR, hints)


def clear_grid_hint(module: nn.Module, name: str) -> None:
    """Forget the grid of ``module``'s parameter ``name`` (its values changed)."""
    hints = dict(getattr(module, GRID_ATTR, None) or {})
    if hints.pop(name, None) is None:
        return
    if hints:
        setattr(module, GRID_ATTR, hints)
    else:
        delattr(module, GRID_ATTR)


def grid_hints(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every grid hint in ``model``, keyed by state_dict key ("fc1.weight"), for
    ``modelzip.codec.write_artifact(..., hints=grid_hints(model))``."""
    out = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, hint in (getattr(module, GRID_ATTR, None) or {}).items():
            out[f"{mname}.{pname}" if mname else pname] = hint
    return out
