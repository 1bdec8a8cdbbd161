"""Byte-level building blocks, vectorized with numpy: LEB128 varints, fixed-width bit packing
(most significant bit first), and a compact table of small non-negative integers keyed by
symbol (Huffman code lengths, symbol counts).

Readers take untrusted bytes: every length is checked against the bytes that are actually
there before anything is allocated, and every failure is an ``ArtifactError``.
"""

from __future__ import annotations

import numpy as np

from modelzip.errors import ArtifactError

__all__ = [
    "as_byte_array",
    "decode_table",
    "decode_varints",
    "encode_table",
    "encode_varints",
    "pack_bits",
    "unpack_bits",
    "width_for",
]

MAX_VARINT_BYTES = 9  # 63 bits: every value fits an int64
_PACK_CHUNK_BITS = 1 << 18  # values are packed in chunks of about this many bits


def as_byte_array(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A read-only uint8 view of ``data`` (no copy)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).ravel()
    return np.frombuffer(data, dtype=np.uint8)


def width_for(max_value: int) -> int:
    """Bits needed to write every integer in 0..max_value."""
    return int(max_value).bit_length()


# ---------------------------------------------------------------------------- varints
def encode_varints(values: np.ndarray | list[int]) -> bytes:
    """LEB128: seven bits per byte, low bits first, high bit set on all but the last byte."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES + 1):
        nbytes += v >= np.uint64(1) << np.uint64(7 * k)
    if nbytes.max() > MAX_VARINT_BYTES:
        raise ValueError("varint values must be below 2**63")
    starts = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(buf: np.ndarray, offset: int, count: int, what: str
                   ) -> tuple[np.ndarray, int]:
    """Read ``count`` varints from ``buf`` (uint8) at ``offset``; returns them (uint64) and the
    offset after the last one."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), offset
    window = buf[offset:offset + MAX_VARINT_BYTES * count]
    ends = np.flatnonzero(window < 0x80)[:count]
    if ends.size < count:
        raise ArtifactError(f"{what}: truncated or corrupt (expected {count} numbers of at "
                            f"most {MAX_VARINT_BYTES} bytes each)")
    lengths = np.diff(ends, prepend=-1)
    if lengths.max() > MAX_VARINT_BYTES:
        raise ArtifactError(f"{what}: a number is longer than {MAX_VARINT_BYTES} bytes")
    used = int(ends[-1]) + 1
    starts = ends - lengths + 1
    seg = window[:used].astype(np.uint64) & np.uint64(0x7F)
    position_in_number = np.arange(used) - np.repeat(starts, lengths)
    contrib = seg << (np.uint64(7) * position_in_number.astype(np.uint64))
    return np.bitwise_or.reduceat(contrib, starts), offset + used


# ---------------------------------------------------------------------------- bit packing
def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Write each value in ``width`` bits, most significant first; pad the end with zeros."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if width == 0 or v.size == 0:
        return b""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    step = 8 * max(1, _PACK_CHUNK_BITS // (8 * width))  # a multiple of 8: whole bytes
    parts = []
    for i in range(0, v.size, step):
        bits = ((v[i:i + step, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(np.packbits(bits.ravel()))
    return np.concatenate(parts).tobytes()


def unpack_bits(buf: np.ndarray, count: int, width: int, what: str) -> np.ndarray:
    """Read ``count`` values of ``width`` bits from ``buf`` (uint8); returns uint64."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    if not 1 <= width <= 63:
        raise ArtifactError(f"{what}: bit width {width} is out of range 1..63")
    need = (count * width + 7) // 8
    if buf.size < need:
        raise ArtifactError(f"{what}: {count} values of {width} bits need {need} bytes, "
                            f"only {buf.size} are there")
    out = np.empty(count, dtype=np.uint64)
    step = 8 * max(1, _PACK_CHUNK_BITS // (8 * width))
    for i in range(0, count, step):
        n = min(step, count - i)
        first = i * width // 8
        chunk = np.unpackbits(buf[first:first + (n * width + 7) // 8], count=n * width)
        bits = chunk.reshape(n, width).astype(np.uint64)
        acc = np.zeros(n, dtype=np.uint64)
        for j in range(width):
            acc = (acc << np.uint64(1)) | bits[:, j]
        out[i:i + n] = acc
    return out


# ---------------------------------------------------------------------------- tables
# A table maps symbols to positive integers. It is written in whichever of four forms is
# smallest: symbols dense (one value per symbol 0..max, zero for absent ones) or sparse
# (gaps between present symbols, as varints), times values bit-packed at one width or varints.
_SPARSE, _VARINT_VALUES = 1, 2


def _values_part(values: np.ndarray, as_varints: bool) -> bytes:
    if as_varints:
        return encode_varints(values)
    width = width_for(int(values.max())) if values.size else 0
    return bytes([width]) + pack_bits(values, width)


def encode_table(symbols: np.ndarray, values: np.ndarray) -> bytes:
    """``symbols``: strictly increasing non-negative ints; ``values``: a positive int each."""
    symbols = np.asarray(symbols, dtype=np.int64)
    values = np.asarray(values, dtype=np.uint64)
    if symbols.size == 0:
        return bytes([_VARINT_VALUES]) + encode_varints([0])  # dense, no values
    dense = np.zeros(int(symbols[-1]) + 1, dtype=np.uint64)
    dense[symbols] = values
    gaps = np.diff(symbols, prepend=-1) - 1
    best = b""
    for mode in range(4):
        if mode & _SPARSE:
            head = encode_varints([symbols.size]) + encode_varints(gaps)
            body = _values_part(values, bool(mode & _VARINT_VALUES))
        else:
            head = encode_varints([dense.size])
            body = _values_part(dense, bool(mode & _VARINT_VALUES))
        candidate = bytes([mode]) + head + body
        if not best or len(candidate) < len(best):
            best = candidate
    return best


def decode_table(buf: np.ndarray, offset: int, *, max_symbol: int, what: str
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Read a table written by ``encode_table``; returns the present symbols (int64,
    increasing), their values (uint64, all positive) and the offset after the table.
    Symbols above ``max_symbol`` are refused."""
    if offset >= buf.size:
        raise ArtifactError(f"{what}: truncated (no table)")
    mode = int(buf[offset])
    if mode > 3:
        raise ArtifactError(f"{what}: unknown table form {mode}")
    (n,), offset = decode_varints(buf, offset + 1, 1, what)
    n = int(n)
    # every entry takes at least one bit: refuse counts the remaining bytes cannot hold
    if n > 8 * (buf.size - offset):
        raise ArtifactError(f"{what}: declares {n} entries, more than the data can hold")
    if mode & _SPARSE:
        gaps, offset = decode_varints(buf, offset, n, what)
        if n and gaps.max() > max_symbol:
            raise ArtifactError(f"{what}: symbol out of range")
        symbols = np.cumsum(gaps.astype(np.int64) + 1) - 1
    else:
        symbols = np.arange(n, dtype=np.int64)
    if n and symbols[-1] > max_symbol:
        raise ArtifactError(f"{what}: symbol {int(symbols[-1])} out of range 0..{max_symbol}")
    if mode & _VARINT_VALUES:
        values, offset = decode_varints(buf, offset, n, what)
    else:
        if offset >= buf.size:
            raise ArtifactError(f"{what}: truncated (no bit width)")
        width = int(buf[offset])
        values = unpack_bits(buf[offset + 1:], n, width, what)
        offset += 1 + (n * width + 7) // 8
    present = values > 0
    return symbols[present], values[present], offset
