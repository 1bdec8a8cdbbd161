"""Budget-driven search (``modelzip.search``) through ``modelzip.compress(model, target=...)``.

    MODELZIP_DATA=../shared/data python bench/search.py [--part eurosat lenet5 workers ...]
    MODELZIP_DATA=../shared/data python bench/search.py --only signals --merge
    MODELZIP_DATA=../shared/data python bench/search.py --quick   # smoke test

Parts (each writes its rows into bench/results/search.json as soon as it is done):

- ``eurosat``: bench/checkpoints/eurosat_cnn to a whole .mzip of <= 32 KB (the runnable ONNX
  graph, for ``modelzip run``) at >= 95.5% test accuracy: a strategy (``--eurosat-strategy``,
  default BO/TPE) over per-layer magnitude pruning ratios and k-means bits, trials scored on a
  seeded part of the validation split without fine-tuning (BatchNorm statistics
  re-estimated); the chosen point fine-tuned (prune -> finetune -> fold BatchNorm -> k-means,
  whose centroids are not fine-tuned on the folded network) and measured: file bytes, test
  accuracy, runner batch-1 latency over fp32 eager batch-1 latency (same process, 1 thread),
  search wall time. ``--eurosat-study`` resumes a study (its trials are kept; the search
  time is then that of the resumed call). Writes the HTML report and, with Chromium, its
  screenshot;
- ``lenet5``: every strategy at the same number of evaluated configurations and the same
  final fine-tuning, to a size target;
- ``workers``: one BO study run by one ``modelzip search-worker`` process and by two, against a
  throwaway PostgreSQL server: wall time, trial count, lost or duplicated trials;
- ``signals``: a BO study (no layer signal involved, trials without fine-tuning) on
  eurosat_cnn (size=32KB) and lenet5 (size=30KB); the Spearman rank correlation over the
  layers between each layer signal (sensitivity, K-FAC/MLPrune, adaptive-binning mutual
  information, layer size) and the best trial's ratios (and the five best trials' mean);
- ``latency``: eurosat_cnn at ``latency=`` one fifth of fp32 eager's batch-1 latency (1
  thread, measured first in the same run), at most 1 point lost: a few BO trials over
  per-layer filter pruning and int8 packing of the ONNX graph, a short fine-tune;
- ``flops``: every strategy on eurosat_cnn to 35% of its MACs (per-layer filter pruning) at
  the same number of evaluated configurations and the same final fine-tuning (short).

Sections run alone with ``--only SECTION`` (the other sections of search.json are kept).

Trial counts are small (2 shared CPU cores) and stated in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import quick_baseline, quick_data, write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.data import load_dataset
from modelzip.pipeline import compress, finetune_defaults, make_context

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "scripts"))

EUROSAT_TARGET = "size=32KB"
EUROSAT_MIN_ACCURACY = 95.5
LENET5_TARGET = "size=30KB"
STRATEGIES = ("uniform", "random", "sensitivity", "bo", "bo-gp", "mlprune", "amc")
EUROSAT_MACS_FRACTION = 0.35
FLOPS_STRATEGIES = ("amc", "bo", "mlprune", "sensitivity", "uniform", "random", "bo-gp")
SECTIONS = {"eurosat": "eurosat_32KB", "lenet5": "strategies_lenet5", "workers": "two_workers",
            "signals": "signal_vs_allocation", "latency": "latency_target",
            "flops": "strategies_eurosat_macs35"}


def _test_acc(result: Any) -> float:
    return round(100.0 - float(result.test_error_after.error_pct), 4)


def _load(name: str, quick: bool) -> tuple[Any, Any, Any]:
    train = load_dataset("eurosat" if name == "eurosat_cnn" else "mnist", "train")
    test = load_dataset("eurosat" if name == "eurosat_cnn" else "mnist", "test")
    if quick:
        train, test = quick_data(train, test, 600, 300)
        return quick_baseline(name, train, "flips" if name == "eurosat_cnn" else "none"), \
            train, test
    ckpt = load_checkpoint(ROOT / "bench" / "checkpoints" / name)
    return ckpt, train, test


def _context(ckpt: Any, train: Any, test: Any, quick: bool) -> Any:
    training = None if quick else ckpt.meta.get("training")
    return make_context(data=train, test_data=test, finetune=finetune_defaults(training),
                        progress=False)


def _model(ckpt: Any) -> Any:
    return ckpt.model if hasattr(ckpt, "model") else ckpt


def part_eurosat(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from modelzip.metrics import measure_latency
    from modelzip.search.evaluate import runner_latency_ms

    ckpt, train, test = _load("eurosat_cnn", args.quick)
    model = _model(ckpt)
    ctx = _context(ckpt, train, test, args.quick)
    trials = 3 if args.quick else args.eurosat_trials
    mzip = out_dir / "eurosat_cnn-32KB.mzip"
    report = out_dir / "search_report.html"
    search = {"strategy": args.eurosat_strategy, "trials": trials,
              "val_samples": 300 if args.quick else 500,
              "storage": f"sqlite:///{out_dir}/search_studies.db",
              "study": args.eurosat_study or f"eurosat_cnn-32KB-{int(time.time())}",
              "finetune_epochs": 1 if args.quick else args.finetune_epochs,
              "quant_finetune": {"epochs": 1, "lr": 0.001}, "report": _shown(report),
              "progress": args.progress,
              "space": {"format": "onnx", "bits": args.eurosat_bits, "max_ratio": 0.96,
                        "ratio_step": 0.02, "default_bits": 4}}
    start = time.perf_counter()
    result = compress(model, target=EUROSAT_TARGET, max_drop=1.0, ctx=ctx, out=mzip,
                      force=True, search=search)
    wall = time.perf_counter() - start
    info = result.settings["search"]
    torch.set_num_threads(1)
    eager = measure_latency(model, example_inputs=ctx.example_inputs[:1], runs=100).median_ms
    runner = runner_latency_ms(result.artifact, threads=1, runs=100)
    acc = _test_acc(result)
    base_acc = round(100.0 - float(result.test_error_before.error_pct), 4)
    return {
        "model": "eurosat_cnn", "start": "bench/checkpoints/eurosat_cnn",
        "strategy": args.eurosat_strategy,
        "target": EUROSAT_TARGET, "min_test_accuracy_pct": EUROSAT_MIN_ACCURACY,
        "trials_requested": trials, "trials_run": info["trials_run"],
        "file_bytes": result.artifact_bytes, "artifact_kind": result.artifact_kind,
        "test_accuracy_pct": acc, "baseline_test_accuracy_pct": base_acc,
        "accuracy_drop_points": round(base_acc - acc, 4),
        "val_drop_points": info["drop_points"],
        "size_met": result.artifact_bytes <= 32000,
        "accuracy_met": acc >= EUROSAT_MIN_ACCURACY,
        "target_met": result.artifact_bytes <= 32000 and acc >= EUROSAT_MIN_ACCURACY,
        "budget_met_search": info["budget_met"], "message": info["message"],
        "runner_latency_batch1_1thread_ms": runner, "fp32_eager_latency_batch1_1thread_ms": eager,
        "speedup_vs_fp32_eager": round(eager / runner, 3),
        "chosen": info["chosen"], "chosen_trial": info["chosen_trial"],
        "search_wall_time_s": round(info["search_wall_time_s"], 1),
        "final_finetune_wall_time_s": round(info["final_wall_time_s"], 1),
        "total_wall_time_s": round(wall, 1), "mzip": str(mzip.relative_to(ROOT))
        if mzip.is_relative_to(ROOT) else str(mzip), "report": _shown(report),
        "finetune_epochs": search["finetune_epochs"],
        "kmeans_finetune": "none (the BatchNorm-folded graph's clustering is not fine-tuned)",
        "study": search["study"],
        "val_samples_per_trial": search["val_samples"], "bits_choices": args.eurosat_bits,
    }


def part_lenet5(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    ckpt, train, test = _load("lenet5", args.quick)
    model = _model(ckpt)
    rows = []
    trials = 3 if args.quick else args.lenet5_trials
    for strategy in STRATEGIES:
        ctx = _context(ckpt, train, test, args.quick)
        search = {"strategy": strategy, "trials": trials,
                  "val_samples": 300 if args.quick else 1000,
                  "storage": f"sqlite:///{out_dir}/search_studies.db",
                  "study": f"lenet5-{strategy}-{int(time.time())}", "finetune_epochs": 1,
                  "quant_finetune": None, "progress": args.progress,
                  "space": {"bits": [2, 3, 4, 5, 6], "default_bits": 4, "max_ratio": 0.96,
                            "ratio_step": 0.02}}
        start = time.perf_counter()
        result = compress(model, target=LENET5_TARGET, max_drop=1.0, ctx=ctx, force=True,
                          search=search)
        info = result.settings["search"]
        rows.append({"model": "lenet5", "strategy": strategy, "target": LENET5_TARGET,
                     "trials_requested": trials, "trials_run": info["trials_run"],
                     "file_bytes": result.artifact_bytes, "test_accuracy_pct": _test_acc(result),
                     "test_error_pct": round(float(result.test_error_after.error_pct), 4),
                     "baseline_test_error_pct": round(float(
                         result.test_error_before.error_pct), 4),
                     "val_drop_points": info["drop_points"], "budget_met": info["budget_met"],
                     "chosen_trial_feasible": info["chosen_trial"]["feasible"],
                     "search_wall_time_s": round(info["search_wall_time_s"], 1),
                     "total_wall_time_s": round(time.perf_counter() - start, 1),
                     "chosen": info["chosen"]})
        print(json.dumps(rows[-1])[:300], flush=True)
    return rows


# ------------------------------------------------------------------ signals vs allocation
SIGNAL_MODELS = {  # model: (target, space, where each layer's activations are read)
    "eurosat_cnn": ("size=32KB", {"format": "onnx", "bits": [4, 5, 6], "max_ratio": 0.96,
                                  "ratio_step": 0.02, "default_bits": 4},
                    {f"features.{i}.0": f"features.{i}" for i in (0, 2, 4, 6, 7)}),
    "lenet5": (LENET5_TARGET, {"bits": [2, 3, 4, 5, 6], "default_bits": 4, "max_ratio": 0.96,
                               "ratio_step": 0.02}, {}),
}
# the sign each signal's rank correlation with the searched ratio should have if it predicts
# the allocation: importance (a drop, a saliency, information) -> pruned less; a predicted
# ratio (MLPrune's global threshold) or a layer's size -> pruned more
EXPECTED_SIGN = {"sensitivity_mean_drop_points": -1, "kfac_ratio_at_searched_sparsity": 1,
                 "kfac_mean_saliency": -1, "mi_unit_i_ty_bits": -1, "mi_layer_i_ty_bits": -1,
                 "mi_layer_i_xt_bits": -1, "weights": 1}


def _spearman(signal: dict[str, float], ratio: dict[str, float]) -> float | None:
    from scipy.stats import spearmanr

    keys = list(ratio)
    a, b = [signal[k] for k in keys], [ratio[k] for k in keys]
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None  # a constant has no ranking
    return round(float(spearmanr(a, b).statistic), 4)


def _searched(model: Any, ctx: Any, target: str, space_options: dict[str, Any], trials: int,
              val_samples: int, out_dir: Path, name: str, progress: bool) -> dict[str, Any]:
    """A BO study (no signal involved, no fine-tuning): the best feasible trial's ratios and
    the mean ratios of the five best feasible trials."""
    import dataclasses

    from modelzip.pipeline import seeded_subset
    from modelzip.search import SearchConfig, parse_budget
    from modelzip.search.core import _best, _trial_constraints, build_space, run_trials
    from modelzip.search.evaluate import TrialEvaluator
    from modelzip.search.strategies import make_strategy
    from modelzip.search.study import open_study

    budget = parse_budget(target, max_drop=1.0)
    config = SearchConfig(strategy="bo", trials=trials, space=space_options)
    space = build_space(model, config, ctx)
    strategy = make_strategy("bo", space, budget, seed=0)
    study_name = f"{name}-signals-{int(time.time())}"
    study = open_study(study_name, f"sqlite:///{out_dir}/search_studies.db",
                       space_hash=space.space_hash(model), sampler=strategy.sampler(),
                       attrs={"space": space.to_dict(), "budget": budget.to_dict(),
                              "strategy": "bo", "seed": 0, "trials": trials})
    trial_ctx = dataclasses.replace(ctx, val_data=seeded_subset(ctx.val_data, val_samples))
    start = time.perf_counter()
    run_trials(study, strategy, TrialEvaluator(model, trial_ctx, space, budget), trials,
               progress=progress)
    best = _best(study, budget)
    feasible = sorted((t for t in study.trials if t.state.name == "COMPLETE"
                       and all(c <= 0 for c in _trial_constraints(t))), key=lambda t: t.value)
    top = feasible[:5] or [best]
    mean = {k: sum(space.choice(t.params).ratio[k] for t in top) / len(top)
            for k in space.layers}
    return {"study": study_name, "trials": len(study.trials), "feasible_trials": len(feasible),
            "best_trial": best.number, "best_val_error_pct": best.user_attrs["val_error"],
            "best_feasible": bool(feasible), "best_ratio": space.choice(best.params).ratio,
            "top5_mean_ratio": {k: round(v, 4) for k, v in mean.items()},
            "search_wall_time_s": round(time.perf_counter() - start, 1)}


def _layer_signals(model: Any, ctx: Any, layers: list[str], modules: dict[str, str],
                   searched_ratio: dict[str, float], quick: bool
                   ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    from modelzip.pipeline import seeded_subset
    from modelzip.prune.sensitivity import magnitude_sensitivity
    from modelzip.search.signals import information_signal, kfac_saliency, ratios_at_fraction

    val = seeded_subset(ctx.val_data, 300 if quick else 1000)
    curves = magnitude_sensitivity(model, val, sparsities=(0.3, 0.5, 0.7, 0.8, 0.9, 0.96),
                                   layers=layers)
    drops = {k: sum(curves.baseline_accuracy_pct - a for a in v) / len(v)
             for k, v in curves.accuracy_pct.items()}
    saliency = kfac_saliency(model, ctx.train_data, layers, loss_fn=ctx.loss_fn)
    weights = {k: saliency[k].numel() for k in layers}
    sparsity = sum(searched_ratio[k] * weights[k] for k in layers) / sum(weights.values())
    info = information_signal(model, ctx.val_data, layers, modules=modules,
                              samples=500 if quick else 2000)
    return {
        "sensitivity_mean_drop_points": drops,
        "kfac_ratio_at_searched_sparsity": ratios_at_fraction(saliency, sparsity),
        "kfac_mean_saliency": {k: float(v.mean()) for k, v in saliency.items()},
        "mi_unit_i_ty_bits": {k: v["unit_i_ty"] for k, v in info.items()},
        "mi_layer_i_ty_bits": {k: v["i_ty"] for k, v in info.items()},
        "mi_layer_i_xt_bits": {k: v["i_xt"] for k, v in info.items()},
        "weights": weights,
    }, {k: {"module": v["module"], "relu": v["relu"], "saturated": v["saturated"],
            "units": v["units"]} for k, v in info.items()}


def part_signals(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Which layer signal ranks the layers as a signal-free search (BO) allocated them."""
    out: dict[str, Any] = {
        "what": "Spearman rank correlation, over a model's layers, between each layer signal "
                "and the per-layer pruning ratios of a BO search that uses no signal "
                "(size target, trials without fine-tuning); agreement = rho x the sign the "
                "signal should have if it predicts the allocation (expected_sign)",
        "expected_sign": EXPECTED_SIGN, "models": {}}
    for name, (target, space_options, modules) in SIGNAL_MODELS.items():
        ckpt, train, test = _load(name, args.quick)
        model = _model(ckpt)
        ctx = _context(ckpt, train, test, args.quick)
        trials = 4 if args.quick else args.signal_trials
        searched = _searched(model, ctx, target, space_options, trials,
                             300 if args.quick else 500, out_dir, name, args.progress)
        layers = list(searched["best_ratio"])
        start = time.perf_counter()
        signals, mi_layers = _layer_signals(model, ctx, layers, modules,
                                            searched["best_ratio"], args.quick)
        rows = {}
        for signal, values in signals.items():
            rho = {which: _spearman(values, searched[which])
                   for which in ("best_ratio", "top5_mean_ratio")}
            rows[signal] = {"per_layer": {k: v if isinstance(v, int) else float(f"{v:.5g}")
                                          for k, v in values.items()},
                            "rho_vs_best": rho["best_ratio"],
                            "rho_vs_top5_mean": rho["top5_mean_ratio"],
                            "agreement_best": None if rho["best_ratio"] is None else round(
                                rho["best_ratio"] * EXPECTED_SIGN[signal], 4),
                            "agreement_top5_mean": None if rho["top5_mean_ratio"] is None
                            else round(rho["top5_mean_ratio"] * EXPECTED_SIGN[signal], 4)}
        ranked = sorted((r["agreement_top5_mean"], s) for s, r in rows.items()
                        if r["agreement_top5_mean"] is not None)
        out["models"][name] = {
            "target": target, "layers": len(layers), "search": searched,
            "signals": rows, "mi_layers": mi_layers,
            "best_predictor_top5_mean": ranked[-1][1] if ranked else None,
            "best_predictor_best": max(((r["agreement_best"], s) for s, r in rows.items()
                                        if r["agreement_best"] is not None),
                                       default=(None, None))[1],
            "signals_wall_time_s": round(time.perf_counter() - start, 1)}
        print(json.dumps({k: (v["agreement_best"], v["agreement_top5_mean"])
                          for k, v in rows.items()}), flush=True)
    return out


