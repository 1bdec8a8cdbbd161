"""Deep Compression (Han, Mao, Dally 2016) on LeNet-300-100 and LeNet-5, and beyond it:
pruned weights -> k-means weight sharing with centroid fine-tuning -> entropy-coded .mzip.

    MODELZIP_DATA=../shared/data python bench/deep_compression.py [--models lenet300 lenet5]

Starts from the pruned checkpoints of bench/pruning_magnitude.py (Han et al. 2015 iterative
pruning: ``magnitude-<model>-12x`` at the paper's per-layer rates and ``magnitude-<model>-max``,
the highest ratio its validation ladder accepted). Per model:

1. ``dc-<model>``: the paper's recipe on the 12x model: k-means per layer with linear
   initialisation at the paper's bit widths (Table 2-3: LeNet-300-100 6 bits, LeNet-5 8 bits
   conv / 5 bits fc), centroid fine-tuning with the masks kept, then packed; coded once with
   canonical Huffman (the paper's coder) and once with the best coder per tensor.
2. a grid beyond the paper: both pruned models x fewer bits (and optimal 1-D k-means);
   every point is packed, unpacked and evaluated; the smallest file whose validation error
   stays under the target less one standard error is chosen (choice on validation only).

Every reported error is that of the model rebuilt by ``unpack`` from the .mzip file on disk,
on all 10,000 MNIST test images. Size = the whole file. Ratio = dense fp32 bytes of all
parameters / file bytes. Validation = the last 5,000 training images, held out from all
fine-tuning here and from the pruning retraining (the dense baselines did see them).

Writes bench/results/deep_compression.json, the .mzip files under bench/results/mzip/, and
bench/results/deep_compression_tradeoff.png.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchlib import write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint, write_atomic
from modelzip.codec.artifact import describe_artifact
from modelzip.codec.bits import encode_table
from modelzip.codec.coders import empirical_entropy_bits, encode_symbols
from modelzip.codec.model import pack, unpack
from modelzip.data import ImageDataset, load_dataset
from modelzip.registry import Context, apply_technique, config_from_dict
from modelzip.train import TrainConfig, evaluate

BENCH = Path(__file__).resolve().parent
PRUNED = BENCH / "checkpoints" / "pruned"
RESULTS = BENCH / "results" / "deep_compression.json"
MZIP_DIR = BENCH / "results" / "mzip"
PLOT = BENCH / "results" / "deep_compression_tradeoff.png"
VAL_IMAGES = 5000

# Deep Compression Tables 2-3 (dense fp32 size, compressed size, error) and its bit widths.
PAPER = {
    "lenet300": {"target_error_pct": 1.64, "paper_error_pct": 1.58, "paper_kb": 27.0,
                 "paper_ratio": 40, "target_file_bytes": 26_700,
                 "bits": {"fc1": 6, "fc2": 6, "fc3": 6}},
    "lenet5": {"target_error_pct": 0.80, "paper_error_pct": 0.74, "paper_kb": 44.0,
               "paper_ratio": 39, "target_file_bytes": 44_200,
               "bits": {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}},
}
# Centroid fine-tuning. Every weight of a cluster adds its gradient to the centroid, so the
# step on a centroid is its cluster's size times a weight's: hence the small lr.
FINETUNE = TrainConfig(batch_size=128, lr=0.001, momentum=0.9, weight_decay=0.0,
                       schedule="cosine", augment="none", seed=0)
SHARE_EPOCHS = {"lenet300": 3, "lenet5": 2}
# The grid beyond the paper: (pruned start, bits for every layer, k-means method).
GRID = (
    *[("max", bits, method) for bits in (5, 4, 3, 2) for method in ("lloyd", "optimal")],
    ("12x", 4, "lloyd"), ("12x", 3, "lloyd"),
)


def val_limit(target_pct: float, n: int = VAL_IMAGES) -> float:
    """The target less one binomial standard error at n images (as in pruning_magnitude)."""
    p = target_pct / 100.0
    return round(target_pct - 100.0 * math.sqrt(p * (1.0 - p) / n), 2)


def split_train(train: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
    n = len(train)
    return (train.subset(range(n - VAL_IMAGES), split="train"),
            train.subset(range(n - VAL_IMAGES, n), split="val"))


def dense_fp32_bytes(model: nn.Module) -> int:
    return 4 * sum(p.numel() for p in model.parameters())


def share_weights(model: nn.Module, bits: int | dict[str, int], method: str,
                  train: ImageDataset, val: ImageDataset, epochs: int) -> tuple[nn.Module, dict]:
    """k-means weight sharing with centroid fine-tuning, masks kept (zeros stay zeros)."""
    model = copy.deepcopy(model)
    ctx = Context(train_data=train, val_data=val, finetune=FINETUNE, progress=False)
    ctx.log = lambda message: None  # type: ignore[method-assign]
    options = {"bits": bits, "init": "linear", "method": method, "finetune_epochs": epochs,
               "lr": FINETUNE.lr}
    model = apply_technique(model, config_from_dict("kmeans", options), ctx)
    return model, {"technique": "kmeans", **options, "records": ctx.records}


def pack_and_measure(model: nn.Module, experiment: str, coder: str, test: ImageDataset,
                     val: ImageDataset) -> dict[str, Any]:
    """Pack, write the file, read it back, unpack and evaluate the rebuilt model."""
    t0 = time.perf_counter()
    data = pack(model, coder=coder)
    pack_s = time.perf_counter() - t0
    path = MZIP_DIR / f"{experiment}.mzip"
    write_atomic(path, data)
    on_disk = path.read_bytes()
    t0 = time.perf_counter()
    rebuilt = unpack(on_disk)
    unpack_s = time.perf_counter() - t0
    for (k, a), b in zip(model.state_dict().items(), rebuilt.state_dict().values(),
                         strict=True):
        if not torch.equal(a, b):
            raise RuntimeError(f"{experiment}: {k} differs after unpack")
    result = evaluate(rebuilt, test)
    val_result = evaluate(rebuilt, val)
    dense = dense_fp32_bytes(rebuilt)
    return {"file": str(path.relative_to(BENCH.parent)), "file_bytes": len(on_disk),
            "dense_fp32_bytes": dense, "ratio": round(dense / len(on_disk), 2),
            "test_error_pct": round(result.error_pct, 4), "test_errors": result.errors,
            "test_images": result.total, "val_error_pct": round(val_result.error_pct, 4),
            "pack_s": round(pack_s, 4), "unpack_s": round(unpack_s, 4),
            "tensors": describe_artifact(on_disk)}


def layer_rows(model: nn.Module, tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-layer rows like Deep Compression's Tables 2-3, from the artifact's description."""
    by_name = {t["name"]: t for t in tensors}
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        w = module.weight.detach()
        nz = w[w != 0]
        distinct = int(torch.unique(nz).numel())
        t = by_name[f"{name}.weight"]
        rows.append({"layer": name, "weights": w.numel(), "nonzero": int(nz.numel()),
                     "kept_pct": round(100.0 * nz.numel() / w.numel(), 2),
                     "distinct_values": distinct,
                     "bits_per_value": math.ceil(math.log2(max(distinct, 2))),
                     **{k: t[k] for k in t if k != "name"}})
    return rows


