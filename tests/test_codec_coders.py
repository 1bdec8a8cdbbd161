"""Entropy coders (Huffman, rANS, raw) and the byte-level pieces under them: round trips on
random streams, closeness to the empirical entropy, refusal of damaged streams, and the
compact tables (bit-coded table form, binned rANS model) against the legacy ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.codec.bits import (
    BITCODED,
    MAX_BITCODED_ENTRIES,
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
)
from modelzip.codec.coders import (
    BINNED,
    CODERS,
    MAX_CODE_LENGTH,
    BinnedModel,
    HuffmanCoder,
    RansCoder,
    decode_symbols,
    empirical_entropy_bits,
    encode_symbols,
    huffman_code_lengths,
)
from modelzip.errors import ArtifactError, ConfigError


def random_stream(seed: int, n: int, alphabet: int, skew: float) -> np.ndarray:
    """``n`` symbols over ``alphabet``: uniform for skew 0, increasingly peaked above."""
    rng = np.random.default_rng(seed)
    weights = np.exp(-skew * np.arange(alphabet, dtype=np.float64))
    return rng.choice(alphabet, size=n, p=weights / weights.sum())


def table_bytes(symbols: np.ndarray, coder: str) -> int:
    """Size of the coder's table for this stream (what it pays besides the payload)."""
    present, counts = np.unique(symbols, return_counts=True)
    values = huffman_code_lengths(counts) if coder == "huffman" else counts
    return len(encode_table(present, values))


streams = st.builds(
    random_stream,
    seed=st.integers(0, 2**32 - 1),
    n=st.one_of(st.just(0), st.just(1), st.integers(0, 3000)),
    alphabet=st.one_of(st.integers(1, 4), st.integers(1, 300), st.integers(1, 70000)),
    skew=st.sampled_from([0.0, 0.05, 0.5, 2.0, 8.0]),
)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("coder", sorted(CODERS))
@settings(max_examples=60, deadline=None)
@given(symbols=streams)
def test_round_trip(coder: str, symbols: np.ndarray) -> None:
    data = CODERS[coder].encode(symbols)
    decoded = CODERS[coder].decode(data, symbols.size)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, symbols)


@settings(max_examples=40, deadline=None)
@given(symbols=streams)
def test_best_is_the_smallest_and_round_trips(symbols: np.ndarray) -> None:
    name, data = encode_symbols(symbols, "best")
    sizes = {c: len(CODERS[c].encode(symbols)) for c in CODERS}
    assert len(data) == min(sizes.values())
    assert sizes[name] == len(data)
    np.testing.assert_array_equal(decode_symbols(name, data, symbols.size), symbols)


@pytest.mark.parametrize("coder", sorted(CODERS))
def test_empty_stream_is_zero_bytes(coder: str) -> None:
    assert CODERS[coder].encode(np.zeros(0, dtype=np.int64)) == b""
    assert CODERS[coder].decode(b"", 0).size == 0


@pytest.mark.parametrize("coder", ["huffman", "rans"])
def test_single_symbol_stream_costs_only_its_table(coder: str) -> None:
    symbols = np.full(100_000, 7)
    data = CODERS[coder].encode(symbols)
    assert len(data) == table_bytes(symbols, coder) <= 8
    np.testing.assert_array_equal(CODERS[coder].decode(data, symbols.size), symbols)


def test_raw_is_fixed_width() -> None:
    symbols = np.array([0, 5, 3, 7, 1])  # 3 bits each
    data = CODERS["raw"].encode(symbols)
    assert len(data) == 1 + math.ceil(5 * 3 / 8)
    # with the alphabet given, the width fits the alphabet, not the largest symbol
    assert CODERS["raw"].encode(symbols, alphabet_size=32)[0] == 5


def test_symbols_outside_the_alphabet_are_refused() -> None:
    with pytest.raises(ValueError):
        CODERS["huffman"].encode(np.array([0, 4]), alphabet_size=4)
    with pytest.raises(ValueError):
        CODERS["rans"].encode(np.array([-1, 2]))
    with pytest.raises(ConfigError, match="unknown coder"):
        encode_symbols(np.array([1]), "zip")


