"""Uniform quantizers as plain tensor functions: code ranges, exact zero, per-channel scales,
affine vs symmetric, binary and ternary value sets, the straight-through gradient."""

from __future__ import annotations

import pytest
import torch

from modelzip.errors import ConfigError
from modelzip.quant.uniform import (
    MAX_BITS,
    MIN_BITS,
    SCHEMES,
    affine_params,
    binary_params,
    check_bits,
    dequantize,
    fake_quantize,
    quant_params,
    quantize,
    quantize_tensor,
    quantize_weight,
    symmetric_params,
    ternary_params,
)

BITS = range(MIN_BITS, MAX_BITS + 1)


def _weight(seed: int = 0, shape: tuple[int, ...] = (16, 32), sparsity: float = 0.5
            ) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.1
    return w * (torch.rand(shape, generator=gen) >= sparsity)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_codes_stay_in_range_and_use_the_extremes(bits: int, scheme: str,
                                                  per_channel: bool) -> None:
    w = _weight(bits)
    codes, params = quantize_tensor(w, scheme, bits, per_channel)
    assert codes.dtype == torch.int64 and codes.shape == w.shape
    assert int(codes.min()) >= params.qmin and int(codes.max()) <= params.qmax
    if scheme == "affine":
        assert (params.qmin, params.qmax) == (0, 2**bits - 1)
        # the range is split into 2^b - 1 steps, both ends reached
        assert int(codes.min()) == 0 and int(codes.max()) == 2**bits - 1
    else:
        assert (params.qmin, params.qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        assert int(codes.abs().max()) == params.qmax
    values = dequantize(codes, params)
    for row in (values if per_channel else values.reshape(1, -1)):
        assert len(torch.unique(row)) <= 2**bits


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_zero_maps_to_exactly_zero(bits: int, scheme: str, per_channel: bool) -> None:
    w = _weight(bits + 10, sparsity=0.6)
    w[0] = 0.0  # a whole row of zeros too
    zeros = w == 0
    out = quantize_weight(w, scheme, bits if scheme in ("affine", "symmetric") else None,
                          per_channel)
    assert out.dtype == torch.float32
    assert bool((out[zeros] == 0).all())
    assert not bool(torch.signbit(out[zeros]).any())  # +0.0, not -0.0


@pytest.mark.parametrize("bits", BITS)
def test_affine_zero_point_is_an_integer_code_even_for_one_signed_data(bits: int) -> None:
    pos = _weight(1, sparsity=0.0).abs() + 0.5  # all positive: 0 is outside [min, max]
    params = affine_params(pos, bits)
    assert int(params.zero_point) == 0
    assert float(dequantize(quantize(torch.zeros(1), params), params)) == 0.0
    neg = -pos
    params = affine_params(neg, bits)
    assert int(params.zero_point) == 2**bits - 1
    assert float(dequantize(quantize(torch.zeros(1), params), params)) == 0.0


@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_rounding_error_is_at_most_half_a_step(scheme: str, bits: int) -> None:
    w = _weight(7, sparsity=0.0)
    codes, params = quantize_tensor(w, scheme, bits)
    err = (dequantize(codes, params).double() - w.double()).abs()
    # The zero point is rounded, so affine may clip the extremes by up to half a step more.
    slack = 1.0 if scheme == "affine" else 0.5
    assert float(err.max()) <= slack * float(params.scale) * (1 + 1e-6)
    assert float(err.mean()) < 0.5 * float(params.scale)


def test_per_channel_has_one_scale_per_row_matching_the_row_alone() -> None:
    w = _weight(3, shape=(6, 50))
    w[2] *= 100.0  # one row with a much wider range
    for scheme in ("affine", "symmetric"):
        params = quant_params(w, scheme, 4, per_channel=True)
        assert params.per_channel and params.scale.shape == (6,)
        assert params.zero_point.shape == (6,)
        codes = quantize(w, params)
        for row in range(6):
            alone_codes, alone = quantize_tensor(w[row], scheme, 4)
            assert torch.equal(codes[row], alone_codes)
            assert float(params.scale[row]) == pytest.approx(float(alone.scale), rel=1e-12)
        assert float(params.scale[2]) > 50 * float(params.scale[0])
    expected = (w.amax(dim=1).clamp(min=0) - w.amin(dim=1).clamp(max=0)).double() / 15
    assert torch.allclose(affine_params(w, 4, per_channel=True).scale, expected)


def test_per_channel_works_on_conv_weights() -> None:
    w = _weight(4, shape=(8, 3, 5, 5))
    for scheme in SCHEMES:
        codes, params = quantize_tensor(w, scheme, 3 if scheme in ("affine", "symmetric")
                                        else None, per_channel=True)
        assert params.scale.shape == (8,)
        out = dequantize(codes, params)
        for c in range(8):  # each output channel on its own grid
            assert len(torch.unique(out[c])) <= params.levels


def test_symmetric_vs_affine() -> None:
    # Skewed data (mostly positive): affine spends its levels on [min(w,0), max]; symmetric
    # keeps a zero point of 0 and a mirrored range, so it wastes the negative half.
    gen = torch.Generator().manual_seed(5)
    w = torch.rand(1000, generator=gen) - 0.05
    aff_codes, aff = quantize_tensor(w, "affine", 4)
    sym_codes, sym = quantize_tensor(w, "symmetric", 4)
    assert int(sym.zero_point) == 0 and int(aff.zero_point) > 0
    assert float(sym.scale) == pytest.approx(float(w.abs().max()) / 7)
    assert float(aff.scale) == pytest.approx(float(w.max() - w.min()) / 15)
    assert len(torch.unique(aff_codes)) > len(torch.unique(sym_codes))
    err_aff = (dequantize(aff_codes, aff) - w).pow(2).mean()
    err_sym = (dequantize(sym_codes, sym) - w).pow(2).mean()
    assert err_aff < err_sym
    # symmetric values are mirrored: -q is a code whenever q is
    values = dequantize(torch.arange(sym.qmin, sym.qmax + 1), sym)
    assert torch.equal(values, -values.flip(0))


@pytest.mark.parametrize("per_channel", [False, True])
def test_binary_is_sign_times_mean_abs_of_the_kept_weights(per_channel: bool) -> None:
    w = _weight(6, sparsity=0.7)
    codes, params = quantize_tensor(w, "binary", per_channel=per_channel)
    out = dequantize(codes, params)
    assert set(codes.unique().tolist()) == {-1, 0, 1}
    assert torch.equal(codes == 0, w == 0)  # only pruned weights have code 0
    assert torch.equal(torch.sign(out), torch.sign(w))
    rows = w if per_channel else w.reshape(1, -1)
    for r, row in enumerate(rows):
        alpha = row[row != 0].abs().double().mean()
        scale = params.scale[r] if per_channel else params.scale
        assert float(scale) == pytest.approx(float(alpha), rel=1e-12)
    # per tensor: exactly two non-zero values, +alpha and -alpha
    if not per_channel:
        assert torch.unique(out[out != 0]).tolist() == pytest.approx(
            [-float(params.scale), float(params.scale)])


@pytest.mark.parametrize("per_channel", [False, True])
def test_ternary_follows_twn(per_channel: bool) -> None:
    w = _weight(8, sparsity=0.3)
    codes, params = quantize_tensor(w, "ternary", per_channel=per_channel)
    out = dequantize(codes, params)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    rows = w if per_channel else w.reshape(1, -1)
    out_rows = out if per_channel else out.reshape(1, -1)
    for r, row in enumerate(rows):
        kept = row[row != 0].abs().double()
        delta = 0.7 * kept.mean()
        above = kept[kept > delta]
        threshold = params.threshold[r] if per_channel else params.threshold
        scale = params.scale[r] if per_channel else params.scale
        assert float(threshold) == pytest.approx(float(delta), rel=1e-12)
        assert float(scale) == pytest.approx(float(above.mean()), rel=1e-12)
        # values: -alpha, 0, +alpha; small and pruned weights -> 0
        assert set(out_rows[r].unique().tolist()) <= {-float(scale.float()), 0.0,
                                                       float(scale.float())}
        assert bool((out_rows[r][row.abs() <= delta] == 0).all())
        assert torch.equal(torch.sign(out_rows[r][row.abs() > delta]),
                           torch.sign(row[row.abs() > delta]))


def test_all_zero_tensor_stays_zero_in_every_scheme() -> None:
    w = torch.zeros(4, 6)
    for scheme in SCHEMES:
        for per_channel in (False, True):
            out = quantize_weight(w, scheme, 4 if scheme in ("affine", "symmetric") else None,
                                  per_channel)
            assert torch.equal(out, w)


@pytest.mark.parametrize(("scheme", "calibration", "values"), [
    # affine on [-1, 2]: scale 0.2, zero point 5; symmetric on [-2, 2]: scale 2/7
    ("affine", [-1.0, 2.0], [-3.0, -1.0, -0.5, 0.0, 0.2, 1.99, 2.0, 2.5]),
    ("symmetric", [-2.0, 1.0], [-3.0, -2.0, -0.5, 0.0, 0.2, 1.99, 2.0, 2.5]),
])
def test_ste_gradient_is_identity_inside_the_clip_range_and_zero_outside(
        scheme: str, calibration: list[float], values: list[float]) -> None:
    # Parameters from a narrower tensor, so that the first and last values fall outside.
    params = quant_params(torch.tensor(calibration), scheme, 4)
    w = torch.tensor(values, requires_grad=True)
    out = fake_quantize(w, params)
    assert torch.equal(out.detach(), dequantize(quantize(w, params), params))
    upstream = torch.arange(1.0, 9.0)
    out.backward(upstream)
    inside = torch.tensor([False, True, True, True, True, True, True, False])
    assert torch.equal(w.grad, torch.where(inside, upstream, 0.0))


@pytest.mark.parametrize("scheme", ["binary", "ternary"])
def test_ste_gradient_passes_straight_through_for_binary_and_ternary(scheme: str) -> None:
    w = _weight(9).requires_grad_(True)
    out = fake_quantize(w, quant_params(w, scheme))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quantize_is_idempotent(scheme: str, per_channel: bool) -> None:
    bits = 3 if scheme in ("affine", "symmetric") else None
    w = _weight(10)
    params = quant_params(w, scheme, bits, per_channel)
    once = fake_quantize(w, params)
    assert torch.equal(once, quantize_weight(w, scheme, bits, per_channel))
    assert torch.equal(fake_quantize(once, params), once)  # same grid: nothing moves
    if scheme in ("affine", "symmetric", "binary"):
        # Parameters recomputed from the quantized values give back the same codes: running
        # the technique twice changes nothing (up to rounding of the recomputed scale).
        # (Ternary is not: its threshold moves when small weights become 0.)
        codes_again, again = quantize_tensor(once, scheme, bits, per_channel)
        assert torch.equal(codes_again, quantize(w, params))
        torch.testing.assert_close(dequantize(codes_again, again), once, rtol=1e-6, atol=0)


def test_bad_arguments() -> None:
    for bits in (1, 9, 2.5, True, None):
        with pytest.raises(ConfigError, match="bits"):
            check_bits(bits)
    with pytest.raises(ConfigError, match="scheme"):
        quant_params(torch.ones(3), "log", 4)
    with pytest.raises(ValueError, match="NaN"):
        symmetric_params(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(TypeError):
        binary_params(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError):
        ternary_params(torch.tensor(1.0), per_channel=True)
