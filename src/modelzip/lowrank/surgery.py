"""Module surgery for low-rank factorization: a Linear or Conv2d layer is replaced by an
``nn.Sequential`` of plain ``torch.nn`` layers holding the factors, so that
``modelzip.core.modelrec`` records the replacement and rebuilds it on a freshly built
skeleton (and ONNX export sees ordinary convolutions and matmuls).

    Linear (m x n)        -> Linear(n, r, bias=False), Linear(r, m)                 (svd)
    Conv2d k x k          -> Conv2d k x k (C -> r), Conv2d 1x1 (r -> N)            (svd)
                          -> Conv 1x1 (C -> R_in), k x k (R_in -> R_out), 1x1 (R_out -> N)
                                                                                 (tucker2)
                          -> Conv 1x1 (C -> R), depthwise kh x 1, depthwise 1 x kw,
                             1x1 (R -> N)                                           (cp)
                          -> Conv kh x 1 (C -> K), Conv 1 x kw (K -> N)      (separable)

The bias stays on the last layer; stride, padding and dilation are split between the
vertical and horizontal parts where the factorization separates the two axes. The cost
functions give parameters and multiply-accumulates (per sample, counted as PyTorch's
FlopCounterMode counts them) of a factorized layer from its geometry, so that ranks can be
chosen for a budget without building modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelzip.errors import ConfigError
from modelzip.lowrank.decompose import CPResult, SeparableFactors, TuckerResult

__all__ = [
    "ConvGeometry",
    "conv_geometry",
    "conv_padding",
    "conv_svd_module",
    "cp_cost",
    "cp_module",
    "linear_svd_module",
    "original_cost",
    "replace_module",
    "separable_cost",
    "separable_module",
    "supports",
    "svd_cost",
    "tucker2_cost",
    "tucker2_module",
]

SUPPORTED = {
    "svd": (nn.Linear, nn.Conv2d),
    "tucker2": (nn.Conv2d,),
    "cp": (nn.Conv2d,),
    "separable": (nn.Conv2d,),
}


def supports(method: str, module: nn.Module) -> str | None:
    """None when ``method`` can factorize ``module``, else why not."""
    kinds = SUPPORTED[method]
    if not isinstance(module, kinds):
        names = " and ".join(k.__name__ for k in kinds)
        return f"a {type(module).__name__}; {method} supports {names} layers"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"a grouped Conv2d (groups={module.groups}); {method} takes groups=1"
        if module.padding_mode != "zeros":
            return f"a Conv2d with padding_mode={module.padding_mode!r}; {method} takes zeros"
        if isinstance(module.padding, str) and module.padding != "valid" and \
                any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size,
                                                    strict=True)):
            return "a Conv2d with asymmetric 'same' padding"
        if method in ("tucker2", "cp") and module.kernel_size == (1, 1):
            return f"a 1x1 Conv2d; {method} needs a spatial kernel (use svd)"
        if method == "separable" and 1 in module.kernel_size:
            return f"a {module.kernel_size[0]}x{module.kernel_size[1]} Conv2d, already " \
                   "separable"
    return None


@dataclass(frozen=True)
class ConvGeometry:
    """What a layer's cost depends on: its kernel and the spatial sizes (per sample) it
    reads and writes; for a Linear the spatial sizes are 1 (``positions`` > 1 when it runs
    on tokens)."""

    out_features: int
    in_features: int
    kernel: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    positions: int = 1  # a Linear applied to several rows per sample (tokens)
    bias: bool = True

    @property
    def in_pixels(self) -> int:
        return self.in_hw[0] * self.in_hw[1] * self.positions

    @property
    def out_pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1] * self.positions

    @property
    def mid_pixels(self) -> int:
        """Pixels after the vertical part of a separable or CP factorization."""
        return self.out_hw[0] * self.in_hw[1] * self.positions

    @property
    def max_matrix_rank(self) -> int:
        kh, kw = self.kernel
        return min(self.out_features, self.in_features * kh * kw)


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size,
                                                        strict=True))  # type: ignore[return-value]
    return tuple(conv.padding)  # type: ignore[return-value]


def conv_geometry(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor
                  ) -> ConvGeometry:
    """The geometry of ``module`` from one call's input and output (batch first)."""
    bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Linear):
        positions = int(inputs[0].numel() // module.in_features) if inputs.ndim > 1 else 1
        return ConvGeometry(module.out_features, module.in_features, (1, 1), (1, 1), (1, 1),
                            max(positions, 1), bias)
    assert isinstance(module, nn.Conv2d)
    return ConvGeometry(module.out_channels, module.in_channels,
                        tuple(module.kernel_size),  # type: ignore[arg-type]
                        tuple(inputs.shape[-2:]), tuple(output.shape[-2:]), 1, bias)


def original_cost(g: ConvGeometry) -> tuple[int, int]:
    """(params, MACs) of the unfactorized layer."""
    kh, kw = g.kernel
    weights = g.out_features * g.in_features * kh * kw
    return weights + (g.out_features if g.bias else 0), weights * g.out_pixels


def svd_cost(g: ConvGeometry, rank: int) -> tuple[int, int]:
    kh, kw = g.kernel
    first = rank * g.in_features * kh * kw
    second = g.out_features * rank
    return (first + second + (g.out_features if g.bias else 0),
            (first + second) * g.out_pixels)


def tucker2_cost(g: ConvGeometry, ranks: tuple[int, int]) -> tuple[int, int]:
    r_out, r_in = ranks
    kh, kw = g.kernel
    first, core, last = g.in_features * r_in, r_in * r_out * kh * kw, r_out * g.out_features
    return (first + core + last + (g.out_features if g.bias else 0),
            first * g.in_pixels + (core + last) * g.out_pixels)


def cp_cost(g: ConvGeometry, rank: int) -> tuple[int, int]:
    kh, kw = g.kernel
    first, vert, horiz, last = g.in_features * rank, rank * kh, rank * kw, rank * g.out_features
    return (first + vert + horiz + last + (g.out_features if g.bias else 0),
            first * g.in_pixels + vert * g.mid_pixels + (horiz + last) * g.out_pixels)


def separable_cost(g: ConvGeometry, rank: int) -> tuple[int, int]:
    kh, kw = g.kernel
    vert, horiz = rank * g.in_features * kh, g.out_features * rank * kw
    return (vert + horiz + (g.out_features if g.bias else 0),
            vert * g.mid_pixels + horiz * g.out_pixels)


# ---------------------------------------------------------------------------- modules
def _set(conv: nn.Conv2d | nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))


