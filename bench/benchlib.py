"""What the bench scripts share: waiting for a baseline checkpoint, writing a results file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from modelzip.checkpoint import write_atomic


def wait_for_checkpoint(path: Path, timeout_s: float) -> None:
    """bench/baselines.py writes the JSON last, so its presence means the folder is whole."""
    deadline = time.monotonic() + timeout_s
    while not (path / "modelzip.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no checkpoint after {timeout_s:.0f} s; run "
                             "bench/baselines.py --models eurosat_cnn first")
        print(f"waiting for {path / 'modelzip.json'} ...", flush=True)
        time.sleep(30)


def write_results(path: Path, benchmark: str, description: str, rows: list[dict[str, Any]],
                  **extra: Any) -> dict[str, Any]:
    """Write one results file: what it is, when and where it was made, then one flat object
    per model (``extra`` goes before the rows)."""
    doc = {"benchmark": benchmark, "description": description,
           "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **extra, "models": rows}
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    return doc
