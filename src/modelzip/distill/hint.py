"""FitNets hints (Romero et al. 2015): the student's guided layer learns, through a small
regressor, to give the teacher's hint layer output.

The regressor maps the student's feature to the teacher's shape: for feature maps
(N, C, H, W) a convolution whose kernel is the difference of the spatial sizes plus one (a 1x1
convolution when they match; a convolution can only shrink a map, so a student map smaller
than the teacher's cannot be mapped); for vectors (N, F) a Linear. Layers are chosen by their
``named_modules`` names; their outputs are read with forward hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from modelzip.errors import ConfigError

__all__ = ["capture_output", "feature_of", "layer_by_name", "make_regressor"]


def layer_by_name(model: nn.Module, name: str, who: str, where: str) -> nn.Module:
    """The submodule ``name`` of ``model``, or a ConfigError that lists the layer names."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        names = ", ".join(n for n in modules if n)
        raise ConfigError(f"{where}: the {who} has no layer {name!r}; its layers: {names}")
    return modules[name]


def feature_of(output: Any, what: str) -> torch.Tensor:
    """A layer's output as one tensor (the first of a tuple)."""
    if isinstance(output, tuple | list) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ConfigError(f"{what} does not output a tensor ({type(output).__name__}); choose "
                          "a layer that does")
    return output


@contextmanager
def capture_output(layer: nn.Module, what: str) -> Iterator[dict[str, torch.Tensor]]:
    """While inside, ``box["out"]`` is ``layer``'s output of the latest forward pass."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        box["out"] = feature_of(output, what)

    handle = layer.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...],
                   what: str) -> nn.Module:
    """The regressor from a student feature of ``student_shape`` to a teacher hint of
    ``teacher_shape`` (both with the batch axis first); ``what`` names the two layers."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) == len(t) == 4:
        (_, cs, hs, ws), (_, ct, ht, wt) = s, t
        if hs < ht or ws < wt:
            raise ConfigError(f"no regressor maps {what}: the student's feature map {s[1:]} "
                              f"is smaller than the teacher's hint {t[1:]} (a convolution "
                              "can only shrink it); guide an earlier student layer or hint "
                              "from a later teacher layer")
        return nn.Conv2d(cs, ct, (hs - ht + 1, ws - wt + 1))
    if len(s) == len(t) == 2:
        return nn.Linear(s[1], t[1])
    raise ConfigError(f"no regressor maps {what}: student output {s[1:]} and teacher output "
                      f"{t[1:]} must both be feature maps (C, H, W) or both vectors (F)")
