"""Single-event upsets: random bit flips injected into bytes or arrays, for measuring what
radiation does to a stored artifact and to weights in memory (numpy only, no torch).

Each bit flips independently with probability ``ber`` (the bit error rate); the number of
flips is drawn from the binomial law and their positions uniformly without repetition, so a
rate of 1e-9 on a small file costs nothing (usually no flip at all).
"""

from __future__ import annotations

import numpy as np

from modelzip.errors import ConfigError

__all__ = ["FLOAT32_FIELDS", "bit_field_float32", "flip_array_bits", "flip_bits",
           "flip_positions"]

# bit index (0 = least significant) ranges of an IEEE 754 float32
FLOAT32_FIELDS = {"mantissa": (0, 23), "exponent": (23, 31), "sign": (31, 32)}


def flip_positions(n_bits: int, ber: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the bits to flip among ``n_bits``: a binomial count, uniform positions."""
    if not 0 <= ber <= 1:  # also NaN
        raise ConfigError(f"bit error rate must lie in 0..1, got {ber}")
    count = int(rng.binomial(n_bits, ber)) if n_bits else 0
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count * 4 < n_bits:  # sparse: draw with replacement, then top up the duplicates
        picked = np.unique(rng.integers(0, n_bits, count))
        while picked.size < count:
            extra = rng.integers(0, n_bits, count - picked.size)
            picked = np.unique(np.concatenate([picked, extra]))
        return picked.astype(np.int64)
    return np.sort(rng.choice(n_bits, count, replace=False)).astype(np.int64)


def flip_bits(data: np.ndarray | bytes, ber: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``data`` (bytes or a uint8 array) with each bit flipped with probability
    ``ber``."""
    out = np.frombuffer(bytes(data), dtype=np.uint8).copy() if isinstance(
        data, bytes | bytearray | memoryview) else np.array(data, dtype=np.uint8, copy=True)
    positions = flip_positions(out.size * 8, ber, rng)
    np.bitwise_xor.at(out, positions // 8, (1 << (positions % 8)).astype(np.uint8))
    return out


def flip_array_bits(array: np.ndarray, ber: float, rng: np.random.Generator,
                    bits: tuple[int, int] | None = None) -> np.ndarray:
    """A copy of ``array`` (any numeric dtype) with bit flips at rate ``ber`` in its
    elements' bit patterns; ``bits`` = (lo, hi): only bit indices lo..hi-1 of each element
    may flip (e.g. ``FLOAT32_FIELDS["exponent"]``), the rate being per such bit."""
    width = array.dtype.itemsize * 8
    lo, hi = bits if bits is not None else (0, width)
    if not 0 <= lo < hi <= width:
        raise ConfigError(f"bit range {lo}..{hi} does not fit a {width}-bit element")
    words = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}").ravel().copy()
    span = hi - lo
    positions = flip_positions(words.size * span, ber, rng)
    element, bit = positions // span, positions % span + lo
    np.bitwise_xor.at(words, element, (np.ones(1, words.dtype) << bit.astype(words.dtype)))
    return words.view(array.dtype).reshape(array.shape)


def bit_field_float32(bit: int) -> str:
    """The field of a float32 bit index: sign, exponent or mantissa."""
    for name, (lo, hi) in FLOAT32_FIELDS.items():
        if lo <= bit < hi:
            return name
    raise ConfigError(f"float32 has bits 0..31, not {bit}")
