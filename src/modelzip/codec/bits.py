"""Byte-level building blocks, vectorized with numpy: LEB128 varints, fixed- and
variable-width bit packing (most significant bit first), and a compact table of small
non-negative integers keyed by symbol (Huffman code lengths, symbol counts).

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
    "gap_positions",
    "pack_bits",
    "pack_fields",
    "read_fields",
    "table_size",
    "unpack_bits",
    "width_for",
]

MAX_VARINT_BYTES = 9  # 63 bits: every value fits an int64
MAX_FIELD_BITS = 56  # a variable-width field, read from one 8-byte window at any bit offset
# The bit-coded table form is read one entry at a time: its entries are bounded so that a
# hostile table costs milliseconds (real tables: a few hundred entries; more only for huge
# codebooks, which the other forms write as well).
MAX_BITCODED_ENTRIES = 1 << 14
_MAX_EXP_GOLOMB_BITS = 62  # a number in the bit-coded table form: below 2**62
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


def pack_fields(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate each value in its own number of bits (``widths``, 0..63), most significant
    bit first; pad the end with zeros. Each value must fit its width."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    w = np.asarray(widths, dtype=np.int64).ravel()
    if v.size == 0 or int(w.max()) == 0:
        return b""
    max_width = int(w.max())
    j = np.arange(max_width, dtype=np.int64)
    step = max(1, _PACK_CHUNK_BITS // max_width)
    parts = []
    for i in range(0, v.size, step):
        n = w[i:i + step, None]
        shift = np.maximum(n - 1 - j, 0).astype(np.uint64)
        bits = ((v[i:i + step, None] >> shift) & np.uint64(1)).astype(np.uint8)
        parts.append(bits[j < n])  # row by row: the fields in order
    return np.packbits(np.concatenate(parts)).tobytes()


def read_fields(buf: np.ndarray, widths: np.ndarray, what: str) -> np.ndarray:
    """Read consecutive fields of the given widths (0..``MAX_FIELD_BITS``) from ``buf``
    (uint8), most significant bit first; returns uint64. ``buf`` must hold them all."""
    w = np.asarray(widths, dtype=np.int64).ravel()
    if w.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if int(w.min()) < 0 or int(w.max()) > MAX_FIELD_BITS:
        raise ArtifactError(f"{what}: field width out of range 0..{MAX_FIELD_BITS}")
    starts = np.cumsum(w) - w
    need = (int(starts[-1] + w[-1]) + 7) // 8
    if buf.size < need:
        raise ArtifactError(f"{what}: fields of {int(w.sum())} bits need {need} bytes, only "
                            f"{buf.size} are there")
    padded = np.concatenate([buf[:need], np.zeros(8, dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)
    out = np.empty(w.size, dtype=np.uint64)
    step = 1 << 20
    for i in range(0, w.size, step):
        s, n = starts[i:i + step], w[i:i + step]
        word = np.ascontiguousarray(windows[s >> 3]).view(">u8").ravel().astype(np.uint64)
        word <<= (s & 7).astype(np.uint64)
        # a shift by 64 is undefined: zero-width fields are zero
        out[i:i + step] = np.where(n > 0, word >> (64 - np.maximum(n, 1)).astype(np.uint64),
                                   np.uint64(0))
    return out


# ---------------------------------------------------------------------------- Exp-Golomb
def _bit_lengths(y: np.ndarray) -> np.ndarray:
    """Exact bit length of every uint64 (float64's exponent, corrected where the conversion
    rounded up to the next power of two)."""
    y = y.astype(np.uint64)
    n = np.minimum(np.frexp(y.astype(np.float64))[1].astype(np.int64), 64)
    top = np.left_shift(np.uint64(1), np.maximum(n - 1, 0).astype(np.uint64))
    return n - ((n > 0) & (y < top))


def _exp_golomb_fields(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exp-Golomb codes of order ``k`` as (values, widths) of consecutive fields: per number,
    y = x + 2**k in bit_length(y) bits after bit_length(y) - 1 - k zero bits (which announce
    its length)."""
    y = x.astype(np.uint64) + np.uint64(1 << k)
    length = _bit_lengths(y)
    values = np.stack([np.zeros_like(y), y], axis=1).ravel()
    widths = np.stack([length - 1 - k, length], axis=1).ravel()
    return values, widths


def _best_exp_golomb_order(x: np.ndarray) -> tuple[int, int]:
    """(order 0..15, total bits) of the shortest Exp-Golomb coding of ``x``."""
    orders = np.arange(16)
    y = x.astype(np.uint64)[:, None] + (np.uint64(1) << orders.astype(np.uint64))
    sizes = 2 * _bit_lengths(y).sum(axis=0) - (1 + orders) * x.size
    k = int(np.argmin(sizes))
    return k, int(sizes[k])


