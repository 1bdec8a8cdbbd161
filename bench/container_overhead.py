"""The .mzip container's fixed overhead in format versions 2 and 3, per file.

    python bench/container_overhead.py
    python bench/container_overhead.py --quick   # two files, into a temporary folder

For every .mzip under bench/results/mzip and bench/checkpoints, and for lenet5, lenet300 and
eurosat_cnn packed afresh from bench/checkpoints (``modelzip.codec.model.pack``), the same
content (manifest, tensor chunks: bit for bit the same payloads) is written as a version 2
and a version 3 container (``write_container(..., version=...)``), each read back and
checked to decode to the same tensors. Overhead = file bytes minus the chunks' bytes (header,
manifest with its chunk table and CRC32s, SHA-256). Committed version 1 files get their
entries' ``decoded_crc32`` replaced by the ``tensor_crc32`` both newer versions carry.

Writes bench/results/container_overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchlib import write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import read_artifact
from modelzip.codec.container import read_container, write_container
from modelzip.codec.model import pack
from modelzip.codec.tensor import tensor_crc32

ROOT = Path(__file__).resolve().parent
FRESH = ("lenet5", "lenet300", "eurosat_cnn")


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
        rows.append(measure(str(path.relative_to(ROOT.parent)), path.read_bytes()))
        print(rows[-1]["file"], rows[-1]["v2_overhead_bytes"], "->",
              rows[-1]["v3_overhead_bytes"], flush=True)
    for zoo in fresh:
        model = load_checkpoint(ROOT / "checkpoints" / zoo).model
        rows.append(measure(f"fresh pack of bench/checkpoints/{zoo}", pack(model)))
        print(rows[-1]["file"], rows[-1]["v2_overhead_bytes"], "->",
              rows[-1]["v3_overhead_bytes"], flush=True)
    saved = [r["overhead_saved_bytes"] for r in rows]
    summary = {"files": len(rows),
               "v2_overhead_bytes_range": [min(r["v2_overhead_bytes"] for r in rows),
                                           max(r["v2_overhead_bytes"] for r in rows)],
               "v3_overhead_bytes_range": [min(r["v3_overhead_bytes"] for r in rows),
                                           max(r["v3_overhead_bytes"] for r in rows)],
               "overhead_saved_bytes_range": [min(saved), max(saved)]}
    out = (Path(tempfile.mkdtemp()) if args.quick else ROOT / "results")
    path = out / "container_overhead.json"
    write_results(path, "container_overhead",
                  "Fixed bytes of a .mzip (file minus chunk payloads) written as format "
                  "version 2 and version 3, same content", rows, summary=summary,
                  settings={"quick": args.quick})
    print(summary)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
