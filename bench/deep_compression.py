"""Deep Compression (Han, Mao, Dally 2016) on LeNet-300-100 and LeNet-5, and beyond it:
pruned weights -> k-means weight sharing with centroid fine-tuning -> entropy-coded .mzip.

    MODELZIP_DATA=../shared/data python bench/deep_compression.py [--models lenet300 lenet5]
    MODELZIP_DATA=../shared/data python bench/deep_compression.py --quick   # smoke test

Starts from the pruned checkpoints of bench/pruning_magnitude.py (Han et al. 2015 iterative
pruning: ``magnitude-<model>-12x`` at the paper's per-layer rates and ``magnitude-<model>-max``,
the highest ratio its validation ladder accepted). Every point is a recipe (one ``kmeans``
step and the pack step's coder) run through ``modelzip.compress``, which holds out the
validation images, shares and fine-tunes, packs the .mzip, reads it back and evaluates the
read-back model. Per model:

1. ``dc-<model>``: the paper's recipe on the 12x model: k-means per layer with linear
   initialisation at the paper's bit widths (Table 2-3: LeNet-300-100 6 bits, LeNet-5 8 bits
   conv / 5 bits fc), centroid fine-tuning with the masks kept, then packed; coded once with
   canonical Huffman (the paper's coder, ``dc-<model>-huffman``) and once with the best coder
   per tensor (two runs of the same seeded recipe).
2. a grid beyond the paper: both pruned models x fewer bits (and optimal 1-D k-means);
   the smallest file whose validation error stays under the target less one standard error
   is chosen (choice on validation only).

Every reported error is that of the model read back from the .mzip, on all 10,000 MNIST test
images; the file on disk is checked to be those bytes and timed unpacking. Size = the whole
file. Ratio = dense fp32 bytes of all parameters / file bytes. Validation = the pipeline's
seeded 10% of the training images, held out from all fine-tuning here, from the pruning
retraining and from the baselines' training.

Writes bench/results/deep_compression.json, the .mzip files under bench/results/mzip/, and
bench/results/deep_compression_tradeoff.png. ``--quick`` runs a two-point grid on lenet300
(pruned in-process from a briefly trained stand-in, a few hundred images, 1 epoch) into a new
temporary folder instead.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchlib import quick_data, repo_relative, write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import describe_artifact
from modelzip.codec.bits import encode_table
from modelzip.codec.coders import empirical_entropy_bits, encode_symbols
from modelzip.codec.model import unpack
from modelzip.core.context import Context
from modelzip.data import ImageDataset, load_dataset
from modelzip.pipeline import compress, make_context
from modelzip.train import TrainConfig, fit
from modelzip.zoo import build_model

BENCH = Path(__file__).resolve().parent
PRUNED = BENCH / "checkpoints" / "pruned"
RESULTS_DIR = BENCH / "results"
RESULTS_NAME = "deep_compression.json"
PLOT_NAME = "deep_compression_tradeoff.png"

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
# --quick: lenet300 on a few hundred images, 1 epoch, the first two grid points.
QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES = 600, 500
QUICK_GRID = GRID[:2]
QUICK_SPARSITY = {"12x": 0.92, "max": 0.95}  # one-shot magnitude pruning of the stand-in


def val_limit(target_pct: float, n: int) -> float:
    """The target less one binomial standard error at n images (as in pruning_magnitude)."""
    p = target_pct / 100.0
    return round(target_pct - 100.0 * math.sqrt(p * (1.0 - p) / n), 2)


def quick_starts(name: str, train: ImageDataset, test: ImageDataset) -> dict[str, nn.Module]:
    """--quick: a zoo model trained for one epoch, magnitude-pruned through compress, in
    place of the pruned checkpoints."""
    torch.manual_seed(0)  # the initial weights
    model = build_model(name)
    fit(model, train, TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0), progress=False)
    return {start: compress(model.eval(), {"name": f"quick-{start}", "steps": [
                {"magnitude": {"global_sparsity": s}}]}, data=train, test_data=test,
                progress=False).model
            for start, s in QUICK_SPARSITY.items()}


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


def run_model(name: str, *, grid: tuple[tuple[str, int, str], ...], share_epochs: int,
              out_dir: Path = RESULTS_DIR, quick: bool = False) -> list[dict]:
    # --quick: a target the barely trained stand-in meets, so that a point gets chosen
    paper = {**PAPER[name], "target_error_pct": 99.0} if quick else PAPER[name]
    full_train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    if quick:
        full_train, test = quick_data(full_train, test, QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES)
        starts = quick_starts(name, full_train, test)
    else:
        starts = {"12x": load_checkpoint(PRUNED / f"magnitude-{name}-12x").model,
                  "max": load_checkpoint(PRUNED / f"magnitude-{name}-max").model}
    mzip_dir = out_dir / "mzip"

    def context() -> Context:
        """The pipeline's context: it holds out the validation images itself (seeded)."""
        return make_context(data=full_train, test_data=test, finetune=FINETUNE,
                            progress=False)

    n_val = len(context().val_data)
    limit = val_limit(paper["target_error_pct"], n_val)
    rows: list[dict[str, Any]] = []

    def record(experiment: str, start: str, bits: int | dict[str, int], method: str,
               coder: str, **extra: Any) -> tuple[dict[str, Any], nn.Module]:
        """Run the k-means recipe through compress: the row of the read-back model (also
        appended to ``rows``) and that model."""
        options = {"bits": bits, "init": "linear", "method": method,
                   "finetune": {"epochs": share_epochs, "lr": FINETUNE.lr}}
        recipe = {"name": experiment, "steps": [{"kmeans": options}], "pack": {"coder": coder}}
        path = mzip_dir / f"{experiment}.mzip"
        result = compress(starts[start], recipe, ctx=context(), out=path, force=True)
        on_disk = path.read_bytes()
        if on_disk != result.artifact:
            raise RuntimeError(f"{experiment}: {path} does not hold the packed bytes")
        t0 = time.perf_counter()
        unpack(on_disk)
        unpack_s = time.perf_counter() - t0
        tensors = describe_artifact(on_disk)
        test_after = result.test_error_after
        row = {"experiment": experiment, "model": name, "dataset": "mnist",
               "starts_from": f"magnitude-{name}-{start}", "coder": coder,
               "file": repo_relative(path), "file_bytes": len(on_disk),
               "dense_fp32_bytes": result.before.dense_bytes, "ratio": round(result.ratio, 2),
               "test_error_pct": round(test_after.error_pct, 4),
               "test_errors": test_after.errors, "test_images": test_after.total,
               "val_error_pct": round(result.val_error_after, 4), "val_images": n_val,
               "unpack_s": round(unpack_s, 4),
               "target_error_pct": paper["target_error_pct"],
               "target_file_bytes": paper["target_file_bytes"],
               "target_met": (test_after.error_pct <= paper["target_error_pct"]
                              and len(on_disk) <= paper["target_file_bytes"]),
               "val_limit_pct": limit, "paper_ratio": paper["paper_ratio"],
               "paper_error_pct": paper["paper_error_pct"],
               "compress_wall_time_s": round(result.wall_time_s, 1), **extra,
               "settings": {"technique": "kmeans", **options, "records": result.records,
                            "recipe": recipe, "pipeline": result.settings},
               "layers": layer_rows(result.model, tensors), "tensor_coding": tensors}
        print(f"   {experiment} [{coder}]: {row['file_bytes']:,} B ({row['ratio']}x), test "
              f"{row['test_error_pct']:.2f}%, val {row['val_error_pct']:.2f}%, "
              f"unpack {row['unpack_s'] * 1000:.0f} ms", flush=True)
        rows.append(row)
        return row, result.model

    print(f"== {name}: validation limit {limit}% on {n_val} images (target "
          f"{paper['target_error_pct']}%)", flush=True)
    # 1. The paper's recipe, coded with Huffman and with the best coder per tensor.
    _, dc_huffman = record(f"dc-{name}-huffman", "12x", paper["bits"], "lloyd", "huffman",
                           kind="paper-recipe")
    dc_row, dc = record(f"dc-{name}", "12x", paper["bits"], "lloyd", "best",
                        kind="paper-recipe")
    gap = max(float((a - b).abs().max()) for a, b in zip(
        dc_huffman.state_dict().values(), dc.state_dict().values(), strict=True))
    if gap:
        print(f"   note: dc-{name} and dc-{name}-huffman differ by up to {gap:.2g} in a weight "
              "(the seeded centroid fine-tuning did not repeat bit for bit)", flush=True)
    dc_row["coders"] = coder_comparison(dc)

    # 2. Beyond: fewer bits on both pruned models; chosen on validation.
    points = [record(f"grid-{name}-{start}-{bits}bit-{method}", start, bits, method, "best",
                     kind="grid")[0] for start, bits, method in grid]
    ok = [r for r in points if r["val_error_pct"] <= limit]
    if ok:
        best = min(ok, key=lambda r: r["file_bytes"])
        best["chosen_smallest"] = True
        print(f"   smallest under the validation limit: {best['experiment']} "
              f"{best['file_bytes']:,} B, test {best['test_error_pct']:.2f}%", flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
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
        ax.set_ylabel("test error % (read-back model, full test split)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    save_figure(fig, path)


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
                        help="a tiny run (lenet300 pruned in-process, 600 images, 1 epoch, two "
                             "grid points) into a temporary folder, to check the script")
    args = parser.parse_args(argv)
    if args.quick:
        out_dir = Path(tempfile.mkdtemp(prefix="modelzip-quick-"))
        print(f"--quick: writing into {out_dir}", flush=True)
        models, grid = ["lenet300"], QUICK_GRID
    else:
        out_dir, models, grid = RESULTS_DIR, args.models, GRID
    start = time.perf_counter()
    rows = []
    for name in models:
        share_epochs = 1 if args.quick else SHARE_EPOCHS[name]
        rows.extend({**r, **versions()} for r in
                    run_model(name, grid=grid, share_epochs=share_epochs, out_dir=out_dir,
                              quick=args.quick))
    plot(rows, out_dir / PLOT_NAME)
    results = out_dir / RESULTS_NAME
    doc = write_results(results, "deep_compression",
                        "pruning + k-means weight sharing with centroid fine-tuning + entropy "
                        "coding (Han et al. 2016), each a recipe run through modelzip.compress; "
                        "error of the model read back from the .mzip file, on the full MNIST "
                        "test split; size = whole file",
                        rows, settings={"finetune": FINETUNE.to_dict(),
                                        "share_epochs": SHARE_EPOCHS,
                                        "grid": [list(g) for g in grid],
                                        "val_images": rows[0]["val_images"]},
                        total_wall_time_s=round(time.perf_counter() - start, 1))
    print(f"{len(rows)} results in {results} ({doc['total_wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
