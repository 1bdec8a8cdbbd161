"""Entropy coders for streams of non-negative integer symbols.

Each coder turns a symbol stream into self-contained bytes (its table, then its payload) and
back; the symbol count is kept by the caller (the manifest). ``CODERS`` holds them by name:

- ``huffman``: canonical Huffman as in Deep Compression. Code lengths come from the symbol
  frequencies (limited to 24 bits); only the lengths are stored. Decoding is vectorized: a
  lookup of the canonical code boundaries gives, for every bit position, the symbol and code
  length that would start there, and pointer doubling follows the chain from position 0.
- ``rans``: rANS (``constriction``'s ``AnsCoder``) with a categorical model built from the
  stream's symbol counts, which are stored (as a compact table) and so paid for. Within a
  few bytes of the empirical entropy.
- ``raw``: every symbol in the same number of bits (enough for the largest one).

An empty stream is zero bytes for every coder; a stream of a single repeated symbol costs
only its table with the entropy coders. ``encode_symbols(..., coder="best")`` tries all and
keeps the smallest.
"""

from __future__ import annotations

import heapq
from typing import Protocol

import constriction
import numpy as np

from modelzip.codec.bits import (
    as_byte_array,
    decode_table,
    encode_table,
    pack_bits,
    unpack_bits,
    width_for,
)
from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "CODERS",
    "MAX_SYMBOL",
    "Coder",
    "HuffmanCoder",
    "RansCoder",
    "RawCoder",
    "decode_symbols",
    "empirical_entropy_bits",
    "encode_symbols",
    "histogram_entropy_bits",
    "huffman_code_lengths",
]

MAX_SYMBOL = (1 << 32) - 1  # symbols are codebook indices or index gaps: far below this
MAX_CODE_LENGTH = 24
_CHUNK_BITS = 1 << 18  # Huffman codes are written and read in chunks of this many bits
# Ties in "best" go to the simplest coder.
_PREFERENCE = ("raw", "huffman", "rans")


class Coder(Protocol):
    name: str

    def encode(self, symbols: np.ndarray, alphabet_size: int | None = None) -> bytes: ...

    def decode(self, data: bytes, count: int) -> np.ndarray: ...


def _check_symbols(symbols: np.ndarray, alphabet_size: int | None) -> np.ndarray:
    s = np.asarray(symbols)
    if s.size and not np.issubdtype(s.dtype, np.integer):
        raise TypeError(f"symbols must be integers, got {s.dtype}")
    s = s.astype(np.int64, copy=False).ravel()
    if s.size:
        lo, hi = int(s.min()), int(s.max())
        limit = MAX_SYMBOL if alphabet_size is None else alphabet_size - 1
        if lo < 0 or hi > limit:
            raise ValueError(f"symbols must lie in 0..{limit}, got {lo}..{hi}")
    return s


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """n * H: the total bits an ideal coder spends on ``symbols`` under their own empirical
    distribution (not counting any table)."""
    s = np.asarray(symbols).ravel()
    if s.size == 0:
        return 0.0
    return histogram_entropy_bits(np.unique(s, return_counts=True)[1])


def histogram_entropy_bits(counts: np.ndarray) -> float:
    """n * H of a histogram (symbol counts)."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum()) if c.size else 0.0


def _histogram(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Present symbols (increasing) and how often each occurs."""
    present, counts = np.unique(symbols, return_counts=True)
    return present.astype(np.int64), counts.astype(np.int64)


# ---------------------------------------------------------------------------- raw
class RawCoder:
    """Fixed width: one byte holding the width w, then every symbol in w bits."""

    name = "raw"

    def encode(self, symbols: np.ndarray, alphabet_size: int | None = None) -> bytes:
        s = _check_symbols(symbols, alphabet_size)
        if s.size == 0:
            return b""
        top = alphabet_size - 1 if alphabet_size is not None else int(s.max())
        width = width_for(top)
        return bytes([width]) + pack_bits(s, width)

    def decode(self, data: bytes, count: int) -> np.ndarray:
        buf = as_byte_array(data)
        if count == 0:
            if buf.size:
                raise ArtifactError("raw stream: data present for zero symbols")
            return np.zeros(0, dtype=np.int64)
        if buf.size == 0:
            raise ArtifactError("raw stream: empty, but symbols are declared")
        width = int(buf[0])
        if width > 32:
            raise ArtifactError(f"raw stream: bit width {width} is out of range 0..32")
        if buf.size - 1 != (count * width + 7) // 8:
            raise ArtifactError(f"raw stream: {buf.size - 1} bytes of data, but {count} "
                                f"symbols of {width} bits take {(count * width + 7) // 8}")
        return unpack_bits(buf[1:], count, width, "raw stream").astype(np.int64)