def coder_comparison(model: nn.Module) -> list[dict[str, Any]]:
    """Per weight layer: the shared-value indices of the non-zero weights and the gaps
    between non-zero positions, each coded alone by every coder, next to the empirical
    entropy (bits per symbol; the coders' bytes include their tables)."""
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        flat = module.weight.detach().flatten().numpy()
        pos = np.flatnonzero(flat)
        _, indices = np.unique(flat[pos], return_inverse=True)
        gaps = np.diff(pos, prepend=-1) - 1
        for stream, symbols in (("values", indices), ("gaps", gaps)):
            n = len(symbols)
            row = {"layer": name, "stream": stream, "symbols": n,
                   "alphabet": int(symbols.max()) + 1 if n else 0,
                   "entropy_bits_per_symbol": round(empirical_entropy_bits(symbols) / n, 4)}
            for coder in ("huffman", "rans", "raw"):
                _, data = encode_symbols(symbols, coder)
                row[f"{coder}_bytes"] = len(data)
                row[f"{coder}_bits_per_symbol"] = round(8 * len(data) / n, 4)
            # rANS = its frequency table + the coded words: the words alone against entropy.
            present, counts = np.unique(symbols, return_counts=True)
            table = len(encode_table(present, counts))
            payload_bits = 8 * (row["rans_bytes"] - table)
            row["rans_table_bytes"] = table
            row["rans_payload_bits_per_symbol"] = round(payload_bits / n, 4)
            row["rans_payload_over_entropy_pct"] = round(
                100.0 * (payload_bits / max(empirical_entropy_bits(symbols), 1e-9) - 1.0), 3)
            rows.append(row)
    return rows


