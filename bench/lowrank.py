"""Low-rank factorization of eurosat_cnn: Tucker-2 (EVBMF ranks), whole-network rank selection
(joint and layer by layer), SVD, CP and separable filters at >= 2x and >= 3x fewer MACs, and
tensorly-torch's factorized convolutions at the same ranks; and lenet300/lenet5 factorized
before the deep-compression recipe against the recipe alone.

    MODELZIP_DATA=../shared/data python bench/lowrank.py
    MODELZIP_DATA=../shared/data python bench/lowrank.py --quick   # smoke test
    MODELZIP_DATA=../shared/data python bench/lowrank.py --only cp-2x lenet300 --merge
    python bench/lowrank.py --picture   # redraw lowrank_spectra.png from lowrank.json

Every factorization runs through ``modelzip.compress`` (the pipeline's seeded 10% validation
split, held out from fine-tuning and used by rank-select's proxy; the model is packed to .mzip
and read back onto a freshly built skeleton, and the figures are of the read-back model):
one call factorizes (test accuracy *before* fine-tuning), a second fine-tunes the read-back
model for the same budget for every method: ONE epoch, SGD lr 0.005 with a cosine schedule
and the baseline's other training settings (flips, batch 128, weight decay 5e-4). Reported per
row: test error before and after fine-tuning (full EuroSAT test split, 5,400 images),
parameters and MACs (``modelzip.metrics.profile_model``), and onnxruntime latency at batch 1
and 64 with 1 thread, fp32 and static int8 (``modelzip.runtime``: ``export_onnx``,
``quantize_onnx_int8`` on 300 calibration images), as ratios against the unfactorized model
timed in the same interleaved rounds (``speedup_*``: unfactorized median / factorized median).

tltorch (tensorly-torch) rows: its ``FactorizedConv.from_conv`` (Tucker, factorized
implementation, spatial modes kept) at the same ranks as the Tucker-2 row, fine-tuned the
same way through the same context; whether it exports to ONNX and packs to .mzip is recorded.

Targets (issue 10): Tucker-2 (VBMF ranks) or rank-select at >= 2x fewer MACs with <= 1 point
accuracy loss and >= 1.5x faster at batch 1, 1 thread (fp32 onnxruntime); ``target_met`` says
whether a row meets it. CP rows fine-tune at the lr times the ``finetune_lr_scale`` the cp
step records (``finetune_lr`` in the row); every other setting is the same.

lenet300 / lenet5 (``dc-*`` rows): from the dense checkpoint, an SVD step (lenet300: fc1 and
fc2, lenet5: fc1, each keeping <= 1/2 of its parameters) or rank-select (1/2 of the
parameters), each with 1 epoch of fine-tuning, then the built-in deep-compression recipe
(iterative pruning, k-means sharing, entropy-coded .mzip) at global sparsity 0.92 (the
recipe's) and 0.95; against the recipe alone. Whole .mzip bytes and the test error of the
read-back model on all 10,000 MNIST test images; the ``dc-<model>-smallest`` rows give, per
path, the smallest file within 1.64% (lenet300) / 0.80% (lenet5).

Writes bench/results/lowrank.json after every row (an interrupted run still leaves JSON) and
bench/results/lowrank_spectra.png; ``--quick`` runs a stand-in on a few hundred images into
a temporary folder.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle threads sleep (timing)

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchlib import quick_baseline, quick_data, write_results
from modelzip.checkpoint import load_checkpoint
from modelzip.data import load_dataset
from modelzip.lowrank.decompose import evbmf, unfold
from modelzip.metrics import profile_model
from modelzip.pipeline import compress, finetune_defaults, make_context
from modelzip.runtime.export import evaluate_onnx, export_onnx
from modelzip.runtime.int8 import quantize_onnx_int8
from modelzip.runtime.ort import make_session

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "lowrank.json"
SPECTRA = BENCH / "results" / "lowrank_spectra.png"
CHECKPOINT = BENCH / "checkpoints" / "eurosat_cnn"
FINETUNE = {"epochs": 1, "lr": 0.005, "schedule": "cosine"}
TARGET = {"macs_ratio": 2.0, "max_drop_points": 1.0, "speedup_b1_1thread": 1.5}
CALIBRATION_IMAGES = 300
BATCHES = (1, 64)
WARMUP, ROUNDS, PER_ROUND = 10, 12, 3

# name -> (technique, options, what it shows); in the order they run (priority first)
ROWS: list[tuple[str, str, dict[str, Any], str]] = [
    ("tucker2-vbmf", "tucker2", {}, "target row: Tucker-2, ranks by EVBMF (Kim 2016)"),
    ("rank-select-2x", "rank-select", {"ratio": 0.5},
     "target row: joint whole-network rank selection (Tucker-2 + SVD), val proxy, 2x MACs"),
    ("svd-2x", "svd", {"budget": 0.5, "layers": {"types": ["Conv2d", "Linear"]}},
     "SVD of every layer (conv as a matrix), each keeping <= 1/2 of its MACs"),
    ("cp-2x", "cp", {"budget": 0.5}, "CP (Lebedev 2015), each conv <= 1/2 of its MACs"),
    ("separable-2x", "separable", {"budget": 0.5},
     "Jaderberg scheme 2, data fit on 128 calibration images, each conv <= 1/2 of its MACs"),
    ("rank-select-2x-greedy", "rank-select", {"ratio": 0.5, "strategy": "greedy"},
     "layer by layer: every layer keeps the same fraction of its MACs, 2x MACs"),
    ("tltorch-tucker", "tltorch", {}, "tensorly-torch FactorizedConv (Tucker) at the ranks "
                                      "of tucker2-vbmf"),
    ("tucker2-2x", "tucker2", {"budget": 0.5},
     "Tucker-2, ranks proportional to the channels, each conv <= 1/2 of its MACs"),
    ("rank-select-3x", "rank-select", {"ratio": 1 / 3}, "joint rank selection, 3x MACs"),
    ("svd-3x", "svd", {"budget": 1 / 3, "layers": {"types": ["Conv2d", "Linear"]}},
     "SVD, each layer <= 1/3 of its MACs"),
    ("cp-3x", "cp", {"budget": 1 / 3}, "CP, each conv <= 1/3 of its MACs"),
    ("separable-3x", "separable", {"budget": 1 / 3}, "separable, each conv <= 1/3 of its MACs"),
]


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- timing
def time_sessions(graphs: dict[str, bytes], inputs: dict[int, np.ndarray]
                  ) -> dict[str, dict[int, float]]:
    """Median ms per graph and batch, 1 thread, all graphs of a batch interleaved in rounds
    (rotating start) so that drift on the shared machine hits all alike."""
    sessions = {n: make_session(g, threads=1) for n, g in graphs.items()}
    out: dict[str, dict[int, float]] = {n: {} for n in graphs}
    for batch, x in inputs.items():
        feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
        names = list(sessions)
        for n in names:
            for _ in range(WARMUP):
                sessions[n].run(None, feeds[n])
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(ROUNDS):
            for k in range(len(names)):
                n = names[(r + k) % len(names)]
                for _ in range(PER_ROUND):
                    t0 = time.perf_counter()
                    sessions[n].run(None, feeds[n])
                    times[n].append((time.perf_counter() - t0) * 1e3)
        for n in names:
            out[n][batch] = statistics.median(times[n])
    return out


def time_eager(models: dict[str, nn.Module], inputs: dict[int, torch.Tensor]
               ) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {n: {} for n in models}
    with torch.no_grad():
        for batch, x in inputs.items():
            times: dict[str, list[float]] = {n: [] for n in models}
            for m in models.values():
                for _ in range(WARMUP):
                    m(x)
            for r in range(ROUNDS):
                for k in range(len(models)):
                    n = list(models)[(r + k) % len(models)]
                    for _ in range(PER_ROUND):
                        t0 = time.perf_counter()
                        models[n](x)
                        times[n].append((time.perf_counter() - t0) * 1e3)
            for n in models:
                out[n][batch] = statistics.median(times[n])
    return out


# ---------------------------------------------------------------------------- pieces
class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        train, test = load_dataset("eurosat", "train"), load_dataset("eurosat", "test")
        if quick:
            train, test = quick_data(train, test, 400, 300)
            self.model = quick_baseline("eurosat_cnn", train)
            training = None
        else:
            ckpt = load_checkpoint(CHECKPOINT)
            self.model, training = ckpt.model.eval(), ckpt.meta.get("training")
        finetune = dataclasses.replace(finetune_defaults(training), **FINETUNE)
        self.finetune = finetune
        self.ctx = make_context(data=train, test_data=test, finetune=finetune,
                                progress=False)
        self.test = test
        idx = torch.randperm(len(self.ctx.train_data),
                             generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES]
        calib = self.ctx.train_data.subset(idx.sort().values)
        self.calib = calib.normalize(calib.images).numpy()
        x = test.normalize(test.images[:64])
        self.inputs = {b: x[:b].numpy() for b in BATCHES}
        self.torch_inputs = {b: x[:b] for b in BATCHES}
        self.check = x
        self.base_graphs = self.graphs(self.model)
        self.base_profile = profile_model(self.model, example_inputs=self.ctx.example_inputs)
        self.base_error = self.ctx.evaluate(self.model, test)
        self.base_int8_error = evaluate_onnx(self.base_graphs["int8"], test)

    def graphs(self, model: nn.Module) -> dict[str, bytes]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp32 = export_onnx(model.eval(), check_inputs=self.check)
            int8, _ = quantize_onnx_int8(fp32, self.calib)
        return {"fp32": fp32, "int8": int8}

    def latency(self, graphs: dict[str, bytes]) -> dict[str, Any]:
        timed = time_sessions({"base-fp32": self.base_graphs["fp32"], "fp32": graphs["fp32"],
                               "base-int8": self.base_graphs["int8"], "int8": graphs["int8"]},
                              self.inputs)
        out: dict[str, Any] = {}
        for prec in ("fp32", "int8"):
            for b in BATCHES:
                out[f"latency_ms_{prec}_ort_b{b}_1thread"] = round(timed[prec][b], 4)
                out[f"speedup_{prec}_ort_b{b}_1thread_vs_unfactorized_{prec}"] = round(
                    timed[f"base-{prec}"][b] / timed[prec][b], 3)
        for b in BATCHES:
            out[f"speedup_int8_ort_b{b}_1thread_vs_unfactorized_fp32"] = round(
                timed["base-fp32"][b] / timed["int8"][b], 3)
        return out

    def figures(self, model: nn.Module) -> dict[str, Any]:
        prof = profile_model(model, example_inputs=self.ctx.example_inputs)
        return {"params": prof.params, "macs": prof.total_macs,
                "params_ratio": round(self.base_profile.params / prof.params, 3),
                "macs_ratio": round(self.base_profile.total_macs / prof.total_macs, 3)}


def factorize_row(bench: Bench, name: str, technique: str, options: dict[str, Any],
                  what: str) -> dict[str, Any]:
    ctx = bench.ctx
    n_records = len(ctx.records)
    t0 = time.perf_counter()
    first = compress(bench.model, {"name": name, "steps": [{technique: options}]}, ctx=ctx)
    factorize_s = time.perf_counter() - t0
    record = ctx.records[n_records]
    _say(f"{name}: factorized in {factorize_s:.0f} s, test error before fine-tuning "
         f"{first.test_error_after.error_pct:.2f}%")
    t0 = time.perf_counter()
    finetune: dict[str, Any] = {"epochs": FINETUNE["epochs"]}
    if "finetune_lr_scale" in record:  # the technique's own fine-tuning rate (cp)
        finetune["lr"] = FINETUNE["lr"] * record["finetune_lr_scale"]
    tuned = compress(first.model, {"name": f"{name}+finetune", "steps": [
        {"finetune": finetune}]}, ctx=ctx)
    finetune_s = time.perf_counter() - t0
    model = tuned.model.eval()
    graphs = bench.graphs(model)
    int8_error = evaluate_onnx(graphs["int8"], bench.test)
    row = {"model": "eurosat_cnn", "variant": name, "technique": technique,
           "options": options, "description": what, **bench.figures(model),
           "test_error_pct_before_finetune": round(first.test_error_after.error_pct, 4),
           "test_errors_before_finetune": first.test_error_after.errors,
           "test_error_pct": round(tuned.test_error_after.error_pct, 4),
           "test_errors": tuned.test_error_after.errors,
           "test_error_pct_int8_ort": round(int8_error.error_pct, 4),
           "drop_points_vs_unfactorized": round(tuned.test_error_after.error_pct
                                                - bench.base_error.error_pct, 4),
           "val_error_pct_before_finetune": first.val_error_after,
           "val_error_pct": tuned.val_error_after,
           "mzip_bytes": tuned.artifact_bytes, "packs_and_reads_back": True,
           "onnx_export": True, "factorize_wall_s": round(factorize_s, 1),
           "finetune_wall_s": round(finetune_s, 1),
           "ranks": {r["layer"]: r["rank"] for r in record["layers"]},
           "layer_rel_errors": {r["layer"]: round(r["rel_error"], 4)
                                for r in record["layers"]}}
    if "selection" in record:
        sel = record["selection"]
        row["selection"] = {k: v for k, v in sel.items() if k != "candidates"}
        row["selection"]["candidates_val_error_pct"] = [
            round(c["val_error_pct"], 3) for c in sel.get("candidates", [])]
    if technique == "separable":
        row["separable_output_error"] = {
            r["layer"]: {"weight_fit": round(r["output_error_weight_fit"], 4),
                         "data_fit": round(r["output_error_data_fit"], 4)}
            for r in record["layers"] if "output_error_data_fit" in r}
    if technique == "cp":
        row["cp_converged"] = {r["layer"]: r["converged"] for r in record["layers"]}
        row["cp_degeneracy"] = {r["layer"]: r.get("degeneracy") for r in record["layers"]}
        row["cp_ridge"] = record.get("ridge")
    row["finetune_lr"] = finetune.get("lr", bench.finetune.lr)
    row.update(bench.latency(graphs))
    row["target_met"] = (row["macs_ratio"] >= TARGET["macs_ratio"]
                         and row["drop_points_vs_unfactorized"] <= TARGET["max_drop_points"]
                         and row["speedup_fp32_ort_b1_1thread_vs_unfactorized_fp32"]
                         >= TARGET["speedup_b1_1thread"])
    return row


def tltorch_row(bench: Bench, ranks: dict[str, list[int]]) -> dict[str, Any]:
    """tensorly-torch's Tucker FactorizedConv at ``ranks`` (R_out, R_in; spatial modes kept),
    fine-tuned like the others through the same context."""
    import tltorch

    from modelzip.codec.model import pack

    model = copy.deepcopy(bench.model).eval()
    for layer, (r_out, r_in) in ranks.items():
        conv = model.get_submodule(layer)
        kh, kw = conv.kernel_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = tltorch.FactorizedConv.from_conv(conv, rank=(r_out, r_in, kh, kw),
                                                   factorization="tucker",
                                                   implementation="factorized",
                                                   decompose_weights=True)
        parent, _, child = layer.rpartition(".")
        model.get_submodule(parent).add_module(child, new)
    before = bench.ctx.evaluate(model.eval(), bench.test)
    t0 = time.perf_counter()
    cfg = dataclasses.replace(bench.finetune, epochs=FINETUNE["epochs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench.ctx.train(model, cfg, technique="tltorch fine-tuning")
    finetune_s = time.perf_counter() - t0
    model.eval()
    after = bench.ctx.evaluate(model, bench.test)
    row: dict[str, Any] = {
        "model": "eurosat_cnn", "variant": "tltorch-tucker", "technique": "tltorch",
        "description": f"tltorch {tltorch.__version__} FactorizedConv.from_conv (tucker, "
                       "factorized) at the ranks of tucker2-vbmf", **bench.figures(model),
        "ranks": ranks, "test_error_pct_before_finetune": round(before.error_pct, 4),
        "test_error_pct": round(after.error_pct, 4), "test_errors": after.errors,
        "drop_points_vs_unfactorized": round(after.error_pct - bench.base_error.error_pct, 4),
        "finetune_wall_s": round(finetune_s, 1)}
    try:
        pack(model)
        row["packs_and_reads_back"] = True
    except Exception as exc:  # recorded: what tltorch supports is part of the comparison
        row["packs_and_reads_back"] = False
        row["pack_error"] = f"{type(exc).__name__}: {exc}"
    try:
        graphs = bench.graphs(model)
        row["onnx_export"] = True
        row["test_error_pct_int8_ort"] = round(evaluate_onnx(graphs["int8"],
                                                             bench.test).error_pct, 4)
        row.update(bench.latency(graphs))
    except Exception as exc:
        row["onnx_export"] = False
        row["onnx_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    eager = time_eager({"base": bench.model, "tltorch": model}, bench.torch_inputs)
    for b in BATCHES:
        row[f"speedup_fp32_eager_b{b}_1thread_vs_unfactorized_fp32_eager"] = round(
            eager["base"][b] / eager["tltorch"][b], 3)
    return row


# ---------------------------------------------------------------------------- lenet + DC
# lenet300 / lenet5: a low-rank step, then the deep-compression recipe (prune -> k-means ->
# entropy-coded .mzip), against the same recipe alone; the recipe's global sparsity and one
# step beyond it. The smallest .mzip whose test error stays within the limit, per path.
DC_RECIPE = "deep-compression"
DC_LIMITS = {"lenet300": 1.64, "lenet5": 0.80}  # test error %, Deep Compression's figures
DC_SPARSITIES = (0.92, 0.95)
_LOWRANK_FINETUNE = {"epochs": 1}
_RANK_SELECT = {"rank-select": {"target": "params", "ratio": 0.5,
                                "finetune": _LOWRANK_FINETUNE}}
# path -> the low-rank step put before the recipe's steps (None: pruning only)
DC_PATHS: dict[str, dict[str, dict[str, Any] | None]] = {
    "lenet300": {
        "pruning-only": None,
        "svd": {"svd": {"budget": 0.5, "budget_metric": "params", "layers": ["fc1", "fc2"],
                        "finetune": _LOWRANK_FINETUNE}},
        "rank-select": _RANK_SELECT,
    },
    "lenet5": {
        "pruning-only": None,
        "svd": {"svd": {"budget": 0.5, "budget_metric": "params", "layers": ["fc1"],
                        "finetune": _LOWRANK_FINETUNE}},
        "rank-select": _RANK_SELECT,
    },
}


def dc_rows() -> list[tuple[str, str, str, float]]:
    """(row name, model, path, global sparsity) of every lenet row, in the order they run
    (per model, the recipe's own sparsity first)."""
    return [(f"dc-{model}-{path}-{round(s * 100)}", model, path, s)
            for model, paths in DC_PATHS.items() for s in DC_SPARSITIES for path in paths]


def dc_recipe(step: dict[str, Any] | None, sparsity: float, name: str) -> dict[str, Any]:
    """The built-in deep-compression recipe at ``sparsity``, after ``step`` when given."""
    from modelzip.recipe import builtin_recipe

    recipe = builtin_recipe(DC_RECIPE)
    steps: list[dict[str, Any]] = [] if step is None else [copy.deepcopy(step)]
    for technique, config in recipe.steps:
        options = _plain(config)
        if technique == "iterative-magnitude":
            options["global_sparsity"] = sparsity
        steps.append({technique: options})
    return {"name": name, "finetune": dict(recipe.finetune), "steps": steps,
            "pack": dict(recipe.pack)}


def _plain(config: Any) -> dict[str, Any]:
    """A step's config as recipe options: the fields it sets (not None), nested ones too."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        out[f.name] = _plain(value) if dataclasses.is_dataclass(value) else value
    return out


class DCBench:
    """MNIST data and the dense checkpoints, loaded once."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.train, self.test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
        if quick:
            self.train, self.test = quick_data(self.train, self.test, 600, 500)
        self.models: dict[str, nn.Module] = {}

    def model(self, name: str) -> nn.Module:
        if name not in self.models:
            self.models[name] = (quick_baseline(name, self.train) if self.quick else
                                 load_checkpoint(BENCH / "checkpoints" / name).model.eval())
        return self.models[name]


def dc_row(dc: DCBench, name: str, model_name: str, path: str, sparsity: float
           ) -> dict[str, Any]:
    step = DC_PATHS[model_name][path]
    recipe = dc_recipe(step, sparsity, name)
    if dc.quick:  # a smoke test: one epoch wherever the recipe retrains
        recipe["finetune"]["epochs"] = 1
    ctx = make_context(data=dc.train, test_data=dc.test, progress=False)
    result = compress(dc.model(model_name), recipe, ctx=ctx)
    test = result.test_error_after
    limit = DC_LIMITS[model_name]
    row: dict[str, Any] = {
        "model": model_name, "variant": name, "technique": "deep-compression",
        "path": path, "lowrank_step": step, "global_sparsity": sparsity,
        "description": (f"{DC_RECIPE} recipe at global sparsity {sparsity:g}"
                        + ("" if step is None else f", after {next(iter(step))}")),
        "file_bytes": result.artifact_bytes, "dense_fp32_bytes": result.before.dense_bytes,
        "ratio": round(result.ratio, 2), "params_dense": result.before.params,
        "test_error_pct": round(test.error_pct, 4), "test_errors": test.errors,
        "test_images": test.total, "val_error_pct": round(result.val_error_after, 4),
        "test_error_pct_dense": round(result.test_error_before.error_pct, 4),
        "target_error_pct": limit, "within_limit": test.error_pct <= limit,
        "compress_wall_s": round(result.wall_time_s, 1), "recipe": recipe}
    lowrank = next((r for r in result.records if r.get("step") in ("svd", "rank-select")), None)
    if lowrank is not None:
        row["ranks"] = {r["layer"]: r["rank"] for r in lowrank["layers"]}
        row["params_after_lowrank"] = lowrank.get("params_after")
        row["val_error_pct_after_lowrank"] = lowrank.get("val_error_pct")
    return row


def dc_summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per lenet model: per path the smallest .mzip within the test-error limit, and whether
    a low-rank path beats pruning only."""
    out = []
    for model_name in DC_PATHS:
        mine = [r for r in rows if r.get("model") == model_name
                and r.get("technique") == "deep-compression" and "file_bytes" in r]
        if not mine:
            continue
        best: dict[str, Any] = {}
        for path in (p for p in DC_PATHS[model_name] if any(r["path"] == p for r in mine)):
            ok = [r for r in mine if r["path"] == path and r["within_limit"]]
            if ok:
                r = min(ok, key=lambda r: r["file_bytes"])
                best[path] = {"variant": r["variant"], "file_bytes": r["file_bytes"],
                              "test_error_pct": r["test_error_pct"],
                              "global_sparsity": r["global_sparsity"]}
            else:
                best[path] = None
        base = best.get("pruning-only")
        lowrank = [b for p, b in best.items() if p != "pruning-only" and b is not None]
        winner = min(lowrank, key=lambda b: b["file_bytes"]) if lowrank else None
        out.append({"model": model_name, "variant": f"dc-{model_name}-smallest",
                    "technique": "summary", "target_error_pct": DC_LIMITS[model_name],
                    "smallest_within_limit": best,
                    "lowrank_smaller_than_pruning_only": (
                        None if base is None or winner is None
                        else winner["file_bytes"] < base["file_bytes"])})
    return out


# ---------------------------------------------------------------------------- picture
def spectra_picture(model: nn.Module, rows: list[dict[str, Any]], path: Path) -> None:
    """Per k x k conv: cumulative energy of the singular values of the output- and input-mode
    unfoldings, with the ranks EVBMF and rank-select chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    chosen = {r["variant"]: r.get("ranks", {}) for r in rows}
    fig, axes = plt.subplots(1, len(convs), figsize=(3.2 * len(convs), 3.2), squeeze=False)
    for ax, (name, conv) in zip(axes[0], convs, strict=True):
        w = conv.weight.detach()
        for mode, label, colour in ((0, "out", "C0"), (1, "in", "C1")):
            s2 = torch.linalg.svdvals(unfold(w, mode).double()) ** 2
            energy = (torch.cumsum(s2, 0) / s2.sum()).numpy()
            ax.plot(np.arange(1, len(energy) + 1), energy, color=colour,
                    label=f"mode {label} ({len(energy)})")
            ax.axvline(evbmf(unfold(w, mode)).rank, color=colour, ls="--", lw=1)
            r = chosen.get("rank-select-2x", {}).get(name)
            if isinstance(r, list):  # [R_out, R_in]
                ax.axvline(r[mode], color=colour, ls=":", lw=1.5)
        ax.set_title(f"{name} {tuple(w.shape)}", fontsize=8)
        ax.set_xlabel("rank")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("energy kept (sum of s^2)")
    fig.suptitle("eurosat_cnn: unfolding spectra; dashed: EVBMF rank, dotted: rank-select 2x",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------------------- main
def _in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The unfactorized row first, then the rows in the order of ROWS and the lenet rows, then
    the lenet summaries (recomputed)."""
    names = [name for name, *_rest in ROWS] + [name for name, *_rest in dc_rows()]
    order = {name: i for i, name in enumerate(names)}
    body = [r for r in rows[1:] if r.get("technique") != "summary"]
    return [rows[0], *sorted(body, key=lambda r: order.get(r["variant"], len(order))),
            *dc_summaries(body)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="row names to run (default: all); lenet300, "
                        "lenet5 or lenet: all rows of those models")
    parser.add_argument("--why", default=None,
                        help="with --merge: why the rows are re-run (recorded)")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace those rows in the results file, keep the rest")
    parser.add_argument("--picture", action="store_true",
                        help="only redraw the spectra picture from the results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.picture:
        import json

        rows = json.loads(RESULTS.read_text())["models"]
        spectra_picture(load_checkpoint(CHECKPOINT).model.eval(), rows, SPECTRA)
        return 0
    results, spectra = RESULTS, SPECTRA
    if args.quick:
        folder = Path(tempfile.mkdtemp(prefix="lowrank-quick-"))
        results, spectra = folder / "lowrank.json", folder / "lowrank_spectra.png"
    started = time.perf_counter()
    only = _expand_only(args.only)
    eurosat = [row for row in ROWS if only is None or row[0] in only]
    lenet = [row for row in dc_rows() if only is None or row[0] in only]
    earlier: dict[str, Any] | None = None
    if args.merge and only and results.is_file():
        import json

        earlier = json.loads(results.read_text())
    bench = Bench(args.quick) if eurosat or earlier is None else None
    if bench is not None:
        base = {"model": "eurosat_cnn", "variant": "unfactorized", "technique": None,
                **bench.figures(bench.model),
                "test_error_pct": round(bench.base_error.error_pct, 4),
                "test_errors": bench.base_error.errors,
                "test_error_pct_int8_ort": round(bench.base_int8_error.error_pct, 4)}
        settings = {"finetune": {**bench.finetune.to_dict(),
                                 "note": "the same for every row (cp: times the lr scale "
                                         "its step records, finetune_lr)"},
                    "calibration_images": CALIBRATION_IMAGES, "latency_threads": 1,
                    "latency_batches": list(BATCHES),
                    "timing": f"{WARMUP} warm-up, {ROUNDS} interleaved rounds x {PER_ROUND} "
                              "runs, median; speedups against the unfactorized model in the "
                              "same rounds",
                    "target": TARGET, "pipeline": bench.ctx.settings, "quick": args.quick}
    else:  # only lenet rows: the eurosat part of the file stays as it was
        assert earlier is not None
        base = earlier["models"][0]
        settings = {k: v for k, v in earlier["settings"].items()
                    if k not in ("rows_rerun", "not_run")}
    settings["lenet"] = {
        "recipe": DC_RECIPE, "global_sparsities": list(DC_SPARSITIES),
        "test_error_limits_pct": DC_LIMITS, "paths": DC_PATHS,
        "choice": "per path, the smallest .mzip (whole file bytes) whose test error on all "
                  "10,000 MNIST test images (model read back from the .mzip) is within the "
                  "limit", "starts_from": "the dense checkpoints bench/checkpoints/<model>"}
    rows: list[dict[str, Any]] = [base]
    kept: list[dict[str, Any]] = []
    if earlier is not None:
        kept = [r for r in earlier["models"][1:] if r["variant"] not in only
                and r.get("technique") != "summary"]
        settings["rows_rerun"], settings["base_run"] = _reruns(earlier, sorted(only),
                                                               args.why)

    def save() -> None:
        write_results(results, "lowrank", "Low-rank factorization of eurosat_cnn (ratios "
                      "against the unfactorized model measured in the same run), and of "
                      "lenet300/lenet5 before the deep-compression recipe",
                      _in_order([*rows[:1], *kept, *rows[1:]]), settings=settings,
                      wall_time_s=round(time.perf_counter() - started, 1))

    save()
    for name, technique, options, what in eurosat:
        assert bench is not None
        try:
            if technique == "tltorch":
                tucker = next((r for r in rows if r["variant"] == "tucker2-vbmf"), None)
                if tucker is None:
                    continue
                row = tltorch_row(bench, {k: v for k, v in tucker["ranks"].items()})
            else:
                opts = dict(options)
                if args.quick and technique == "rank-select":
                    opts["val_samples"] = 100
                row = factorize_row(bench, name, technique, opts, what)
        except Exception as exc:  # one broken row must not lose the others
            traceback.print_exc()
            row = {"model": "eurosat_cnn", "variant": name, "technique": technique,
                   "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        _say(f"{name}: " + ", ".join(f"{k}={row[k]}" for k in (
            "macs_ratio", "test_error_pct_before_finetune", "test_error_pct",
            "speedup_fp32_ort_b1_1thread_vs_unfactorized_fp32") if k in row))
        save()
        if not kept and (name == "rank-select-2x" or (only and name == eurosat[-1][0])):
            spectra_picture(bench.model, rows, spectra)
    dc = DCBench(args.quick) if lenet else None
    for name, model_name, path, sparsity in lenet:
        assert dc is not None
        try:
            row = dc_row(dc, name, model_name, path, sparsity)
        except Exception as exc:
            traceback.print_exc()
            row = {"model": model_name, "variant": name, "technique": "deep-compression",
                   "path": path, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        _say(f"{name}: " + ", ".join(f"{k}={row[k]}" for k in (
            "file_bytes", "test_error_pct", "within_limit", "error") if k in row))
        save()
    if bench is not None and not spectra.exists():
        spectra_picture(bench.model, rows, spectra)
    save()
    _say(f"wrote {results}")
    return 0


def _reruns(earlier: dict[str, Any], rows: list[str], why: str | None
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The re-runs merged into the file so far (rows re-run now taken out of the older
    entries), this one last (its time and commit are the file's own), and the run that the
    rows named in none of them come from."""
    run = ("generated_utc", "git_commit", "git_dirty")
    previous = earlier.get("settings", {}).get("rows_rerun") or []
    base = earlier.get("settings", {}).get("base_run")
    if isinstance(previous, dict):  # the older one-entry form
        base = previous.get("earlier_run")
        previous = [{"rows": previous["rows"], "why": previous.get("why"),
                     **{k: earlier.get(k) for k in run}}]
    elif previous:
        last = previous[-1]
        if "generated_utc" not in last:  # the entry of the earlier file's own run
            last.update({k: earlier.get(k) for k in run})
    else:
        base = {k: earlier.get(k) for k in run}
    history = []
    for entry in previous:
        left = [r for r in entry["rows"] if r not in rows]
        if left:
            history.append({**entry, "rows": left})
    return [*history, {"rows": rows, "why": why}], base or {}


def _expand_only(only: list[str] | None) -> set[str] | None:
    """--only names: row names, or lenet300 / lenet5 / lenet for all rows of those models."""
    if not only:
        return None
    out = set()
    for name in only:
        models = list(DC_PATHS) if name == "lenet" else [name] if name in DC_PATHS else []
        out.update(r for r, model, *_ in dc_rows() if model in models)
        if not models:
            known = {r for r, *_ in ROWS} | {r for r, *_ in dc_rows()}
            if name not in known:
                raise SystemExit(f"error: unknown row {name!r}; rows: {', '.join(sorted(known))}"
                                 ", or lenet300, lenet5, lenet")
            out.add(name)
    return out


if __name__ == "__main__":
    sys.exit(main())
