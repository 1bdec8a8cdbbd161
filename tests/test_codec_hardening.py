"""The reader's defences against forged and hostile files: dtype and shape covered by the
tensor CRC32 (format version 2), the model record's dtype table and every tensor checked
against the skeleton, every dimension and the decoded size bounded relative to the file, and
MemoryError turned into the artifact error."""

from __future__ import annotations

import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
import torch

from modelzip.codec import artifact as artifact_mod
from modelzip.codec.artifact import read_artifact, write_artifact
from modelzip.codec.coders import CODERS
from modelzip.codec.container import FORMAT_VERSION, read_container, write_container
from modelzip.codec.model import pack, unpack
from modelzip.codec.tensor import tensor_crc32
from modelzip.errors import ArtifactError
from modelzip.zoo import build_model


def reforge(blob: bytes, edit: Any) -> bytes:
    """A forger's edit: ``edit(manifest, chunks)`` changes the manifest (without its chunk
    table) and the {name: bytes} chunks in place; the chunk CRC32s and SHA-256 are recomputed
    so that only the deeper checks can catch it."""
    layout = read_container(blob)
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    chunks = {name: bytes(data) for name, data in layout.chunks.items()}
    edit(manifest, chunks)
    return write_container(manifest, list(chunks.items()))


def recompute_tensor_crc(entry: dict[str, Any], array: np.ndarray, name: str) -> None:
    bits = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}").ravel()
    entry["tensor_crc32"] = tensor_crc32(bits, entry["dtype"], entry["shape"], name)