# ---------------------------------------------------------------------------- sizes
def test_entropy_of_known_streams() -> None:
    assert empirical_entropy_bits(np.array([0, 1, 2, 3] * 25)) == pytest.approx(200.0)
    assert empirical_entropy_bits(np.full(50, 3)) == 0.0
    assert empirical_entropy_bits(np.array([], dtype=np.int64)) == 0.0


def test_rans_within_one_percent_of_entropy_plus_table() -> None:
    symbols = random_stream(seed=1, n=50_000, alphabet=32, skew=0.3)
    entropy = empirical_entropy_bits(symbols)
    data = CODERS["rans"].encode(symbols)
    payload_bits = 8 * (len(data) - table_bytes(symbols, "rans"))
    assert entropy * 0.99 < payload_bits <= entropy * 1.01
    # the table is part of the price, and small
    assert table_bytes(symbols, "rans") < 100


@settings(max_examples=60, deadline=None)
@given(symbols=streams)
def test_huffman_within_one_bit_per_symbol_of_entropy(symbols: np.ndarray) -> None:
    if np.unique(symbols).size < 2:
        return  # single-symbol streams have no payload at all
    entropy = empirical_entropy_bits(symbols)
    data = CODERS["huffman"].encode(symbols)
    payload_bits = 8 * (len(data) - table_bytes(symbols, "huffman"))
    code_bits = payload_bits - 7  # at most 7 bits of padding
    assert entropy - 1e-6 <= payload_bits
    assert code_bits <= entropy + symbols.size


def test_huffman_lengths_are_limited_and_a_prefix_code() -> None:
    # Fibonacci counts give the deepest possible Huffman tree: 39 levels for 40 symbols
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib, dtype=np.int64)
    assert huffman_code_lengths(counts, max_length=64).max() == 39
    lengths = huffman_code_lengths(counts)
    assert lengths.max() <= MAX_CODE_LENGTH
    assert np.sum(2.0 ** -lengths) <= 1.0
    symbols = np.repeat(np.arange(40), np.minimum(counts, 5000))
    data = CODERS["huffman"].encode(symbols)
    np.testing.assert_array_equal(CODERS["huffman"].decode(data, symbols.size), symbols)


def test_huffman_matches_textbook_lengths() -> None:
    # counts 8, 4, 2, 1, 1: codes of 1, 2, 3, 4, 4 bits
    np.testing.assert_array_equal(huffman_code_lengths(np.array([8, 4, 2, 1, 1])),
                                  [1, 2, 3, 4, 4])


# ---------------------------------------------------------------------------- damaged streams
@pytest.mark.parametrize("coder", sorted(CODERS))
def test_truncated_stream_is_refused(coder: str) -> None:
    symbols = random_stream(seed=3, n=5000, alphabet=20, skew=0.2)
    data = CODERS[coder].encode(symbols)
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(ArtifactError):
            CODERS[coder].decode(data[:cut], symbols.size)


@pytest.mark.parametrize("coder", sorted(CODERS))
def test_more_symbols_than_the_data_holds_is_refused_before_decoding(coder: str) -> None:
    symbols = random_stream(seed=4, n=1000, alphabet=20, skew=0.2)
    data = CODERS[coder].encode(symbols)
    with pytest.raises(ArtifactError):
        CODERS[coder].decode(data, 10**12)  # would need terabytes if it were believed
    with pytest.raises(ArtifactError):
        CODERS[coder].decode(data, symbols.size + 1)


@pytest.mark.parametrize("coder", sorted(CODERS))
def test_data_for_an_empty_stream_is_refused(coder: str) -> None:
    with pytest.raises(ArtifactError):
        CODERS[coder].decode(b"\x00\x01", 0)


def test_unknown_coder_name_in_a_file() -> None:
    with pytest.raises(ArtifactError, match="unknown coder"):
        decode_symbols("lzw", b"", 0)


