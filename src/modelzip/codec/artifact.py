"""The torch-free artifact API: named arrays, named byte blobs and JSON metadata in and out of
a .mzip file. The on-board runner uses only this module (numpy, constriction, stdlib).

Manifest fields (besides the container's ``chunks``)::

    tensors   {name: entry}   how each array is coded (see tensor.py); chunk "tensor:NAME"
    blobs     [name, ...]     raw byte chunks, e.g. an ONNX graph without its weights;
                              chunk "blob:NAME"
    model     object or null  how to rebuild the model (the ``model`` given to write_artifact)
    meta      object          free JSON: dataset mean/std, class names, metrics...
    producer  string          the modelzip version that wrote the file

Names are written in sorted order and the JSON with sorted keys, so the same inputs always
give the same bytes.

A file may carry Reed-Solomon parity (``modelzip.flight.fec``: the reader corrects what it
can and says so in ``Artifact.fec``) and an Ed25519 signature (``modelzip.flight.sign``:
checked when the reader is given trusted keys); ``protect_artifact`` adds them to written
bytes. In format version 2 each tensor's CRC32 covers its name, dtype and shape
(``tensor_crc32``); version 1 files (``decoded_crc32``: the bytes alone) still read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelzip import __version__
from modelzip.codec.container import read_container, write_container
from modelzip.codec.tensor import (
    DEFAULT_MAX_ELEMENTS,
    ELEMENT_FLOOR,
    MAX_ELEMENTS_PER_BYTE,
    TensorEntry,
    check_entry,
    decode_tensor,
    encode_tensor,
)
from modelzip.errors import ArtifactError

__all__ = [
    "Artifact",
    "describe_artifact",
    "load_artifact_bytes",
    "protect_artifact",
    "read_artifact",
    "read_artifact_file",
    "summarize_artifact",
    "write_artifact",
]

TENSOR_CHUNK = "tensor:"
BLOB_CHUNK = "blob:"


def write_artifact(tensors: dict[str, np.ndarray], *, model: dict | None = None,
                   blobs: dict[str, bytes] | None = None, meta: dict | None = None,
                   coder: str = "best", hints: dict[str, dict] | None = None) -> bytes:
    """Code every array (each in its smallest layout; ``coder``: best, huffman, rans or raw)
    and write them with the blobs, ``model`` and ``meta`` into .mzip bytes. ``hints``: by
    tensor name, the grid a tensor was quantized to (``encode_tensor``'s ``hint``, e.g. from
    ``modelzip.quant.grid_hints``); hints for names not in ``tensors`` are ignored."""
    blobs = blobs or {}
    hints = {} if hints is None else hints
    for kind, mapping in (("tensor", tensors), ("blob", blobs), ("hint", hints)):
        if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
            raise ArtifactError(f"{kind}s must be a dict keyed by name (str)")
    if model is not None and not isinstance(model, dict):
        raise ArtifactError(f"model must be a dict or None, got {type(model).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise ArtifactError(f"meta must be a dict or None, got {type(meta).__name__}")
    entries, chunks = {}, []
    for name in sorted(tensors):
        try:
            entry, payload = encode_tensor(np.asarray(tensors[name]), coder,
                                           hint=hints.get(name), name=name)
        except ArtifactError as exc:
            raise ArtifactError(f"tensor {name!r}: {exc}") from None
        entries[name] = entry
        chunks.append((TENSOR_CHUNK + name, payload))
    for name in sorted(blobs):
        if not isinstance(blobs[name], bytes | bytearray | memoryview):
            raise ArtifactError(f"blob {name!r} is a {type(blobs[name]).__name__}, not bytes")
        chunks.append((BLOB_CHUNK + name, bytes(blobs[name])))
    manifest = {"tensors": entries, "blobs": sorted(blobs), "model": model, "meta": meta or {},
                "producer": f"modelzip {__version__}"}
    return write_container(manifest, chunks)


def protect_artifact(blob: bytes, *, fec: float | str | None = None,
                     sign: Any = None) -> bytes:
    """Written .mzip bytes, signed with ``sign`` (an Ed25519 private key or the path of its
    PEM file; see ``modelzip.flight.sign``) and then given Reed-Solomon parity ``fec`` (parity
    bytes per data byte: 0.08 or "8%"; see ``modelzip.flight.fec``). None: not that step."""
    if sign is not None:
        from modelzip.flight.sign import sign_artifact

        blob = sign_artifact(blob, sign)
    if fec is not None:
        from modelzip.flight.fec import protect

        blob = protect(blob, fec)
    return blob


@dataclass
class Artifact:
    """A decoded .mzip: its manifest, arrays and blobs by name; ``fec``: what the FEC parity
    corrected (a ``FecReport``; None for a file without parity); ``signer``: the signer's raw
    public key (None for an unsigned file; verified only when the reader had trusted keys)."""

    manifest: dict
    tensors: dict[str, np.ndarray]
    blobs: dict[str, bytes]
    fec: Any = None
    signer: bytes | None = None

    @property
    def model(self) -> dict | None:
        """The ``model`` dict given to write_artifact (None when none was)."""
        return self.manifest.get("model")

    @property
    def meta(self) -> dict:
        return self.manifest.get("meta") or {}


@dataclass
class _Checked:
    layout: Any  # ContainerLayout
    entries: dict[str, TensorEntry]
    blob_names: list[str]
    fec: Any = None  # FecReport


def _unwrap(data: bytes) -> tuple[bytes, Any]:
    """The .mzip bytes inside FEC parity, corrected, and the FecReport (None: no parity)."""
    from modelzip.flight.fec import is_protected, recover

    if not is_protected(data):
        return data, None
    return recover(data)


def _check(data: bytes, max_elements: int,
           trusted_keys: Sequence[bytes] | None = None) -> _Checked:
    """FEC correction, the container's checks (the signature first when there are trusted
    keys), then the manifest's fields and every tensor entry."""
    data, fec = _unwrap(data)
    layout = read_container(data, trusted_keys=trusted_keys)
    crc_field = "decoded_crc32" if layout.version == 1 else "tensor_crc32"
    budget = min(max_elements, ELEMENT_FLOOR + MAX_ELEMENTS_PER_BYTE * layout.file_size)
    m = layout.manifest
    tensors, blobs = m.get("tensors"), m.get("blobs")
    if not isinstance(tensors, dict):
        raise ArtifactError("manifest: field 'tensors' is missing or not an object")
    if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
        raise ArtifactError("manifest: field 'blobs' is missing or not a list of names")
    if m.get("model") is not None and not isinstance(m.get("model"), dict):
        raise ArtifactError("manifest: field 'model' is not an object")
    if not isinstance(m.get("meta", {}), dict):
        raise ArtifactError("manifest: field 'meta' is not an object")
    expected = {TENSOR_CHUNK + t for t in tensors} | {BLOB_CHUNK + b for b in blobs}
    for name in sorted(expected - set(layout.chunks)):
        raise ArtifactError(f"manifest: {name.replace(':', ' ', 1)!r} has no chunk")
    for name in sorted(set(layout.chunks) - expected):
        raise ArtifactError(f"manifest: chunk {name!r} belongs to no tensor or blob")
    entries, total = {}, 0
    for name in sorted(tensors):
        entry = check_entry(tensors[name], where=f"tensor {name!r}", max_elements=max_elements)
        if entry.crc_field != crc_field:
            raise ArtifactError(f"tensor {name!r}: a format version {layout.version} file "
                                f"checks tensors with '{crc_field}', the entry has "
                                f"'{entry.crc_field}'")
        if entry.total_bytes != len(layout.chunks[TENSOR_CHUNK + name]):
            raise ArtifactError(f"tensor {name!r}: its streams add up to {entry.total_bytes} "
                                f"bytes, its chunk has {len(layout.chunks[TENSOR_CHUNK + name])}")
        total += entry.count
        if total > max_elements:
            raise ArtifactError(f"the tensors declare more than {max_elements:,} elements in "
                                "all (max_elements); the file is corrupt or not meant for "
                                "this reader")
        if total > budget:
            raise ArtifactError(f"the tensors declare more than {budget:,} elements in all, "
                                f"more than a file of {layout.file_size:,} bytes may decode to "
                                f"({ELEMENT_FLOOR:,} + {MAX_ELEMENTS_PER_BYTE} per byte); the "
                                "file is corrupt or hostile")
        entries[name] = entry
    return _Checked(layout, entries, sorted(blobs), fec)


