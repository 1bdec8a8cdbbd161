"""Bit-flip injection (modelzip.flight.seu): the rate, the positions and the bit ranges are
what they claim, seeded runs repeat, and bad arguments are refused."""

from __future__ import annotations

import numpy as np
import pytest

from modelzip.errors import ConfigError
from modelzip.flight.seu import (
    FLOAT32_FIELDS,
    bit_field_float32,
    flip_array_bits,
    flip_bits,
    flip_positions,
)


def flipped_bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a.view(np.uint8), b.view(np.uint8))).sum())


def test_rate_zero_and_one() -> None:
    data = bytes(range(256)) * 4
    rng = np.random.default_rng(0)
    assert flip_bits(data, 0.0, rng).tobytes() == data
    assert flip_bits(data, 1.0, rng).tobytes() == bytes(255 - b for b in data)


@pytest.mark.parametrize("ber", [1e-4, 1e-2, 0.3])
def test_the_number_of_flips_follows_the_rate(ber: float) -> None:
    data = np.zeros(50_000, np.uint8)
    n = data.size * 8
    counts = [flipped_bits(data, flip_bits(data, ber, np.random.default_rng(s)))
              for s in range(20)]
    sigma = np.sqrt(n * ber * (1 - ber) / len(counts))
    assert abs(np.mean(counts) - n * ber) < 5 * sigma + 1


def test_positions_are_distinct_and_in_range() -> None:
    rng = np.random.default_rng(1)
    for n, ber in ((1000, 0.01), (1000, 0.9), (10, 0.5)):
        p = flip_positions(n, ber, rng)
        assert np.unique(p).size == p.size and (p < n).all() and (p >= 0).all()


def test_seeded_runs_repeat() -> None:
    data = np.arange(1000, dtype=np.uint8)
    a = flip_bits(data, 1e-2, np.random.default_rng(5))
    b = flip_bits(data, 1e-2, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, data)


@pytest.mark.parametrize("field", sorted(FLOAT32_FIELDS))
def test_flips_stay_in_the_chosen_bit_field(field: str) -> None:
    lo, hi = FLOAT32_FIELDS[field]
    w = np.random.default_rng(2).standard_normal(20_000).astype(np.float32)
    out = flip_array_bits(w, 0.05, np.random.default_rng(3), (lo, hi))
    diff = np.bitwise_xor(w.view(np.uint32), out.view(np.uint32))
    mask = np.uint32(((1 << hi) - 1) ^ ((1 << lo) - 1))
    assert diff.any() and not (diff & ~mask).any()
    assert out.shape == w.shape and out.dtype == w.dtype
    assert w is not out


def test_int8_and_float64_arrays() -> None:
    for dtype in (np.int8, np.float64, np.uint16):
        a = np.zeros((30, 40), dtype)
        out = flip_array_bits(a, 0.1, np.random.default_rng(4))
        assert out.dtype == dtype and 0 < flipped_bits(a, out) < a.nbytes * 8


def test_bit_fields() -> None:
    assert bit_field_float32(31) == "sign"
    assert bit_field_float32(30) == bit_field_float32(23) == "exponent"
    assert bit_field_float32(0) == "mantissa"


@pytest.mark.parametrize("call", [
    lambda: flip_positions(10, 1.5, np.random.default_rng()),
    lambda: flip_positions(10, float("nan"), np.random.default_rng()),
    lambda: flip_array_bits(np.zeros(3, np.int8), 0.1, np.random.default_rng(), (0, 9)),
    lambda: bit_field_float32(32)])
def test_bad_arguments_are_refused(call) -> None:
    with pytest.raises(ConfigError):
        call()
