"""Train the reference models that later benchmarks compress, and record their figures.

    MODELZIP_DATA=../shared/data python bench/baselines.py [--models lenet300 lenet5 eurosat_cnn]

Writes checkpoints to bench/checkpoints/<model>/ and merges one flat object per model into
bench/results/baselines.json. Every error figure is that of the checkpoint reloaded from disk,
on the full test split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchlib import write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.data import load_dataset, train_val_split
from modelzip.metrics import profile_model
from modelzip.pipeline import VAL_FRACTION
from modelzip.train import TrainConfig, evaluate, fit
from modelzip.zoo import build_model

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "baselines.json"
CHECKPOINTS = BENCH / "checkpoints"


@dataclass(frozen=True)
class Baseline:
    dataset: str
    config: TrainConfig
    target: str  # the figure to reach, in words
    max_error_pct: float
    model_kwargs: dict[str, Any] | None = None


BASELINES = {
    # Han et al. 2015 report 1.64% (LeNet-300-100) and 0.80% (LeNet-5) as their baselines.
    "lenet300": Baseline("mnist", TrainConfig(epochs=30, batch_size=128, lr=0.05,
                                              weight_decay=1e-4, augment="shift", seed=0),
                         "test error <= 1.64% (Han et al. 2015 baseline)", 1.64),
    "lenet5": Baseline("mnist", TrainConfig(epochs=20, batch_size=128, lr=0.05,
                                            weight_decay=5e-4, augment="shift", seed=0),
                       "test error <= 0.80% (Han et al. 2015 baseline)", 0.80),
    "eurosat_cnn": Baseline("eurosat", TrainConfig(epochs=18, batch_size=128, lr=0.1,
                                                   weight_decay=5e-4, augment="flips", seed=0),
                            "test accuracy >= 95%", 5.0),
}


def versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {"modelzip_version": __version__, "torch_version": torch.__version__,
            "numpy_version": numpy.__version__, "safetensors_version": safetensors.__version__,
            "python_version": platform.python_version()}


def training_split(dataset: str) -> Any:
    """The training split less the validation images that ``modelzip.compress`` holds out
    (the same seeded 10%), so that no later choice made on validation accuracy sees images
    the baseline was trained on."""
    train, _ = train_val_split(load_dataset(dataset, "train"), VAL_FRACTION, seed=0)
    return train


def run_one(name: str, progress: bool) -> dict[str, Any]:
    spec = BASELINES[name]
    train_ds = training_split(spec.dataset)
    test_ds = load_dataset(spec.dataset, "test")
    model = build_model(name, **(spec.model_kwargs or {}))
    print(f"== {name} on {spec.dataset}: {len(train_ds)} train / {len(test_ds)} test images, "
          f"{torch.get_num_threads()} threads", flush=True)
    cpu0 = time.process_time()
    hist = fit(model, train_ds, spec.config, progress=progress,
               epoch_callbacks=[lambda _m, e, m: print(
                   f"   epoch {e}: loss {m['train_loss']:.4f}, "
                   f"train acc {m['train_acc_pct']:.2f}%, {m['epoch_time_s']:.0f} s", flush=True)])
    train_cpu_time_s = time.process_time() - cpu0
    in_memory = evaluate(model, test_ds)
    out_dir = CHECKPOINTS / name
    save_checkpoint(model, out_dir,
                    dataset={"name": train_ds.name, "mean": list(train_ds.mean),
                             "std": list(train_ds.std), "classes": list(train_ds.classes),
                             "input_shape": list(train_ds.input_shape)},
                    training={**spec.config.to_dict(), "wall_time_s": hist.wall_time_s,
                              "cpu_time_s": train_cpu_time_s, "history": hist.epochs,
                              "train_images": len(train_ds),
                              "validation_held_out": f"seeded {VAL_FRACTION:.0%} (seed 0)"},
                    metrics=in_memory.to_dict())
    reloaded = load_checkpoint(out_dir).model
    result = evaluate(reloaded, test_ds)
    if result.errors != in_memory.errors:
        raise RuntimeError(f"{name}: reloaded checkpoint gives {result.errors} errors, "
                           f"in memory {in_memory.errors}")
    return _row(name, reloaded, result, hist.wall_time_s, train_cpu_time_s, len(train_ds),
                out_dir)


def row_from_checkpoint(name: str) -> dict[str, Any]:
    """The row of an already trained baseline: evaluated again from its checkpoint, with the
    training wall time recorded in it when it was trained."""
    spec = BASELINES[name]
    out_dir = CHECKPOINTS / name
    ckpt = load_checkpoint(out_dir)
    result = evaluate(ckpt.model, load_dataset(spec.dataset, "test"))
    training = ckpt.meta.get("training") or {}
    return _row(name, ckpt.model, result, training["wall_time_s"],
                training.get("cpu_time_s"), training.get("train_images") or
                len(load_dataset(spec.dataset, "train")), out_dir)


def _row(name: str, reloaded: torch.nn.Module, result: Any, wall_time_s: float,
         cpu_time_s: float | None, train_images: int, out_dir: Path) -> dict[str, Any]:
    spec = BASELINES[name]
    prof = profile_model(reloaded)
    row = {
        "model": name,
        "dataset": spec.dataset,
        "test_error_pct": round(result.error_pct, 4),
        "test_errors": result.errors,
        "test_images": result.total,
        "test_accuracy_pct": round(result.accuracy_pct, 4),
        "test_loss": round(result.loss, 5),
        "target": spec.target,
        "target_met": result.error_pct <= spec.max_error_pct,
        "params": prof.params,
        "macs": prof.total_macs,
        "flops": prof.total_flops,
        "dense_fp32_bytes": prof.dense_bytes,
        "train_wall_time_s": round(wall_time_s, 1),
        # CPU seconds of this process while training: unlike wall time, not inflated by
        # other jobs on a shared machine.
        "train_cpu_time_s": None if cpu_time_s is None else round(cpu_time_s, 1),
        "train_images": train_images,
        "epochs": spec.config.epochs,
        "batch_size": spec.config.batch_size,
        "optimizer": spec.config.optimizer,
        "lr": spec.config.lr,
        "schedule": spec.config.schedule,
        "weight_decay": spec.config.weight_decay,
        "augment": spec.config.augment,
        "seed": spec.config.seed,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "checkpoint": str(out_dir.relative_to(BENCH.parent)),
        **versions(),
    }
    print(f"   {name}: test error {result.error_pct:.2f}% ({result.errors}/{result.total}), "
          f"target met: {row['target_met']}, trained in {wall_time_s:.0f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--rows-from-checkpoints", action="store_true",
                        help="do not train: rebuild the rows of --models from their saved "
                             "checkpoints (re-evaluated; training time as recorded)")
    args = parser.parse_args(argv)
    existing: dict[str, Any] = {}
    if RESULTS.is_file():
        existing = {row["model"]: row for row in json.loads(RESULTS.read_text())["models"]}
    for name in args.models:
        existing[name] = (row_from_checkpoint(name) if args.rows_from_checkpoints
                          else run_one(name, progress=not args.no_progress))
        write_results(RESULTS, "baselines",
                      "reference models trained from scratch; error of the checkpoint "
                      "reloaded from disk on the full test split",
                      [existing[k] for k in BASELINES if k in existing])
    return 0


if __name__ == "__main__":
    sys.exit(main())
