"""Delta uplink: a model on board updated by a patch instead of a whole new file.

    MODELZIP_DATA=../shared/data python bench/delta.py
    MODELZIP_DATA=../shared/data python bench/delta.py --quick   # smoke test

The model on board: eurosat_cnn (bench/checkpoints/eurosat_cnn) quantized with
``modelzip.quantize`` (the registered techniques) and packed, in two variants: uniform int8
(affine, per channel) and k-means weight sharing (Deep Compression's bits: 8 conv, 5 fc).
The update: the unpacked model fine-tuned for ONE epoch on new data, then put back on the
same grids (every weight on its layer's old int8 grid, or on the nearest of its layer's old
k-means centroids; pruned zeros stay zero) and packed again: the new full .mzip. New data:
the seeded 10% validation split (seed 0) of the EuroSAT training split, which the baseline
was never trained on (bench/baselines.py holds it out).

Then ``modelzip.flight.delta.make_delta`` makes the patch, lossless (tolerance 0: the patched
file is the new file, byte for byte) and lossy (float tensors that are neither on a grid nor
shared, i.e. biases and BatchNorm, may differ from the new ones by at most ``TOLERANCE``),
each with 3LC (balanced-ternary planes, base-3^5, zero-run), with modelzip's coders
(Huffman/rANS/raw on a zigzag of the integer changes), and with the smaller of the two per
tensor. The patched model is evaluated on the full test split against
the full new model. Targets (issue 14): patch <= 10% of the new full .mzip, <= 0.1 points of
accuracy difference.

Writes bench/results/delta.json; ``--quick`` uses a briefly trained stand-in on a few hundred
images and writes into a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import modelzip
from benchlib import quick_baseline, quick_data, write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.model import pack, unpack
from modelzip.data import load_dataset, train_val_split
from modelzip.flight.delta import apply_patch, describe_patch, make_delta
from modelzip.quant.grid import grid_hints
from modelzip.quant.uniform_technique import UniformQuantConfig
from modelzip.quant.weight_sharing import WeightSharingConfig
from modelzip.train import TrainConfig, evaluate, fit

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "delta.json"
CHECKPOINT = BENCH / "checkpoints" / "eurosat_cnn"
VAL_FRACTION, SEED = 0.1, 0
VARIANTS = {
    "int8-uniform": UniformQuantConfig(bits=8, per_channel=True),
    "kmeans": WeightSharingConfig(init="linear"),
}
# one epoch at a tenth of the baseline's peak learning rate
UPDATE = TrainConfig(epochs=1, batch_size=128, lr=0.01, weight_decay=5e-4, schedule="cosine",
                     augment="flips", seed=1)
TOLERANCE = 1e-4  # lossy patches: the largest change of any float (bias, BatchNorm) element
CODERS = ("best", "3lc", "coders")
TARGET_RATIO, TARGET_POINTS = 0.10, 0.1


def onto_old_grids(model: torch.nn.Module, old: torch.nn.Module) -> torch.nn.Module:
    """``model``'s weights put back on ``old``'s grids: the int8 grid (scale, zero point,
    levels) of a uniform weight, or the nearest of the distinct non-zero values (the k-means
    centroids) of a shared one; exact zeros (pruned) stay zero. Other tensors as they are."""
    hints = grid_hints(old)
    old_state = old.state_dict()
    state = model.state_dict()
    with torch.no_grad():
        for key, w in state.items():
            before = old_state[key]
            if key in hints:
                h = hints[key]
                shape = (-1,) + (1,) * (w.dim() - 1) if h["axis"] == 0 else (1,)
                scale = torch.as_tensor(h["scale"]).reshape(shape)
                zp = torch.as_tensor(h["zero_point"]).reshape(shape)
                top = 2 ** h["bits"] - 1 if h.get("bits") else None
                codes = torch.round(w / scale) + zp
                codes = codes.clamp(0, top) if top is not None else codes
                steps = (codes - zp).to(torch.float32)
                w.copy_(torch.where(before == 0, before, steps * scale.to(torch.float32)))
            elif w.is_floating_point() and w.dim() > 1:
                centroids = torch.unique(before[before != 0])
                if centroids.numel() and centroids.numel() <= 256:
                    nearest = centroids[(w.reshape(-1, 1) - centroids).abs().argmin(1)]
                    w.copy_(torch.where(before == 0, before, nearest.reshape(w.shape)))
    if hints:  # the grids travel with the model, as uniform quantization left them
        for name, module in model.named_modules():
            if hasattr(old.get_submodule(name), "modelzip_grid"):
                module.modelzip_grid = dict(old.get_submodule(name).modelzip_grid)
    return model


def variant_rows(name: str, config: Any, base: torch.nn.Module, new_data: Any, test: Any,
                 meta: dict) -> list[dict[str, Any]]:
    start = time.perf_counter()
    # the quantized model keeps its grids (module attributes) for the re-pack; a model
    # unpacked from a .mzip would not have them
    old_model = modelzip.quantize(base, config)
    old_bytes = pack(old_model, meta=meta)
    on_board = unpack(old_bytes)
    old_eval = evaluate(on_board, test)
    tuned = copy.deepcopy(on_board).train()
    fit(tuned, new_data, UPDATE, progress=False)
    new_model = onto_old_grids(tuned.eval(), old_model)
    new_bytes = pack(new_model, meta=meta)
    full_new = unpack(new_bytes)
    new_eval = evaluate(full_new, test)
    rows = []
    for tolerance in (0.0, TOLERANCE):
        for coder in CODERS:
            t0 = time.perf_counter()
            patch = make_delta(old_bytes, new_bytes, hints=grid_hints(new_model),
                               tolerance=tolerance, delta_coder=coder)
            make_s = time.perf_counter() - t0
            patched = apply_patch(old_bytes, patch)
            info = describe_patch(patch)
            row = {
                "model": f"eurosat_cnn {name}", "variant": name, "tolerance": tolerance,
                "delta_coder": coder, "lossless": info["lossless"],
                "max_abs_error": info["max_abs_error"],
                "old_mzip_bytes": len(old_bytes), "new_mzip_bytes": len(new_bytes),
                "patch_bytes": len(patch), "patch_vs_new_mzip": len(patch) / len(new_bytes),
                "patch_bytes_by_mode": info["bytes_by_mode"],
                "patch_bytes_by_coding": info["bytes_by_coding"],
                "grid_scale_bytes": info["grid_bytes"],
                "patched_equals_new_file": patched == new_bytes,
                "patched_mzip_bytes": len(patched),
                "old_test_error_pct": old_eval.error_pct, "old_test_errors": old_eval.errors,
                "new_test_error_pct": new_eval.error_pct, "new_test_errors": new_eval.errors,
                "test_images": new_eval.total, "make_delta_s": make_s,
            }
            got = new_eval if patched == new_bytes else evaluate(unpack(patched), test)
            row.update(patched_test_error_pct=got.error_pct, patched_test_errors=got.errors,
                       accuracy_diff_points=got.error_pct - new_eval.error_pct)
            row["target_met"] = bool(row["patch_vs_new_mzip"] <= TARGET_RATIO
                                     and abs(row["accuracy_diff_points"]) <= TARGET_POINTS)
            print(f"{name} tol={tolerance:g} {coder}: patch {len(patch):,} B = "
                  f"{row['patch_vs_new_mzip']:.1%} of {len(new_bytes):,} B; error "
                  f"{got.error_pct:.2f}% vs new {new_eval.error_pct:.2f}% "
                  f"(old {old_eval.error_pct:.2f}%)", flush=True)
            rows.append(row)
    for row in rows:
        row["variant_wall_time_s"] = time.perf_counter() - start
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run into a temp folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    full_train = load_dataset("eurosat", "train")
    test = load_dataset("eurosat", "test")
    train, new_data = train_val_split(full_train, VAL_FRACTION, seed=SEED)
    if args.quick:
        train, test = quick_data(train, test, 400, 300)
        new_data, _ = quick_data(new_data, test, 200, 1)
        base = quick_baseline("eurosat_cnn", train)
        out = Path(tempfile.mkdtemp(prefix="delta-quick-")) / "delta.json"
    else:
        base = load_checkpoint(CHECKPOINT).model
        out = RESULTS
    rows = []
    meta = {"dataset": {"name": "eurosat"}}
    for name, config in VARIANTS.items():
        rows += variant_rows(name, config, base, new_data, test, meta)
    write_results(out, "delta", "eurosat_cnn compressed and packed, fine-tuned for one epoch on "
                  "new data and put back on the same grids; the patch (modelzip.flight.delta) "
                  "against the new full .mzip", rows,
                  settings={"new_data": f"the seeded {VAL_FRACTION:.0%} validation split (seed "
                            f"{SEED}) of the training split, {len(new_data)} images, never "
                            "trained on by the baseline",
                            "update": UPDATE.to_dict(), "lossy_tolerance": TOLERANCE,
                            "variants": {k: repr(v) for k, v in VARIANTS.items()},
                            "quick": args.quick,
                            "targets": {"patch_vs_new_mzip": TARGET_RATIO,
                                        "accuracy_diff_points": TARGET_POINTS}})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
