"""The .mzip container and the torch-free artifact API: round trips, determinism, and every
kind of damaged or hostile file giving an ArtifactError that names the failed check."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelzip.codec.artifact import (
    describe_artifact,
    read_artifact,
    read_artifact_file,
    summarize_artifact,
    write_artifact,
)
from modelzip.codec.bits import encode_varints
from modelzip.codec.container import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    SHA_SIZE,
    read_container,
    write_container,
)
from modelzip.codec.manifest import decode_value, encode_value
from modelzip.errors import ArtifactError, ModelzipError


def sparse_weights(seed: int, shape: tuple[int, ...], density: float) -> np.ndarray:
    """Pruned and weight-shared: half the rows empty (as after pruning, where whole neurons
    go), the others at ``density``, 16 distinct values."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(-0.3, 0.3, 16).astype(np.float32)
    keep = (rng.random(shape) < density) & (rng.random((shape[0], 1)) < 0.5)
    return np.where(keep, levels[rng.integers(0, 16, size=shape)], np.float32(0))


def small_inputs() -> dict[str, Any]:
    """What the on-board runner stores: initializers of several dtypes, a graph blob, meta."""
    return {
        "tensors": {
            "fc.weight": sparse_weights(0, (20, 30), 0.2),
            "fc.bias": np.arange(20, dtype=np.float32) / 7,
            "q.scale": np.array(0.05, dtype=np.float32),
            "q.zero_point": np.array([3, -2], dtype=np.int8),
            "q.w8": np.array([[0, 255, 7], [0, 0, 9]], dtype=np.uint8),
            "shape": np.array([1, 600], dtype=np.int64),
            "steps": np.array([4, 5, 6], dtype=np.int32),
        },
        "blobs": {"graph.onnx": b"\x08\x07onnx-graph-without-weights", "empty": b""},
        "meta": {"classes": ["cat", "dog"], "mean": [0.1307], "std": [0.3081]},
        "model": {"onnx": "graph.onnx", "inputs": [[1, 1, 28, 28]]},
    }


@pytest.fixture(scope="module")
def small() -> bytes:
    return write_artifact(**small_inputs())


@pytest.fixture(scope="module")
def larger() -> bytes:
    data = write_artifact({"w1": sparse_weights(1, (300, 400), 0.1),
                           "w2": sparse_weights(2, (100, 300), 0.3),
                           "b": np.linspace(0, 1, 100, dtype=np.float32)})
    layouts = {r["name"]: r["layout"] for r in describe_artifact(data)}
    assert layouts["w1"] != "dense" and layouts["w2"] != "dense" and layouts["b"] == "dense"
    return data


def assemble(header: tuple[bytes, int, int, int, int], manifest: bytes, body: bytes) -> bytes:
    """Raw container bytes with a correct SHA-256, from explicit header fields."""
    blob = struct.pack("<4sHHIQ", *header) + manifest + body
    return blob + hashlib.sha256(blob).digest()


def rewrite(data: bytes, mutate) -> bytes:
    """A deliberately lying file: the manifest changed by ``mutate``, with valid CRCs and
    SHA-256, so that only the deeper checks can catch it."""
    layout = read_container(data)
    manifest = copy.deepcopy(layout.manifest)
    order = [name for name, _, _ in manifest.pop("chunks")]
    chunks = {name: bytes(layout.chunks[name]) for name in order}
    result = mutate(manifest, chunks)
    if result is not None:
        order = result
    return write_container(manifest, [(name, chunks[name]) for name in order])


def refused(data: bytes, *needles: str) -> str:
    with pytest.raises(ArtifactError) as info:
        read_artifact(data)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------- round trips
def test_round_trip_of_tensors_blobs_model_and_meta(small: bytes) -> None:
    inputs = small_inputs()
    art = read_artifact(small)
    assert sorted(art.tensors) == sorted(inputs["tensors"])
    for name, array in inputs["tensors"].items():
        out = art.tensors[name]
        assert out.dtype == array.dtype and out.shape == array.shape
        assert out.tobytes() == array.tobytes()
        assert out.flags.writeable  # the runner may hand them to onnxruntime as they are
    assert art.blobs == inputs["blobs"]
    assert art.meta == inputs["meta"]
    assert art.model == inputs["model"]


def test_no_model_and_no_meta() -> None:
    art = read_artifact(write_artifact({"x": np.zeros(3, dtype=np.float32)}))
    assert art.model is None
    assert art.meta == {}
    assert art.blobs == {}


