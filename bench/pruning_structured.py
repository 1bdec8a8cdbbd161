"""Structured L1 filter pruning (Li et al. 2017) of the EuroSAT CNN to <= 50% of its FLOPs,
with per-layer ratios from measured sensitivity, fine-tuned, and timed against the unpruned
model in the same process.

    MODELZIP_DATA=../shared/data python bench/pruning_structured.py [--progress]
    MODELZIP_DATA=../shared/data python bench/pruning_structured.py --quick   # smoke test

Steps:
1. load bench/checkpoints/eurosat_cnn (waits up to 20 min for bench/baselines.py to write it);
2. ``modelzip.pipeline.make_context`` holds out its seeded, stratified 10% of the EuroSAT
   train split for validation (the baseline was trained without it); measure, on it, the
   accuracy of the model with one channel group at a time pruned by L1 norm (no
   fine-tuning) -> bench/results/sensitivity_eurosat_cnn.{json,png} (with the unstructured,
   per-layer magnitude curves for comparison);
3. allocate per-layer ratios with one accuracy-drop tolerance for all layers
   (``modelzip.prune.sensitivity.allocate``) for ALLOCATED_FLOPS of the MACs, channel counts
   rounded to multiples of 8; run the ``l1-filter`` recipe through ``modelzip.compress``
   (channels removed, packed, read back: the "before fine-tuning" figures);
4. run a ``finetune`` recipe through ``modelzip.compress`` on that read-back model, on the
   other 90% of the train split (random flips);
5. save the read-back fine-tuned model to bench/checkpoints/pruned/eurosat_cnn-l1/ (later
   benchmarks start from it) and report it: full 5,400-image test split, MACs
   (``modelzip.metrics.profile_model``), parameters, and 1-thread latency at batch 1 and 64
   of pruned vs unpruned, both loaded from their checkpoints (``measure_latency``, median and
   IQR, alternating rounds in this one process; speedup = unpruned median / pruned median).
   The sensitivity analysis and the timing are measurements, not compression steps: they
   stay outside ``compress``.

Why ALLOCATED_FLOPS is below the 50% requirement: at batch 1 on one thread, latency does not
fall as fast as MACs (BatchNorm, ReLU and pooling on the 64x64 and 32x32 maps, and per-operator
overhead, shrink only with the channels, not with their square). A uniform 30% ratio gives
48% of the MACs but measured only ~1.55x; the 1.7x target needs ~36-38%.

The test split is used for reporting only. ``--quick`` prunes a briefly trained stand-in on a
few hundred images (1 epoch, fewer sensitivity levels, short timing) and writes into a new
temporary folder instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchlib import quick_baseline, quick_data, repo_relative, wait_for_checkpoint, write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint, save_checkpoint, write_atomic
from modelzip.core.context import Context
from modelzip.data import load_dataset
from modelzip.metrics import measure_latency
from modelzip.pipeline import compress, make_context
from modelzip.prune.sensitivity import (
    allocate,
    channel_sensitivity,
    magnitude_sensitivity,
    plot_sensitivity,
)
from modelzip.train import TrainConfig, TrainHistory, fit

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "checkpoints" / "eurosat_cnn"
PRUNED = BENCH / "checkpoints" / "pruned" / "eurosat_cnn-l1"
RESULTS = BENCH / "results" / "pruning_structured.json"
SENSITIVITY = BENCH / "results" / "sensitivity_eurosat_cnn"
WAIT_S = 20 * 60

TARGET_FLOPS = 0.5  # the requirement: at most half the MACs
TARGET_DROP_POINTS = 1.0  # at most 1 point of test accuracy lost after fine-tuning
TARGET_SPEEDUP = 1.7  # batch 1, 1 thread
ALLOCATED_FLOPS = 0.37  # what the ratios are allocated for (see the module docstring)
ROUND_TO = 8
MAX_RATIO = 0.75
LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
FINETUNE = TrainConfig(epochs=8, batch_size=128, lr=0.02, weight_decay=5e-4,
                       schedule="onecycle", augment="flips", seed=0)
LATENCY_ROUNDS = 3  # alternating unpruned / pruned rounds
LATENCY_RUNS = 100  # timed runs per round
QUIET_LOAD = 1.5  # 1-minute load average under which timing starts (this process is ~1)
QUIET_WAIT_S = 20 * 60
# --quick: a few hundred images, 3 sensitivity levels, 1 epoch, a short timing, no waiting
# for a quiet machine
QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES = 400, 300
QUICK_LEVELS = (0.25, 0.5, 0.75)
QUICK_FINETUNE = dataclasses.replace(FINETUNE, epochs=1, batch_size=64)
QUICK_LATENCY = (1, 5)  # rounds, runs per round


def _say(message: str) -> None:
    print(message, flush=True)


def _latency_pair(unpruned: nn.Module, pruned: nn.Module, batch_size: int,
                  n_rounds: int = LATENCY_ROUNDS, runs: int = LATENCY_RUNS) -> dict[str, Any]:
    """Alternate rounds (unpruned, pruned) so that drift on a shared machine hits both; the
    figures are the medians over rounds of each round's median (and IQR)."""
    rounds: list[dict[str, Any]] = []
    for _ in range(n_rounds):
        a = measure_latency(unpruned, batch_size=batch_size, threads=1, warmup=20, runs=runs)
        b = measure_latency(pruned, batch_size=batch_size, threads=1, warmup=20, runs=runs)
        rounds.append({"unpruned": a.to_dict(), "pruned": b.to_dict(),
                       "speedup": a.median_ms / b.median_ms})

    def med(which: str, key: str) -> float:
        return statistics.median(r[which][key] for r in rounds)

    out = {
        "batch_size": batch_size, "threads": 1,
        "runs_per_round": runs, "rounds": n_rounds,
        "unpruned_median_ms": med("unpruned", "median_ms"),
        "unpruned_iqr_ms": med("unpruned", "iqr_ms"),
        "pruned_median_ms": med("pruned", "median_ms"),
        "pruned_iqr_ms": med("pruned", "iqr_ms"),
        "per_round": rounds,
    }
    out["speedup"] = out["unpruned_median_ms"] / out["pruned_median_ms"]
    return out