def _read_exp_golomb(bits: bytes, pos: int, count: int, k: int, what: str
                     ) -> tuple[list[int], int]:
    """``count`` Exp-Golomb numbers of order ``k`` from ``bits`` (one ASCII '0'/'1' per bit)
    at bit ``pos``; returns them and the bit after the last one."""
    out = []
    for _ in range(count):
        one = bits.find(b"1", pos)
        if one < 0:
            raise ArtifactError(f"{what}: truncated (a code without its 1 bit)")
        zeros = one - pos
        if zeros + k > _MAX_EXP_GOLOMB_BITS:
            raise ArtifactError(f"{what}: a number longer than {_MAX_EXP_GOLOMB_BITS} bits")
        end = one + zeros + k + 1
        if end > len(bits):
            raise ArtifactError(f"{what}: truncated (a code runs past the data)")
        out.append(int(bits[one:end], 2) - (1 << k))
        pos = end
    return out, pos


# ---------------------------------------------------------------------------- tables
# A table maps symbols to positive integers. It is written in whichever of five forms is
# smallest: symbols dense (one value per symbol 0..max, zero for absent ones) or sparse
# (gaps between present symbols, as varints), times values bit-packed at one width or varints
# (forms 0..3); or bit-coded (form 4): gaps and value differences as Exp-Golomb codes, a
# few bits each when present symbols are close and values vary smoothly (code lengths,
# counts of index gaps).
_SPARSE, _VARINT_VALUES = 1, 2
BITCODED = 4


def _varint_bytes(values: np.ndarray) -> int:
    """Bytes of the varints of ``values`` (uint64), without writing them."""
    return int(np.maximum((_bit_lengths(np.asarray(values, dtype=np.uint64)) + 6) // 7,
                          1).sum())


def _values_part(values: np.ndarray, as_varints: bool) -> bytes:
    if as_varints:
        return encode_varints(values)
    width = width_for(int(values.max())) if values.size else 0
    return bytes([width]) + pack_bits(values, width)


def _values_bytes(values: np.ndarray, as_varints: bool) -> int:
    if as_varints:
        return _varint_bytes(values)
    return 1 + (values.size * width_for(int(values.max())) + 7) // 8


def _zigzag_deltas(values: np.ndarray) -> np.ndarray:
    deltas = np.diff(values.astype(np.int64), prepend=0)
    return np.where(deltas >= 0, 2 * deltas, -2 * deltas - 1)