def test_same_inputs_same_bytes(small: bytes) -> None:
    inputs = small_inputs()
    assert write_artifact(**inputs) == small
    # dict order does not matter: names are written sorted
    reordered = {**inputs, "tensors": dict(reversed(list(inputs["tensors"].items()))),
                 "blobs": dict(reversed(list(inputs["blobs"].items())))}
    assert write_artifact(**reordered) == small


def test_header_and_manifest_layout(small: bytes) -> None:
    assert small[:4] == MAGIC
    assert struct.unpack_from("<H", small, 4)[0] == FORMAT_VERSION == 3
    assert hashlib.sha256(small[:-SHA_SIZE]).digest() == small[-SHA_SIZE:]
    layout = read_container(small)
    # flags byte, then the varints M and C: the header is 9 to 11 bytes for small files
    assert layout.header_size == 7 + len(encode_varints([layout.manifest_size])) + \
        len(encode_varints([len(small) - layout.header_size - layout.manifest_size - SHA_SIZE]))
    assert layout.header_size < HEADER_SIZE
    names = [name for name, _, _ in layout.manifest["chunks"]]
    assert names == sorted(n for n in names if n.startswith("tensor:")) + \
        sorted(n for n in names if n.startswith("blob:"))
    for name, length, crc in layout.manifest["chunks"]:
        assert len(layout.chunks[name]) == length
        assert zlib.crc32(layout.chunks[name]) == crc


def test_manifest_is_deflated_only_when_smaller() -> None:
    tiny = write_container({"n": 1}, [])
    assert tiny[6] == 0  # the compact manifest as it is: deflate would not help
    assert decode_value(tiny[9:len(tiny) - SHA_SIZE]) == {"chunks": [], "n": 1}
    assert tiny[7:9] == bytes([len(tiny) - 9 - SHA_SIZE, 0])  # M, C = 0
    tiny2 = write_container({"n": 1}, [], version=2)
    assert struct.unpack_from("<H", tiny2, 6)[0] == 0  # plain JSON
    assert json.loads(tiny2[HEADER_SIZE:len(tiny2) - SHA_SIZE]) == {"chunks": [], "n": 1}
    many = write_artifact({f"layer{i}.running_mean": np.zeros(4, np.float32) for i in range(40)})
    assert many[6] == 1
    layout = read_container(many)
    assert layout.manifest_size < layout.manifest_json_size / 5


def test_describe(small: bytes) -> None:
    rows = {r["name"]: r for r in describe_artifact(small)}
    weight = rows["fc.weight"]
    assert weight["shape"] == [20, 30] and weight["dtype"] == "float32"
    assert weight["count"] == 600
    assert weight["nonzeros"] == int(np.count_nonzero(small_inputs()["tensors"]["fc.weight"]))
    assert weight["index_bits"] + weight["value_bits"] + weight["codebook_bits"] == \
        8 * weight["bytes"]
    assert weight["bits_per_nonzero"] == pytest.approx(8 * weight["bytes"] / weight["nonzeros"])
    assert rows["q.scale"]["shape"] == [] and rows["q.scale"]["count"] == 1
    keys = {"name", "shape", "dtype", "count", "nonzeros", "layout", "coder", "value_coding",
            "index_bits", "value_bits", "codebook_bits", "bytes", "bits_per_nonzero"}
    assert all(set(r) == keys for r in rows.values())
    assert weight["value_coding"] == "codebook"  # 16 shared values
    assert rows["fc.bias"]["value_coding"] == "plain"  # all different
    s = summarize_artifact(small)
    assert s["file_bytes"] == len(small) == (s["header_bytes"] + s["manifest_bytes"]
                                             + s["tensor_bytes"] + s["blob_bytes"]
                                             + s["checksum_bytes"])
    assert s["blobs"] == {"empty": 0, "graph.onnx": len(small_inputs()["blobs"]["graph.onnx"])}


def test_all_zero_tensor_has_no_bits_per_nonzero() -> None:
    (row,) = describe_artifact(write_artifact({"z": np.zeros((4, 4), dtype=np.float32)}))
    assert row["nonzeros"] == 0 and row["bits_per_nonzero"] is None


