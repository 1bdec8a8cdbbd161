"""BatchNorm handling for the search's trials and graph artifacts.

- ``fold-batchnorm``: fold each BatchNorm that directly follows a convolution (the next
  module of the same ``nn.Sequential``) into the convolution's weight and a bias;
- ``recalibrate-batchnorm``: re-estimate the BatchNorm statistics of a pruned network on a
  few training batches (no weight changes).

Why the search uses it before quantizing for a graph artifact: exporting to ONNX
folds BatchNorm into the convolution anyway, multiplying every output channel by its own
scale; weights clustered to 2^b shared values before that become 2^b values *per channel*
after it, and the stored graph loses most of what the clustering saved. Folded first, the
weights that are pruned and clustered are the ones the graph holds.

    w' = w * g / sqrt(var + eps)        b' = (b - mean) * g / sqrt(var + eps) + beta

The convolution keeps its module (its weight is rescaled in place) and the BatchNorm is
replaced by a ``ChannelBias`` holding b' (a module replacement, recorded for the skeleton;
onnxruntime fuses the Conv -> Add into the convolution's bias). The running mean and variance
are what is folded: the statistics of the model as trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.registry import Context, register_technique

__all__ = ["ChannelBias", "FoldBatchNormConfig", "RecalibrateBatchNormConfig", "fold_batchnorm",
           "fold_pairs", "recalibrate_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class ChannelBias(nn.Module):
    """Adds one learned value per channel (dimension 1): what is left of a folded BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.reshape((1, -1) + (1,) * (x.dim() - 2))


@dataclass(frozen=True)
class FoldBatchNormConfig:
    """No options: every BatchNorm right after a convolution in a Sequential is folded."""


def fold_pairs(model: nn.Module) -> list[tuple[nn.Sequential, int, str]]:
    """(container, index of the conv, conv name) for each conv -> BatchNorm pair."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for i in range(len(children) - 1):
            conv, norm = children[i], children[i + 1]
            if isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats \
                    and norm.num_features == conv.out_channels:
                pairs.append((module, i, f"{name}.{i}" if name else str(i)))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Module, norm: nn.Module) -> ChannelBias:
    """Rescale ``conv``'s weight in place (its bias becomes 0); returns the bias module."""
    scale = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    shift = norm.bias if norm.affine else torch.zeros_like(scale)
    conv.weight.mul_(scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1)))
    bias = torch.zeros_like(scale)
    if conv.bias is not None:
        bias = conv.bias.clone()
        conv.bias.zero_()
    out = ChannelBias(len(scale)).to(conv.weight.dtype)
    out.bias.copy_((bias - norm.running_mean) * scale + shift)
    return out


@register_technique("fold-batchnorm", FoldBatchNormConfig, kind="export")
def fold_batchnorm(model: nn.Module, config: FoldBatchNormConfig, ctx: Context) -> nn.Module:
    """Fold BatchNorm layers into the convolutions before them (conv -> BN in a Sequential).

    The outputs are unchanged (in eval mode); the BatchNorm becomes a ChannelBias."""
    folded: list[dict[str, Any]] = []
    for container, i, name in fold_pairs(model):
        conv, norm = container[i], container[i + 1]
        container[i + 1] = _fold(conv, norm)
        folded.append({"layer": name, "channels": conv.out_channels})
    ctx.records.append({"step": "fold-batchnorm", "folded": folded})
    if ctx.progress:
        ctx.log(f"fold-batchnorm: {len(folded)} BatchNorm layer(s) folded")
    return model


@dataclass(frozen=True)
class RecalibrateBatchNormConfig:
    """``batches`` batches of ``batch_size`` training samples (seeded, shuffled)."""

    batches: int = 4
    batch_size: int = 64
    seed: int = 0


@register_technique("recalibrate-batchnorm", RecalibrateBatchNormConfig, kind="train")
def recalibrate_batchnorm(model: nn.Module, config: RecalibrateBatchNormConfig,
                          ctx: Context) -> nn.Module:
    """Re-estimate BatchNorm running statistics on a few training batches; weights unchanged.

    After pruning, each BatchNorm's stored mean and variance no longer match its input; the
    statistics of the pruned network restore much of its accuracy without any gradient step
    (the "adaptive BatchNorm" of Li et al. 2020, EagleEye), which makes the accuracy of an
    un-fine-tuned candidate a better guide to what fine-tuning will reach."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms:
        return model
    data = ctx.require("train_data", "recalibrate-batchnorm")
    saved = {m: m.momentum for m in norms}
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.eval()  # only the BatchNorm layers learn their statistics: dropout stays off
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            try:
                stream = data.batches(config.batch_size, shuffle=True,
                                      generator=torch.Generator().manual_seed(config.seed))
            except TypeError:
                stream = data.batches(config.batch_size)
            for i, (x, _) in enumerate(stream):
                if i >= config.batches:
                    break
                model(x)
    finally:
        for m in norms:
            m.momentum = saved[m]
        model.train(was_training)
    ctx.records.append({"step": "recalibrate-batchnorm", "layers": len(norms),
                        "samples": config.batches * config.batch_size})
    return model
