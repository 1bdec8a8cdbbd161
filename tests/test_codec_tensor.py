"""Coding single tensors: sparse index layouts (dense, entropy-coded gaps, Deep Compression's
fixed-width gaps with fillers), codebooks, every dtype and shape bit for bit, and entries
that lie about the payload."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelzip.codec.coders import CODERS
from modelzip.codec.tensor import (
    SUPPORTED_DTYPES,
    check_entry,
    decode_tensor,
    encode_tensor,
    fixed_gap_entries,
    layout_candidates,
)
from modelzip.errors import ArtifactError, ConfigError


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so -0.0 differs from 0.0, and NaN equals itself)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def shared_sparse(seed: int, shape: tuple[int, ...], density: float, levels: int = 32
                  ) -> np.ndarray:
    """A pruned, weight-shared layer: a fraction ``density`` of non-zeros taking ``levels``
    distinct float32 values."""
    rng = np.random.default_rng(seed)
    centroids = np.linspace(-0.2, 0.2, levels).astype(np.float32)
    values = centroids[rng.integers(0, levels, size=shape)]
    return np.where(rng.random(shape) < density, values, np.float32(0))


# ---------------------------------------------------------------------------- index coding
def test_fixed_gaps_insert_fillers_for_long_gaps() -> None:
    # non-zeros at 0, 3 and 23; 3-bit gaps reach at most 8 positions on
    gaps = np.diff(np.array([0, 3, 23]), prepend=-1)  # 1, 3, 20
    index, real = fixed_gap_entries(gaps, 3)
    # 20 = 8 (filler) + 8 (filler) + 4
    assert index.tolist() == [0, 2, 7, 7, 3]
    assert real.tolist() == [0, 1, 4]
    positions = np.cumsum(index + 1) - 1
    assert positions.tolist() == [0, 3, 11, 19, 23]
    assert index.max() < 2**3


@settings(max_examples=40, deadline=None)
@given(positions=st.sets(st.integers(0, 5000), min_size=1, max_size=300),
       gap_bits=st.integers(1, 12))
def test_fixed_gaps_reach_every_non_zero(positions: set[int], gap_bits: int) -> None:
    nz = np.array(sorted(positions))
    index, real = fixed_gap_entries(np.diff(nz, prepend=-1), gap_bits)
    assert index.max() < 2**gap_bits
    np.testing.assert_array_equal((np.cumsum(index + 1) - 1)[real], nz)


def layouts(array: np.ndarray, coder: str = "best") -> dict[str, tuple[dict, bytes]]:
    return {entry["layout"]: (entry, payload)
            for entry, payload in layout_candidates(array, coder)}


@pytest.mark.parametrize("coder", ["best", *sorted(CODERS)])
def test_every_layout_round_trips_and_the_smallest_is_chosen(coder: str) -> None:
    array = shared_sparse(0, (300, 784), density=0.08)
    found = layouts(array, coder)
    assert set(found) == {"dense", "sparse-gaps", "sparse-fixed"}
    for entry, payload in found.values():
        assert bits_equal(decode_tensor(entry, payload), array)
        assert entry["nonzeros"] == np.count_nonzero(array)
    entry, payload = encode_tensor(array, coder)
    assert len(payload) == min(len(p) for _, p in found.values())
    if coder in ("huffman", "raw"):
        # at least one bit per element when dense; rANS codes i.i.d. zeros at their entropy,
        # which ties with the sparse layouts on this (i.i.d.) data
        assert entry["layout"] != "dense"
    fixed = found["sparse-fixed"][0]
    assert fixed["entries"] > fixed["nonzeros"]  # it needed fillers
    assert 1 <= fixed["gap_bits"] < 16


def test_layout_follows_the_data() -> None:
    no_zeros = shared_sparse(1, (100, 100), density=1.0)
    assert encode_tensor(no_zeros)[0]["layout"] == "dense"
    # whole rows pruned: long runs of zeros, which gaps code in a few bits each
    rows = shared_sparse(2, (200, 500), density=1.0)
    rows[np.random.default_rng(2).random(200) < 0.9] = 0
    assert encode_tensor(rows)[0]["layout"] != "dense"
    zeros = np.zeros((50, 50), dtype=np.float32)
    entry, payload = encode_tensor(zeros)
    assert (entry["layout"], len(payload)) == ("sparse-gaps", 0)
    assert bits_equal(decode_tensor(entry, payload), zeros)


def test_deep_compression_fixed_width_index_with_raw_coder() -> None:
    """With the raw coder, sparse-fixed is exactly Deep Compression's scheme: gap_bits per
    entry, log2(codebook) bits per value, fillers included."""
    array = shared_sparse(3, (100, 300), density=0.1)
    entry, payload = layouts(array, "raw")["sparse-fixed"]
    width = entry["gap_bits"]
    assert entry["index"] == {"coder": "raw", "bytes": 1 + -(-entry["entries"] * width // 8)}
    book = entry["codebook"]["size"]  # 32 levels + zero for the fillers
    assert book == 33
    assert entry["values"]["bytes"] == 1 + -(-entry["entries"] * 6 // 8)
    assert bits_equal(decode_tensor(entry, payload), array)


def test_codebook_only_when_it_pays() -> None:
    shared = shared_sparse(4, (64, 64), density=1.0, levels=16)
    entry, _ = encode_tensor(shared)
    assert entry["codebook"] == {"size": 16, "bytes": 64}
    assert entry["values"]["bytes"] < shared.size * 4 // 6  # about 4 bits per weight
    distinct = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
    entry, payload = encode_tensor(distinct)
    assert entry["values"]["coder"] == "plain" and "codebook" not in entry
    assert len(payload) == distinct.nbytes


# ---------------------------------------------------------------------------- dtypes, shapes
@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(SUPPORTED_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(np.prod(shape))
    # arbitrary bit patterns (NaNs, infinities, -0.0, denormals), a few distinct ones
    # or all different, with a share of exact zeros
    pool = rng.integers(0, 256, size=(draw(st.sampled_from([1, 3, 40, 1000])),
                                      dtype.itemsize), dtype=np.uint8)
    raw = pool[rng.integers(0, len(pool), size=n)]
    raw[rng.random(n) < draw(st.sampled_from([0.0, 0.5, 0.95]))] = 0
    if dtype == np.bool_:
        raw &= 1
    order = draw(st.sampled_from(["<", ">"]))  # big-endian input must work too
    return raw.reshape(-1).view(dtype.newbyteorder("<")).reshape(shape).astype(
        dtype.newbyteorder(order))


@settings(max_examples=150, deadline=None)
@given(array=arrays(), coder=st.sampled_from(["best", *sorted(CODERS)]))
def test_any_dtype_and_shape_round_trips_bit_exactly(array: np.ndarray, coder: str) -> None:
    entry, payload = encode_tensor(array, coder)
    out = decode_tensor(entry, payload)
    assert out.dtype == array.dtype.newbyteorder("=")
    assert out.shape == array.shape
    assert out.astype(out.dtype.newbyteorder("<")).tobytes() == \
        array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_special_floats_keep_their_bits() -> None:
    bits = np.array([0x00000000, 0x80000000, 0x7FC00000, 0x7FC00001, 0xFFC00000, 0x7F800000,
                     0xFF800000, 0x00000001, 0x3F800000, 0x80000000], dtype=np.uint32)
    array = np.tile(bits, 50).view(np.float32)
    for coder in ("best", "huffman", "rans", "raw"):
        for entry, payload in layout_candidates(array, coder):
            assert bits_equal(decode_tensor(entry, payload), array)
    # -0.0 is not a zero of the sparse index: it is stored as a value
    assert encode_tensor(array)[0]["nonzeros"] == 9 * 50 - 0


@pytest.mark.parametrize("array", [np.float32(1.5), np.array(7, dtype=np.int64),
                                   np.zeros((0,), dtype=np.float32),
                                   np.zeros((3, 0, 2), dtype=np.int8)],
                         ids=["scalar-f32", "scalar-i64", "empty", "empty-3d"])
def test_scalars_and_empty_tensors(array: np.ndarray) -> None:
    entry, payload = encode_tensor(np.asarray(array))
    assert bits_equal(decode_tensor(entry, payload), np.asarray(array))


def test_unsupported_dtype_and_coder_are_refused() -> None:
    with pytest.raises(ArtifactError, match="complex64"):
        encode_tensor(np.zeros(3, dtype=np.complex64))
    with pytest.raises(ConfigError, match="unknown coder"):
        encode_tensor(np.zeros(3, dtype=np.float32), "zip")


# ---------------------------------------------------------------------------- lying entries
@pytest.fixture(scope="module")
def coded() -> dict[str, tuple[dict, bytes]]:
    array = shared_sparse(6, (40, 50), density=0.1)
    return layouts(array)


def lie(entry: dict, **changes) -> dict:
    out = copy.deepcopy(entry)
    for path, value in changes.items():
        target = out
        *parents, key = path.split("__")
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return out


@pytest.mark.parametrize(("layout", "changes", "message"), [
    ("dense", {"shape": [40, 51]}, "declared|bytes"),  # the coder's check, whichever won
    ("dense", {"shape": [10**6, 10**6]}, "max_elements"),
    ("dense", {"shape": [-40, -50]}, "shape"),
    ("dense", {"shape": "40x50"}, "shape"),
    ("dense", {"shape": [1] * 40}, "shape"),
    ("dense", {"dtype": "complex64"}, "dtype"),
    ("dense", {"dtype": "float64"}, "bytes"),
    ("dense", {"layout": "csr"}, "layout"),
    ("dense", {"nonzeros": 5}, "decodes to 186 non-zeros"),
    ("dense", {"nonzeros": 10**9}, "nonzeros"),
    ("dense", {"nonzeros": True}, "nonzeros"),
    ("dense", {"decoded_crc32": 12345}, "CRC32"),
    ("dense", {"decoded_crc32": -1}, "decoded_crc32"),
    ("sparse-gaps", {"shape": [40, 51]}, "CRC32"),  # a longer tail of zeros
    ("dense", {"values": None}, "values"),
    ("dense", {"values__coder": "lzw"}, "coder"),
    ("dense", {"codebook__size": 2}, "codebook"),
    ("dense", {"codebook__size": 0}, "codebook"),
    ("dense", {"codebook": None}, "codebook"),
    ("sparse-gaps", {"entries": 3}, "entries"),
    ("sparse-gaps", {"entries": None}, "entries"),
    ("sparse-gaps", {"index__bytes": 3}, "payload is"),
    ("sparse-gaps", {"index": None}, "index"),
    ("sparse-gaps", {"shape": [20, 50]}, "reaches position"),
    ("sparse-fixed", {"gap_bits": 2}, "index gap .* out of range"),
    ("sparse-fixed", {"gap_bits": 40}, "gap_bits"),
    ("sparse-fixed", {"entries": 2000}, "symbols|bytes"),
    ("sparse-fixed", {"layout": "sparse-gaps"}, "entries"),
    ("sparse-gaps", {"codebook__dtype": "float16"}, "32 float16 values takes 64 bytes"),
    ("dense", {"codebook__dtype": "bfloat16"}, "may only be float16"),
    ("dense", {"dtype": "int32", "codebook__dtype": "float16"}, "may only be float16"),
])
def test_lying_entries_are_refused(coded: dict, layout: str, changes: dict,
                                   message: str) -> None:
    entry, payload = coded[layout]
    assert "codebook" in entry  # 32 shared values: every layout uses a codebook
    with pytest.raises(ArtifactError, match=message):
        decode_tensor(lie(entry, **changes), payload)


def dead_units(seed: int, shape: tuple[int, ...] = (60, 80), live: tuple[int, int] = (12, 20),
               density: float = 0.3) -> np.ndarray:
    """A layer after sparsity training: most rows (units) and columns (inputs) dead, the
    live submatrix sparse."""
    rng = np.random.default_rng(seed)
    rows = shape[0]
    cols = int(np.prod(shape[1:]))
    array = np.zeros((rows, cols), np.float32)
    r = np.sort(rng.choice(rows, live[0], replace=False))
    c = np.sort(rng.choice(cols, live[1], replace=False))
    sub = shared_sparse(seed, live, density)
    sub[:, 0] = sub[0, :] = 0.125  # every chosen row and column holds a non-zero
    array[np.ix_(r, c)] = sub
    return array.reshape(shape)


@pytest.mark.parametrize("coder", ["best", *sorted(CODERS)])
def test_sparse_lines_codes_dead_rows_and_columns_once(coder: str) -> None:
    array = dead_units(7)
    found = layouts(array, coder)
    assert "sparse-lines" in found
    entry, payload = found["sparse-lines"]
    assert entry["lines"] == [12, 20] and entry["entries"] == np.count_nonzero(array)
    assert bits_equal(decode_tensor(entry, payload), array)
    if coder != "raw":  # the gaps within the live submatrix are short
        assert len(payload) < len(found["sparse-gaps"][1])
        assert encode_tensor(array, coder)[0]["layout"] == "sparse-lines"
    conv = dead_units(8, (16, 4, 3, 3), (5, 9))  # dead output channels and filter taps
    entry, payload = encode_tensor(conv, coder)
    assert bits_equal(decode_tensor(entry, payload), conv)


def test_sparse_lines_is_not_tried_where_every_line_is_live() -> None:
    array = shared_sparse(9, (30, 40), density=0.5)
    assert "sparse-lines" not in layouts(array)
    assert "sparse-lines" not in layouts(np.where(np.arange(50) % 7 == 0, 1.0, 0.0))  # 1-D


@pytest.mark.parametrize(("changes", "message"), [
    ({"lines": [61, 20]}, "out of range"),
    ({"lines": [12, 4801]}, "out of range"),
    ({"lines": [2, 2]}, "do not fit"),
    ({"lines": [12]}, "live rows, live columns"),
    ({"lines": [12.0, 20]}, "live rows, live columns"),
    ({"lines": None}, "live rows, live columns"),
    ({"lines": [13, 20]}, "out of range|reaches|symbols|bytes|CRC32|non-zeros"),
    ({"shape": [4800]}, "2 or more dimensions"),
    ({"shape": [0, 80]}, "nonzeros. = 97 is out of range"),
    ({"entries": 5}, "entries"),
    ({"shape": [80, 60]}, "CRC32|out of range|reaches"),
])
def test_lying_sparse_lines_entries_are_refused(changes: dict, message: str) -> None:
    entry, payload = layouts(dead_units(7))["sparse-lines"]
    with pytest.raises(ArtifactError, match=message):
        decode_tensor(lie(entry, **changes), payload)


def test_a_live_line_past_the_end_is_refused() -> None:
    # live rows at 1 and 4 of 4; live column 0 of 2; entries at (0,0), (1,0)
    index = CODERS["raw"].encode(np.array([1, 2, 0, 0, 0]))
    values = np.array([1, 2], dtype="<i4").tobytes()
    entry = {"dtype": "int32", "shape": [4, 2], "nonzeros": 2, "layout": "sparse-lines",
             "entries": 2, "lines": [2, 1], "decoded_crc32": 0,
             "index": {"coder": "raw", "bytes": len(index)},
             "values": {"coder": "plain", "bytes": len(values)}}
    with pytest.raises(ArtifactError, match="live row reaches position 4 of 4"):
        decode_tensor(entry, index + values)


def test_a_float32_codebook_of_float16_values_is_stored_in_half_the_bytes() -> None:
    array = shared_sparse(10, (30, 40), density=0.2, levels=16)
    halved = array.astype(np.float16).astype(np.float32)
    entry, payload = encode_tensor(halved)
    assert entry["codebook"] == {"size": 16, "bytes": 32, "dtype": "float16"}
    assert bits_equal(decode_tensor(entry, payload), halved)
    full_entry, full_payload = encode_tensor(array)  # not float16 values: 4 bytes each
    assert "dtype" not in full_entry["codebook"] and full_entry["codebook"]["bytes"] == 64
    assert len(full_payload) - len(payload) == 32
    negative_zero = np.array([-0.0, 0.5, -0.0, 0.5, 1.0, 0.5] * 8, np.float32)
    entry, payload = encode_tensor(negative_zero)  # -0.0 is a float16 too, kept bit for bit
    assert bits_equal(decode_tensor(entry, payload), negative_zero)
    assert encode_tensor(halved.astype(np.float64))[0]["codebook"].get("dtype") is None


def test_codebook_index_out_of_range_is_refused() -> None:
    indices = CODERS["raw"].encode(np.array([0, 1, 5]))
    book = np.array([0.5, 1.5], dtype="<f4").tobytes()
    entry = {"dtype": "float32", "shape": [3], "nonzeros": 3, "layout": "dense",
             "decoded_crc32": 0, "values": {"coder": "raw", "bytes": len(indices)},
             "codebook": {"size": 2, "bytes": len(book)}}
    with pytest.raises(ArtifactError, match="codebook index 5 out of range"):
        decode_tensor(entry, indices + book)


def test_gap_past_the_end_is_refused() -> None:
    index = CODERS["raw"].encode(np.array([5, 5]))  # positions 5 and 11 of 8
    values = np.array([1, 2], dtype="<i4").tobytes()
    entry = {"dtype": "int32", "shape": [8], "nonzeros": 2, "layout": "sparse-gaps",
             "entries": 2, "decoded_crc32": 0, "index": {"coder": "raw", "bytes": len(index)},
             "values": {"coder": "plain", "bytes": len(values)}}
    with pytest.raises(ArtifactError, match="reaches position 11"):
        decode_tensor(entry, index + values)


def test_huge_declared_count_fails_before_allocating() -> None:
    """A constant tensor costs nothing to declare: only max_elements stands between a tiny
    entry and a giant allocation."""
    index = CODERS["huffman"].encode(np.zeros(4, dtype=np.int64))  # single-symbol: table only
    book = np.array([1.0], dtype="<f4").tobytes()
    entry = {"dtype": "float32", "shape": [10**12], "nonzeros": 10**12, "layout": "dense",
             "values": {"coder": "huffman", "bytes": len(index)},
             "codebook": {"size": 1, "bytes": 4}, "decoded_crc32": 0}
    with pytest.raises(ArtifactError, match="max_elements"):
        decode_tensor(entry, index + book)
    small = {**entry, "shape": [1000], "nonzeros": 1000,
             "decoded_crc32": zlib.crc32(np.ones(1000, dtype="<f4").tobytes())}
    assert decode_tensor(small, index + book).tolist() == [1.0] * 1000
    with pytest.raises(ArtifactError, match="max_elements"):
        decode_tensor(small, index + book, max_elements=999)


def test_bool_tensor_with_other_bytes_is_refused() -> None:
    data = bytes([0, 1, 2])
    entry = {"dtype": "bool", "shape": [3], "nonzeros": 2, "layout": "dense",
             "values": {"coder": "plain", "bytes": 3}, "decoded_crc32": zlib.crc32(data)}
    with pytest.raises(ArtifactError, match="bool"):
        decode_tensor(entry, data)


def test_check_entry_reports_sizes() -> None:
    array = shared_sparse(7, (30, 30), density=0.2)
    entry, payload = encode_tensor(array)
    info = check_entry(entry)
    assert info.count == 900
    assert info.total_bytes == len(payload)
    assert info.index_bytes + info.value_bytes + info.codebook_bytes == len(payload)
