"""Entropy coders for streams of non-negative integer symbols.

Each coder turns a symbol stream into self-contained bytes (its table, then its payload) and
back; the symbol count is kept by the caller (the manifest). ``CODERS`` holds them by name:

- ``huffman``: canonical Huffman as in Deep Compression. Code lengths come from the symbol
  frequencies (limited to 24 bits); only the lengths are stored. Decoding is vectorized: a
  lookup of the canonical code boundaries gives, for every bit position, the symbol and code
  length that would start there, and pointer doubling follows the chain from position 0.
- ``rans``: rANS (``constriction``'s ``AnsCoder``) with a categorical model, whichever of two
  is shorter in total (model + payload): the stream's exact symbol counts (a table), or a
  *binned* model (``BinnedModel``): symbols grouped into bins that widen geometrically, like
  floating-point numbers (each bin's symbols equally likely, the position within a bin
  stored as plain bits), the bins' counts quantized to a few significant bits. Index gaps of
  a pruned tensor have hundreds of distinct values that each occur a few times: their exact
  table costs hundreds of bytes, their binned model a few dozen, for a payload within a
  fraction of a percent of the empirical entropy.
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
    decode_varints,
    encode_table,
    encode_varints,
    pack_bits,
    pack_fields,
    read_fields,
    table_size,
    unpack_bits,
    width_for,
)
from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "CODERS",
    "MAX_SYMBOL",
    "BinnedModel",
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
_CHUNK_BITS = 1 << 18  # Huffman codes are read in chunks of this many bits
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
    first, padded with zeros to a whole byte. ``legacy_tables``: write only the table forms
    0..3 (what modelzip wrote before the bit-coded form; to measure what it saves)."""

    name = "huffman"

    def __init__(self, *, legacy_tables: bool = False) -> None:
        self.legacy_tables = legacy_tables

    def encode(self, symbols: np.ndarray, alphabet_size: int | None = None) -> bytes:
        s = _check_symbols(symbols, alphabet_size)
        if s.size == 0:
            return b""
        present, counts = _histogram(s)
        lengths = huffman_code_lengths(counts)
        table = encode_table(present, lengths, bitcoded=not self.legacy_tables)
        if present.size == 1:
            return table
        code = _CanonicalCode(present, lengths)
        # per symbol value: its code and length (symbols are looked up by rank in `present`)
        rank_to_sorted = np.empty(present.size, dtype=np.int64)
        rank_to_sorted[np.searchsorted(present, code.symbols)] = np.arange(present.size)
        ranks = rank_to_sorted[np.searchsorted(present, s)]
        return table + pack_fields(code.codes[ranks], code.lengths[ranks])

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
    """rANS with one of two models, whichever makes the shorter stream (on a tie, the
    first): the stream's exact symbol counts as a table (``_encode_counted``), or a binned
    model (``BinnedModel``), announced by the first byte ``BINNED`` (a table starts with its
    form, 0..4). ``legacy_tables``: only counted models, their tables in forms 0..3 (what
    modelzip wrote before the binned model and the bit-coded form; to measure what they
    save)."""

    name = "rans"

    def __init__(self, *, legacy_tables: bool = False) -> None:
        self.legacy_tables = legacy_tables

    def encode(self, symbols: np.ndarray, alphabet_size: int | None = None) -> bytes:
        s = _check_symbols(symbols, alphabet_size)
        if s.size == 0:
            return b""
        present, counts = _histogram(s)
        counted = _encode_counted(s, present, counts, bitcoded=not self.legacy_tables)
        model = None if self.legacy_tables else BinnedModel.fit(present, counts)
        if model is None:
            return counted
        binned = model.encode(s)
        return binned if len(binned) < len(counted) else counted

    def decode(self, data: bytes, count: int) -> np.ndarray:
        buf = as_byte_array(data)
        if count == 0:
            if buf.size:
                raise ArtifactError("rans stream: data present for zero symbols")
            return np.zeros(0, dtype=np.int64)
        if buf.size and buf[0] == BINNED:
            return BinnedModel.decode(buf, count)
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
        ranks = _decode_ranks(payload, counts, count, "rans stream")
        if not np.array_equal(np.bincount(ranks, minlength=symbols.size), counts):
            raise ArtifactError("rans stream: decoded symbols do not match the frequency table")
        return symbols[ranks]