# ---------------------------------------------------------------------------- huffman
def _huffman_depths(counts: np.ndarray) -> np.ndarray:
    """Depth of every leaf of a Huffman tree over ``counts`` (all positive, at least two).
    Ties are broken by node number, so the result is deterministic."""
    n = counts.size
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    next_node = n
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = next_node
        heapq.heappush(heap, (c1 + c2, next_node))
        next_node += 1
    depth = np.zeros(2 * n - 1, dtype=np.int64)
    # parents are numbered after their children: walk down from the root
    for node in range(2 * n - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return depth[:n]


def huffman_code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths for positive ``counts``, none longer than ``max_length``. A single
    symbol gets length 1. When the tree is too deep, the counts are halved (rounding up, so
    none reaches zero) until it fits: a small loss, only on extremely skewed streams."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 1:
        return np.ones(1, dtype=np.int64)
    if c.size > 1 << max_length:
        raise ValueError(f"{c.size} symbols do not fit codes of {max_length} bits")
    while True:
        lengths = _huffman_depths(c)
        if lengths.max() <= max_length:
            return lengths
        c = (c + 1) // 2


class _CanonicalCode:
    """Canonical code for (symbol, length) pairs: symbols sorted by (length, symbol) take
    consecutive intervals of the ``max_len``-bit code space, shortest first."""

    def __init__(self, symbols: np.ndarray, lengths: np.ndarray) -> None:
        order = np.lexsort((symbols, lengths))
        self.symbols = symbols[order]
        self.lengths = lengths[order].astype(np.int64)
        self.max_len = int(self.lengths.max())
        sizes = np.left_shift(1, self.max_len - self.lengths)
        self.ends = np.cumsum(sizes)  # exclusive end of each code's interval
        self.starts = self.ends - sizes
        self.codes = self.starts >> (self.max_len - self.lengths)


class HuffmanCoder:
    """Canonical Huffman: a table of code lengths, then the codes, most significant bit
    first, padded with zeros to a whole byte."""

    name = "huffman"

    def encode(self, symbols: np.ndarray, alphabet_size: int | None = None) -> bytes:
        s = _check_symbols(symbols, alphabet_size)
        if s.size == 0:
            return b""
        present, counts = _histogram(s)
        lengths = huffman_code_lengths(counts)
        table = encode_table(present, lengths)
        if present.size == 1:
            return table
        code = _CanonicalCode(present, lengths)
        # per symbol value: its code and length (symbols are looked up by rank in `present`)
        rank_to_sorted = np.empty(present.size, dtype=np.int64)
        rank_to_sorted[np.searchsorted(present, code.symbols)] = np.arange(present.size)
        ranks = rank_to_sorted[np.searchsorted(present, s)]
        return table + _write_codes(code.codes[ranks], code.lengths[ranks], code.max_len)

    def decode(self, data: bytes, count: int) -> np.ndarray:
        buf = as_byte_array(data)
        if count == 0:
            if buf.size:
                raise ArtifactError("huffman stream: data present for zero symbols")
            return np.zeros(0, dtype=np.int64)
        symbols, lengths, offset = decode_table(buf, 0, max_symbol=MAX_SYMBOL,
                                                what="huffman table")
        if symbols.size == 0:
            raise ArtifactError("huffman table: no symbols, but symbols are declared")
        if lengths.max() > MAX_CODE_LENGTH:
            raise ArtifactError(f"huffman table: a code is longer than {MAX_CODE_LENGTH} bits")
        lengths = lengths.astype(np.int64)
        if symbols.size == 1:
            if offset != buf.size:
                raise ArtifactError("huffman stream: data after a single-symbol table")
            return np.full(count, symbols[0], dtype=np.int64)
        if int(np.left_shift(1, MAX_CODE_LENGTH - lengths).sum()) > 1 << MAX_CODE_LENGTH:
            raise ArtifactError("huffman table: code lengths are not a prefix code (Kraft sum "
                                "above 1)")
        payload = buf[offset:]
        code = _CanonicalCode(symbols, lengths)
        # every symbol takes at least the shortest code length
        if count * int(code.lengths[0]) > 8 * payload.size:
            raise ArtifactError(f"huffman stream: {count} symbols declared, but the "
                                f"{payload.size} bytes of codes hold at most "
                                f"{8 * payload.size // int(code.lengths[0])}")
        ranks = _read_codes(payload, code, count)
        used = int(np.sum(code.lengths[ranks])) if count else 0
        if (used + 7) // 8 != payload.size:
            raise ArtifactError(f"huffman stream: {payload.size} bytes of codes, but the "
                                f"{count} declared symbols use {(used + 7) // 8}")
        return code.symbols[ranks].astype(np.int64)


def _write_codes(codes: np.ndarray, lengths: np.ndarray, max_len: int) -> bytes:
    """Concatenate variable-length codes, most significant bit first."""
    parts = []
    j = np.arange(max_len, dtype=np.int64)
    step = max(1, _CHUNK_BITS // max_len)
    for i in range(0, codes.size, step):
        c = codes[i:i + step, None]
        n = lengths[i:i + step, None]
        shift = np.maximum(n - 1 - j, 0)
        bits = ((c >> shift) & 1).astype(np.uint8)
        parts.append(bits[j < n])  # row by row: the codes in stream order
    return np.packbits(np.concatenate(parts)).tobytes()


def _read_codes(payload: np.ndarray, code: _CanonicalCode, count: int) -> np.ndarray:
    """Ranks (positions in ``code.symbols``) of the first ``count`` codes in ``payload``."""
    total_bits = 8 * payload.size
    padded = np.concatenate([payload, np.zeros(4, dtype=np.uint8)])
    out = np.empty(count, dtype=np.int64)
    done, start = 0, 0
    for chunk_start in range(0, total_bits, _CHUNK_BITS):
        if done == count:
            break
        pos = np.arange(chunk_start, min(chunk_start + _CHUNK_BITS, total_bits), dtype=np.int64)
        # a 32-bit big-endian word at every byte holds the max_len (<= 24) bits after any bit
        b = padded[chunk_start >> 3:(int(pos[-1]) >> 3) + 4].astype(np.uint64)
        words = (b[:-3] << 24) | (b[1:-2] << 16) | (b[2:-1] << 8) | b[3:]
        local_byte = (pos >> 3) - (chunk_start >> 3)
        window = ((words[local_byte] << (pos & 7).astype(np.uint64)) & np.uint64(0xFFFFFFFF)) \
            >> np.uint64(32 - code.max_len)
        rank = np.searchsorted(code.ends, window.astype(np.int64), side="right")
        valid = rank < code.symbols.size  # else: bits that start no code (incomplete code)
        rank = np.minimum(rank, code.symbols.size - 1)
        nxt = pos + code.lengths[rank]
        valid &= nxt <= total_bits
        # chain within the chunk, by local index; `leave` = jumped past the chunk, `bad` =
        # no code starts here; both absorb further jumps
        size = pos.size
        leave, bad = size, size + 1
        jump = np.where(valid, np.minimum(nxt - chunk_start, leave), bad)
        jump = np.concatenate([jump, [leave, bad]])
        chain = np.array([start - chunk_start], dtype=np.int64)
        need = count - done
        while chain.size < need and chain[-1] < size:
            chain = np.concatenate([chain, jump[chain]])
            jump = jump[jump]
        chain = chain[:need]
        inside = chain[chain < size]
        if chain.size > inside.size and chain[inside.size] == bad:
            raise ArtifactError("huffman stream: corrupt codes (bits that start no code)")
        out[done:done + inside.size] = rank[inside]
        done += inside.size
        if inside.size:
            start = int(nxt[inside[-1]])
    if done < count:
        raise ArtifactError(f"huffman stream: holds {done} symbols, {count} are declared")
    return out


# ---------------------------------------------------------------------------- rANS
class RansCoder:
    """rANS with the stream's own symbol counts as its model: a table of the counts, then
    the coder's 32-bit words, little-endian, without the top word's zero high bytes."""

    name = "rans"

    def encode(self, symbols: np.ndarray, alphabet_size: int | None = None) -> bytes:
        s = _check_symbols(symbols, alphabet_size)
        if s.size == 0:
            return b""
        present, counts = _histogram(s)
        table = encode_table(present, counts)
        if present.size == 1:
            return table
        ranks = np.searchsorted(present, s).astype(np.int32)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(ranks, _model(counts))
        words = coder.get_compressed().astype("<u4").tobytes()
        return table + words.rstrip(b"\x00")  # the top word is never zero

    def decode(self, data: bytes, count: int) -> np.ndarray:
        buf = as_byte_array(data)
        if count == 0:
            if buf.size:
                raise ArtifactError("rans stream: data present for zero symbols")
            return np.zeros(0, dtype=np.int64)
        symbols, counts, offset = decode_table(buf, 0, max_symbol=MAX_SYMBOL,
                                               what="rans frequency table")
        if symbols.size == 0 or counts.max() > count or int(counts.sum()) != count:
            raise ArtifactError(f"rans frequency table: counts sum to "
                                f"{int(counts.sum()) if symbols.size else 0}, but {count} "
                                "symbols are declared")
        if symbols.size == 1:
            if offset != buf.size:
                raise ArtifactError("rans stream: data after a single-symbol table")
            return np.full(count, symbols[0], dtype=np.int64)
        payload = bytes(buf[offset:])
        # no coder beats the empirical entropy (less the coder's 64-bit state): refuse
        # counts the payload cannot hold before decoding them
        c = counts.astype(np.float64)
        floor_bits = float(-(c * np.log2(c / count)).sum()) / 2 - 128
        if 8 * len(payload) < floor_bits:
            raise ArtifactError(f"rans stream: {len(payload)} bytes cannot hold the {count} "
                                "symbols its frequency table declares")
        padded = payload + b"\x00" * (-len(payload) % 4)
        words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
        try:
            decoder = constriction.stream.stack.AnsCoder(words)
            ranks = decoder.decode(_model(counts.astype(np.int64)), count)
            exhausted = decoder.is_empty()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"rans stream: corrupt ({exc})") from None
        if not exhausted:
            raise ArtifactError("rans stream: data left after the declared symbols")
        ranks = np.asarray(ranks, dtype=np.int64)
        if not np.array_equal(np.bincount(ranks, minlength=symbols.size), counts):
            raise ArtifactError("rans stream: decoded symbols do not match the frequency table")
        return symbols[ranks]


def _model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    # Encoder and decoder build the model from the same integer counts, so they agree.
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


# ---------------------------------------------------------------------------- registry
CODERS: dict[str, Coder] = {"huffman": HuffmanCoder(), "rans": RansCoder(), "raw": RawCoder()}


def encode_symbols(symbols: np.ndarray, coder: str = "best",
                   alphabet_size: int | None = None) -> tuple[str, bytes]:
    """Encode with the named coder, or with ``best``: every coder, keeping the smallest
    output. Returns the coder's name and the bytes."""
    if coder == "best":
        results = [(name, CODERS[name].encode(symbols, alphabet_size)) for name in _PREFERENCE]
        return min(results, key=lambda r: len(r[1]))  # min keeps the first of equals
    if coder not in CODERS:
        raise ConfigError(f"unknown coder {coder!r}; choose best or one of "
                          f"{', '.join(sorted(CODERS))}")
    return coder, CODERS[coder].encode(symbols, alphabet_size)


def decode_symbols(coder: str, data: bytes, count: int) -> np.ndarray:
    """Decode ``count`` symbols written by the named coder (int64)."""
    if coder not in CODERS:
        raise ArtifactError(f"unknown coder {coder!r} (this reader knows "
                            f"{', '.join(sorted(CODERS))})")
    return CODERS[coder].decode(data, count)