# ------------------------------------------------------------------ latency target
def part_latency(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """eurosat_cnn at one fifth of fp32 eager's batch-1 latency (1 thread), <= 1 point."""
    from modelzip.metrics import measure_latency
    from modelzip.search.evaluate import runner_latency_ms

    ckpt, train, test = _load("eurosat_cnn", args.quick)
    model = _model(ckpt)
    ctx = _context(ckpt, train, test, args.quick)
    torch.set_num_threads(1)
    eager = measure_latency(model, example_inputs=ctx.example_inputs[:1], runs=200).median_ms
    target_ms = eager / 5
    target = f"latency={target_ms * 1000:.0f}us"
    trials = 3 if args.quick else args.latency_trials
    mzip = out_dir / "eurosat_cnn-latency.mzip"
    search = {"strategy": "bo", "trials": trials, "val_samples": 300 if args.quick else 500,
              "storage": f"sqlite:///{out_dir}/search_studies.db",
              "study": f"eurosat_cnn-latency-{int(time.time())}",
              "finetune_epochs": 1 if args.quick else args.latency_finetune_epochs,
              "quant_finetune": None, "progress": args.progress,
              "space": {"format": "onnx", "prune": "l1-filter", "quantize": "none",
                        "int8": [False, True], "max_ratio": 0.5, "ratio_step": 0.125}}
    start = time.perf_counter()
    result = compress(model, target=target, max_drop=1.0, ctx=ctx, out=mzip, force=True,
                      search=search)
    wall = time.perf_counter() - start
    info = result.settings["search"]
    torch.set_num_threads(1)
    runner = runner_latency_ms(result.artifact, threads=1, runs=200)
    eager_after = measure_latency(model, example_inputs=ctx.example_inputs[:1],
                                  runs=200).median_ms
    acc = _test_acc(result)
    base_acc = round(100.0 - float(result.test_error_before.error_pct), 4)
    eager_mean = 0.5 * (eager + eager_after)
    met_latency = runner <= eager_mean / 5
    return {
        "model": "eurosat_cnn", "start": "bench/checkpoints/eurosat_cnn", "strategy": "bo",
        "target": target, "target_rule": "one fifth of fp32 eager batch-1 latency, 1 thread",
        "max_drop_points": 1.0, "trials_requested": trials, "trials_run": info["trials_run"],
        "space": search["space"],
        "fp32_eager_latency_batch1_1thread_ms": round(eager, 5),
        "fp32_eager_latency_batch1_1thread_ms_after": round(eager_after, 5),
        "runner_latency_batch1_1thread_ms": round(runner, 5),
        "latency_ratio_vs_fp32_eager": round(runner / eager_mean, 4),
        "speedup_vs_fp32_eager": round(eager_mean / runner, 3),
        "latency_met": met_latency,
        "test_accuracy_pct": acc, "baseline_test_accuracy_pct": base_acc,
        "accuracy_drop_points": round(base_acc - acc, 4), "val_drop_points": info["drop_points"],
        "accuracy_met": base_acc - acc <= 1.0, "target_met": met_latency and base_acc - acc <= 1,
        "budget_met_search": info["budget_met"], "message": info["message"],
        "file_bytes": result.artifact_bytes, "chosen": info["chosen"],
        "chosen_trial": info["chosen_trial"],
        "search_wall_time_s": round(info["search_wall_time_s"], 1),
        "final_finetune_wall_time_s": round(info["final_wall_time_s"], 1),
        "finetune_epochs": search["finetune_epochs"], "total_wall_time_s": round(wall, 1),
        "study": search["study"], "mzip": _shown(mzip),
    }


# ------------------------------------------------------------------ strategies, FLOPs target
def part_strategies_eurosat(args: argparse.Namespace, out_dir: Path,
                            done: Any = None) -> list[dict[str, Any]]:
    """Every strategy on eurosat_cnn to 35% of its MACs (per-layer filter pruning), at the
    same number of evaluated configurations and the same final fine-tuning; ``done(rows)``
    after each strategy (a full run takes long: the rows so far are kept)."""
    from modelzip.metrics import profile_model

    ckpt, train, test = _load("eurosat_cnn", args.quick)
    model = _model(ckpt)
    trials = 3 if args.quick else args.flops_trials
    rows = []
    for strategy in FLOPS_STRATEGIES:
        ctx = _context(ckpt, train, test, args.quick)
        base_macs = profile_model(model, example_inputs=ctx.example_inputs).total_macs
        target = f"macs={int(EUROSAT_MACS_FRACTION * base_macs)}"
        search = {"strategy": strategy, "trials": trials,
                  "val_samples": 300 if args.quick else 500,
                  "storage": f"sqlite:///{out_dir}/search_studies.db",
                  "study": f"eurosat_cnn-macs35-{strategy}-{int(time.time())}",
                  "finetune_epochs": 1 if args.quick else args.flops_finetune_epochs,
                  "quant_finetune": None, "progress": args.progress,
                  "space": {"prune": "l1-filter", "quantize": "none", "max_ratio": 0.8,
                            "ratio_step": 0.05}}
        start = time.perf_counter()
        result = compress(model, target=target, max_drop=1.0, ctx=ctx, force=True,
                          search=search)
        info = result.settings["search"]
        acc = _test_acc(result)
        base_acc = round(100.0 - float(result.test_error_before.error_pct), 4)
        macs = result.after.total_macs
        rows.append({"model": "eurosat_cnn", "strategy": strategy, "target": target,
                     "macs_fraction_target": EUROSAT_MACS_FRACTION,
                     "baseline_macs": base_macs, "macs": macs,
                     "macs_fraction": round(macs / base_macs, 4),
                     "flops_reduction_x": round(base_macs / macs, 3),
                     "trials_requested": trials, "trials_run": info["trials_run"],
                     "test_accuracy_pct": acc, "baseline_test_accuracy_pct": base_acc,
                     "accuracy_drop_points": round(base_acc - acc, 4),
                     "val_drop_points": info["drop_points"], "budget_met": info["budget_met"],
                     "macs_met": macs <= EUROSAT_MACS_FRACTION * base_macs,
                     "chosen_trial_feasible": info["chosen_trial"]["feasible"],
                     "finetune_epochs": search["finetune_epochs"],
                     "search_wall_time_s": round(info["search_wall_time_s"], 1),
                     "total_wall_time_s": round(time.perf_counter() - start, 1),
                     "chosen": info["chosen"]})
        print(json.dumps(rows[-1])[:300], flush=True)
        if done is not None:
            done(rows)
    return rows


def _worker(url: str, study: str, trials: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "modelzip.cli", "search-worker", "--study",
                             study, "--storage", url, "--trials", str(trials), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def part_workers(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import optuna
    from throwaway_postgres import missing_reason, throwaway_postgres

    from modelzip.checkpoint import save_checkpoint
    from modelzip.search import SearchConfig, parse_budget
    from modelzip.search.core import build_space
    from modelzip.search.study import open_study

    reason = missing_reason()
    if reason:
        return {"skipped": reason}
    ckpt, train, _ = _load("lenet5", args.quick)
    path = ROOT / "bench" / "checkpoints" / "lenet5"
    if args.quick:  # the stand-in baseline, saved where the workers can load it
        path = Path(tempfile.mkdtemp()) / "lenet5"
        save_checkpoint(ckpt, path, dataset={"name": "mnist"})
    model = load_checkpoint(path).model
    trials = 4 if args.quick else args.worker_trials
    budget = parse_budget(LENET5_TARGET)
    out: dict[str, Any] = {"model": "lenet5", "strategy": "bo", "trials": trials,
                           "storage": "PostgreSQL 15, throwaway cluster on a unix socket"}
    with throwaway_postgres() as url:
        for workers in (1, 2):
            name = f"lenet5-workers{workers}"
            ctx = make_context(data=train, progress=False)
            config = SearchConfig(strategy="bo", trials=trials, val_samples=1000,
                                  source={"checkpoint": str(path), "dataset": "mnist"},
                                  space={"bits": [2, 3, 4, 5, 6], "default_bits": 4,
                                         "max_ratio": 0.96, "ratio_step": 0.02})
            space = build_space(model, config, ctx)
            open_study(name, url, space_hash=space.space_hash(model), attrs={
                "space": space.to_dict(), "budget": budget.to_dict(), "strategy": "bo",
                "seed": 0, "trials": trials, "val_samples": 1000, "source": config.source})
            start = time.perf_counter()
            procs = [_worker(url, name, trials) for _ in range(workers)]
            logs = [p.communicate()[0].decode(errors="replace")[-400:] for p in procs]
            wall = time.perf_counter() - start
            study = optuna.load_study(study_name=name, storage=url.replace(
                "postgresql://", "postgresql+psycopg2://"))
            numbers = [t.number for t in study.trials]
            params = [json.dumps(t.params, sort_keys=True) for t in study.trials]
            out[f"workers{workers}"] = {
                "wall_time_s": round(wall, 1), "trials": len(study.trials),
                "complete": sum(t.state.name == "COMPLETE" for t in study.trials),
                "failed": sum(t.state.name == "FAIL" for t in study.trials),
                "duplicate_numbers": len(numbers) - len(set(numbers)),
                "duplicate_points": len(params) - len(set(params)),
                "exit_codes": [p.returncode for p in procs], "log_tail": logs[-1][-200:]}
            print(json.dumps(out[f"workers{workers}"])[:300], flush=True)
    one, two = out["workers1"]["wall_time_s"], out["workers2"]["wall_time_s"]
    out["speedup_two_vs_one"] = round(one / two, 3) if two else None
    return out


def _shown(path: Path) -> str:
    """A path as the results record it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def screenshot(report: Path, png: Path) -> str | None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,2400"):
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    try:
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    except Exception as exc:  # no browser: say why, keep the results
        return f"no screenshot: {exc}"
    try:
        driver.get(report.resolve().as_uri())
        driver.save_screenshot(str(png))
    finally:
        driver.quit()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--part", "--only", nargs="+", default=["eurosat", "lenet5", "workers"],
                        choices=list(SECTIONS), help="the sections to run (--only SECTION)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other sections of search.json (always, when only some "
                             "sections run)")
    parser.add_argument("--eurosat-trials", type=int, default=30)
    parser.add_argument("--eurosat-strategy", default="bo")
    parser.add_argument("--eurosat-study", help="resume this study (its trials are kept)")
    parser.add_argument("--eurosat-bits", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--lenet5-trials", type=int, default=10)
    parser.add_argument("--worker-trials", type=int, default=12)
    parser.add_argument("--signal-trials", type=int, default=30)
    parser.add_argument("--latency-trials", type=int, default=30)
    parser.add_argument("--latency-finetune-epochs", type=int, default=1)
    parser.add_argument("--flops-trials", type=int, default=10)
    parser.add_argument("--flops-finetune-epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = Path(tempfile.mkdtemp()) if args.quick else RESULTS
    path = out_dir / "search.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    keep = args.merge or set(args.part) != set(SECTIONS)
    sections = {k: v for k, v in doc.items() if keep and k in SECTIONS.values()}
    description = ("budget-driven search through modelzip.compress(model, target=...): "
                   "eurosat_cnn to a runnable .mzip <= 32 KB, the strategies side by side on "
                   "lenet5 at equal trial counts, one vs two search-worker processes on "
                   "PostgreSQL, which layer signal predicts a searched allocation, "
                   "eurosat_cnn at a latency target")

    def save() -> None:  # other parts may run in another process: keep what they wrote
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if keep and key in SECTIONS.values() and key not in mine:
                    sections[key] = value
        settings = dict(doc.get("settings", {})) if keep else {}
        settings.update({"quick": args.quick, "threads": 1})
        for part in args.part:  # the settings of the sections run now; the others' kept
            settings.update(part_settings[part])
        write_results(path, "search", description, [], settings=settings, **sections)

    mine = {SECTIONS[p] for p in args.part}
    part_settings = {
        "eurosat": {"eurosat_trials": args.eurosat_trials,
                    "eurosat_finetune_epochs": args.finetune_epochs},
        "lenet5": {"lenet5_trials": args.lenet5_trials},
        "workers": {"worker_trials": args.worker_trials},
        "signals": {"signal_trials": args.signal_trials},
        "latency": {"latency_trials": args.latency_trials,
                    "latency_finetune_epochs": args.latency_finetune_epochs},
        "flops": {"flops_trials": args.flops_trials,
                  "flops_finetune_epochs": args.flops_finetune_epochs}}
    if "eurosat" in args.part:
        sections["eurosat_32KB"] = part_eurosat(args, out_dir)
        save()
        png = out_dir / "search_report.png"
        why = screenshot(Path(sections["eurosat_32KB"]["report"]), png)
        sections["eurosat_32KB"]["screenshot"] = why or _shown(png)
        save()
    if "lenet5" in args.part:
        sections["strategies_lenet5"] = part_lenet5(args, out_dir)
        save()
    if "workers" in args.part:
        sections["two_workers"] = part_workers(args, out_dir)
        save()
    if "signals" in args.part:
        sections["signal_vs_allocation"] = part_signals(args, out_dir)
        save()
    if "latency" in args.part:
        sections["latency_target"] = part_latency(args, out_dir)
        save()
    if "flops" in args.part:
        def keep_rows(rows: list[dict[str, Any]]) -> None:
            sections["strategies_eurosat_macs35"] = rows
            save()

        keep_rows(part_strategies_eurosat(args, out_dir, keep_rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
