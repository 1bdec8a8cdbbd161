"""Biases of dead units: once sparsification has zeroed every weight that reads a unit (an
output channel of a Linear or Conv2d), the unit's bias no longer reaches the output, and
setting it to 0.0 costs nothing in accuracy and saves its bytes (a mostly-zero bias codes as a
sparse tensor).

Which layer reads which is taken from consecutive Linear/Conv2d layers in module order (a
Conv2d's input channels; a Linear after a flatten reads ``in_features / channels`` columns per
channel). That guess is checked: the model's outputs on example inputs must stay bit for bit
the same, otherwise the layer's biases are left as they were.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from modelzip.core.dataset import call_model

__all__ = ["unread_channels", "zero_dead_biases"]


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def unread_channels(layer: nn.Module, reader: nn.Module) -> torch.Tensor | None:
    """Bool per output channel of ``layer``: True where every weight of ``reader`` that
    reads it is 0; None when the shapes do not say which weights read which channel."""
    n = _out_channels(layer)
    w = reader.weight.detach()
    if isinstance(reader, nn.Conv2d):
        if reader.groups != 1 or reader.in_channels != n:
            return None
        return (w == 0).all(dim=(0, 2, 3))
    if isinstance(reader, nn.Linear) and reader.in_features % n == 0:
        per = reader.in_features // n  # a flattened (C, H, W) map: H*W columns per channel
        return (w.reshape(w.shape[0], n, per) == 0).all(dim=2).all(dim=0)
    return None


@torch.no_grad()
def zero_dead_biases(model: nn.Module, example_inputs: Any,
                     layers: list[str] | None = None) -> dict[str, int]:
    """Set to 0.0 the biases of units no later weight reads (see the module docstring), for
    the Linear/Conv2d layers named in ``layers`` (default all); returns layer -> biases
    zeroed. A layer whose change would alter the outputs on ``example_inputs`` is left as
    it was."""
    chain = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        reference = call_model(model, example_inputs)
        zeroed: dict[str, int] = {}
        for (name, layer), (_, reader) in itertools.pairwise(chain):
            if layer.bias is None or (layers is not None and name not in layers):
                continue
            dead = unread_channels(layer, reader)
            if dead is None:
                continue
            dead = dead & (layer.bias != 0)
            if not bool(dead.any()):
                continue
            saved = layer.bias.detach().clone()
            layer.bias.masked_fill_(dead, 0.0)
            if torch.equal(call_model(model, example_inputs), reference):
                zeroed[name] = int(dead.sum())
            else:  # something else reads the unit (a skip connection): keep the biases
                layer.bias.copy_(saved)
    finally:
        model.train(was_training)
    return zeroed