def test_writer_uses_format_3_with_dtype_and_shape_in_the_crc() -> None:
    blob = write_artifact({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    assert int.from_bytes(blob[4:6], "little") == FORMAT_VERSION == 3
    entry = read_container(blob).manifest["tensors"]["w"]
    assert "decoded_crc32" not in entry
    raw = np.arange(6, dtype="<f4").tobytes()
    assert entry["tensor_crc32"] == zlib.crc32(raw, zlib.crc32(b"w\0float32:2,3;"))


def test_tensors_swapped_by_name_fail_the_tensor_crc() -> None:
    """Two tensors of one shape and dtype (a BatchNorm's mean and variance) swapped by a
    forger who recomputes the container's checksums."""
    blob = write_artifact({"mean": np.zeros(4, np.float32) + 0.5,
                           "var": np.ones(4, np.float32)})

    def edit(manifest: dict, chunks: dict) -> None:
        t = manifest["tensors"]
        t["mean"], t["var"] = t["var"], t["mean"]
        chunks["tensor:mean"], chunks["tensor:var"] = chunks["tensor:var"], chunks["tensor:mean"]

    with pytest.raises(ArtifactError, match="CRC32 check"):
        read_artifact(reforge(blob, edit))


@pytest.mark.parametrize("change", [{"dtype": "int32"}, {"shape": [3, 2]}, {"shape": [6]}])
def test_relabelled_dtype_or_shape_fails_the_tensor_crc(change: dict[str, Any]) -> None:
    blob = write_artifact({"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)},
                          coder="raw")

    def edit(manifest: dict, chunks: dict) -> None:
        manifest["tensors"]["w"].update(change)

    with pytest.raises(ArtifactError, match=r"tensor 'w'.*CRC32 check \(tensor_crc32\)"):
        read_artifact(reforge(blob, edit))


def test_a_version_1_entry_in_a_version_2_file_is_refused() -> None:
    array = np.ones(4, dtype=np.float32)
    blob = write_artifact({"w": array})

    def edit(manifest: dict, chunks: dict) -> None:
        entry = manifest["tensors"]["w"]
        del entry["tensor_crc32"]
        entry["decoded_crc32"] = zlib.crc32(array.astype("<f4").tobytes())

    with pytest.raises(ArtifactError, match="format version 3 file checks tensors with "
                                            "'tensor_crc32'"):
        read_artifact(reforge(blob, edit))


def test_both_crc_fields_are_refused() -> None:
    blob = write_artifact({"w": np.ones(4, dtype=np.float32)})

    def edit(manifest: dict, chunks: dict) -> None:
        manifest["tensors"]["w"]["decoded_crc32"] = 1

    with pytest.raises(ArtifactError, match="exactly one of the fields"):
        read_artifact(reforge(blob, edit))


@pytest.fixture(scope="module")
def bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("eurosat_cnn").eval()
    with torch.no_grad():  # running statistics as training leaves them: not all ones
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_forged_dtype_with_every_checksum_recomputed_is_refused_by_the_skeleton(
        bn_model: torch.nn.Module) -> None:
    """The issue's case: BatchNorm running_var relabelled int32, its CRC32s recomputed by the
    forger; read_artifact cannot know, the model it is loaded into can."""
    blob = pack(bn_model)
    name = next(k for k in bn_model.state_dict() if k.endswith("running_var"))
    stored = read_artifact(blob).tensors[name]

    def edit(manifest: dict, chunks: dict) -> None:
        entry = manifest["tensors"][name]
        entry["dtype"] = "int32"
        recompute_tensor_crc(entry, stored.view(np.int32), name)

    forged = reforge(blob, edit)
    assert read_artifact(forged).tensors[name].dtype == np.int32  # self-consistent
    with pytest.raises(ArtifactError, match=rf"tensor '{name}' is stored as int32, but the "
                                            "model's is float32"):
        unpack(forged)
    assert unpack(blob).state_dict()[name].dtype == torch.float32


def test_forged_shape_is_refused_by_the_skeleton(bn_model: torch.nn.Module) -> None:
    blob = pack(bn_model)
    name = next(k for k in bn_model.state_dict() if k.endswith("running_mean"))
    stored = read_artifact(blob).tensors[name]

    def edit(manifest: dict, chunks: dict) -> None:
        entry = manifest["tensors"][name]
        entry["shape"] = [1, stored.size]
        recompute_tensor_crc(entry, stored, name)

    with pytest.raises(ArtifactError, match=name.rpartition(".")[0]):
        unpack(reforge(blob, edit))


@pytest.mark.parametrize(("table", "message"), [
    (["bfloat16"], "torch_dtypes is not a mapping"),
    ({"fc.weight": "float8"}, "unknown dtype 'float8'"),
    ({"nowhere": "bfloat16"}, "'nowhere', which is not stored"),
    ({"KEY": "bfloat16"}, "is stored as float32; a bfloat16 tensor is stored as int16"),
])
def test_the_dtype_table_is_validated(bn_model: torch.nn.Module, table: Any,
                                      message: str) -> None:
    blob = pack(bn_model)
    key = next(iter(bn_model.state_dict()))
    if isinstance(table, dict) and "KEY" in table:
        table = {key: table["KEY"]}

    def edit(manifest: dict, chunks: dict) -> None:
        manifest["model"]["torch_dtypes"] = table

    with pytest.raises(ArtifactError, match=message):
        unpack(reforge(blob, edit))


def test_a_bfloat16_model_still_unpacks() -> None:
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    blob = pack(model)
    back = unpack(blob, model=torch.nn.Linear(3, 2))
    assert back.weight.dtype == torch.bfloat16
    assert torch.equal(back.weight.view(torch.int16), model.weight.view(torch.int16))


def tiny_giant(shape: list[int], count: int) -> bytes:
    """A few hundred bytes that declare a constant tensor of ``count`` elements (a
    single-symbol Huffman stream costs only its table, whatever the count)."""
    values = CODERS["huffman"].encode(np.zeros(4, dtype=np.int64))
    book = np.array([1.0], dtype="<f4").tobytes()
    entry = {"dtype": "float32", "shape": shape, "nonzeros": count, "layout": "dense",
             "values": {"coder": "huffman", "bytes": len(values)},
             "codebook": {"size": 1, "bytes": 4}, "tensor_crc32": 0}
    manifest = {"tensors": {"w": entry}, "blobs": [], "model": None, "meta": {},
                "producer": "forger"}
    return write_container(manifest, [("tensor:w", values + book)])


def test_a_300_byte_file_declaring_2_to_the_28_elements_allocates_nothing() -> None:
    blob = tiny_giant([1 << 28], 1 << 28)
    assert len(blob) < 400
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match=r"more than a file of .* bytes may decode to"):
            read_artifact(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_the_relative_bound_also_holds_for_decode_tensor_alone() -> None:
    from modelzip.codec.tensor import decode_tensor

    layout = read_container(tiny_giant([1 << 24], 1 << 24))
    with pytest.raises(ArtifactError, match="more than the bound"):
        decode_tensor(layout.manifest["tensors"]["w"], layout.chunks["tensor:w"])


def test_a_giant_dimension_with_zero_elements_is_refused_cleanly() -> None:
    blob = tiny_giant([1 << 62, 0], 0)
    with pytest.raises(ArtifactError, match="has a dimension of 4,611,686,018,427,387,904"):
        read_artifact(blob)


def test_legitimate_constant_and_zero_tensors_still_read() -> None:
    arrays = {"zeros": np.zeros((512, 512), np.float32), "ones": np.ones(4096, np.float32),
              "b": np.zeros(0, np.int8)}
    art = read_artifact(write_artifact(arrays))
    for name, array in arrays.items():
        assert np.array_equal(art.tensors[name], array)


def test_memory_error_becomes_the_artifact_error(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = write_artifact({"w": np.ones(8, np.float32)})

    def exhausted(*args: Any, **kwargs: Any) -> np.ndarray:
        raise MemoryError

    monkeypatch.setattr(artifact_mod, "decode_tensor", exhausted)
    with pytest.raises(ArtifactError, match="not enough memory"):
        read_artifact(blob)


def test_version_1_files_still_read() -> None:
    """Written before dtype and shape were covered: the bytes-only CRC is checked."""
    array = np.arange(5, dtype=np.int16)
    layout = read_container(write_artifact({"w": array}))
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    entry = manifest["tensors"]["w"]
    del entry["tensor_crc32"]
    entry["decoded_crc32"] = zlib.crc32(array.astype("<i2").tobytes())
    v2 = bytearray(write_container(manifest, [(n, bytes(d)) for n, d in layout.chunks.items()],
                                   version=2))
    v2[4:6] = (1).to_bytes(2, "little")
    import hashlib

    v1 = bytes(v2[:-32]) + hashlib.sha256(bytes(v2[:-32])).digest()
    assert np.array_equal(read_artifact(v1).tensors["w"], array)
