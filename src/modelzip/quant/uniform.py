"""Uniform weight quantizers as plain tensor functions (no modules, no training).

Schemes, each per tensor or per output channel (dim 0):

- ``affine``: min/max over the weights and 0, split into 2^b - 1 equal steps; unsigned codes
  0 .. 2^b - 1 and an integer zero point, so that 0.0 is exactly representable;
- ``symmetric``: scale = max|w| / (2^(b-1) - 1), signed codes -(2^(b-1) - 1) .. 2^(b-1) - 1
  (the "narrow" range: as many levels below 0 as above), zero point 0;
- ``binary``: sign(w) x scale, scale = mean |w| (XNOR-Net, BinaryConnect);
- ``ternary``: Ternary Weight Networks (Li & Liu 2016): threshold 0.7 x mean |w|, scale =
  mean |w| of the weights above it, codes -1 / 0 / +1.

For binary and ternary the means run over the non-zero weights only: a pruned weight is not
part of the layer any more (on a dense layer this is the published rule). Every scheme maps
0.0 to exactly +0.0, so pruned weights stay pruned. Scales are computed in float64; the
quantized values are ``(code - zero_point) x scale`` computed in the weight's dtype (see
``dequantize``), which for float32 is bit for bit the formula the .mzip grid coding decodes
with, so that a quantized weight is stored as its integer codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelzip.errors import ConfigError

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "SCHEMES",
    "QuantParams",
    "affine_params",
    "binary_params",
    "check_bits",
    "dequantize",
    "fake_quantize",
    "quant_params",
    "quantize",
    "quantize_tensor",
    "quantize_weight",
    "symmetric_params",
    "ternary_params",
]

SCHEMES = ("affine", "symmetric", "binary", "ternary")
MIN_BITS, MAX_BITS = 2, 8
TWN_THRESHOLD = 0.7  # Li & Liu 2016: delta = 0.7 x E|w| approximates the optimal threshold


@dataclass(frozen=True)
class QuantParams:
    """How a tensor is quantized. ``scale`` (float64) and ``zero_point`` (int64) are 0-d per
    tensor or have one entry per output channel (dim 0); ``threshold`` is ternary's cut."""

    scheme: str
    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    threshold: torch.Tensor | None = None

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim == 1

    @property
    def levels(self) -> int:
        """How many distinct values a code can take."""
        return self.qmax - self.qmin + 1

    def broadcast(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """``t`` (one of the per-channel tensors) shaped to broadcast over a weight."""
        return t.view(-1, *([1] * (ndim - 1))) if t.ndim == 1 else t


def check_bits(bits: object, what: str = "bits") -> int:
    """``bits`` as an int in MIN_BITS..MAX_BITS, else ConfigError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def _check_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    if not w.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {w.dtype}")
    if per_channel and w.ndim < 1:
        raise ValueError("per-channel quantization needs a tensor with at least one dimension")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("cannot quantize a tensor that holds NaN or infinity")
    return w.detach().to(torch.float64)


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """(C, rest) per channel, (1, n) per tensor."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def _shape(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return t if per_channel else t.reshape(())


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` per row over the entries where ``mask`` is true (0 if none)."""
    count = mask.sum(dim=1)
    total = torch.where(mask, values, 0.0).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), 0.0)


def affine_params(w: torch.Tensor, bits: int, per_channel: bool = False) -> QuantParams:
    """Min/max affine quantization: the range [min(w, 0), max(w, 0)] in 2^b - 1 steps, codes
    0 .. 2^b - 1, zero point = round(-min / scale) so that 0.0 is a code."""
    bits = check_bits(bits)
    rows = _rows(_check_weight(w, per_channel), per_channel)
    qmin, qmax = 0, 2**bits - 1
    lo = rows.amin(dim=1).clamp(max=0.0)
    hi = rows.amax(dim=1).clamp(min=0.0)
    scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, 1.0)  # an all-zero row: any scale keeps it zero
    zero_point = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int64)
    return QuantParams("affine", _shape(scale, per_channel), _shape(zero_point, per_channel),
                       qmin, qmax)


def symmetric_params(w: torch.Tensor, bits: int, per_channel: bool = False) -> QuantParams:
    """Symmetric quantization: scale = max|w| / (2^(b-1) - 1), codes in the narrow signed range
    -(2^(b-1) - 1) .. 2^(b-1) - 1, zero point 0."""
    bits = check_bits(bits)
    rows = _rows(_check_weight(w, per_channel), per_channel)
    qmax = 2 ** (bits - 1) - 1
    scale = rows.abs().amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, 1.0)
    zero_point = torch.zeros_like(scale, dtype=torch.int64)
    return QuantParams("symmetric", _shape(scale, per_channel), _shape(zero_point, per_channel),
                       -qmax, qmax)


def binary_params(w: torch.Tensor, per_channel: bool = False) -> QuantParams:
    """Binary weights: sign(w) x mean |w| (the L2-optimal scale for fixed signs), the mean over
    the non-zero weights; pruned zeros keep code 0."""
    rows = _rows(_check_weight(w, per_channel), per_channel)
    scale = _masked_mean(rows.abs(), rows != 0)
    scale = torch.where(scale > 0, scale, 1.0)
    zero_point = torch.zeros_like(scale, dtype=torch.int64)
    return QuantParams("binary", _shape(scale, per_channel), _shape(zero_point, per_channel),
                       -1, 1)


def ternary_params(w: torch.Tensor, per_channel: bool = False) -> QuantParams:
    """Ternary weights (TWN): threshold = 0.7 x mean |w| over the non-zero weights; scale =
    mean |w| of the weights above the threshold; codes -1, 0, +1."""
    rows = _rows(_check_weight(w, per_channel), per_channel)
    mags = rows.abs()
    threshold = TWN_THRESHOLD * _masked_mean(mags, rows != 0)
    scale = _masked_mean(mags, mags > threshold[:, None])
    scale = torch.where(scale > 0, scale, 1.0)
    zero_point = torch.zeros_like(scale, dtype=torch.int64)
    return QuantParams("ternary", _shape(scale, per_channel), _shape(zero_point, per_channel),
                       -1, 1, threshold=_shape(threshold, per_channel))


def quant_params(w: torch.Tensor, scheme: str, bits: int | None = None,
                 per_channel: bool = False) -> QuantParams:
    """The parameters of ``scheme`` for ``w``; ``bits`` is needed by affine and symmetric
    only (binary is 1 bit, ternary 3 levels)."""
    if scheme == "affine":
        return affine_params(w, check_bits(bits), per_channel)
    if scheme == "symmetric":
        return symmetric_params(w, check_bits(bits), per_channel)
    if scheme == "binary":
        return binary_params(w, per_channel)
    if scheme == "ternary":
        return ternary_params(w, per_channel)
    raise ConfigError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")


def _unclamped_codes(w64: torch.Tensor, params: QuantParams) -> torch.Tensor:
    scale = params.broadcast(params.scale, w64.ndim)
    zero_point = params.broadcast(params.zero_point, w64.ndim)
    return torch.round(w64 / scale) + zero_point


def quantize(w: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """Integer codes (int64) of ``w`` in ``params.qmin .. params.qmax``."""
    w64 = w.detach().to(torch.float64)
    if params.scheme in ("affine", "symmetric"):
        codes = _unclamped_codes(w64, params).clamp(params.qmin, params.qmax)
    elif params.scheme == "binary":
        codes = torch.sign(w64)
    elif params.scheme == "ternary":
        assert params.threshold is not None
        codes = torch.sign(w64) * (w64.abs() > params.broadcast(params.threshold, w64.ndim))
    else:
        raise ConfigError(f"scheme must be one of {', '.join(SCHEMES)}, got {params.scheme!r}")
    return codes.to(torch.int64)


def dequantize(codes: torch.Tensor, params: QuantParams,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(codes - zero_point) x scale, computed in ``dtype``: the integer difference is exact,
    the scale is rounded to ``dtype`` once, and so is the product. For float32 this is, bit
    for bit, numpy's ``(np.float32(q) - np.float32(z)) * np.float32(s)`` (IEEE 754 rounds a
    product the same everywhere): the formula by which ``modelzip.codec`` decodes a weight
    stored as integers on its grid (``grid_values``)."""
    scale = params.broadcast(params.scale, codes.ndim).to(dtype)
    zero_point = params.broadcast(params.zero_point, codes.ndim)
    return (codes - zero_point).to(dtype) * scale


def quantize_tensor(w: torch.Tensor, scheme: str, bits: int | None = None,
                    per_channel: bool = False) -> tuple[torch.Tensor, QuantParams]:
    """Codes and parameters of ``w`` under ``scheme``."""
    params = quant_params(w, scheme, bits, per_channel)
    return quantize(w, params), params


def quantize_weight(w: torch.Tensor, scheme: str, bits: int | None = None,
                    per_channel: bool = False) -> torch.Tensor:
    """``w`` replaced by its quantized values (dequantized, in ``w``'s dtype)."""
    codes, params = quantize_tensor(w, scheme, bits, per_channel)
    return dequantize(codes, params, w.dtype)


def fake_quantize(w: torch.Tensor, params: QuantParams) -> torch.Tensor:
    """The quantized values of ``w`` with a straight-through gradient: d out / d w is 1 where
    w lies inside the clip range (its unclamped code is within qmin..qmax) and 0 outside.
    Binary and ternary codes are never clipped, so their gradient is 1 everywhere
    (BinaryConnect)."""
    values = dequantize(quantize(w, params), params, w.dtype)
    if params.scheme in ("affine", "symmetric"):
        unclamped = _unclamped_codes(w.detach().to(torch.float64), params)
        inside = ((unclamped >= params.qmin) & (unclamped <= params.qmax)).to(w.dtype)
    else:
        inside = torch.ones_like(w)
    # Forward: exactly ``values`` (the second term is 0); backward: ``inside``.
    return values + (w - w.detach()) * inside