def test_files(tmp_path: Path, small: bytes) -> None:
    path = tmp_path / "a.mzip"
    path.write_bytes(small)
    assert read_artifact_file(path).blobs == small_inputs()["blobs"]
    missing = tmp_path / "missing.mzip"
    with pytest.raises(ArtifactError, match=re.escape(f"{missing}: file not found")):
        read_artifact_file(missing)
    with pytest.raises(ArtifactError, match="cannot read"):
        read_artifact_file(tmp_path)
    (tmp_path / "cut.mzip").write_bytes(small[:-5])
    with pytest.raises(ArtifactError, match=r"cut\.mzip: header declares"):
        read_artifact_file(tmp_path / "cut.mzip")


def test_artifact_api_imports_without_torch() -> None:
    code = ("import sys, modelzip, modelzip.codec, modelzip.codec.artifact, "
            "modelzip.codec.container, modelzip.codec.tensor, modelzip.codec.coders\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import numpy as np\n"
            "from modelzip.codec import read_artifact, write_artifact\n"
            "art = read_artifact(write_artifact({'w': np.eye(3, dtype=np.float32)}))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_bad_inputs_to_the_writer() -> None:
    with pytest.raises(ArtifactError, match=r"tensor 'c'.*complex"):
        write_artifact({"c": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(ArtifactError, match="blob 'g'"):
        write_artifact({}, blobs={"g": "text"})
    with pytest.raises(ArtifactError, match="plain JSON"):
        write_artifact({}, meta={"mean": float("nan")})
    with pytest.raises(ArtifactError, match="plain JSON"):
        write_artifact({}, meta={"arr": np.zeros(2)})
    with pytest.raises(ArtifactError, match="model must be a dict"):
        write_artifact({}, model=["lenet"])
    with pytest.raises(ModelzipError, match="unknown coder"):
        write_artifact({"x": np.ones(3, dtype=np.float32)}, coder="zip")


# ---------------------------------------------------------------------------- damaged files
def test_shorter_than_the_header() -> None:
    for data in (b"", b"MZ", MAGIC + b"\x03\x00"):
        refused(data, "shorter than the smallest .mzip header")
    refused(MAGIC + b"\x02\x00" + bytes(10), "shorter than the 20-byte header of format "
                                             "version 2")
    refused(MAGIC + b"\x03\x00\x00" + b"\xff" * 20, "the manifest length is longer than")


def test_wrong_magic(small: bytes) -> None:
    refused(b"PK\x03\x04" + small[4:], "not a .mzip file")
    refused(b"\x89PNG\r\n\x1a\n" + bytes(40), "not a .mzip file")


def test_unknown_version_names_the_known_ones(small: bytes) -> None:
    data = bytearray(small)
    struct.pack_into("<H", data, 4, 7)
    refused(bytes(data), "format version 7 is not supported", "knows version(s) 1, 2, 3")
    # also with a correct SHA-256: the version is checked first either way
    v2 = write_container({"tensors": {}, "blobs": []}, [], version=2)
    header = struct.unpack_from("<4sHHIQ", v2, 0)
    body = v2[HEADER_SIZE:-SHA_SIZE]
    refused(assemble((MAGIC, 4, *header[2:]), body[:header[3]], body[header[3]:]),
            "format version 4")


def test_unknown_flags(small: bytes) -> None:
    header = struct.unpack_from("<4sHHIQ", small, 0)
    body = small[HEADER_SIZE:-SHA_SIZE]
    refused(assemble((MAGIC, 1, 0x8001, *header[3:]), body[:header[3]], body[header[3]:]),
            "unknown flags")


@pytest.mark.parametrize("cut", [0, 3, 19, 20, 21, 60, 0.5, -SHA_SIZE - 1, -SHA_SIZE, -1])
def test_truncated_files(larger: bytes, cut: float) -> None:
    end = int(len(larger) * cut) if isinstance(cut, float) else cut % len(larger) if cut < 0 \
        else cut
    with pytest.raises(ArtifactError, match=r"shorter than|truncated"):
        read_artifact(larger[:end])


def test_trailing_bytes(small: bytes) -> None:
    refused(small + b"\x00", "after the end")


def test_every_flipped_byte_of_a_small_artifact(small: bytes) -> None:
    assert len(small) < 4000
    for i in range(len(small)):
        data = bytearray(small)
        data[i] ^= 0x01 if i % 2 else 0x80
        with pytest.raises(ArtifactError):
            read_artifact(bytes(data))


def test_every_flipped_byte_of_a_sparse_lines_artifact() -> None:
    dead_units = np.zeros((60, 50), np.float32)  # after sparsity training: whole units dead
    dead_units[::6, ::4] = sparse_weights(3, (10, 13), 0.5)
    dead_units[::6, 0] = dead_units[0, ::4] = 0.5
    data = write_artifact({"w": dead_units})
    assert [r["layout"] for r in describe_artifact(data)] == ["sparse-lines"]
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01 if i % 2 else 0x80
        with pytest.raises(ArtifactError):
            read_artifact(bytes(flipped))


def test_flipped_bytes_of_a_larger_artifact(larger: bytes) -> None:
    rng = np.random.default_rng(0)
    for i in rng.choice(len(larger), size=200, replace=False):
        data = bytearray(larger)
        data[i] ^= int(rng.integers(1, 256))
        with pytest.raises(ArtifactError):
            read_artifact(bytes(data))


def test_declared_sizes_beyond_the_file_fail_before_allocating(small: bytes) -> None:
    body = small[HEADER_SIZE:-SHA_SIZE]
    manifest_size = struct.unpack_from("<I", small, 8)[0]
    tracemalloc.start()
    try:
        for header in ((MAGIC, 1, 1, 2**32 - 1, 0), (MAGIC, 1, 1, manifest_size, 2**63),
                       (MAGIC, 1, 1, 60 << 20, 10**15)):
            data = struct.pack("<4sHHIQ", *header) + body
            with pytest.raises(ArtifactError, match=r"declares|limit"):
                read_artifact(data + hashlib.sha256(data).digest())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_crc_mismatch_names_the_tensor(small: bytes) -> None:
    layout = read_container(small)
    offset = layout.header_size + layout.manifest_size
    for name, length, _ in layout.manifest["chunks"]:
        if name == "tensor:fc.weight":
            break
        offset += length
    data = bytearray(small[:-SHA_SIZE])
    data[offset + 3] ^= 0xFF
    data += hashlib.sha256(data).digest()
    refused(bytes(data), "chunk 'tensor:fc.weight' fails its CRC32 check")


@pytest.mark.parametrize(("manifest", "needle"), [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid UTF-8 JSON"),
    (b'{"chunks": [], "n": ' + b"9" * 5000 + b"}", "not valid UTF-8 JSON"),
    (b"[]", "not a JSON object"),
    (b"{}", "'chunks' is missing"),
    (b'{"chunks": [["a", 1]]}', "not a [name, length, crc32] list"),
    (b'{"chunks": [["a", -1, 0]]}', "no valid 'length'"),
    (b'{"chunks": [["a", 0, 0], ["a", 0, 0]]}', "repeated name"),
    (b'{"chunks": [["a", 5, 0]]}', "add up to 5 bytes"),
    (b'{"chunks": []}', "field 'tensors'"),
    (b'{"chunks": [], "tensors": {}}', "field 'blobs'"),
    (b'{"chunks": [], "tensors": {}, "blobs": [], "model": 3}', "field 'model'"),
    (b'{"chunks": [], "tensors": {}, "blobs": [], "meta": []}', "field 'meta'"),
    (b'{"chunks": [], "tensors": {"w": {}}, "blobs": []}', "'tensor w' has no chunk"),
    (b'{"chunks": [], "tensors": {}, "blobs": ["g"]}', "'blob g' has no chunk"),
    (b'{"chunks": [["tensor:x", 0, 0]], "tensors": {}, "blobs": []}', "belongs to no"),
])
def test_bad_manifests_with_a_correct_sha(manifest: bytes, needle: str) -> None:
    refused(assemble((MAGIC, 1, 0, len(manifest), 0), manifest, b""), needle)


def test_manifest_that_does_not_inflate() -> None:
    junk = b"\xff" * 50
    refused(assemble((MAGIC, 1, 1, len(junk), 0), junk, b""), "does not inflate")
    bomb = zlib.compress(b" " * (80 << 20), 9, wbits=-15)  # 80 MB of spaces, ~80 KB
    refused(assemble((MAGIC, 1, 1, len(bomb), 0), bomb, b""), "more than")


def _set_entry(name: str, **changes: Any):
    def mutate(manifest: dict, chunks: dict) -> None:
        manifest["tensors"][name].update(changes)
    return mutate


def test_manifest_lying_about_a_shape(larger: bytes) -> None:
    refused(rewrite(larger, _set_entry("w1", shape=[300, 401])), "tensor 'w1'")
    refused(rewrite(larger, _set_entry("w1", shape=[30, 400])), "tensor 'w1'")


def test_manifest_lying_about_counts(larger: bytes) -> None:
    refused(rewrite(larger, _set_entry("w1", nonzeros=7)), "tensor 'w1'", "non-zeros")
    refused(rewrite(larger, _set_entry("w2", entries=10**6)), "tensor 'w2'", "entries")


def test_manifest_lying_about_stream_sizes(larger: bytes) -> None:
    def shift(manifest: dict, chunks: dict) -> None:
        entry = manifest["tensors"]["w1"]
        entry["values"]["bytes"] += 1
        entry["index"]["bytes"] -= 1
    refused(rewrite(larger, shift), "tensor 'w1'")

    def grow(manifest: dict, chunks: dict) -> None:
        manifest["tensors"]["b"]["values"]["bytes"] += 4
    refused(rewrite(larger, grow), "tensor 'b'", "bytes")


def test_declared_10_to_the_12_elements_fail_fast(larger: bytes) -> None:
    tracemalloc.start()
    try:
        refused(rewrite(larger, _set_entry("b", shape=[10**6, 10**6])), "max_elements")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_max_elements_bounds_the_whole_artifact(larger: bytes) -> None:
    assert len(read_artifact(larger, max_elements=300 * 400 + 100 * 300 + 100).tensors) == 3
    with pytest.raises(ArtifactError, match="max_elements"):
        read_artifact(larger, max_elements=300 * 400 + 100 * 300)


def test_chunks_are_found_by_name_and_swapped_contents_are_caught(larger: bytes) -> None:
    def reorder(manifest: dict, chunks: dict) -> list[str]:
        return ["tensor:w2", "tensor:w1", "tensor:b"]
    expected = read_artifact(larger).tensors
    got = read_artifact(rewrite(larger, reorder)).tensors
    assert all(got[k].tobytes() == expected[k].tobytes() for k in expected)

    def swap(manifest: dict, chunks: dict) -> None:
        chunks["tensor:w1"], chunks["tensor:w2"] = chunks["tensor:w2"], chunks["tensor:w1"]
    refused(rewrite(larger, swap), "tensor 'w1'", "its chunk has")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["fc.weight", "fc.bias", "q.scale", "q.w8"]),
       field=st.sampled_from(["dtype", "shape", "nonzeros", "layout", "entries", "gap_bits",
                              "index", "values", "codebook", "index.bytes", "index.coder",
                              "values.bytes", "values.coder", "codebook.size",
                              "codebook.bytes"]),
       value=json_values)
def test_any_lie_in_an_entry_is_an_artifact_error(small: bytes, name: str, field: str,
                                                  value: Any) -> None:
    """Whatever a tensor entry's field is replaced with: ArtifactError, or (a harmless
    change) the same arrays as before. Never another exception."""
    def mutate(manifest: dict, chunks: dict) -> None:
        target = manifest["tensors"][name]
        *parents, key = field.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                return
        target[key] = value
    try:
        art = read_artifact(rewrite(small, mutate))
    except ArtifactError:
        return
    expected = small_inputs()["tensors"][name]
    assert art.tensors[name].tobytes() == expected.tobytes()
    assert art.tensors[name].dtype == expected.dtype


def test_damaged_payload_with_valid_checksums_never_crashes(small: bytes) -> None:
    """A payload byte changed and every checksum recomputed (a crafted file): the decoders
    either refuse it or decode arrays of the declared shape and dtype."""
    layout = read_container(small)
    for name, _, _ in layout.manifest["chunks"]:
        if not name.startswith("tensor:"):
            continue
        original = bytes(layout.chunks[name])
        for i in range(len(original)):
            def damage(manifest: dict, chunks: dict, i: int = i, name: str = name) -> None:
                data = bytearray(chunks[name])
                data[i] ^= 0x24
                chunks[name] = bytes(data)
            try:
                art = read_artifact(rewrite(small, damage))
            except ArtifactError:
                continue
            tensor = name.removeprefix("tensor:")
            expected = small_inputs()["tensors"][tensor]
            assert art.tensors[tensor].shape == expected.shape
            assert art.tensors[tensor].dtype == expected.dtype


# ---------------------------------------------------------------------------- grid hints
def grid_inputs() -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """A per-channel 4-bit quantized, then pruned, layer and its grid hint; a bias."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((24, 40))
    lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
    scale = ((hi - lo) / 15).astype(np.float32)
    zero = np.round(-lo / scale)
    q = np.clip(np.rint(w / scale[:, None]) + zero[:, None], 0, 15)
    weight = (q.astype(np.float32) - zero[:, None].astype(np.float32)) * scale[:, None]
    weight[rng.random(w.shape) < 0.6] = 0
    tensors = {"g.weight": weight, "g.bias": np.linspace(-1, 1, 24, dtype=np.float32)}
    hints = {"g.weight": {"scale": scale, "zero_point": zero.astype(np.int64), "bits": 4,
                          "axis": 0},
             "not.a.tensor": {"scale": [1.0]}}  # ignored
    return tensors, hints


@pytest.fixture(scope="module")
def gridded() -> bytes:
    tensors, hints = grid_inputs()
    data = write_artifact(tensors, hints=hints)
    assert "grid" in read_container(data).manifest["tensors"]["g.weight"]
    return data


def test_hints_store_the_grid_and_read_back_bit_exactly(gridded: bytes) -> None:
    tensors, hints = grid_inputs()
    art = read_artifact(gridded)
    for name, array in tensors.items():
        assert art.tensors[name].tobytes() == array.tobytes()
    rows = {r["name"]: r for r in describe_artifact(gridded)}
    row = rows["g.weight"]
    assert row["value_coding"] == "grid"
    assert row["index_bits"] + row["value_bits"] + row["codebook_bits"] == 8 * row["bytes"]
    assert row["codebook_bits"] >= 32 * 24  # the scales
    without = write_artifact(tensors)
    assert {r["name"]: r["value_coding"] for r in describe_artifact(without)}["g.weight"] \
        != "grid"
    assert len(gridded) < len(without)
    assert write_artifact(tensors, hints=hints) == gridded  # deterministic


def test_bad_hints_name_the_tensor() -> None:
    tensors, _ = grid_inputs()
    with pytest.raises(ArtifactError, match="hints must be a dict"):
        write_artifact(tensors, hints=[("g.weight", {"scale": [1.0]})])
    with pytest.raises(ArtifactError, match=r"tensor 'g.weight': a grid hint is a dict"):
        write_artifact(tensors, hints={"g.weight": [0.1] * 24})
    with pytest.raises(ArtifactError, match=r"tensor 'g.weight': .*axis must be 0"):
        write_artifact(tensors, hints={"g.weight": {"scale": [0.1] * 24, "axis": 1}})


def _set_grid(name: str, **changes: Any):
    def mutate(manifest: dict, chunks: dict) -> None:
        manifest["tensors"][name]["grid"].update(changes)
    return mutate


def test_a_hostile_grid_is_refused_naming_the_tensor(gridded: bytes) -> None:
    tracemalloc.start()
    try:
        for changes in ({"channels": 10**12}, {"channels": 10**6}, {"channels": 7},
                        {"levels": 10**9}, {"levels": -1}, {"scales": {"bytes": 4 * 10**9}}):
            refused(rewrite(gridded, _set_grid("g.weight", **changes)), "tensor 'g.weight'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_zero_points_out_of_range_are_refused_naming_the_tensor(gridded: bytes) -> None:
    from modelzip.codec.coders import CODERS
    from modelzip.codec.tensor import MAX_GRID_LEVELS

    def hostile(manifest: dict, chunks: dict) -> None:
        entry = manifest["tensors"]["g.weight"]
        keep = len(chunks["tensor:g.weight"]) - entry["grid"]["zero_points"]["bytes"]
        data = CODERS["huffman"].encode(np.full(24, 10 * MAX_GRID_LEVELS))
        chunks["tensor:g.weight"] = chunks["tensor:g.weight"][:keep] + data
        entry["grid"]["zero_points"] = {"coder": "huffman", "bytes": len(data)}
    refused(rewrite(gridded, hostile), "tensor 'g.weight'", "zero point 655360 out of range")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(["grid", "grid.channels", "grid.levels", "grid.scales",
                              "grid.scales.bytes", "grid.zero_points",
                              "grid.zero_points.coder", "grid.zero_points.bytes", "codebook",
                              "codebook.size", "values.coder", "values.bytes", "dtype",
                              "shape", "layout", "entries"]),
       value=json_values)
def test_any_lie_in_a_grid_entry_is_an_artifact_error(gridded: bytes, field: str,
                                                      value: Any) -> None:
    """Whatever a grid-coded entry's field is replaced with: ArtifactError, or (a harmless
    change) the same arrays as before. Never another exception."""
    def mutate(manifest: dict, chunks: dict) -> None:
        target = manifest["tensors"]["g.weight"]
        *parents, key = field.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                return
        target[key] = value
    try:
        art = read_artifact(rewrite(gridded, mutate))
    except ArtifactError:
        return
    expected = grid_inputs()[0]["g.weight"]
    assert art.tensors["g.weight"].tobytes() == expected.tobytes()
    assert art.tensors["g.weight"].dtype == expected.dtype


def test_damaged_grid_payload_with_valid_checksums_never_crashes(gridded: bytes) -> None:
    layout = read_container(gridded)
    original = bytes(layout.chunks["tensor:g.weight"])
    expected = grid_inputs()[0]["g.weight"]
    for i in range(len(original)):
        def damage(manifest: dict, chunks: dict, i: int = i) -> None:
            data = bytearray(chunks["tensor:g.weight"])
            data[i] ^= 0x24
            chunks["tensor:g.weight"] = bytes(data)
        try:
            art = read_artifact(rewrite(gridded, damage))
        except ArtifactError:
            continue
        assert art.tensors["g.weight"].shape == expected.shape
        assert art.tensors["g.weight"].dtype == expected.dtype


# A file written before the grid value coding existed (format version 1, same as now).
_OLD_FILE = (
    "TVpJUAEAAQA0AQAANwAAAAAAAACVkFtOwzAQRbeC5nuo4kdD4q1UFXJiA1GNHdkOpa26d8YUtaGKkPCHZc/j3Jl7gs6F"
    "LoHabBH6t8nvynsD2foUouoAOUfRPMm15FK2W7ymPKWw4YxJVgk2S+wBBUNqWIu2bviWwO82a1An2IFiZ/oGYx0oPzmH"
    "MMZgpt5GUJf4cRgfqhVbVYA/xFRau3IZ21OJee5jLzgoIWpZyVbUHMHkw2iJ8eKCzpREsD7HwVLzGmHwxn5+Yw65hKih"
    "kIpo1HugmZw+hCnTP406Jvv4qsdEEB/80cZwoaQ3XTQ2Na30od1k0xxZ3Zij04OHM2H9wthX025TDz43MBvC0OL2lzy/"
    "yfNF+SX1fSko4S6E3ayY1UQbjgSTVHXvKmdCtg1df7pa9r23tf2/rQVz9RWbpdXqOyqdLwGAJUkSPiVJkj63bds+JUkS"
    "P27bNj8D/gMgclAB0IIkEALntThFsc3MzD2amZk+zczMvZqZmb5M483asub92UmUQKITOlQ6fbdEpJcyMSx4c+q1cZYu"
    "oQ=="
)


def test_a_file_from_before_grids_still_reads() -> None:
    data = base64.b64decode(_OLD_FILE)
    art = read_artifact(data)
    assert art.meta == {"k": 1}
    np.testing.assert_array_equal(art.tensors["b"], np.arange(6, dtype=np.float32) / 7)
    np.testing.assert_array_equal(art.tensors["n"], np.array([3, -2], dtype=np.int8))
    w = art.tensors["w"]
    assert w.shape == (6, 8) and w.dtype == np.float32
    levels = np.linspace(-0.3, 0.3, 4).astype(np.float32)
    assert set(np.unique(w).tolist()) == {0.0, *levels.tolist()}
    assert {r["name"]: r["value_coding"] for r in describe_artifact(data)} == \
        {"b": "plain", "n": "plain", "w": "codebook"}


# ---------------------------------------------------------------------------- version 3
finite_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(value=finite_json_values)
def test_compact_manifest_round_trips_any_json_value(value: Any) -> None:
    data = encode_value(value)
    assert decode_value(data) == json.loads(json.dumps(value))
    assert encode_value(value) == data  # canonical


repetitive_json_values = st.recursive(
    st.integers(0, 3),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.sampled_from("abc"), inner,
                                                                max_size=3),
    max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=repetitive_json_values)
def test_compact_manifest_round_trips_repeated_and_nested_key_lists(value: Any) -> None:
    assert decode_value(encode_value(value)) == value


def test_compact_manifest_shapes_beyond_the_sixteen_tagged_and_nested_alike() -> None:
    many = [{f"k{i}": i} for i in range(40)] * 2  # 40 key lists, each met twice
    nested = {"a": {"a": {"a": 1}}, "b": [{"a": 2}, {"a": {"a": 3}}]}
    for value in (many, nested, [nested, many, nested]):
        assert decode_value(encode_value(value)) == value


def test_compact_manifest_details() -> None:
    # floats keep their exact bits, in the shortest form
    for x in (0.1307, -0.0, 5.0, 1e300, 2.5e-310, -123456.789, 1 / 3):
        back = decode_value(encode_value(x))
        assert struct.pack("<d", back) == struct.pack("<d", x)
    assert len(encode_value(0.1307)) == 4 and len(encode_value(1 / 3)) == 9
    assert len(encode_value(3_000_000_000)) == 5  # a CRC32: tag + 4 bytes
    assert decode_value(encode_value({2: "a", False: 0, None: 1.5})) == \
        {"2": "a", "false": 0, "null": 1.5}
    # repeated keys, strings and key lists cost a byte
    entry = {"bytes": 80, "coder": "plain"}
    one, two = encode_value([entry]), encode_value([entry, entry])
    assert len(two) - len(one) == 3  # shape tag + two small integers
    named = encode_value({"chunks": [["tensor:fc.weight", 1, 2]],
                          "tensors": {"fc.weight": {}}})
    assert named.count(b"fc.weight") == 1


@pytest.mark.parametrize("value", [float("inf"), {"a": np.zeros(2)}, {(1, 2): 3}, "\ud800",
                                   {"1": 0, 1: 0}])
def test_compact_manifest_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(ArtifactError, match="manifest"):
        encode_value(value)


@pytest.mark.parametrize(("data", "needle"), [
    (b"", "truncated"), (b"\x0f", "truncated"), (b"\x3f", "more than the bytes left"),
    (b"\x4f\x00", "follow the value"), (b"\x0b\x70", "not in the table"),
    (b"\x70", "shape #0 is not in the table"), (b"\x12\xff\xfe", "not UTF-8"),
    (b"\x31\x80\x80", "a string was expected"), (b"\x32\x40\x80\x40\x80", "repeats the key"),
    (b"\x03" + struct.pack("<d", float("inf")), "not finite"),
    (b"\x06" + b"\xff" * 9, "longer than 9 bytes"), (b"\x21" * 100 + b"\x80", "deeper"),
    (b"\x04\x01\xff\x7f", "exponent"), (b"\x0c\xff\xff\xff\x7f", "runs past the end"),
])
def test_compact_manifest_refuses_malformed_bytes(data: bytes, needle: str) -> None:
    with pytest.raises(ArtifactError, match=needle):
        decode_value(data)


def test_version_2_files_are_still_written_on_request_and_read(larger: bytes) -> None:
    layout = read_container(larger)
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    chunks = [(n, bytes(c)) for n, c in layout.chunks.items()]
    v2 = write_container(manifest, chunks, version=2)
    assert struct.unpack_from("<H", v2, 4)[0] == 2 and len(v2) > len(larger)
    old = read_container(v2)
    assert old.version == 2 and old.header_size == HEADER_SIZE
    assert old.manifest == layout.manifest
    got, want = read_artifact(v2).tensors, read_artifact(larger).tensors
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    with pytest.raises(ValueError, match="can write format versions"):
        write_container(manifest, chunks, version=1)


def test_committed_version_1_files_still_read() -> None:
    root = Path(__file__).resolve().parents[1] / "bench" / "results" / "mzip"
    files = sorted(root.glob("*.mzip"))[:2]
    if not files:
        pytest.skip("no committed .mzip files")
    for path in files:
        layout = read_container(path.read_bytes())
        assert layout.version in (1, 2) and read_artifact_file(path).tensors


def test_signed_and_fec_version_3_files(tmp_path: Path, small: bytes) -> None:
    from modelzip.codec.artifact import protect_artifact
    from modelzip.flight.sign import generate_keys, load_trusted_keys

    key, public = generate_keys(tmp_path)
    trusted = load_trusted_keys([public])
    signed = protect_artifact(small, sign=key)
    assert signed[6] == 3 and read_artifact(signed, trusted_keys=trusted).signer == trusted[0]
    for i in range(0, len(signed), 7):  # any flipped byte of a signed file is refused
        data = bytearray(signed)
        data[i] ^= 0x10
        with pytest.raises(ArtifactError):
            read_artifact(bytes(data), trusted_keys=trusted)
    with pytest.raises(ArtifactError, match="not signed"):
        read_artifact(small, trusted_keys=trusted)
    protected = bytearray(protect_artifact(small, fec=0.1, sign=key))
    protected[100] ^= 0xFF  # one damaged byte: corrected by the parity
    art = read_artifact(bytes(protected), trusted_keys=trusted)
    assert art.fec.corrected_bytes >= 1 and art.blobs == small_inputs()["blobs"]