def _encode_counted(s: np.ndarray, present: np.ndarray, counts: np.ndarray, *,
                    bitcoded: bool = True) -> bytes:
    """A table of the exact counts, then the coder's 32-bit words, little-endian, without
    the top word's zero high bytes."""
    table = encode_table(present, counts, bitcoded=bitcoded)
    if present.size == 1:
        return table
    return table + _encode_ranks(np.searchsorted(present, s), counts)


def _model(frequencies: np.ndarray) -> constriction.stream.model.Categorical:
    # Encoder and decoder build the model from the same integers, so they agree.
    return constriction.stream.model.Categorical(frequencies.astype(np.float64), perfect=False)


def _encode_ranks(ranks: np.ndarray, frequencies: np.ndarray) -> bytes:
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(ranks.astype(np.int32), _model(frequencies))
    return coder.get_compressed().astype("<u4").tobytes().rstrip(b"\x00")  # top word != 0


def _decode_ranks(payload: bytes, frequencies: np.ndarray, count: int, what: str
                  ) -> np.ndarray:
    padded = payload + b"\x00" * (-len(payload) % 4)
    words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.stack.AnsCoder(words)
        ranks = decoder.decode(_model(frequencies), count)
        exhausted = decoder.is_empty()
    except (ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{what}: corrupt ({exc})") from None
    if not exhausted:
        raise ArtifactError(f"{what}: data left after the declared symbols")
    return np.asarray(ranks, dtype=np.int64)


# ---------------------------------------------------------------------------- binned model
BINNED = 0x10  # first byte of a rans stream with a binned model
MAX_SPLIT_BITS = 32
MAX_MANTISSA_BITS = 3
# The encoder tries split bits 0 .. 10, and the largest symbol's bit length (every symbol its
# own bin) when it is at most 16: wider bins were never the shortest in our streams.
_SEARCH_SPLIT_BITS, _SEARCH_EXACT_BITS = 10, 16
_EXACT_SIZED = 4  # candidate models whose tables are sized exactly
_MAX_FREQUENCY_BITS = 40  # a bin's frequency is below 2**40 (the counts of one stream)


class BinnedModel:
    """The binned model of a rans stream::

        BINNED (0x10) | byte p | table: present bins -> count levels | [varint L] | rANS
        words (L bytes) | extra bits

    ``p`` holds the split bits b (``p & 63``, 0..32) and the mantissa bits m of the count
    levels (``p >> 6``, 0..3).

    Bins: a symbol below 2**b is its own bin; a larger symbol s of bit length e + 1 goes to
    bin ``(w + 1) * 2**b + t``, where w = e - b and t is the b bits after its leading one,
    and its w lowest bits are its extra bits: s = ((2**b + t) << w) + extra. So bins widen
    geometrically (2**b of them per octave), as floating-point numbers do.

    Count levels: a level k of 1 .. 2**(m+1) - 1 is the frequency k itself; above, with
    r = k - 2**(m+1), it is ``(2**m + r mod 2**m) << (r div 2**m + 1)``: m bits of
    precision. The encoder rounds each bin's count to the nearest level (in ratio).

    The bins are rANS-coded as in a counted rans stream, with frequencies 0 (rank 0: never
    written) and then the present bins' in order (bin i has rank i + 1); with a single
    present bin there are no words and no ``L``. Rank 0, which costs no bits to decode from
    a finished stream, makes a declared count above the written one fail; one below it
    leaves words over. ``L`` is present only when some present bin has extra bits (otherwise the
    words take the rest of the stream). The extra bits follow, each symbol's w bits, most
    significant first, zero-padded to a byte; the stream ends there.
    """

    def __init__(self, split_bits: int, mantissa_bits: int, bins: np.ndarray,
                 levels: np.ndarray) -> None:
        self.split_bits, self.mantissa_bits = split_bits, mantissa_bits
        self.bins, self.levels = bins, levels

    @staticmethod
    def bins_of(symbols: np.ndarray, split_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Each symbol's bin and number of extra bits."""
        s = np.asarray(symbols, dtype=np.int64)
        width = np.frexp(s.astype(np.float64))[1].astype(np.int64)  # exact below 2**53
        extra = np.maximum(width - 1 - split_bits, 0)
        bins = np.where(extra > 0, ((extra + 1) << split_bits) + (s >> extra)
                        - (1 << split_bits), s)
        return bins, extra

    @staticmethod
    def bin_starts(bins: np.ndarray, split_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Each bin's smallest symbol and number of extra bits."""
        b = np.asarray(bins, dtype=np.int64)
        extra = np.maximum((b >> split_bits) - 1, 0)
        top = (1 << split_bits) + (b & ((1 << split_bits) - 1))
        return np.where(extra > 0, top << extra, b), extra

    @staticmethod
    def max_bin(split_bits: int) -> int:
        """The largest bin of a symbol below 2**32."""
        return min((33 - split_bits) << split_bits, 1 << 32) - 1

    @staticmethod
    def quantize(counts: np.ndarray, mantissa_bits: int) -> np.ndarray:
        """The level nearest (in ratio) to each positive count."""
        c = np.asarray(counts, dtype=np.int64)
        k = 1 << mantissa_bits
        shift = np.maximum(np.frexp(c.astype(np.float64))[1].astype(np.int64) - 1
                           - mantissa_bits, 0)
        low = (c >> shift) << shift
        high = low + (1 << shift)
        up = c.astype(np.float64) ** 2 > low.astype(np.float64) * high
        level = np.where(shift > 0, 2 * k + (shift - 1) * k + (c >> shift) - k, c)
        return level + (up & (shift > 0))

    @staticmethod
    def frequencies(levels: np.ndarray, mantissa_bits: int, what: str = "rans binned model"
                    ) -> np.ndarray:
        """The frequency of each level (int64); levels above 2**40 are refused."""
        q = np.asarray(levels, dtype=np.int64)
        k = 1 << mantissa_bits
        r = np.maximum(q - 2 * k, 0)
        shift = r // k + 1
        if q.size and int(np.where(q >= 2 * k, shift, 0).max()) >= _MAX_FREQUENCY_BITS - 1 \
                - mantissa_bits:
            raise ArtifactError(f"{what}: a count level above 2**{_MAX_FREQUENCY_BITS}")
        return np.where(q >= 2 * k, (k + r % k) << np.minimum(shift, 62), q)

    @classmethod
    def rank_frequencies(cls, levels: np.ndarray, mantissa_bits: int) -> np.ndarray:
        """The rANS model's frequencies: 0 for rank 0, which no symbol takes (it is what a
        decoder reads past the symbols written, so a count that is too high is refused),
        then the present bins' in order."""
        return np.concatenate([[0], cls.frequencies(levels, mantissa_bits)])

    @classmethod
    def fit(cls, present: np.ndarray, counts: np.ndarray) -> BinnedModel | None:
        """The split and mantissa bits whose model + payload is estimated shortest (the
        entropy of the bins under the model's frequencies, plus the extra bits, plus the
        table), or None when no binned model applies (one symbol). The tables of the few
        best by a rough table size (order-0 Exp-Golomb codes) are sized exactly."""
        candidates: list[tuple[float, float, BinnedModel]] = []
        width = width_for(int(present[-1]))
        splits = set(range(min(width, _SEARCH_SPLIT_BITS) + 1))
        splits |= {width} if width <= _SEARCH_EXACT_BITS else set()
        for split_bits in sorted(splits):
            bins, extra = cls.bins_of(present, split_bits)
            first = np.flatnonzero(np.diff(bins, prepend=-1))  # present is sorted: so are bins
            bin_ids, bin_counts = bins[first], np.add.reduceat(counts, first)
            extra_bits = float((counts * extra).sum())
            if bin_ids.size == 1 and extra_bits == 0:
                continue
            gap_bits = float(2 * np.log2(np.diff(bin_ids, prepend=-1)).sum()) + bin_ids.size
            seen: set[bytes] = set()
            for mantissa_bits in range(MAX_MANTISSA_BITS + 1):
                levels = cls.quantize(bin_counts, mantissa_bits)
                if levels.tobytes() in seen:  # small counts: the same levels
                    continue
                seen.add(levels.tobytes())
                f = cls.frequencies(levels, mantissa_bits).astype(np.float64)
                bits = float(-(bin_counts * np.log2(f / f.sum())).sum()) + extra_bits
                steps = np.abs(np.diff(levels, prepend=0)).astype(np.float64)
                rough = gap_bits + float(2 * np.log2(2 * steps + 1).sum()) + levels.size
                candidates.append((bits / 8, rough / 8,
                                   cls(split_bits, mantissa_bits, bin_ids, levels)))
        if not candidates:
            return None
        candidates.sort(key=lambda c: c[0] + c[1])
        return min(candidates[:_EXACT_SIZED],
                   key=lambda c: c[0] + table_size(c[2].bins, c[2].levels))[2]

    def encode(self, symbols: np.ndarray) -> bytes:
        bins, extra = self.bins_of(symbols, self.split_bits)
        starts, _ = self.bin_starts(bins, self.split_bits)
        out = bytes([BINNED, self.split_bits | self.mantissa_bits << 6])
        out += encode_table(self.bins, self.levels)
        if self.bins.size > 1:
            words = _encode_ranks(1 + np.searchsorted(self.bins, bins),
                                  self.rank_frequencies(self.levels, self.mantissa_bits))
            has_extra = bool(self.bin_starts(self.bins, self.split_bits)[1].max())
            out += (encode_varints([len(words)]) if has_extra else b"") + words
        return out + pack_fields(symbols - starts, extra)

    @classmethod
    def decode(cls, buf: np.ndarray, count: int) -> np.ndarray:
        what = "rans binned model"
        if buf.size < 2:
            raise ArtifactError(f"{what}: truncated")
        split_bits, mantissa_bits = int(buf[1]) & 63, int(buf[1]) >> 6
        if split_bits > MAX_SPLIT_BITS:
            raise ArtifactError(f"{what}: split bits {split_bits} out of range "
                                f"0..{MAX_SPLIT_BITS}")
        bins, levels, offset = decode_table(buf, 2, max_symbol=cls.max_bin(split_bits),
                                            what=what)
        if bins.size == 0:
            raise ArtifactError(f"{what}: no bins, but symbols are declared")
        frequencies = cls.rank_frequencies(levels, mantissa_bits)
        if float(frequencies.astype(np.float64).sum()) >= 2.0**53:
            raise ArtifactError(f"{what}: frequencies add up to 2**53 or more")
        starts, extra = cls.bin_starts(bins, split_bits)
        if bins.size == 1:
            if extra[0] == 0:
                raise ArtifactError(f"{what}: a single bin without extra bits (such a stream "
                                    "is written as a table of counts)")
            if count * int(extra[0]) > 8 * (buf.size - offset):
                raise ArtifactError(f"{what}: {count} symbols of {int(extra[0])} extra bits "
                                    f"do not fit {buf.size - offset} bytes")
            ranks, rest = np.zeros(count, dtype=np.int64), buf[offset:]
        else:
            if extra.max() > 0:
                (size,), offset = decode_varints(buf, offset, 1, what)
                if int(size) > buf.size - offset:
                    raise ArtifactError(f"{what}: {int(size)} bytes of words declared, "
                                        f"{buf.size - offset} left")
                end = offset + int(size)
            else:
                end = buf.size
            payload = bytes(buf[offset:end])
            _check_room(frequencies, count, len(payload), what)
            ranks = _decode_ranks(payload, frequencies, count, what) - 1
            if ranks.min() < 0:
                raise ArtifactError(f"{what}: the words hold fewer symbols than the {count} "
                                    "declared")
            rest = buf[end:]
        widths = extra[ranks]
        total = int(widths.sum())
        if rest.size != (total + 7) // 8:
            raise ArtifactError(f"{what}: {rest.size} bytes of extra bits, but the symbols "
                                f"take {(total + 7) // 8}")
        return starts[ranks] + read_fields(rest, widths, what).astype(np.int64)


def _check_room(frequencies: np.ndarray, count: int, payload_bytes: int, what: str) -> None:
    """Refuse ``count`` symbols that the payload cannot hold under the model (before
    decoding them): every symbol takes at least -log2 of the model's largest probability
    (its 24-bit fixed-point form, as constriction quantizes it), and the 64-bit state of
    rANS holds a little on top."""
    f = frequencies.astype(np.float64)
    scale = float((1 << 24) - f.size) / float(f.sum())
    cdf = np.append(np.floor(np.concatenate([[0.0], np.cumsum(f)[:-1]]) * scale)
                    + np.arange(f.size), 1 << 24)
    least_bits = -np.log2(float(np.diff(cdf).max()) / (1 << 24))
    if count * least_bits / 2 - 128 > 8 * payload_bytes:
        raise ArtifactError(f"{what}: {payload_bytes} bytes cannot hold the {count} symbols "
                            "declared")


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

