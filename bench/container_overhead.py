"""The .mzip container's fixed overhead in format versions 2 and 3, and what the compact
coder tables save, per file.

    python bench/container_overhead.py
    python bench/container_overhead.py --quick   # two files, into a temporary folder

For every .mzip under bench/results/mzip and bench/checkpoints, and for lenet5, lenet300 and
eurosat_cnn packed afresh from bench/checkpoints (``modelzip.codec.model.pack``), the same
content (manifest, tensor chunks: bit for bit the same payloads) is written as a version 2
and a version 3 container (``write_container(..., version=...)``), each read back and
checked to decode to the same tensors. Overhead = file bytes minus the chunks' bytes (header,
manifest with its chunk table and CRC32s, SHA-256). Committed version 1 files get their
entries' ``decoded_crc32`` replaced by the ``tensor_crc32`` both newer versions carry.

Tables: every file is also re-packed (``read_artifact``, then ``write_artifact`` with the grid
hints its grid entries hold and the coder it was packed with: huffman when all its streams
are, else best; fresh ones ``pack`` again) twice, as version 3: with the coders' legacy
tables (table forms 0..3, counted rANS models only: ``legacy_tables=True``) and with the
current ones (also the bit-coded table form and binned rANS models). Both must decode to the
same tensors; ``legacy_repack_matches_stored`` says whether the legacy re-pack reproduces the
stored chunks bit for bit (so that the difference is the tables' alone).

Writes bench/results/container_overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from benchlib import write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import read_artifact, write_artifact
from modelzip.codec.coders import BINNED, CODERS, HuffmanCoder, RansCoder, RawCoder
from modelzip.codec.container import read_container, write_container
from modelzip.codec.model import pack
from modelzip.codec.tensor import check_entry, tensor_crc32

ROOT = Path(__file__).resolve().parent
FRESH = ("lenet5", "lenet300", "eurosat_cnn", "pruned/magnitude-lenet5-max",
         "pruned/magnitude-lenet300-max")
LEGACY_CODERS = {"huffman": HuffmanCoder(legacy_tables=True),
                 "rans": RansCoder(legacy_tables=True), "raw": RawCoder()}


def _as_version_2_content(data: bytes) -> tuple[dict[str, Any], list[tuple[str, bytes]], int]:
    """(manifest without its chunk table, chunks, the file's version); version 1 entries get
    the tensor CRC32 of versions 2 and 3."""
    layout = read_container(data)
    manifest = {k: v for k, v in layout.manifest.items() if k != "chunks"}
    if layout.version == 1:
        arrays = read_artifact(data).tensors
        for name, entry in manifest["tensors"].items():
            array = np.ascontiguousarray(arrays[name])
            bits = array.view(f"u{array.dtype.itemsize}").ravel()
            del entry["decoded_crc32"]
            entry["tensor_crc32"] = tensor_crc32(bits, entry["dtype"], entry["shape"], name)
    chunks = [(name, bytes(chunk)) for name, chunk in layout.chunks.items()]
    return manifest, chunks, layout.version


def _streams(data: bytes) -> list[tuple[str, bytes]]:
    """(coder, bytes) of every coded stream of a file's tensors (layout + value codings)."""
    layout = read_container(data)
    out = []
    for name, entry in layout.manifest["tensors"].items():
        e = check_entry(entry)
        if e.coding:
            continue
        chunk = bytes(layout.chunks["tensor:" + name])
        if e.index_coder:
            out.append((e.index_coder, chunk[:e.index_bytes]))
        if e.value_coding != "plain":
            out.append((e.value_coder, chunk[e.index_bytes:e.index_bytes + e.value_bytes]))
        if e.zero_point_coder:
            out.append((e.zero_point_coder, chunk[len(chunk) - e.zero_point_bytes:]))
    return out


def _stream_kinds(data: bytes) -> dict[str, int]:
    """How many coded streams use each coder and model: rans-binned, rans-counted, ..."""
    kinds = Counter()
    for coder, stream in _streams(data):
        if coder == "rans" and stream:
            coder += "-binned" if stream[0] == BINNED else "-counted"
        kinds[coder] += 1
    return dict(sorted(kinds.items()))


def _grid_hints(data: bytes) -> dict[str, dict]:
    """The grid hints (scales) that re-create a file's grid entries."""
    layout = read_container(data)
    hints = {}
    for name, entry in layout.manifest["tensors"].items():
        e = check_entry(entry)
        if e.grid_channels and not e.coding:
            start = e.index_bytes + e.value_bytes
            scales = np.frombuffer(bytes(layout.chunks["tensor:" + name])[start:start
                                   + e.scale_bytes], dtype="<f4")
            hints[name] = {"scale": scales.astype(np.float64).tolist()}
    return hints


def _repack(data: bytes, legacy: bool) -> tuple[bytes, float]:
    """The file written again (version 3) from its decoded arrays; and the seconds it took."""
    artifact = read_artifact(data)
    coders = {c for c, _ in _streams(data)}
    coder = "huffman" if coders == {"huffman"} else "best"
    start = time.perf_counter()
    with mock.patch.dict(CODERS, LEGACY_CODERS if legacy else dict(CODERS)):
        blob = write_artifact(artifact.tensors, model=artifact.model, blobs=artifact.blobs,
                              meta=artifact.meta, coder=coder, hints=_grid_hints(data))
    return blob, time.perf_counter() - start


def _fresh(model: Any, legacy: bool) -> tuple[bytes, float]:
    start = time.perf_counter()
    with mock.patch.dict(CODERS, LEGACY_CODERS if legacy else dict(CODERS)):
        blob = pack(model)
    return blob, time.perf_counter() - start


def measure_tables(row: dict[str, Any], data: bytes, legacy: bytes, legacy_s: float,
                   new: bytes, new_s: float, *, stored: bool = True) -> None:
    """Adds the table columns to ``row``: legacy and current tables, same arrays (``data``:
    the stored file, or with ``stored=False`` a fresh pack)."""
    expected = {k: t.tobytes() for k, t in read_artifact(data).tensors.items()}
    for blob in (legacy, new):
        assert {k: t.tobytes() for k, t in read_artifact(blob).tensors.items()} == expected
    row["legacy_repack_matches_stored"] = (
        dict(read_container(legacy).chunks) == dict(read_container(data).chunks)
        if stored else None)
    row["legacy_tables_file_bytes"] = len(legacy)
    row["compact_tables_file_bytes"] = len(new)
    row["tables_saved_bytes"] = len(legacy) - len(new)
    row["tables_saved_pct"] = round(100 * (len(legacy) - len(new)) / len(legacy), 2)
    row["legacy_tables_streams"] = _stream_kinds(legacy)
    row["compact_tables_streams"] = _stream_kinds(new)
    row["compact_vs_legacy_pack_time_ratio"] = round(new_s / legacy_s, 2)


def measure(name: str, data: bytes) -> dict[str, Any]:
    manifest, chunks, version = _as_version_2_content(data)
    payload = sum(len(c) for _, c in chunks)
    expected = None
    row: dict[str, Any] = {"file": name, "stored_format_version": version,
                           "stored_file_bytes": len(data), "payload_bytes": payload,
                           "tensors": len(manifest["tensors"])}
    for v in (2, 3):
        blob = write_container(manifest, chunks, version=v)
        layout = read_container(blob)
        tensors = read_artifact(blob).tensors
        if expected is None:
            expected = {k: t.tobytes() for k, t in tensors.items()}
        assert {k: t.tobytes() for k, t in tensors.items()} == expected, name
        row[f"v{v}_file_bytes"] = len(blob)
        row[f"v{v}_overhead_bytes"] = len(blob) - payload
        row[f"v{v}_header_bytes"] = layout.header_size
        row[f"v{v}_manifest_bytes"] = layout.manifest_size
    row["manifest_json_bytes"] = layout.manifest_json_size
    row["overhead_saved_bytes"] = row["v2_overhead_bytes"] - row["v3_overhead_bytes"]
    row["overhead_saved_pct"] = round(100 * row["overhead_saved_bytes"]
                                      / row["v2_overhead_bytes"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two files, into a temp folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted((ROOT / "results" / "mzip").glob("*.mzip"))
    files += sorted((ROOT / "checkpoints").rglob("*.mzip"))
    fresh = FRESH
    if args.quick:
        files, fresh = files[:1], fresh[1:2]
    rows = []
    for path in files:
        data = path.read_bytes()
        rows.append(measure(str(path.relative_to(ROOT.parent)), data))
        measure_tables(rows[-1], data, *_repack(data, True), *_repack(data, False))
        _report(rows[-1])
    for zoo in fresh:
        model = load_checkpoint(ROOT / "checkpoints" / zoo).model
        legacy, legacy_s = _fresh(model, True)
        new, new_s = _fresh(model, False)
        rows.append(measure(f"fresh pack of bench/checkpoints/{zoo}", new))
        measure_tables(rows[-1], new, legacy, legacy_s, new, new_s, stored=False)
        _report(rows[-1])
    saved = [r["overhead_saved_bytes"] for r in rows]
    tables = [r["tables_saved_bytes"] for r in rows]
    summary = {"files": len(rows),
               "v2_overhead_bytes_range": [min(r["v2_overhead_bytes"] for r in rows),
                                           max(r["v2_overhead_bytes"] for r in rows)],
               "v3_overhead_bytes_range": [min(r["v3_overhead_bytes"] for r in rows),
                                           max(r["v3_overhead_bytes"] for r in rows)],
               "overhead_saved_bytes_range": [min(saved), max(saved)],
               "tables_saved_bytes_range": [min(tables), max(tables)],
               "tables_saved_pct_range": [min(r["tables_saved_pct"] for r in rows),
                                          max(r["tables_saved_pct"] for r in rows)],
               "legacy_repacks_matching_stored": [
                   sum(r["legacy_repack_matches_stored"] is True for r in rows),
                   sum(r["legacy_repack_matches_stored"] is not None for r in rows)]}
    out = (Path(tempfile.mkdtemp()) if args.quick else ROOT / "results")
    path = out / "container_overhead.json"
    write_results(path, "container_overhead",
                  "Fixed bytes of a .mzip (file minus chunk payloads) written as format "
                  "version 2 and version 3, same content; and the file re-packed with the "
                  "coders' legacy and compact tables", rows, summary=summary,
                  settings={"quick": args.quick})
    print(summary)
    print("wrote", path)


def _report(row: dict[str, Any]) -> None:
    print(row["file"], "overhead", row["v2_overhead_bytes"], "->", row["v3_overhead_bytes"],
          "| tables", row["legacy_tables_file_bytes"], "->", row["compact_tables_file_bytes"],
          "| legacy = stored:", row["legacy_repack_matches_stored"], flush=True)


if __name__ == "__main__":
    sys.exit(main())