@pytest.mark.parametrize("coder", ["huffman", "rans"])
def test_every_flipped_byte_is_refused_or_decodes_to_valid_symbols(coder: str) -> None:
    """The coders themselves carry no checksum (the container does), but damage must never
    raise anything other than ArtifactError."""
    symbols = random_stream(seed=5, n=300, alphabet=12, skew=0.3)
    data = bytearray(CODERS[coder].encode(symbols))
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x5A
        try:
            out = CODERS[coder].decode(bytes(damaged), symbols.size)
        except ArtifactError:
            continue
        assert out.shape == symbols.shape


# ---------------------------------------------------------------------------- bits
@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(0, 2**63 - 1), max_size=200))
def test_varints_round_trip(values: list[int]) -> None:
    data = encode_varints(np.array(values, dtype=np.uint64))
    buf = as_byte_array(b"\x07" + data + b"\xff")
    decoded, end = decode_varints(buf, 1, len(values), "test")
    assert decoded.tolist() == values
    assert end == 1 + len(data)


def test_varint_sizes_and_overflow() -> None:
    assert encode_varints([0, 127, 128, 16383, 16384]) == bytes(
        [0, 127, 0x80, 1, 0xFF, 0x7F, 0x80, 0x80, 1])
    with pytest.raises(ArtifactError, match="at most 9 bytes"):
        decode_varints(as_byte_array(b"\xff" * 12 + b"\x01"), 0, 1, "test")
    with pytest.raises(ArtifactError, match="longer than 9 bytes"):
        decode_varints(as_byte_array(b"\x01" + b"\xff" * 12 + b"\x01"), 0, 2, "test")
    with pytest.raises(ArtifactError, match="truncated"):
        decode_varints(as_byte_array(b"\x80\x80"), 0, 1, "test")


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(0, 2**40), max_size=300), width=st.integers(0, 8))
def test_bit_packing_round_trips(values: list[int], width: int) -> None:
    width = max(width, max(values, default=0).bit_length())
    data = pack_bits(np.array(values, dtype=np.uint64), width)
    assert len(data) == math.ceil(len(values) * width / 8)
    out = unpack_bits(as_byte_array(data), len(values), width, "test")
    assert out.tolist() == values


@settings(max_examples=50, deadline=None)
@given(table=st.dictionaries(st.integers(0, 100_000), st.integers(1, 2**40), max_size=60))
def test_tables_round_trip(table: dict[int, int]) -> None:
    symbols = np.array(sorted(table), dtype=np.int64)
    values = np.array([table[s] for s in symbols], dtype=np.uint64)
    data = encode_table(symbols, values)
    got_symbols, got_values, end = decode_table(as_byte_array(data + b"rest"), 0,
                                                max_symbol=100_000, what="test")
    assert got_symbols.tolist() == symbols.tolist()
    assert got_values.tolist() == values.tolist()
    assert end == len(data)


def test_table_picks_the_compact_form() -> None:
    # 32 dense small values: about 5 bits each; 3 far-apart symbols: a few bytes
    dense = encode_table(np.arange(32), np.full(32, 5))
    assert len(dense) <= 2 + 1 + 32 * 3 // 8 + 1
    sparse = encode_table(np.array([3, 5000, 90_000]), np.array([1, 2, 3]))
    assert len(sparse) <= 10
    with pytest.raises(ArtifactError, match="out of range"):
        decode_table(as_byte_array(sparse), 0, max_symbol=1000, what="test")


# ---------------------------------------------------------------------------- compact tables
def gap_stream(seed: int, n: int, density: float) -> np.ndarray:
    """Index gaps of a randomly pruned tensor: geometric, hundreds of distinct values."""
    return np.random.default_rng(seed).geometric(density, n) - 1


