"""When does sparse (CSR) execution of a pruned Linear layer beat dense on this CPU?

    python bench/sparse_timing.py

For LeNet-300-100's layer shapes and whole-model forward passes, at several sparsities,
batch 1 and 64, one thread: dense nn.Linear vs SparseLinear (torch.sparse.mm on CSR), timed
in the same process run, interleaved. Writes bench/results/sparse_timing.json. The weights
are random with a random sparsity pattern; timing does not depend on the values.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from modelzip.checkpoint import write_atomic
from modelzip.metrics import torch_threads
from modelzip.prune.sparse import SparseLinear, csr_from_dense, csr_nbytes

RESULTS = Path(__file__).resolve().parent / "results" / "sparse_timing.json"
SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
SHAPES = ((300, 784), (100, 300))
BATCHES = (1, 64)
RUNS = 200
WARMUP = 20


def _time_pair(dense: nn.Module, sparse: nn.Module, x: torch.Tensor) -> tuple[list[float],
                                                                               list[float]]:
    """Interleave the two so that drifts of a shared machine hit both alike."""
    td, ts = [], []
    with torch.no_grad():
        for _ in range(WARMUP):
            dense(x)
            sparse(x)
        for _ in range(RUNS):
            t0 = time.perf_counter()
            dense(x)
            t1 = time.perf_counter()
            sparse(x)
            t2 = time.perf_counter()
            td.append((t1 - t0) * 1e3)
            ts.append((t2 - t1) * 1e3)
    return td, ts


def _stats(prefix: str, times: list[float]) -> dict[str, float]:
    q1, med, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {f"{prefix}_latency_ms_median": round(med, 5), f"{prefix}_latency_ms_iqr":
            round(q3 - q1, 5)}


def main() -> int:
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch_threads(1):
        for out_f, in_f in SHAPES:
            for sparsity in SPARSITIES:
                lin = nn.Linear(in_f, out_f)
                with torch.no_grad():
                    keep = torch.rand(out_f, in_f, generator=gen) >= sparsity
                    lin.weight.mul_(keep)
                sp = SparseLinear(lin)
                arrays = csr_from_dense(lin.weight)
                for bs in BATCHES:
                    x = torch.randn(bs, in_f, generator=gen)
                    td, ts = _time_pair(lin, sp, x)
                    row = {"layer_shape": f"{out_f}x{in_f}", "sparsity": sparsity,
                           "batch_size": bs, "threads": 1, "runs": RUNS,
                           "dense_bytes": lin.weight.numel() * 4,
                           "csr_bytes": csr_nbytes(arrays),
                           **_stats("dense", td), **_stats("csr", ts)}
                    row["csr_speedup_vs_dense"] = round(
                        row["dense_latency_ms_median"] / row["csr_latency_ms_median"], 3)
                    rows.append(row)
                    print(f"{out_f}x{in_f} sparsity {sparsity:.2f} batch {bs}: dense "
                          f"{row['dense_latency_ms_median']:.4f} ms, CSR "
                          f"{row['csr_latency_ms_median']:.4f} ms, "
                          f"speedup {row['csr_speedup_vs_dense']:.2f}x", flush=True)
    doc = {"benchmark": "sparse_timing",
           "description": "dense nn.Linear vs torch.sparse.mm on CSR weights, same run, "
                          "interleaved, 1 thread; random weights with random sparsity",
           "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads available",
           "torch_version": torch.__version__, "warmup": WARMUP, "models": rows}
    write_atomic(RESULTS, (json.dumps(doc, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
