"""The grid value coding: a uniformly quantized float32 tensor stored as float32 scales,
integer zero points and entropy-coded integers, in every layout, bit for bit; hints that do
not fit or elements off the grid fall back to the other codings; entries that lie about a
grid are refused."""

from __future__ import annotations

import copy
import warnings
import zlib

import numpy as np
import pytest

from modelzip.codec.coders import CODERS, decode_symbols
from modelzip.codec.tensor import (
    MAX_GRID_LEVELS,
    check_entry,
    decode_tensor,
    encode_tensor,
    layout_candidates,
)
from modelzip.errors import ArtifactError


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def quantized(seed: int, shape: tuple[int, ...], bits: int, per_channel: bool = True,
              density: float = 1.0) -> tuple[np.ndarray, dict]:
    """Min/max affine quantization of normal weights, per row or per tensor, with the float32
    formula of the grid coding; then a share ``1 - density`` of the entries pruned to 0."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) * rng.uniform(0.01, 2.0, size=(shape[0],) + (1,) *
                                                 (len(shape) - 1))
    rows = w.reshape(shape[0], -1) if per_channel else w.reshape(1, -1)
    qmax = 2**bits - 1
    lo, hi = np.minimum(rows.min(1), 0), np.maximum(rows.max(1), 0)
    scale = ((hi - lo) / qmax).astype(np.float32)
    zero = np.round(-lo / scale.astype(np.float64))
    q = np.clip(np.rint(rows / scale[:, None].astype(np.float64)) + zero[:, None], 0, qmax)
    x = ((np.float32(1) * q.astype(np.float32) - zero[:, None].astype(np.float32))
         * scale[:, None]).reshape(shape)
    x[rng.random(shape) >= density] = 0
    hint = {"scale": scale, "zero_point": zero.astype(np.int64), "bits": bits,
            "axis": 0 if per_channel else None}
    return x, hint


# ---------------------------------------------------------------------------- choosing it
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("coder", ["best", *sorted(CODERS)])
def test_a_per_channel_grid_is_chosen_and_round_trips(bits: int, coder: str) -> None:
    x, hint = quantized(bits, (128, 256), bits)
    entry, payload = encode_tensor(x, coder, hint=hint)
    assert entry["grid"]["channels"] == 128 and "codebook" not in entry
    assert bits_equal(decode_tensor(entry, payload), x)
    _, without = encode_tensor(x, coder)
    # each row has its own values: as floats, a codebook index or a plain value per weight
    assert len(payload) < len(without) / 2
    # the integers in at most ``bits`` bits each (raw) or their entropy, plus the scales
    assert 8 * len(payload) <= x.size * (bits + 1) + 32 * 128 + 64


def test_every_layout_round_trips_with_a_grid() -> None:
    x, hint = quantized(1, (200, 300), 4, density=0.1)  # quantized, then pruned
    found = {e["layout"]: (e, p) for e, p in layout_candidates(x, "best", hint)}
    assert set(found) == {"dense", "sparse-gaps", "sparse-fixed"}
    for entry, payload in found.values():
        assert "grid" in entry, entry["layout"]
        assert bits_equal(decode_tensor(entry, payload), x)
    assert found["sparse-fixed"][0]["entries"] > np.count_nonzero(x)  # fillers are on it too
    entry, payload = encode_tensor(x, hint=hint)
    assert "grid" in entry and len(payload) == min(len(p) for _, p in found.values())
    # pruned zeros stay cheap: 90% zeros and 4-bit values in well under a bit per element
    # (rANS codes i.i.d. zeros at their entropy even when dense; Huffman needs a sparse layout)
    assert 8 * len(payload) < 0.85 * x.size
    entry, payload = encode_tensor(x, "huffman", hint=hint)
    assert entry["layout"] != "dense" and "grid" in entry
    assert 8 * len(payload) < 0.85 * x.size


def test_a_per_tensor_grid_saves_the_codebook() -> None:
    x, hint = quantized(2, (64, 96), 8, per_channel=False)
    assert hint["scale"].size == 1
    entry, payload = encode_tensor(x, hint=hint)
    assert entry["grid"]["channels"] == 1
    assert bits_equal(decode_tensor(entry, payload), x)
    plain_entry, without = encode_tensor(x)
    assert "codebook" in plain_entry  # at most 256 values: a codebook does well already
    assert len(payload) < len(without) - 4 * 100  # ... less its 4 bytes per value


def test_binary_weights_per_channel_take_about_a_bit() -> None:
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.01, 1, size=64).astype(np.float32)
    x = np.where(rng.random((64, 500)) < 0.5, -1, 1).astype(np.float32) * scale[:, None]
    entry, payload = encode_tensor(x, hint={"scale": scale})
    assert entry["grid"]["levels"] == 3  # -1, (0), +1
    assert bits_equal(decode_tensor(entry, payload), x)
    assert 8 * len(payload) < 1.1 * x.size + 32 * 64


def test_big_endian_input() -> None:
    x, hint = quantized(4, (16, 40), 4)
    entry, payload = encode_tensor(x.astype(">f4"), hint=hint)
    assert "grid" in entry
    assert bits_equal(decode_tensor(entry, payload), x)


def test_the_payload_follows_the_documented_formula() -> None:
    """Decoded by hand from the spec in tensor.py: values stream, float32 scales, coded zero
    points; value = (float32(k) - float32(zero_point[c])) * scale[c]."""
    x, hint = quantized(5, (30, 70), 6)
    entry, payload = encode_tensor(x, "huffman", hint=hint)
    assert entry["layout"] == "dense"
    buf = np.frombuffer(payload, dtype=np.uint8)
    n_values = entry["values"]["bytes"]
    grid = entry["grid"]
    k = decode_symbols("huffman", buf[:n_values], x.size).reshape(30, 70)
    scales = buf[n_values:n_values + grid["scales"]["bytes"]].view("<f4")
    zero_points = decode_symbols(grid["zero_points"]["coder"],
                                 buf[n_values + grid["scales"]["bytes"]:], 30)
    assert int(k.max()) < grid["levels"] and int(zero_points.max()) <= MAX_GRID_LEVELS
    by_hand = (np.float32(k) - np.float32(zero_points)[:, None]) * scales[:, None]
    assert bits_equal(by_hand.astype(np.float32), x)
    np.testing.assert_array_equal(scales, hint["scale"])


# ---------------------------------------------------------------------------- falling back
def test_one_element_off_the_grid_means_no_grid() -> None:
    x, hint = quantized(6, (20, 30), 4)
    nudged = x.copy()
    nudged[3, 7] = np.nextafter(nudged[3, 7], np.float32(10))  # one ulp off
    entry, payload = encode_tensor(nudged, hint=hint)
    assert "grid" not in entry
    assert bits_equal(decode_tensor(entry, payload), nudged)
    negative_zero = x.copy()
    negative_zero[0, 0] = -0.0  # a different bit pattern from the grid's +0.0
    entry, payload = encode_tensor(negative_zero, hint=hint)
    assert "grid" not in entry
    assert bits_equal(decode_tensor(entry, payload), negative_zero)


@pytest.mark.parametrize("change", ["rows+1", "one-scale-per-column", "scale x 1.5", "zero",
                                    "negative", "nan", "inf", "float64", "float16", "int32"])
def test_a_hint_that_does_not_fit_changes_nothing(change: str) -> None:
    x, hint = quantized(7, (16, 48), 4)
    hint = dict(hint)
    array = x
    if change == "rows+1":
        hint["scale"] = np.append(hint["scale"], np.float32(1))
    elif change == "one-scale-per-column":
        hint["scale"] = np.ones(48, dtype=np.float32)
    elif change == "scale x 1.5":
        hint["scale"] = hint["scale"] * np.float32(1.5)
    elif change in ("zero", "negative", "nan", "inf"):
        scale = hint["scale"].copy()
        scale[2] = {"zero": 0, "negative": -scale[2], "nan": np.nan, "inf": np.inf}[change]
        hint["scale"] = scale
    else:
        array = x.astype(change)
    entry, payload = encode_tensor(array, hint=hint)
    assert "grid" not in entry
    assert (entry, payload) == encode_tensor(array)
    assert bits_equal(decode_tensor(entry, payload), array)


def test_empty_and_scalar_tensors_with_a_hint() -> None:
    for array in (np.zeros((0, 4), np.float32), np.zeros((3, 0), np.float32)):
        entry, payload = encode_tensor(array, hint={"scale": np.ones(array.shape[0])})
        assert bits_equal(decode_tensor(entry, payload), array)
    scalar = np.float32(0.75) * np.ones((), np.float32)
    entry, payload = encode_tensor(scalar, hint={"scale": [0.25], "axis": None})
    assert bits_equal(decode_tensor(entry, payload), scalar)


@pytest.mark.parametrize(("hint", "message"), [
    ([0.1, 0.2], "dict with 'scale'"),
    ({"zero_point": [0]}, "dict with 'scale'"),
    ({"scale": "wide"}, "not a list of numbers"),
    ({"scale": [[0.1], [0.2, 0.3]]}, "not a list of numbers"),
    ({"scale": [0.1], "axis": 1}, "axis must be 0"),
])
def test_a_malformed_hint_is_refused(hint: object, message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        encode_tensor(np.ones((2, 3), np.float32), hint=hint)


# ---------------------------------------------------------------------------- lying entries
@pytest.fixture(scope="module")
def coded() -> dict[str, tuple[dict, bytes]]:
    x, hint = quantized(8, (12, 40), 4, density=0.3)
    found = {e["layout"]: (e, p) for e, p in layout_candidates(x, "best", hint)}
    assert all("grid" in e for e, _ in found.values())
    return found


def lie(entry: dict, **changes: object) -> dict:
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
    ("dense", {"grid__channels": 0}, "channels"),
    ("dense", {"grid__channels": 5}, "5 channels for a tensor of shape"),
    ("dense", {"grid__channels": 13}, "channels.*out of range"),
    ("dense", {"grid__channels": 10**12}, "channels.*out of range"),
    ("dense", {"grid__channels": True}, "channels"),
    ("dense", {"grid__channels": 1}, "scales take 4 bytes"),
    ("dense", {"grid__levels": 0}, "levels"),
    ("dense", {"grid__levels": MAX_GRID_LEVELS + 1}, "levels"),
    ("dense", {"grid__levels": 2}, "grid integer .* out of range"),
    ("dense", {"grid__scales": None}, "scales"),
    ("dense", {"grid__scales__bytes": 52}, "scales take 48 bytes"),
    ("dense", {"grid__scales__bytes": "48"}, "bytes"),
    ("dense", {"grid__zero_points": None}, "zero_points"),
    ("dense", {"grid__zero_points__coder": "lzw"}, "coder"),
    ("dense", {"grid__zero_points__bytes": 10**9}, "payload is"),
    ("dense", {"grid": None}, "codebook"),
    ("dense", {"grid": [12, 4]}, "grid.*not an object"),
    ("dense", {"dtype": "float64"}, "grid codes float32 values"),
    ("dense", {"dtype": "int32"}, "grid codes float32 values"),
    ("dense", {"values__coder": "plain"}, "grid goes with coded values"),
    ("dense", {"codebook": {"size": 1, "bytes": 4}}, "grid goes with coded values"),
    ("dense", {"shape": [24, 20]}, "channels|scales"),
    ("sparse-gaps", {"shape": [40, 12]}, "channels|scales"),
    ("sparse-gaps", {"entries": 5}, "entries"),
    ("sparse-fixed", {"grid__levels": 1}, "grid integer .* out of range"),
])
def test_lying_grid_entries_are_refused(coded: dict, layout: str, changes: dict,
                                        message: str) -> None:
    entry, payload = coded[layout]
    with pytest.raises(ArtifactError, match=message):
        decode_tensor(lie(entry, **changes), payload)


def _with_side(entry: dict, payload: bytes, scales: np.ndarray, zero_points: np.ndarray
               ) -> tuple[dict, bytes]:
    """The entry and payload with new scales and zero points (consistent sizes)."""
    head = entry.get("index", {}).get("bytes", 0) + entry["values"]["bytes"]
    zp_data = CODERS["huffman"].encode(zero_points)
    out = lie(entry, grid__zero_points={"coder": "huffman", "bytes": len(zp_data)})
    return out, payload[:head] + scales.astype("<f4").tobytes() + zp_data


def test_zero_points_out_of_range_are_refused(coded: dict) -> None:
    entry, payload = coded["dense"]
    scales = np.ones(12, dtype=np.float32)
    bad, data = _with_side(entry, payload, scales, np.full(12, MAX_GRID_LEVELS + 1))
    with pytest.raises(ArtifactError, match="zero point 65537 out of range"):
        decode_tensor(bad, data)
    fine, data = _with_side(entry, payload, scales, np.full(12, MAX_GRID_LEVELS))
    with pytest.raises(ArtifactError, match=r"non-zeros|CRC32"):  # in range, but wrong
        decode_tensor(fine, data)


def test_hostile_scales_fail_the_crc_without_warnings(coded: dict) -> None:
    for layout in ("dense", "sparse-gaps"):
        entry, payload = coded[layout]
        scales = np.array([np.nan, np.inf, -np.inf, 3e38] * 3, dtype=np.float32)
        bad, data = _with_side(entry, payload, scales, np.full(12, 60000))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ArtifactError, match=r"non-zeros|CRC32"):
                decode_tensor(bad, data)


def test_a_hand_written_grid_entry_decodes() -> None:
    """The smallest grid: one channel, levels 0..2 around zero point 1, raw integers."""
    k = np.array([0, 1, 2, 2, 1, 0])
    values = CODERS["raw"].encode(k, alphabet_size=3)
    zero_points = CODERS["raw"].encode(np.array([1]))
    scales = np.array([0.5], dtype="<f4").tobytes()
    expected = np.array([-0.5, 0, 0.5, 0.5, 0, -0.5], dtype=np.float32).reshape(2, 3)
    entry = {"dtype": "float32", "shape": [2, 3], "nonzeros": 4, "layout": "dense",
             "decoded_crc32": zlib.crc32(expected.astype("<f4").tobytes()),
             "values": {"coder": "raw", "bytes": len(values)},
             "grid": {"channels": 1, "levels": 3, "scales": {"bytes": 4},
                      "zero_points": {"coder": "raw", "bytes": len(zero_points)}}}
    assert bits_equal(decode_tensor(entry, values + scales + zero_points), expected)


def test_check_entry_reports_the_grid() -> None:
    x, hint = quantized(9, (10, 30), 5)
    entry, payload = encode_tensor(x, hint=hint)
    info = check_entry(entry)
    assert info.value_coding == "grid"
    assert (info.grid_channels, info.grid_levels) == (10, entry["grid"]["levels"])
    assert info.side_bytes == info.scale_bytes + info.zero_point_bytes
    assert info.scale_bytes == 40 and info.codebook_bytes == 0
    assert info.total_bytes == len(payload)