def test_bit_coded_table_is_chosen_for_smooth_tables_and_round_trips() -> None:
    symbols = gap_stream(seed=6, n=20_000, density=0.05)
    present, counts = np.unique(symbols, return_counts=True)
    lengths = huffman_code_lengths(counts)
    data = encode_table(present, lengths)
    legacy = encode_table(present, lengths, bitcoded=False)
    assert data[0] == BITCODED and legacy[0] < BITCODED
    assert len(data) < 0.6 * len(legacy)
    got, values, end = decode_table(as_byte_array(data + b"x"), 0, max_symbol=2**32 - 1,
                                    what="test")
    assert got.tolist() == present.tolist() and values.tolist() == lengths.tolist()
    assert end == len(data)


@settings(max_examples=50, deadline=None)
@given(table=st.dictionaries(st.integers(0, 2**32 - 1), st.integers(1, 2**59), min_size=1,
                             max_size=80))
def test_table_size_is_the_written_size(table: dict[int, int]) -> None:
    symbols = np.array(sorted(table), dtype=np.int64)
    values = np.array([table[s] for s in symbols], dtype=np.uint64)
    assert table_size(symbols, values) <= len(encode_table(symbols, values, bitcoded=False))
    assert table_size(symbols, values) == len(encode_table(symbols, values))


@settings(max_examples=50, deadline=None)
@given(fields=st.lists(st.tuples(st.integers(0, 56), st.integers(0, 2**56 - 1)),
                       max_size=200))
def test_variable_width_fields_round_trip(fields: list[tuple[int, int]]) -> None:
    widths = np.array([w for w, _ in fields], dtype=np.int64)
    values = np.array([v & ((1 << w) - 1) for w, v in fields], dtype=np.uint64)
    data = pack_fields(values, widths)
    assert len(data) == (int(widths.sum()) + 7) // 8
    assert read_fields(as_byte_array(data), widths, "test").tolist() == values.tolist()


@pytest.mark.parametrize("split_bits", [0, 1, 2, 5, 16, 31, 32])
def test_bins_cover_every_symbol_once(split_bits: int) -> None:
    symbols = np.array(sorted({0, 1, 2, 3, 7, 8, 1000, 65535, 65536, 2**31, 2**32 - 1}
                              | set(range(0, 300))), dtype=np.int64)
    bins, extra = BinnedModel.bins_of(symbols, split_bits)
    starts, bin_extra = BinnedModel.bin_starts(bins, split_bits)
    assert (bin_extra == extra).all()
    assert ((symbols - starts >= 0) & (symbols - starts < 1 << extra)).all()
    assert (np.diff(bins) >= 0).all() and bins.max() <= BinnedModel.max_bin(split_bits)


@pytest.mark.parametrize("mantissa_bits", [0, 1, 2, 3])
def test_count_levels_round_to_the_nearest_frequency(mantissa_bits: int) -> None:
    counts = np.arange(1, 5000)
    f = BinnedModel.frequencies(BinnedModel.quantize(counts, mantissa_bits), mantissa_bits)
    ratio = f / counts
    worst = 1 + 1 / (1 << mantissa_bits)  # one step of m bits of precision
    assert (ratio <= worst).all() and (ratio >= 1 / worst).all()
    assert (f[counts < 2 << mantissa_bits] == counts[counts < 2 << mantissa_bits]).all()
    assert (np.diff(f) >= 0).all()


def test_binned_model_makes_gap_streams_much_smaller_than_counted_tables() -> None:
    symbols = gap_stream(seed=7, n=3000, density=0.02)  # a pruned layer at 98% sparsity
    legacy = RansCoder(legacy_tables=True).encode(symbols)
    data = CODERS["rans"].encode(symbols)
    assert data[0] == BINNED
    entropy_bytes = empirical_entropy_bits(symbols) / 8
    # the counted table of ~200 distinct gaps costs more than the binned model's loss
    assert len(data) < len(legacy) - 150
    assert len(data) < entropy_bytes * 1.04 + 40
    np.testing.assert_array_equal(CODERS["rans"].decode(data, symbols.size), symbols)