class _Table:
    """A table's symbols, values and gaps, with the size of each form (None: not
    applicable) computed without writing it."""

    def __init__(self, symbols: np.ndarray, values: np.ndarray) -> None:
        self.symbols = np.asarray(symbols, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.uint64)
        self.gaps = np.diff(self.symbols, prepend=-1) - 1
        n = self.symbols.size
        # a dense form takes at least a bit per symbol up to the largest, a sparse one at
        # most 18 bytes per present symbol: beyond that a dense form cannot win (nor be
        # allocated)
        self.dense = None
        if int(self.symbols[-1]) < 144 * n + 64:
            self.dense = np.zeros(int(self.symbols[-1]) + 1, dtype=np.uint64)
            self.dense[self.symbols] = self.values
        self.sizes: list[int | None] = []
        for form in range(BITCODED):
            if form & _SPARSE:
                self.sizes.append(1 + _varint_bytes(np.array([n])) + _varint_bytes(self.gaps)
                                  + _values_bytes(self.values, bool(form & _VARINT_VALUES)))
            elif self.dense is not None:
                self.sizes.append(1 + _varint_bytes(np.array([self.dense.size]))
                                  + _values_bytes(self.dense, bool(form & _VARINT_VALUES)))
            else:
                self.sizes.append(None)
        self.orders = None
        if n <= MAX_BITCODED_ENTRIES and int(self.values.max()) < 1 << 60:
            self.zigzag = _zigzag_deltas(self.values)
            (k_gap, gap_bits), (k_value, value_bits) = (_best_exp_golomb_order(self.gaps),
                                                        _best_exp_golomb_order(self.zigzag))
            self.orders = (k_gap, k_value)
            self.sizes.append(2 + _varint_bytes(np.array([n])) + (gap_bits + value_bits + 7) // 8)

    def best_form(self, bitcoded: bool = True) -> int:
        """The shortest form (of 0..3 unless ``bitcoded``); on a tie the lowest."""
        forms = enumerate(self.sizes[:None if bitcoded else BITCODED])
        return min((size, form) for form, size in forms if size is not None)[1]

    def write(self, form: int) -> bytes:
        if form == BITCODED:
            k_gap, k_value = self.orders
            gap_fields = _exp_golomb_fields(self.gaps, k_gap)
            value_fields = _exp_golomb_fields(self.zigzag, k_value)
            return (bytes([BITCODED]) + encode_varints([self.symbols.size])
                    + bytes([k_gap | k_value << 4])
                    + pack_fields(np.concatenate([gap_fields[0], value_fields[0]]),
                                  np.concatenate([gap_fields[1], value_fields[1]])))
        if form & _SPARSE:
            head = encode_varints([self.symbols.size]) + encode_varints(self.gaps)
            body = _values_part(self.values, bool(form & _VARINT_VALUES))
        else:
            head = encode_varints([self.dense.size])
            body = _values_part(self.dense, bool(form & _VARINT_VALUES))
        return bytes([form]) + head + body


def encode_table(symbols: np.ndarray, values: np.ndarray, *, bitcoded: bool = True) -> bytes:
    """``symbols``: strictly increasing non-negative ints; ``values``: a positive int each.
    ``bitcoded=False``: forms 0..3 only (as modelzip wrote before form 4)."""
    if np.asarray(symbols).size == 0:
        return bytes([_VARINT_VALUES]) + encode_varints([0])  # dense, no values
    table = _Table(symbols, values)
    return table.write(table.best_form(bitcoded))


def table_size(symbols: np.ndarray, values: np.ndarray) -> int:
    """``len(encode_table(symbols, values))``, computed without writing the table."""
    if np.asarray(symbols).size == 0:
        return 2
    table = _Table(symbols, values)
    return table.sizes[table.best_form()]


def decode_table(buf: np.ndarray, offset: int, *, max_symbol: int, what: str
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Read a table written by ``encode_table``; returns the present symbols (int64,
    increasing), their values (uint64, all positive) and the offset after the table.
    Symbols above ``max_symbol`` are refused."""
    if offset >= buf.size:
        raise ArtifactError(f"{what}: truncated (no table)")
    mode = int(buf[offset])
    if mode > BITCODED:
        raise ArtifactError(f"{what}: unknown table form {mode}")
    (n,), offset = decode_varints(buf, offset + 1, 1, what)
    n = int(n)
    if mode == BITCODED:
        return _decode_bitcoded(buf, offset, n, max_symbol, what)
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


def _decode_bitcoded(buf: np.ndarray, offset: int, n: int, max_symbol: int, what: str
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """The rest of a form-4 table (after its entry count ``n``)."""
    if not 1 <= n <= MAX_BITCODED_ENTRIES:
        raise ArtifactError(f"{what}: the bit-coded form holds 1..{MAX_BITCODED_ENTRIES} "
                            f"entries, not {n}")
    if offset >= buf.size:
        raise ArtifactError(f"{what}: truncated (no code orders)")
    k_gap, k_value = int(buf[offset]) & 15, int(buf[offset]) >> 4
    # 2n codes of at most 2 * 62 + 1 bits: read no further than they can reach
    region = buf[offset + 1:offset + 1 + (2 * n * (2 * _MAX_EXP_GOLOMB_BITS + 1) + 7) // 8]
    bits = (np.unpackbits(region) + ord("0")).tobytes()
    gaps, pos = _read_exp_golomb(bits, 0, n, k_gap, what)
    zigzag, pos = _read_exp_golomb(bits, pos, n, k_value, what)
    symbols, values, symbol, value = [], [], -1, 0
    for gap, z in zip(gaps, zigzag, strict=True):
        symbol += gap + 1
        value += (z >> 1) if z % 2 == 0 else -((z + 1) >> 1)
        if symbol > max_symbol:
            raise ArtifactError(f"{what}: symbol {symbol} out of range 0..{max_symbol}")
        if not 1 <= value < 1 << 62:
            raise ArtifactError(f"{what}: value {value} out of range 1..2**62 - 1")
        symbols.append(symbol)
        values.append(value)
    return (np.array(symbols, dtype=np.int64), np.array(values, dtype=np.uint64),
            offset + 1 + (pos + 7) // 8)


def gap_positions(gaps: np.ndarray, size: int, what: str = "index", *,
                  limit: int | None = None, of: str | None = None) -> np.ndarray:
    """Positions from a relative index: entry i lies ``gaps[i] + 1`` after entry i-1 (the
    first after -1). Each gap must be < ``limit`` (default ``size``) and each position <
    ``size``; ``of`` names the size in the message. ArtifactError otherwise."""
    if gaps.size == 0:
        return gaps
    limit = size if limit is None else limit
    if int(gaps.max()) >= limit:
        raise ArtifactError(f"{what} gap {int(gaps.max())} out of range (limit {limit})")
    positions = np.cumsum(gaps + 1) - 1
    if positions[-1] >= size:
        raise ArtifactError(f"the {what} reaches position {int(positions[-1])} of "
                            f"{of or size}")
    return positions
