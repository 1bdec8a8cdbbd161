"""Entropy coders (Huffman, rANS, raw) and the byte-level pieces under them: round trips on
random streams, closeness to the empirical entropy, and refusal of damaged streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.codec.bits import (
    as_byte_array,
    decode_table,
    decode_varints,
    encode_table,
    encode_varints,
    pack_bits,
    unpack_bits,
)
from modelzip.codec.coders import (
    CODERS,
    MAX_CODE_LENGTH,
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