@settings(max_examples=40, deadline=None)
@given(symbols=streams)
def test_streams_written_with_legacy_tables_still_decode(symbols: np.ndarray) -> None:
    for coder in (HuffmanCoder(legacy_tables=True), RansCoder(legacy_tables=True)):
        data = coder.encode(symbols)
        assert not data or data[0] < BITCODED  # forms 0..3, counted models
        np.testing.assert_array_equal(CODERS[coder.name].decode(data, symbols.size), symbols)
        assert len(CODERS[coder.name].encode(symbols)) <= len(data)


def test_streams_of_older_files_decode_as_before() -> None:
    # bytes written before the compact tables (by the coders of format version 3's first
    # release; the Huffman stream is docs/FORMAT.md's example)
    assert decode_symbols("huffman", bytes.fromhex("000302681640"), 8).tolist() == [
        0, 0, 0, 1, 2, 0, 0, 1]
    assert decode_symbols("rans", bytes.fromhex("0003035480020180cf"), 8).tolist() == [
        1, 1, 2, 0, 1, 1, 0, 1]


def binned_stream() -> tuple[np.ndarray, bytes]:
    symbols = gap_stream(seed=8, n=400, density=0.05)
    data = CODERS["rans"].encode(symbols)
    assert data[0] == BINNED
    return symbols, data


def test_binned_stream_with_a_wrong_count_is_refused() -> None:
    symbols, data = binned_stream()
    for count in (symbols.size - 1, symbols.size + 1, symbols.size + 1000, 10**12):
        with pytest.raises(ArtifactError):
            CODERS["rans"].decode(data, count)


def test_hostile_binned_models_are_refused() -> None:
    symbols, data = binned_stream()
    rans = CODERS["rans"]
    with pytest.raises(ArtifactError, match="split bits"):
        rans.decode(bytes([BINNED, 33]) + data[2:], symbols.size)
    # one bin (symbol 5), no extra bits: written as counts, never as a binned model
    with pytest.raises(ArtifactError, match="single bin"):
        rans.decode(bytes([BINNED, 8]) + encode_table(np.array([5]), np.array([3])), 10)
    # a count level whose frequency would pass 2**40
    with pytest.raises(ArtifactError, match="count level"):
        rans.decode(bytes([BINNED, 8]) + encode_table(np.array([0, 1]), np.array([1, 500]))
                    + b"\x01\x02", 10)
    # bins above the largest a 32-bit symbol can have
    with pytest.raises(ArtifactError, match="out of range"):
        rans.decode(bytes([BINNED, 0]) + encode_table(np.array([0, 33]), np.array([1, 1]))
                    + b"\x01", 10)
    for cut in range(len(data)):
        with pytest.raises(ArtifactError):
            rans.decode(data[:cut], symbols.size)


def test_every_flipped_byte_of_a_binned_stream_is_refused_or_decodes() -> None:
    symbols, data = binned_stream()
    for i in range(len(data)):
        for flip in (0x01, 0x5A, 0x80):
            damaged = bytearray(data)
            damaged[i] ^= flip
            try:
                out = CODERS["rans"].decode(bytes(damaged), symbols.size)
            except ArtifactError:
                continue
            assert out.shape == symbols.shape and out.min() >= 0


def test_hostile_bit_coded_tables_are_refused() -> None:
    def read(data: bytes) -> None:
        decode_table(as_byte_array(data), 0, max_symbol=1000, what="test")

    with pytest.raises(ArtifactError, match="entries"):
        read(bytes([BITCODED]) + encode_varints([MAX_BITCODED_ENTRIES + 1]) + b"\xff" * 9000)
    with pytest.raises(ArtifactError, match="truncated"):
        read(bytes([BITCODED, 5, 0x00]) + b"\xff")  # 5 gaps and 5 values in 8 bits
    with pytest.raises(ArtifactError, match="longer than"):
        read(bytes([BITCODED, 1, 0x00]) + b"\x00" * 20 + b"\xff")
    with pytest.raises(ArtifactError, match="value 0"):
        read(bytes([BITCODED, 1, 0x00, 0b11000000]))  # gap 0, value 0 + 0
    with pytest.raises(ArtifactError, match="out of range"):
        read(encode_table(np.array([2000]), np.array([1])))