def _channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    # torch_pruning.__version__ says 1.6.0 in the 1.6.1 wheel; the metadata is right
    return {"modelzip_version": __version__, "torch_version": torch.__version__,
            "torch_pruning_version": version("torch-pruning"),
            "python_version": platform.python_version()}


def wait_for_quiet(max_wait_s: float = QUIET_WAIT_S) -> list[float]:
    """Give other jobs on a shared machine a chance to finish before timing: wait (at most
    ``max_wait_s``) until the 1-minute load average is below QUIET_LOAD. Returns the load
    averages when timing starts, which go into the results."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= QUIET_LOAD and time.monotonic() < deadline:
        _say(f"load average {os.getloadavg()[0]:.2f}: waiting for a quieter machine to time")
        time.sleep(30)
    return [round(v, 2) for v in os.getloadavg()]


class _LoggingTrainer:
    """modelzip's ``fit`` as the context's trainer, validating after every epoch with a line
    of log; keeps each run's history (the fine-tuning step's record has only its totals)."""

    def __init__(self, val_data: Any) -> None:
        self.val_data = val_data
        self.histories: list[TrainHistory] = []

    def __call__(self, model: nn.Module, data: Any, config: TrainConfig,
                 **kwargs: Any) -> TrainHistory:
        hist = fit(model, data, config, val_data=self.val_data, epoch_callbacks=[
            lambda _m, e, m: _say(f"   fine-tune epoch {e}: loss {m['train_loss']:.4f}, val "
                                  f"error {m['val_error_pct']:.2f}%, {m['epoch_time_s']:.0f} s")],
            **kwargs)
        self.histories.append(hist)
        return hist


def quick_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="modelzip-quick-"))
    _say(f"--quick: writing into {folder}")
    return folder


def run(progress: bool = False, *, quick: bool = False,
        out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Prune, fine-tune (both through ``compress``), save and measure; returns one result
    row. ``quick``: a tiny run whose files go under ``out_dir`` (default: a new temporary
    folder)."""
    t_start = time.perf_counter()
    train_full, test = load_dataset("eurosat", "train"), load_dataset("eurosat", "test")
    if quick:
        out_dir = out_dir or quick_folder()
        pruned_dir, sensitivity = out_dir / "pruned" / PRUNED.name, out_dir / SENSITIVITY.name
        train_full, test = quick_data(train_full, test, QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES)
        baseline = quick_baseline("eurosat_cnn", train_full, "flips")
        source = None
        finetune, latency, levels = QUICK_FINETUNE, QUICK_LATENCY, QUICK_LEVELS
    else:
        pruned_dir, sensitivity = PRUNED, SENSITIVITY
        wait_for_checkpoint(SOURCE, WAIT_S)
        source = load_checkpoint(SOURCE)
        baseline = source.model
        finetune, latency, levels = FINETUNE, (LATENCY_ROUNDS, LATENCY_RUNS), LEVELS

    def context() -> Context:
        """The pipeline's context: it holds out the validation images itself (seeded)."""
        return make_context(data=train_full, test_data=test, finetune=finetune,
                            progress=progress)

    prune_ctx = context()
    train, val = prune_ctx.train_data, prune_ctx.val_data
    _say(f"baseline {SOURCE.name}: {len(train)} train / {len(val)} val images "
         f"({prune_ctx.settings['validation']})")

    # 1. sensitivity, measured on the pipeline's validation images, no fine-tuning
    t0 = time.perf_counter()
    log = _say if progress else None
    chan = channel_sensitivity(baseline, val, ratios=levels, criterion="l1",
                               round_to=ROUND_TO, progress=log)
    mag = magnitude_sensitivity(baseline, val, progress=log)
    write_atomic(sensitivity.with_suffix(".json"), (json.dumps(
        {"channels": chan.to_dict(), "magnitude": mag.to_dict()}, indent=2) + "\n").encode())
    plot_sensitivity([mag, chan], sensitivity.with_suffix(".png"),
                     title="eurosat_cnn: accuracy with one layer pruned (validation split)")
    sensitivity_s = time.perf_counter() - t0

    # 2. ratios for the FLOPs budget, then physical removal: a recipe through compress
    alloc = allocate(chan, target_flops=ALLOCATED_FLOPS, model=baseline, max_level=MAX_RATIO)
    ratios = {n: round(r, 4) for n, r in alloc.levels.items() if r > 0}
    _say(f"tolerance {alloc.tolerance_points:.2f} points -> ratios {ratios}, predicted MACs "
         f"{alloc.achieved:.3f} of the baseline")
    prune_recipe = {"name": "eurosat_cnn-l1", "steps": [
        {"l1-filter": {"ratio": ratios, "criterion": "l1", "round_to": ROUND_TO}}]}
    pruned = compress(baseline, prune_recipe, ctx=prune_ctx)
    base_test, before_ft = pruned.test_error_before, pruned.test_error_after
    base_prof = pruned.before
    prune_record = pruned.records[-1]
    _say(f"baseline: test accuracy {base_test.accuracy_pct:.2f}% ({base_test.errors}/"
         f"{base_test.total} errors), {base_prof.total_macs:,} MACs, {base_prof.params:,} "
         "parameters")
    _say(f"pruned, before fine-tuning (read back from its .mzip): test accuracy "
         f"{before_ft.accuracy_pct:.2f}%, channels {_channels(pruned.model)}")

    # 3. fine-tune the read-back pruned model: a recipe through compress. The skeleton is
    # the unpruned model, on which the channel removal is replayed when reading back.
    ft_ctx = context()
    trainer = _LoggingTrainer(ft_ctx.val_data)
    ft_ctx.trainer = trainer
    ft_recipe = {"name": "finetune", "steps": [{"finetune": {}}]}
    tuned = compress(pruned.model, ft_recipe, ctx=ft_ctx, skeleton=baseline)
    hist = trainer.histories[-1]
    result = tuned.test_error_after

    # 4. save the read-back model for later benchmarks; time both models from disk
    save_checkpoint(tuned.model, pruned_dir,
                    dataset=source.meta.get("dataset") if source else None,
                    training={**finetune.to_dict(), "wall_time_s": hist.wall_time_s,
                              "history": hist.epochs,
                              "fine_tuned_from": repo_relative(SOURCE) if source else "stand-in"},
                    metrics=result.to_dict(),
                    extra={"compression": {"technique": "l1-filter", "ratios": ratios,
                                           "round_to": ROUND_TO,
                                           "recipes": [prune_recipe, ft_recipe],
                                           "records": pruned.records + tuned.records,
                                           "pipeline": tuned.settings}},
                    skeleton=baseline)
    reloaded = load_checkpoint(pruned_dir).model
    for (k, a), b in zip(tuned.model.state_dict().items(), reloaded.state_dict().values(),
                         strict=True):
        if not torch.equal(a, b):
            raise RuntimeError(f"{k} differs between the read-back model and its checkpoint")
    prof = tuned.after
    baseline_disk = load_checkpoint(SOURCE) if source else None  # both timed from disk
    unpruned = baseline_disk.model if baseline_disk else baseline
    load_before = wait_for_quiet() if not quick else [round(v, 2) for v in os.getloadavg()]
    lat1 = _latency_pair(unpruned, reloaded, 1, *latency)
    lat64 = _latency_pair(unpruned, reloaded, 64, *latency)
    load_after = [round(v, 2) for v in os.getloadavg()]
    base_epochs = (baseline_disk.meta.get("training", {}).get("history", [])
                   if baseline_disk else [])
    macs_ratio = prof.total_macs / base_prof.total_macs
    drop = base_test.accuracy_pct - result.accuracy_pct
    row: dict[str, Any] = {
        "model": "eurosat_cnn-l1",
        "source": "eurosat_cnn",
        "dataset": "eurosat",
        "method": "l1-filter, per-layer ratios from channel sensitivity, fine-tuned",
        "test_accuracy_pct": round(result.accuracy_pct, 4),
        "test_error_pct": round(result.error_pct, 4),
        "test_errors": result.errors,
        "test_images": result.total,
        "baseline_test_accuracy_pct": round(base_test.accuracy_pct, 4),
        "baseline_test_error_pct": round(base_test.error_pct, 4),
        "baseline_test_errors": base_test.errors,
        "accuracy_drop_points": round(drop, 4),
        "test_accuracy_before_finetune_pct": round(before_ft.accuracy_pct, 4),
        "val_accuracy_before_finetune_pct": round(100.0 - pruned.val_error_after, 4),
        "macs": prof.total_macs,
        "baseline_macs": base_prof.total_macs,
        "macs_ratio": round(macs_ratio, 4),
        "params": prof.params,
        "baseline_params": base_prof.params,
        "params_ratio": round(prof.params / base_prof.params, 4),
        "file_bytes": tuned.artifact_bytes,
        "latency_batch1_1thread": lat1,
        "latency_batch64_1thread": lat64,
        "speedup": round(lat1["speedup"], 3),
        "speedup_batch64": round(lat64["speedup"], 3),
        "targets": {
            "flops": f"macs_ratio <= {TARGET_FLOPS}",
            "flops_met": macs_ratio <= TARGET_FLOPS,
            "accuracy": f"accuracy drop <= {TARGET_DROP_POINTS} point",
            "accuracy_met": drop <= TARGET_DROP_POINTS,
            "speedup": f"batch-1, 1-thread speedup >= {TARGET_SPEEDUP}x",
            "speedup_met": lat1["speedup"] >= TARGET_SPEEDUP,
        },
        "channels_before": _channels(baseline),
        "channels_after": _channels(reloaded),
        "ratios": ratios,
        "round_to": ROUND_TO,
        "allocated_flops": ALLOCATED_FLOPS,
        "allocation_tolerance_points": round(alloc.tolerance_points, 4),
        "layers": prune_record["layers"],
        "recipes": [prune_recipe, ft_recipe],
        "pipeline": tuned.settings,
        "sensitivity_file": repo_relative(sensitivity.with_suffix(".json")),
        "sensitivity_plot": repo_relative(sensitivity.with_suffix(".png")),
        "sensitivity_images": len(val),
        "sensitivity_wall_time_s": round(sensitivity_s, 1),
        "finetune": finetune.to_dict(),
        "finetune_images": len(train),
        "finetune_wall_time_s": round(hist.wall_time_s, 1),
        "finetune_history": hist.epochs,
        "finetune_epoch_time_s_mean": round(statistics.mean(
            e["epoch_time_s"] for e in hist.epochs), 1),
        # from the baseline's own training run (another process, other load): indicative
        "baseline_train_epoch_time_s_mean": round(statistics.mean(
            e["epoch_time_s"] for e in base_epochs), 1) if base_epochs else None,
        "load_average_before_timing": load_before,
        "load_average_after_timing": load_after,
        "checkpoint": repo_relative(pruned_dir),
        "total_wall_time_s": round(time.perf_counter() - t_start, 1),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        **_versions(),
    }
    _say(f"eurosat_cnn-l1: test accuracy {result.accuracy_pct:.2f}% (baseline "
         f"{base_test.accuracy_pct:.2f}%, drop {drop:+.2f} points), MACs {macs_ratio:.3f}, "
         f"batch-1 speedup {lat1['speedup']:.2f}x ({lat1['unpruned_median_ms']:.3f} -> "
         f"{lat1['pruned_median_ms']:.3f} ms), batch-64 {lat64['speedup']:.2f}x; targets: "
         f"{row['targets']}")
    return [row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--progress", action="store_true", help="progress bars and logs")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (stand-in model, 400 images, 1 epoch, short timing) "
                             "into a temporary folder, to check the script")
    args = parser.parse_args(argv)
    if args.progress:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = quick_folder() if args.quick else None
    rows = run(progress=args.progress, quick=args.quick, out_dir=out_dir)
    results = out_dir / RESULTS.name if out_dir is not None else RESULTS
    write_results(results, "pruning_structured",
                  "L1 filter pruning of eurosat_cnn to <= 50% FLOPs with sensitivity-"
                  "allocated ratios, then fine-tuned, each a recipe run through "
                  "modelzip.compress; figures of the model read back from its .mzip, full "
                  "test split; latency of pruned vs unpruned in one run",
                  rows)
    _say(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