def _last_bias(layer: nn.Module, target: nn.Module) -> None:
    bias = getattr(layer, "bias", None)
    if bias is not None:
        with torch.no_grad():
            target.bias.copy_(bias)


def _like(layer: nn.Module, module: nn.Module) -> nn.Module:
    p = next(layer.parameters())
    return module.to(device=p.device, dtype=p.dtype).train(layer.training)


def linear_svd_module(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    """Linear(n, r) with weight ``a`` then Linear(r, m) with ``b`` and the layer's bias."""
    rank = a.shape[0]
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    _set(first, a)
    _set(second, b)
    _last_bias(layer, second)
    return _like(layer, nn.Sequential(first, second))  # type: ignore[return-value]


def conv_svd_module(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    """The conv as a matrix (N x C*kh*kw): a kh x kw conv to ``rank`` channels (weight ``a``)
    then a 1x1 conv (``b``) with the bias."""
    rank = a.shape[0]
    first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size,  # type: ignore[arg-type]
                      conv.stride, conv_padding(conv), conv.dilation, bias=False)  # type: ignore
    second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
    _set(first, a)
    _set(second, b)
    _last_bias(conv, second)
    return _like(conv, nn.Sequential(first, second))  # type: ignore[return-value]


def tucker2_module(conv: nn.Conv2d, result: TuckerResult) -> nn.Sequential:
    r_out, r_in = result.core.shape[:2]
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    core = nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                     conv_padding(conv), conv.dilation, bias=False)  # type: ignore[arg-type]
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    _set(first, result.in_factor.T)
    _set(core, result.core)
    _set(last, result.out_factor)
    _last_bias(conv, last)
    return _like(conv, nn.Sequential(first, core, last))  # type: ignore[return-value]


def cp_module(conv: nn.Conv2d, result: CPResult) -> nn.Sequential:
    rank = result.out_factor.shape[1]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (conv.kernel_size, conv.stride, conv_padding(conv),
                                              conv.dilation)
    first = nn.Conv2d(conv.in_channels, rank, 1, bias=False)
    vertical = nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank,
                         bias=False)
    horizontal = nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank,
                           bias=False)
    last = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
    _set(first, result.in_factor.T)
    _set(vertical, result.vertical.T)
    _set(horizontal, result.horizontal.T)
    _set(last, result.out_factor)
    _last_bias(conv, last)
    return _like(conv, nn.Sequential(first, vertical, horizontal, last))  # type: ignore


def separable_module(conv: nn.Conv2d, factors: SeparableFactors) -> nn.Sequential:
    rank = factors.vertical.shape[0]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (conv.kernel_size, conv.stride, conv_padding(conv),
                                              conv.dilation)
    vertical = nn.Conv2d(conv.in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1),
                         bias=False)
    horizontal = nn.Conv2d(rank, conv.out_channels, (1, kw), (1, sw), (0, pw), (1, dw),
                           bias=conv.bias is not None)
    _set(vertical, factors.vertical)
    _set(horizontal, factors.horizontal)
    _last_bias(conv, horizontal)
    return _like(conv, nn.Sequential(vertical, horizontal))  # type: ignore[return-value]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name``."""
    if not name:
        raise ConfigError("the model itself cannot be factorized; give it as a layer of a "
                          "model (e.g. nn.Sequential(layer))")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent.add_module(child, new)
