"""Structured L1 filter pruning (Li et al. 2017) of the EuroSAT CNN to <= 50% of its FLOPs,
with per-layer ratios from measured sensitivity, fine-tuned, and timed against the unpruned
model in the same process.

    MODELZIP_DATA=../shared/data python bench/pruning_structured.py [--progress]

Steps:
1. load bench/checkpoints/eurosat_cnn (waits up to 20 min for bench/baselines.py to write it);
2. hold out a seeded, stratified 10% of the EuroSAT train split for validation; measure, on
   it, the accuracy of the model with one channel group at a time pruned by L1 norm (no
   fine-tuning) -> bench/results/sensitivity_eurosat_cnn.{json,png} (with the unstructured,
   per-layer magnitude curves for comparison);
3. allocate per-layer ratios with one accuracy-drop tolerance for all layers
   (``modelzip.prune.sensitivity.allocate``) for ALLOCATED_FLOPS of the MACs, channel counts
   rounded to multiples of 8, and remove the channels (``l1-filter``);
4. fine-tune on the other 90% of the train split (random flips);
5. save to bench/checkpoints/pruned/eurosat_cnn-l1/, reload, and report the reloaded model:
   full 5,400-image test split, MACs (``modelzip.metrics.profile_model``), parameters, and
   1-thread latency at batch 1 and 64 of pruned vs unpruned (``measure_latency``, median and
   IQR, alternating rounds in this one process; speedup = unpruned median / pruned median).

Why ALLOCATED_FLOPS is below the 50% requirement: at batch 1 on one thread, latency does not
fall as fast as MACs (BatchNorm, ReLU and pooling on the 64x64 and 32x32 maps, and per-operator
overhead, shrink only with the channels, not with their square). A uniform 30% ratio gives
48% of the MACs but measured only ~1.55x; the 1.7x target needs ~36-38%.

Caveat: the baseline was trained on the whole train split, so the validation images were seen
by the dense model; its validation accuracy is optimistic. The choices made on it (ratios)
only compare layers with each other. The test split is used for reporting only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchlib import wait_for_checkpoint, write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint, save_checkpoint, write_atomic
from modelzip.data import load_dataset, train_val_split
from modelzip.metrics import measure_latency, profile_model
from modelzip.prune.sensitivity import (
    allocate,
    channel_sensitivity,
    magnitude_sensitivity,
    plot_sensitivity,
)
from modelzip.prune.structured import StructuredPruneConfig
from modelzip.registry import Context, apply_technique
from modelzip.train import TrainConfig, evaluate, fit

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
SENSITIVITY_IMAGES = 2160  # all of the held-out validation split
FINETUNE = TrainConfig(epochs=8, batch_size=128, lr=0.02, weight_decay=5e-4,
                       schedule="onecycle", augment="flips", seed=0)
LATENCY_ROUNDS = 3  # alternating unpruned / pruned rounds
LATENCY_RUNS = 100  # timed runs per round
QUIET_LOAD = 1.5  # 1-minute load average under which timing starts (this process is ~1)
QUIET_WAIT_S = 20 * 60


def _say(message: str) -> None:
    print(message, flush=True)


def _latency_pair(unpruned: nn.Module, pruned: nn.Module, batch_size: int) -> dict[str, Any]:
    """Alternate rounds (unpruned, pruned) so that drift on a shared machine hits both; the
    figures are the medians over rounds of each round's median (and IQR)."""
    rounds: list[dict[str, Any]] = []
    for _ in range(LATENCY_ROUNDS):
        a = measure_latency(unpruned, batch_size=batch_size, threads=1, warmup=20,
                            runs=LATENCY_RUNS)
        b = measure_latency(pruned, batch_size=batch_size, threads=1, warmup=20,
                            runs=LATENCY_RUNS)
        rounds.append({"unpruned": a.to_dict(), "pruned": b.to_dict(),
                       "speedup": a.median_ms / b.median_ms})

    def med(which: str, key: str) -> float:
        return statistics.median(r[which][key] for r in rounds)

    out = {
        "batch_size": batch_size, "threads": 1,
        "runs_per_round": LATENCY_RUNS, "rounds": LATENCY_ROUNDS,
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


def run(progress: bool = False) -> list[dict[str, Any]]:
    """Prune, fine-tune, save, reload and measure; returns one result row."""
    t_start = time.perf_counter()
    wait_for_checkpoint(SOURCE, WAIT_S)
    baseline = load_checkpoint(SOURCE).model
    train_full = load_dataset("eurosat", "train")
    test = load_dataset("eurosat", "test")
    train, val = train_val_split(train_full, 0.1, seed=0)
    base_test = evaluate(baseline, test)
    base_prof = profile_model(baseline)
    _say(f"baseline {SOURCE.name}: test accuracy {base_test.accuracy_pct:.2f}% "
         f"({base_test.errors}/{base_test.total} errors), {base_prof.total_macs:,} MACs, "
         f"{base_prof.params:,} parameters; {len(train)} train / {len(val)} val images")

    # 1. sensitivity, measured on the held-out validation images, no fine-tuning
    t0 = time.perf_counter()
    log = _say if progress else None
    chan = channel_sensitivity(baseline, val, ratios=LEVELS, criterion="l1",
                               round_to=ROUND_TO, progress=log)
    mag = magnitude_sensitivity(baseline, val, progress=log)
    write_atomic(SENSITIVITY.with_suffix(".json"), (json.dumps(
        {"channels": chan.to_dict(), "magnitude": mag.to_dict()}, indent=2) + "\n").encode())
    plot_sensitivity([mag, chan], SENSITIVITY.with_suffix(".png"),
                     title="eurosat_cnn: accuracy with one layer pruned (validation split)")
    sensitivity_s = time.perf_counter() - t0

    # 2. ratios for the FLOPs budget, then physical removal
    alloc = allocate(chan, target_flops=ALLOCATED_FLOPS, model=baseline, max_level=MAX_RATIO)
    ratios = {n: round(r, 4) for n, r in alloc.levels.items() if r > 0}
    _say(f"tolerance {alloc.tolerance_points:.2f} points -> ratios {ratios}, predicted MACs "
         f"{alloc.achieved:.3f} of the baseline")
    ctx = Context(train_data=train, val_data=val, progress=progress)
    config = StructuredPruneConfig(ratio=ratios, criterion="l1", round_to=ROUND_TO)
    pruned = apply_technique(baseline, config, ctx)
    prune_record = ctx.records[-1]
    before_ft = evaluate(pruned, test)
    val_before_ft = evaluate(pruned, val)
    _say(f"pruned, before fine-tuning: test accuracy {before_ft.accuracy_pct:.2f}%, "
         f"channels {_channels(pruned)}")

    # 3. fine-tune
    hist = fit(pruned, train, FINETUNE, val_data=val, progress=progress,
               epoch_callbacks=[lambda _m, e, m: _say(
                   f"   fine-tune epoch {e}: loss {m['train_loss']:.4f}, val error "
                   f"{m['val_error_pct']:.2f}%, {m['epoch_time_s']:.0f} s")])

    # 4. save, reload, measure the reloaded model
    in_memory = evaluate(pruned, test)
    save_checkpoint(pruned, PRUNED, dataset=load_checkpoint(SOURCE).meta.get("dataset"),
                    training={**FINETUNE.to_dict(), "wall_time_s": hist.wall_time_s,
                              "history": hist.epochs, "fine_tuned_from": str(
                                  SOURCE.relative_to(BENCH.parent))},
                    metrics=in_memory.to_dict(),
                    extra={"compression": {"technique": "l1-filter", "ratios": ratios,
                                           "round_to": ROUND_TO,
                                           "records": ctx.records}})
    reloaded = load_checkpoint(PRUNED).model
    result = evaluate(reloaded, test)
    if result.errors != in_memory.errors:
        raise RuntimeError("the reloaded checkpoint does not give the in-memory errors")
    prof = profile_model(reloaded)
    baseline_disk = load_checkpoint(SOURCE)  # both timed models come from disk
    load_before = wait_for_quiet()
    lat1 = _latency_pair(baseline_disk.model, reloaded, 1)
    lat64 = _latency_pair(baseline_disk.model, reloaded, 64)
    load_after = [round(v, 2) for v in os.getloadavg()]
    base_epochs = baseline_disk.meta.get("training", {}).get("history", [])
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
        "val_accuracy_before_finetune_pct": round(val_before_ft.accuracy_pct, 4),
        "macs": prof.total_macs,
        "baseline_macs": base_prof.total_macs,
        "macs_ratio": round(macs_ratio, 4),
        "params": prof.params,
        "baseline_params": base_prof.params,
        "params_ratio": round(prof.params / base_prof.params, 4),
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
        "sensitivity_file": str(SENSITIVITY.with_suffix(".json").relative_to(BENCH.parent)),
        "sensitivity_plot": str(SENSITIVITY.with_suffix(".png").relative_to(BENCH.parent)),
        "sensitivity_images": len(val),
        "sensitivity_wall_time_s": round(sensitivity_s, 1),
        "finetune": FINETUNE.to_dict(),
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
        "checkpoint": str(PRUNED.relative_to(BENCH.parent)),
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
    args = parser.parse_args(argv)
    rows = run(progress=args.progress)
    write_results(RESULTS, "pruning_structured",
                  "L1 filter pruning of eurosat_cnn to <= 50% FLOPs with sensitivity-"
                  "allocated ratios, fine-tuned; figures of the checkpoint reloaded "
                  "from disk, full test split; latency of pruned vs unpruned in one run",
                  rows)
    _say(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