def read_artifact(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
                  trusted_keys: Sequence[bytes] | None = None) -> Artifact:
    """Check and decode .mzip bytes; raises ArtifactError naming the check that failed.
    ``max_elements`` bounds the elements of all tensors together, checked before decoding
    (as is a bound relative to the file's size). A file with FEC parity is corrected first
    (``Artifact.fec`` says what was corrected). ``trusted_keys`` (raw Ed25519 public keys,
    see ``modelzip.flight.sign.load_trusted_keys``): accept only a file signed by one of
    them, checked before anything is decoded."""
    try:
        checked = _check(data, max_elements, trusted_keys)
        layout = checked.layout
        arrays = {}
        for name in checked.entries:
            arrays[name] = decode_tensor(layout.manifest["tensors"][name],
                                         layout.chunks[TENSOR_CHUNK + name],
                                         where=f"tensor {name!r}", max_elements=max_elements,
                                         name=name)
    except MemoryError:
        raise ArtifactError("not enough memory to decode the file; it declares more than "
                            "this machine can hold (lower max_elements to refuse such files "
                            "sooner)") from None
    blobs = {name: bytes(layout.chunks[BLOB_CHUNK + name]) for name in checked.blob_names}
    return Artifact(manifest=layout.manifest, tensors=arrays, blobs=blobs, fec=checked.fec,
                    signer=layout.signer)


