"""Drop-bound filter pruning (Huang et al. 2018) against L1-norm filter pruning (Li et al.
2017) at the same per-layer ratios, on the EuroSAT CNN.

    MODELZIP_DATA=../shared/data python bench/pruning_drop_bound.py [--progress]
    MODELZIP_DATA=../shared/data python bench/pruning_drop_bound.py --quick   # smoke test

Every step is a recipe run through ``modelzip.compress`` (which holds out the validation
images, packs the .mzip, reads it back and evaluates the read-back model). For each drop
bound b (1 and 2 points of validation accuracy):
1. drop-bound (a ``drop-bound`` recipe): for each conv layer, first to last, an agent
   learns by REINFORCE which filters can go with the validation accuracy drop of the whole
   model, against the unpruned model, at most b; its choice is removed physically;
2. l1-same-ratios (an ``l1-filter`` recipe): from the unpruned model, remove in every layer
   as many filters as the agent did, those of smallest L1 norm;
3. both read-back models are evaluated on the full 5,400-image test split ("before
   fine-tuning"), then each goes through the same ``finetune`` recipe and its read-back
   model is evaluated again. The claim to check: the data-driven choice keeps more accuracy.

Validation: the pipeline's seeded, stratified 10% of the EuroSAT train split
(``modelzip.pipeline.make_context``, as the CLI holds out; the baseline was trained without
it), of which the agent uses a fixed, seeded subset; the test split is used for reporting
only. Fine-tuning uses a seeded subset of the other 90%.

Budget: under 25 minutes on 2 cores, so the search is far smaller than the paper's (see
``CUT_FOR_TIME``). In the bench the agent does not fine-tune between layers (the technique's
default does): "before fine-tuning" is then a defined point for both methods, they get the
same fine-tuning, and the bound holds for the whole model, since every layer's drop is
measured against the unpruned model. ``--quick`` runs one bound with a tiny agent on a briefly
trained stand-in and a few hundred images, and writes into a new temporary folder instead.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchlib import quick_baseline, quick_data, wait_for_checkpoint, write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint
from modelzip.core.context import Context
from modelzip.data import load_dataset
from modelzip.pipeline import compress, make_context
from modelzip.prune.drop_bound import validation_subset
from modelzip.train import TrainConfig, evaluate

BENCH = Path(__file__).resolve().parent
SOURCE = BENCH / "checkpoints" / "eurosat_cnn"
RESULTS = BENCH / "results" / "pruning_drop_bound.json"
WAIT_S = 20 * 60

BOUNDS = (1.0, 2.0)  # points of validation accuracy
AGENT = dict(iterations=20, samples_per_iteration=6, val_images=500, agent_lr=0.3,
             init_keep_prob=0.95, hidden=32, min_keep=1, enforce_bound=True,
             finetune={"epochs": 0}, seed=0)
FINETUNE = TrainConfig(epochs=1, batch_size=128, lr=0.01, weight_decay=5e-4,
                       schedule="onecycle", augment="flips", seed=0)
FINETUNE_IMAGES = 8000  # a seeded subset of the 19,440 fine-tuning images
CUT_FOR_TIME = [
    "agent: 20 policy updates x 6 sampled actions per layer (<= 120 evaluations; the paper "
    "trains each agent far longer)",
    "agent rewards on a fixed 500-image subset of the 2,160-image validation split "
    "(0.2-point resolution)",
    "no fine-tuning between layers (the technique's default is 1 epoch after each layer)",
    "fine-tuning after pruning: 1 epoch over a seeded 8,000-image subset of the 19,440 "
    "training images (bench/pruning_structured.py uses 8 full epochs)",
]
# --quick: one loose bound and a tiny agent that starts from keeping fewer filters, so that
# it removes some and the structural paths run; a few hundred images, 1 epoch
QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES = 600, 300
QUICK_BOUNDS = (50.0,)
QUICK_AGENT = {**AGENT, "iterations": 2, "samples_per_iteration": 2, "val_images": 60,
               "init_keep_prob": 0.7}
QUICK_FINETUNE_IMAGES = 300


def _say(message: str) -> None:
    print(message, flush=True)


def _filters(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _versions() -> dict[str, str]:
    import torch_pruning

    return {"modelzip_version": __version__, "torch_version": torch.__version__,
            "torch_pruning_version": getattr(torch_pruning, "__version__", "?"),
            "python_version": platform.python_version()}


def run(progress: bool = False, *, quick: bool = False) -> list[dict[str, Any]]:
    """Both methods at both bounds; one flat row per (bound, method). ``quick``: one bound,
    a tiny agent, a stand-in model and a few hundred images."""
    t_start = time.perf_counter()
    full_train, test = load_dataset("eurosat", "train"), load_dataset("eurosat", "test")
    if quick:
        full_train, test = quick_data(full_train, test, QUICK_TRAIN_IMAGES, QUICK_TEST_IMAGES)
        base = quick_baseline("eurosat_cnn", full_train, "flips")
        bounds, agent, tune_images = QUICK_BOUNDS, QUICK_AGENT, QUICK_FINETUNE_IMAGES
    else:
        wait_for_checkpoint(SOURCE, WAIT_S)
        base = load_checkpoint(SOURCE).model
        bounds, agent, tune_images = BOUNDS, AGENT, FINETUNE_IMAGES

    def context() -> Context:
        """The pipeline's context: it holds out the validation images itself (seeded)."""
        return make_context(data=full_train, test_data=test, finetune=FINETUNE,
                            progress=progress)

    first = context()
    train, val = first.train_data, first.val_data
    tune_idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    tune = train.subset(tune_idx[:tune_images].sort().values)
    base_filters = _filters(base)
    val_subset = validation_subset(val, agent["val_images"], agent["seed"])  # the agent's
    base_val = evaluate(base, val_subset).accuracy_pct
    _say(f"eurosat_cnn: {len(train)} train / {len(val)} val images "
         f"({first.settings['validation']}), {torch.get_num_threads()} threads")

    ft_recipe = {"name": "finetune", "steps": [{"finetune": {}}]}

    def finetuned(model: nn.Module) -> Any:
        """The same fine-tuning recipe for both methods, on the seeded subset ``tune`` of
        the pipeline's training images. The skeleton is the unpruned model, on which the
        filter removal is replayed when reading back."""
        ctx = context()
        ctx.train_data = tune
        return compress(model, ft_recipe, ctx=ctx, skeleton=base)

    rows: list[dict[str, Any]] = []
    for b in bounds:
        # 1. the agent
        agent_recipe = {"name": f"drop-bound-b{b:g}", "steps": [
            {"drop-bound": {**agent, "bound_points": b}}]}
        agent_result = compress(base, agent_recipe, ctx=context())
        base_test, base_prof = agent_result.test_error_before, agent_result.before
        search_s = agent_result.wall_time_s
        records = [r for r in agent_result.records if r["step"] == "drop-bound"]
        kept = {r["layer"]: r["filters_after"] for r in records}
        val_drop = records[-1]["val_drop_points"] if records else 0.0
        _say(f"b={b:g}: agent kept {kept} in {search_s:.0f} s; val drop {val_drop:+.2f}; "
             f"baseline test accuracy {base_test.accuracy_pct:.2f}% on {base_test.total}")

        # 2. L1 at the same per-layer ratios, from the unpruned model
        ratios = {r["layer"]: len(r["removed"]) / r["filters_before"] for r in records
                  if r["removed"]}
        l1_recipe = {"name": f"l1-same-ratios-b{b:g}", "steps": [
            {"l1-filter": {"ratio": ratios or 0.0}}]}
        l1_result = compress(base, l1_recipe, ctx=context())
        if _filters(l1_result.model) != _filters(agent_result.model):
            raise RuntimeError(f"L1 kept {_filters(l1_result.model)}, the agent "
                               f"{_filters(agent_result.model)}: the ratios did not carry over")
        l1_val_drop = base_val - evaluate(l1_result.model, val_subset).accuracy_pct

        # 3. the same fine-tuning for both, each figure of a read-back model
        for method, pruned, recipe, drop in (
                ("drop-bound", agent_result, agent_recipe, val_drop),
                ("l1-same-ratios", l1_result, l1_recipe, l1_val_drop)):
            before = pruned.test_error_after
            tuned = finetuned(pruned.model)
            after = tuned.test_error_after
            prof = tuned.after
            filters = _filters(tuned.model)
            row = {
                "experiment": "pruning_drop_bound", "model": "eurosat_cnn",
                "dataset": "eurosat", "method": method, "bound_points": b,
                "test_accuracy_pct_before_finetune": round(before.accuracy_pct, 4),
                "test_errors_before_finetune": before.errors,
                "test_accuracy_pct": round(after.accuracy_pct, 4),
                "test_errors": after.errors, "test_images": after.total,
                "baseline_test_accuracy_pct": round(base_test.accuracy_pct, 4),
                "test_drop_points_before_finetune": round(
                    base_test.accuracy_pct - before.accuracy_pct, 4),
                "test_drop_points": round(base_test.accuracy_pct - after.accuracy_pct, 4),
                "val_drop_points_before_finetune": round(drop, 4),
                "val_images": len(val_subset),
                "macs": prof.total_macs,
                "macs_ratio": round(prof.total_macs / base_prof.total_macs, 4),
                "params": prof.params,
                "params_ratio": round(prof.params / base_prof.params, 4),
                "file_bytes": tuned.artifact_bytes,
                "filters_removed": sum(base_filters[n] - filters[n] for n in filters),
                "layers": [{"layer": n, "filters_before": base_filters[n],
                            "filters_kept": filters[n]} for n in filters],
                "selection_wall_time_s": round(pruned.wall_time_s, 1),
                "finetune_wall_time_s": round(tuned.records[-1]["wall_time_s"], 1),
                "wall_time_s": round(pruned.wall_time_s + tuned.wall_time_s, 1),
                "settings": {
                    "agent": {**agent, "bound_points": b} if method == "drop-bound"
                    else None,
                    "criterion": "l1" if method == "l1-same-ratios" else
                    "learned (REINFORCE, Huang et al. 2018)",
                    "recipes": [recipe, ft_recipe],
                    "pipeline": pruned.settings,
                    "finetune": FINETUNE.to_dict(),
                    "finetune_images": len(tune),
                    "cut_for_time": CUT_FOR_TIME,
                    "threads": torch.get_num_threads(),
                    **_versions(),
                },
            }
            if method == "drop-bound":
                row["agent_layers"] = [
                    {k: r[k] for k in ("layer", "filters_before", "filters_after",
                                       "val_drop_points", "reward", "agent_val_drop_points",
                                       "filters_put_back", "evaluations", "wall_time_s")}
                    for r in records]
            rows.append(row)
            _say(f"b={b:g} {method}: test {before.accuracy_pct:.2f}% before, "
                 f"{after.accuracy_pct:.2f}% after fine-tuning (baseline "
                 f"{base_test.accuracy_pct:.2f}%), MACs x{row['macs_ratio']:.3f}, "
                 f"{row['filters_removed']} filters removed")
    _say(f"total {time.perf_counter() - t_start:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--progress", action="store_true", help="progress bars and logs")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (one bound, stand-in model, 600 images, 1 epoch) "
                             "into a temporary folder, to check the script")
    args = parser.parse_args(argv)
    if args.progress:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    rows = run(progress=args.progress, quick=args.quick)
    results = RESULTS
    if args.quick:
        results = Path(tempfile.mkdtemp(prefix="modelzip-quick-")) / RESULTS.name
    write_results(results, "pruning_drop_bound",
                  "drop-bound agent (Huang et al. 2018) vs L1 filter pruning at the same "
                  "per-layer ratios, eurosat_cnn, b = 1 and 2 validation points, each a recipe "
                  "run through modelzip.compress; test accuracy of the models read back from "
                  "their .mzip, full test split, before and after the same fine-tuning",
                  rows, total_wall_time_s=round(time.perf_counter() - t0, 1))
    _say(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