def run_model(name: str, *, grid: tuple[tuple[str, int, str], ...], share_epochs: int
              ) -> list[dict]:
    paper = PAPER[name]
    full_train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test")
    train, val = split_train(full_train)
    limit = val_limit(paper["target_error_pct"])
    starts = {"12x": load_checkpoint(PRUNED / f"magnitude-{name}-12x").model,
              "max": load_checkpoint(PRUNED / f"magnitude-{name}-max").model}
    rows: list[dict[str, Any]] = []

    def record(experiment: str, model: nn.Module, settings: dict, coder: str, start: str,
               wall: float, **extra: Any) -> dict[str, Any]:
        m = pack_and_measure(model, experiment, coder, test, val)
        tensors = m.pop("tensors")
        row = {"experiment": experiment, "model": name, "dataset": "mnist",
               "starts_from": f"magnitude-{name}-{start}", "coder": coder, **m,
               "target_error_pct": paper["target_error_pct"],
               "target_file_bytes": paper["target_file_bytes"],
               "target_met": (m["test_error_pct"] <= paper["target_error_pct"]
                              and m["file_bytes"] <= paper["target_file_bytes"]),
               "val_limit_pct": limit, "paper_ratio": paper["paper_ratio"],
               "paper_error_pct": paper["paper_error_pct"], "share_wall_time_s": round(wall, 1),
               **extra, "settings": settings, "layers": layer_rows(model, tensors),
               "tensor_coding": tensors}
        print(f"   {experiment} [{coder}]: {row['file_bytes']:,} B ({row['ratio']}x), test "
              f"{row['test_error_pct']:.2f}%, val {row['val_error_pct']:.2f}%, "
              f"unpack {row['unpack_s'] * 1000:.0f} ms", flush=True)
        rows.append(row)
        return row

    print(f"== {name}: validation limit {limit}% (target {paper['target_error_pct']}%)",
          flush=True)
    # 1. The paper's recipe.
    t0 = time.perf_counter()
    dc, settings = share_weights(starts["12x"], paper["bits"], "lloyd", train, val,
                                 share_epochs)
    wall = time.perf_counter() - t0
    record(f"dc-{name}-huffman", dc, settings, "huffman", "12x", wall, kind="paper-recipe")
    record(f"dc-{name}", dc, settings, "best", "12x", wall, kind="paper-recipe",
           coders=coder_comparison(dc))

    # 2. Beyond: fewer bits on both pruned models; chosen on validation.
    points = []
    for start, bits, method in grid:
        exp = f"grid-{name}-{start}-{bits}bit-{method}"
        t0 = time.perf_counter()
        shared, settings = share_weights(starts[start], bits, method, train, val,
                                         share_epochs)
        wall = time.perf_counter() - t0
        points.append(record(exp, shared, settings, "best", start, wall, kind="grid"))
    ok = [r for r in points if r["val_error_pct"] <= limit]
    if ok:
        best = min(ok, key=lambda r: r["file_bytes"])
        best["chosen_smallest"] = True
        print(f"   smallest under the validation limit: {best['experiment']} "
              f"{best['file_bytes']:,} B, test {best['test_error_pct']:.2f}%", flush=True)
    return rows


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modelzip.report.plots import save_figure

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == name]
        for kind, marker in (("grid", "o"), ("paper-recipe", "s")):
            pts = [r for r in mine if r["kind"] == kind]
            ax.scatter([r["file_bytes"] / 1000 for r in pts],
                       [r["test_error_pct"] for r in pts], marker=marker, label=kind)
        chosen = [r for r in mine if r.get("chosen_smallest")]
        if chosen:
            ax.scatter([chosen[0]["file_bytes"] / 1000], [chosen[0]["test_error_pct"]],
                       s=160, facecolors="none", edgecolors="red", label="chosen (validation)")
        p = PAPER[name]
        ax.scatter([p["paper_kb"]], [p["paper_error_pct"]], marker="*", s=150, color="black",
                   label="Deep Compression")
        ax.axhline(p["target_error_pct"], ls="--", color="grey", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(".mzip file size (KB, log scale)")
        ax.set_ylabel("test error % (unpacked model, 10,000 images)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    save_figure(fig, PLOT)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"modelzip_version": __version__, "torch_version": torch.__version__,
            "numpy_version": np.__version__, "constriction_version": version("constriction"),
            "ckmeans_version": version("ckmeans"),
            "python_version": platform.python_version(), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--quick", action="store_true",
                        help="a two-point grid, for checking the script")
    args = parser.parse_args(argv)
    grid = GRID[:2] if args.quick else GRID
    start = time.perf_counter()
    rows = []
    for name in args.models:
        rows.extend({**r, **versions()} for r in
                    run_model(name, grid=grid, share_epochs=SHARE_EPOCHS[name]))
    plot(rows)
    doc = write_results(RESULTS, "deep_compression",
                        "pruning + k-means weight sharing with centroid fine-tuning + entropy "
                        "coding (Han et al. 2016); error of the model unpacked from the .mzip "
                        "file, on the full MNIST test split; size = whole file",
                        rows, settings={"finetune": FINETUNE.to_dict(),
                                        "share_epochs": SHARE_EPOCHS,
                                        "grid": [list(g) for g in grid],
                                        "val_images": VAL_IMAGES},
                        total_wall_time_s=round(time.perf_counter() - start, 1))
    print(f"{len(rows)} results in {RESULTS} ({doc['total_wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