def read_artifact_file(path: str | os.PathLike[str], *,
                       max_elements: int = DEFAULT_MAX_ELEMENTS,
                       trusted_keys: Sequence[bytes] | None = None) -> Artifact:
    """``read_artifact`` on a file; errors name the path."""
    data = load_artifact_bytes(path)
    try:
        return read_artifact(data, max_elements=max_elements, trusted_keys=trusted_keys)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None


def load_artifact_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's bytes; a missing or unreadable file is an ArtifactError naming the path."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _row(name: str, e: TensorEntry, size: int) -> dict[str, Any]:
    coder = e.value_coder if e.index_coder is None else f"{e.index_coder}/{e.value_coder}"
    return {
        "name": name, "shape": list(e.shape), "dtype": e.dtype.name, "count": e.count,
        "nonzeros": e.nonzeros, "layout": e.layout, "coder": coder,
        "value_coding": e.value_coding,
        "index_bits": 8 * e.index_bytes, "value_bits": 8 * e.value_bytes,
        "codebook_bits": 8 * e.side_bytes, "bytes": size,
        "bits_per_nonzero": 8 * size / e.nonzeros if e.nonzeros else None,
    }


def describe_artifact(data: bytes) -> list[dict]:
    """Per tensor, in name order: name, shape, dtype, count, nonzeros, layout, coder (the
    values' coder, after the index coder and a '/' for sparse layouts; "plain": the values'
    own bytes), value_coding (plain, codebook or grid), index_bits, value_bits,
    codebook_bits (the codebook, or a grid's scales and zero points), bytes,
    bits_per_nonzero (None for an all-zero tensor). Checks the whole file but decodes
    nothing."""
    return summarize_artifact(data)["tensors"]


def summarize_artifact(data: bytes) -> dict[str, Any]:
    """``describe_artifact``'s rows under "tensors", plus where the file's bytes go:
    file_bytes = header_bytes + manifest_bytes + tensor_bytes + blob_bytes + checksum_bytes
    (+ signature_bytes for a signed file; manifest_json_bytes: the manifest inflated); and
    "blobs": {name: bytes}, "model", "meta"; for a file with FEC parity, "fec": what was
    corrected and protected_file_bytes (the sizes above are of the .mzip inside)."""
    checked = _check(data, DEFAULT_MAX_ELEMENTS)
    layout = checked.layout
    rows = [_row(name, e, e.total_bytes) for name, e in checked.entries.items()]
    extra: dict[str, Any] = {"signature_bytes": layout.signature_size}
    if checked.fec is not None:
        extra["fec"] = {**checked.fec.to_dict(), "protected_file_bytes": len(data)}
    blob_sizes = {name: len(layout.chunks[BLOB_CHUNK + name]) for name in checked.blob_names}
    return {
        "file_bytes": layout.file_size, "header_bytes": layout.header_size,
        "manifest_bytes": layout.manifest_size, "manifest_json_bytes": layout.manifest_json_size,
        "checksum_bytes": layout.checksum_size,
        "tensor_bytes": sum(r["bytes"] for r in rows), "blob_bytes": sum(blob_sizes.values()),
        "tensors": rows, "blobs": blob_sizes, "model": layout.manifest.get("model"),
        "meta": layout.manifest.get("meta") or {}, **extra,
    }
