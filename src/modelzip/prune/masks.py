"""Pruning masks: which weights are kept. Masks are bool tensors keyed by parameter name;
they are kept through fine-tuning by ``MaskKeeper`` and can be recovered from a saved model
with ``masks_from_zeros`` (a pruned weight is stored as exactly zero)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["MaskKeeper", "apply_masks", "keep_zeros", "layer_of", "masks_from_zeros",
           "prunable_weights", "weight_param"]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of Linear and Conv layers by parameter name (biases and norms are not pruned,
    as in Han et al. 2015)."""
    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            out[f"{mname}.weight" if mname else "weight"] = module.weight
    return out


def layer_of(param_name: str) -> str:
    """The module that owns a parameter: "fc1.weight" -> "fc1"."""
    return param_name.rpartition(".")[0]


def weight_param(name: str, weights: dict[str, nn.Parameter]) -> str | None:
    """The key in ``weights`` (from ``prunable_weights``) that a user's name means: a weight
    ("fc1.weight") or its layer ("fc1"); None when it means neither."""
    if name in weights:
        return name
    if f"{name}.weight" in weights:
        return f"{name}.weight"
    return None


def masks_from_zeros(model: nn.Module, names: Iterable[str] | None = None
                     ) -> dict[str, torch.Tensor]:
    """Masks (weight != 0) of the prunable weights that contain at least one zero."""
    weights = prunable_weights(model)
    chosen = weights if names is None else {n: weights[n] for n in names}
    return {n: (w.detach() != 0) for n, w in chosen.items() if bool((w == 0).any())}


def keep_zeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` (the context's, updated in place and returned) with the exact zeros of every
    prunable weight that has any: a model that comes pruned (e.g. from a checkpoint) brings
    no masks, its zeros are them. Training steps keep these fixed, so that they do not
    revive pruned weights."""
    for name, keep in masks_from_zeros(model).items():
        masks[name] = keep & masks[name].to(keep.device) if name in masks else keep
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for {name!r}, which is not a parameter of this model")
        if params[name].shape != mask.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, the weight "
                             f"{tuple(params[name].shape)}")
        # masked_fill, not a multiply: -w * 0 is -0.0, whose sign bit a bit-exact coder
        # would have to store as a value.
        params[name].masked_fill_(~mask.to(torch.bool), 0.0)


class MaskKeeper:
    """Keeps pruned weights at exactly zero during training: their gradients are zeroed
    before the optimizer sees them (so momentum and Adam state get no updates from them),
    and the weights are re-zeroed after every step (weight decay and momentum cannot revive
    them). Use as ``fit(..., step_callbacks=[keeper])`` and call ``remove()`` afterwards."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        params = dict(model.named_parameters())
        self._handles = []
        for name, mask in masks.items():
            m = mask.to(params[name].dtype)
            self._handles.append(params[name].register_hook(lambda g, m=m: g * m))
        apply_masks(model, masks)

    def __call__(self, model: nn.Module, step: int) -> None:
        apply_masks(model, self.masks)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaskKeeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
