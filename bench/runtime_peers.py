"""modelzip's on-board paths against the peers, side by side in one process run.

    MODELZIP_DATA=../shared/data python bench/runtime_peers.py [--quick]

For eurosat_cnn, its structurally pruned version (bench/checkpoints/pruned/eurosat_cnn-l1) and
lenet5, each at batch 1 and 64, with 1 thread and all of them:
- ``fp32-eager``: the PyTorch model (every speedup is relative to it, in the same group);
- ``ort-fp32`` / ``ort-int8``: the .mzip (``pack_model_onnx``) run by the runner's
  onnxruntime backend; int8 is modelzip's static QDQ int8 with the weight width chosen for
  this CPU (``modelzip.runtime.cpu``: 8 bits with VNNI/AMX, 7 without);
- ``ov-fp32`` / ``ov-bf16`` (when the CPU has bf16) / ``ov-int8``: the same .mzip files run by
  the runner's OpenVINO backend (precision stated explicitly; what ran is read off OpenVINO's
  runtime graph);
- ``nncf-ov-int8`` (the peer): NNCF post-training quantization of the OpenVINO model of the
  same fp32 graph, calibrated on the same images in batches, run by OpenVINO;
- ``torchao-int8``: torchao's PT2E static int8 (X86InductorQuantizer) compiled with inductor,
  as bench/latency.py builds it.
Backends are timed through their ``run`` call; the runner's own overhead (input checks,
output decoding) is ``Runner.predict`` against that call, at batch 1.

Timing: the variants of a (model, batch, threads) group run in interleaved rounds, in a
seeded random order each round and after one untimed run (``benchlib.time_interleaved``: in
a fixed cycle, the variant after OpenVINO fp32 ran up to 1.7x slower), medians and
interquartile ranges over all runs, ratios against fp32 eager of the same group.
Accuracy: every variant on the full test split. Also: the calibration choices (ours:
min/max, percentile, entropy with 7- and 8-bit weights; NNCF: one image per calibration item
as a new user feeds it, batched items, and its range estimators) by test accuracy, and what
``--backend auto`` picks.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench/latency.py: before torch loads

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchlib import quick_baseline, quick_data, time_interleaved, write_results
from latency import _compiled, _evaluate_module, _stats, _versions, torchao_pt2e
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import read_artifact
from modelzip.data import load_dataset
from modelzip.metrics import torch_threads
from modelzip.runtime.backends import (
    Backend,
    OnnxruntimeBackend,
    OpenvinoBackend,
    embed_initializers,
    open_backend,
)
from modelzip.runtime.cpu import cpu_features
from modelzip.runtime.onnx_artifact import load_onnx_package, pack_model_onnx
from modelzip.runtime.runner import Runner
from modelzip.train import evaluate

BENCH = Path(__file__).resolve().parent
CHECKPOINTS = BENCH / "checkpoints"
RESULTS = BENCH / "results" / "runtime_peers.json"
MODELS = {"eurosat_cnn": "eurosat_cnn", "eurosat_cnn-pruned": "pruned/eurosat_cnn-l1",
          "lenet5": "lenet5"}
BATCHES = (1, 64)
CALIBRATION_IMAGES = 300
NNCF_BATCH = 50  # images per NNCF calibration item ("properly batched")
ROUNDS = 20
WARMUP = 20
EVAL_BATCH = 500


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------- peers
def nncf_quantize(fp32_onnx: bytes, calib: np.ndarray, *, per_item: int,
                  estimator: str | None = None) -> Any:
    """NNCF post-training int8 of the OpenVINO model of ``fp32_onnx`` (an ov.Model),
    calibrated on ``calib`` fed ``per_item`` images per dataset item; ``estimator``: NNCF's
    activation range estimator (None: its default)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.Core().read_model(fp32_onnx)
    items = [calib[i:i + per_item] for i in range(0, len(calib), per_item)]
    advanced = None
    if estimator is not None:
        advanced = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, estimator))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                             advanced_parameters=advanced)


class OvModelBackend(Backend):
    """An ov.Model (NNCF's output) compiled as the runner's OpenVINO backend compiles."""

    name = "openvino"

    def __init__(self, model: Any, threads: int) -> None:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.version = ov.__version__.split("-")[0]
        self.threads = threads
        self.compiled = ov.Core().compile_model(model, "CPU", {
            hints.inference_precision: ov.Type.f32, props.inference_num_threads: threads,
            hints.performance_mode: hints.PerformanceMode.LATENCY, props.num_streams: 1,
            hints.enable_cpu_pinning: False})
        self.request = self.compiled.create_infer_request()
        self.executed = OpenvinoBackend._executed_precisions(self)
        self.precision = "+".join(p for p in ("int8", "bf16", "fp32") if p in self.executed)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.request.infer(feeds, share_inputs=True)[0]


def backend_eval(backend: Backend, name: str, x: np.ndarray, labels: np.ndarray
                 ) -> dict[str, Any]:
    logits = np.concatenate([backend.run({name: x[i:i + EVAL_BATCH]})
                             for i in range(0, len(x), EVAL_BATCH)])
    errors = int((logits.argmax(1) != labels).sum())
    return {"test_errors": errors, "test_total": len(x),
            "test_error_pct": round(100.0 * errors / len(x), 4)}


# ---------------------------------------------------------------------------- per model
def bench_model(name: str, ckpt_name: str, args: argparse.Namespace, log: dict[str, Any]
                ) -> list[dict[str, Any]]:
    t_model = time.perf_counter()
    threads_all = os.cpu_count() or 1
    thread_counts = sorted({1, threads_all})
    ckpt = load_checkpoint(CHECKPOINTS / ckpt_name)
    dataset = ckpt.meta["dataset"]["name"]
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    if args.quick:
        train, test = quick_data(train, test, 400, 300)
        model = ckpt.model.eval() if "pruned" in name else quick_baseline(name, train)
    else:
        model = ckpt.model.eval()
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    calib_t = train.normalize(train.images[idx[:CALIBRATION_IMAGES].sort().values])
    calib = calib_t.numpy()
    test_t = test.normalize(test.images)
    test_x, labels = test_t.numpy(), test.labels.numpy()

    # the product's artifacts: fp32, and int8 with the weight width chosen for this CPU
    fp32_mzip = pack_model_onnx(model, int8=False, calibration=calib[:64])
    int8_mzip = pack_model_onnx(model, int8=True, calibration=calib)
    fp32_pkg = load_onnx_package(read_artifact(fp32_mzip))
    int8_pkg = load_onnx_package(read_artifact(int8_mzip))
    quant = int8_pkg.meta["quantization"]
    input_name = fp32_pkg.spec.input_name
    fp32_onnx = embed_initializers(fp32_pkg.graph, fp32_pkg.initializers)
    cpu = cpu_features()
    _say(f"{name}: packed fp32 {len(fp32_mzip)} B, int8 {len(int8_mzip)} B "
         f"({quant['weight_bits']}-bit weights, chosen by {quant['reduce_range_chosen_by']})")

    # calibration choices, by accuracy on the full test split
    calibration: list[dict[str, Any]] = []
    for method in ("minmax",) if args.quick else ("minmax", "percentile", "entropy"):
        for reduce_range in (True, False):
            data = pack_model_onnx(model, int8=True, calibration=calib,
                                   calibration_method=method, reduce_range=reduce_range)
            b = OnnxruntimeBackend(load_onnx_package(read_artifact(data)), threads=threads_all)
            calibration.append({"model": name, "who": "modelzip", "method": method,
                                "weight_bits": 7 if reduce_range else 8,
                                **backend_eval(b, input_name, test_x, labels)})
    nncf_models: dict[str, Any] = {}
    nncf_settings = [("one image per item, default estimator", 1, None),
                     (f"{NNCF_BATCH} images per item, default estimator", NNCF_BATCH, None),
                     (f"{NNCF_BATCH} images per item, MINMAX", NNCF_BATCH, "MINMAX"),
                     (f"{NNCF_BATCH} images per item, MEAN_QUANTILE", NNCF_BATCH,
                      "MEAN_QUANTILE")]
    for label, per_item, estimator in nncf_settings[:2] if args.quick else nncf_settings:
        t0 = time.perf_counter()
        nncf_models[label] = nncf_quantize(fp32_onnx, calib, per_item=per_item,
                                           estimator=estimator)
        res = backend_eval(OvModelBackend(nncf_models[label], threads_all), input_name, test_x,
                           labels)
        calibration.append({"model": name, "who": "nncf", "method": label,
                            "quantize_s": round(time.perf_counter() - t0, 1), **res})
    for c in calibration:
        _say(f"   calibration {c['who']} {c['method']} "
             f"{c.get('weight_bits', '')}: {c['test_errors']} errors")
    log["calibration"] += calibration
    # the peer at its best: the NNCF setting with the fewest test errors
    best_nncf = min((c for c in calibration if c["who"] == "nncf"),
                    key=lambda c: c["test_errors"])["method"]

    torchao: dict[int, Any] | None = None
    if not args.no_torchao:
        try:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = torchao_pt2e(model, calib_t, test_t[:2])
                torchao = {t: _compiled(copy.deepcopy(converted), t,
                                        [test_t[:b] for b in BATCHES]) for t in thread_counts}
            log["torchao_prepare_compile_s"][name] = round(time.perf_counter() - t0, 1)
        except Exception as exc:  # a peer's path failing is a result, not a crash
            log["torchao_error"][name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            _say(f"   torchao failed: {log['torchao_error'][name]}")

    # backends per thread count
    def backends_for(threads: int) -> dict[str, Backend]:
        out: dict[str, Backend] = {
            "ort-fp32": OnnxruntimeBackend(fp32_pkg, threads=threads),
            "ort-int8": OnnxruntimeBackend(int8_pkg, threads=threads),
            "ov-fp32": OpenvinoBackend(fp32_pkg, threads=threads),
            "ov-int8": OpenvinoBackend(int8_pkg, threads=threads),
            "nncf-ov-int8": OvModelBackend(nncf_models[best_nncf], threads)}
        if cpu.has_bf16:
            out["ov-bf16"] = OpenvinoBackend(fp32_pkg, threads=threads, precision="bf16")
        return out

    descriptions = {
        "fp32-eager": ("pytorch eager", "PyTorch fp32, eval mode"),
        "ort-fp32": ("onnxruntime", "modelzip .mzip fp32, runner backend onnxruntime"),
        "ort-int8": ("onnxruntime", f"modelzip .mzip static int8 QDQ ({quant['method']}, "
                     f"{quant['weight_bits']}-bit weights), runner backend onnxruntime"),
        "ov-fp32": ("openvino", "modelzip .mzip fp32, runner backend openvino, "
                    "INFERENCE_PRECISION_HINT f32"),
        "ov-bf16": ("openvino", "modelzip .mzip fp32, runner backend openvino, "
                    "INFERENCE_PRECISION_HINT bf16"),
        "ov-int8": ("openvino", "modelzip .mzip static int8 QDQ, runner backend openvino"),
        "nncf-ov-int8": ("nncf + openvino", f"peer: nncf.quantize of the OpenVINO model of "
                         f"the fp32 graph ({best_nncf}), OpenVINO f32 hint"),
        "torchao-int8": ("torchao pt2e + inductor", "peer: torchao PT2E static int8 "
                         "(X86InductorQuantizer), torch.compile with freezing"),
    }

    # accuracy of every variant on the full test split
    evals: dict[str, dict[str, Any]] = {}
    fp32_eval = evaluate(model, test)
    evals["fp32-eager"] = {"test_errors": fp32_eval.errors, "test_total": fp32_eval.total,
                           "test_error_pct": round(fp32_eval.error_pct, 4)}
    precisions: dict[str, str] = {"fp32-eager": "fp32"}
    for vname, b in backends_for(threads_all).items():
        evals[vname] = backend_eval(b, input_name, test_x, labels)
        precisions[vname] = b.precision
    if torchao is not None:
        with torch_threads(threads_all), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ev = _evaluate_module(torchao[threads_all], test)
        evals["torchao-int8"] = {"test_errors": ev.errors, "test_total": ev.total,
                                 "test_error_pct": round(ev.error_pct, 4)}
        precisions["torchao-int8"] = "int8"
    for vname, ev in evals.items():
        _say(f"   {vname} ({precisions[vname]}): {ev['test_errors']} test errors")

    # what --backend auto picks here, for each artifact
    for label, pkg in (("fp32", fp32_pkg), ("int8", int8_pkg)):
        chosen = open_backend(pkg, "auto", threads=1)
        log["auto_choice"].append({"model": name, "artifact": label, "backend": chosen.name,
                                   "chosen_by": chosen.reason})

    # timing: one round-robin group per (threads, batch)
    rows = []
    per_round = max(1, args.runs // ROUNDS)
    for threads in thread_counts:
        backends = backends_for(threads)
        runners_ = {"ort-int8": Runner.from_bytes(int8_mzip, threads=threads),
                    "ov-int8": Runner.from_bytes(int8_mzip, threads=threads,
                                                 backend="openvino")}
        for batch in BATCHES:
            x_t = test_t[:batch].contiguous()
            x_np = x_t.numpy()
            feeds = {input_name: x_np}
            fns = {"fp32-eager": lambda m=model, x=x_t: m(x)}
            fns.update({vn: (lambda b=b, f=feeds: b.run(f)) for vn, b in backends.items()})
            if torchao is not None:
                fns["torchao-int8"] = lambda m=torchao[threads], x=x_t: m(x)
            if batch == 1:  # the runner around the same backend call: its own overhead
                fns.update({f"runner:{vn}": (lambda r=r, x=x_np: r.predict(x))
                            for vn, r in runners_.items()})
            with torch_threads(threads), torch.no_grad():
                times = time_interleaved(fns, ROUNDS, per_round, warmup=WARMUP)
            eager = statistics.median(times["fp32-eager"])
            group = []
            for vname in fns:
                if vname.startswith("runner:"):
                    continue
                stats = _stats(times[vname])
                ev = evals[vname]
                engine, description = descriptions[vname]
                row = {"model": name, "variant": vname, "engine": engine,
                       "description": description, "precision_executed": precisions[vname],
                       "batch_size": batch, "threads": threads, **stats,
                       "speedup_vs_fp32_eager": round(eager / stats["latency_ms_median"], 3),
                       "fp32_eager_latency_ms_median": round(eager, 5), **ev,
                       "accuracy_drop_points": round(ev["test_error_pct"]
                                                     - evals["fp32-eager"]["test_error_pct"], 4),
                       "checkpoint": f"bench/checkpoints/{ckpt_name}"}
                if f"runner:{vname}" in times:
                    runner_ms = statistics.median(times[f"runner:{vname}"])
                    row["runner_latency_ms_median"] = round(runner_ms, 5)
                    row["runner_overhead_pct"] = round(
                        100.0 * (runner_ms - stats["latency_ms_median"])
                        / stats["latency_ms_median"], 2)
                if vname in ("ort-int8", "ov-int8"):
                    row["file_bytes"] = len(int8_mzip)
                    row["weight_bits"] = quant["weight_bits"]
                elif vname in ("ort-fp32", "ov-fp32", "ov-bf16"):
                    row["file_bytes"] = len(fp32_mzip)
                group.append(row)
            rows += group
            _say(f"   batch {batch}, {threads} thread(s): " + ", ".join(
                f"{r['variant']} {r['latency_ms_median']:.3f} ms "
                f"({r['speedup_vs_fp32_eager']:.2f}x)" for r in group))
    log["model_wall_time_s"][name] = round(time.perf_counter() - t_model, 1)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """modelzip's best path against the peer (NNCF + OpenVINO int8), per model, batch 1,
    1 thread: faster or not, and with no larger accuracy drop or not."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        group = {r["variant"]: r for r in rows if r["model"] == model and r["batch_size"] == 1
                 and r["threads"] == 1}
        ours = [group[v] for v in ("ort-int8", "ov-int8", "ov-bf16", "ort-fp32", "ov-fp32")
                if v in group]
        peer = group.get("nncf-ov-int8")
        if not ours or peer is None:
            continue
        drop_ok = [r for r in ours if r["test_errors"] <= peer["test_errors"]]
        best = min(drop_ok or ours, key=lambda r: r["latency_ms_median"])
        out[model] = {
            "ours_best": best["variant"], "ours_latency_ms": best["latency_ms_median"],
            "ours_speedup_vs_fp32_eager": best["speedup_vs_fp32_eager"],
            "ours_test_errors": best["test_errors"],
            "peer_latency_ms": peer["latency_ms_median"],
            "peer_speedup_vs_fp32_eager": peer["speedup_vs_fp32_eager"],
            "peer_test_errors": peer["test_errors"],
            "ours_vs_peer_latency_ratio": round(peer["latency_ms_median"]
                                                / best["latency_ms_median"], 3),
            "target": "ours at least as fast as NNCF + OpenVINO int8 at batch 1, 1 thread, "
                      "with no more test errors",
            "met": (best["latency_ms_median"] <= peer["latency_ms_median"]
                    and best["test_errors"] <= peer["test_errors"]),
            "runner_overhead_pct": {v: group[v].get("runner_overhead_pct")
                                    for v in ("ort-int8", "ov-int8") if v in group}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="timed runs per variant")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: small data, one-epoch stand-in models, few runs")
    parser.add_argument("--no-torchao", action="store_true", help="skip torchao (compiles)")
    parser.add_argument("--out", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = min(args.runs, 40)
    out = args.out or (Path(tempfile.mkdtemp(prefix="modelzip-quick-")) / RESULTS.name
                       if args.quick else RESULTS)  # a smoke check leaves the results alone
    t_start = time.perf_counter()
    log: dict[str, Any] = {"calibration": [], "auto_choice": [], "model_wall_time_s": {},
                           "torchao_prepare_compile_s": {}, "torchao_error": {}}
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for name in args.models:
        rows += bench_model(name, MODELS[name], args, log)
    summ = summary(rows)
    for model, s in summ.items():
        _say(f"{model}: ours {s['ours_best']} {s['ours_latency_ms']:.3f} ms "
             f"({s['ours_test_errors']} errors) vs NNCF+OpenVINO {s['peer_latency_ms']:.3f} ms "
             f"({s['peer_test_errors']} errors): {'met' if s['met'] else 'MISSED'}")
    import nncf
    import openvino

    settings = {"batch_sizes": list(BATCHES), "threads": sorted({1, os.cpu_count() or 1}),
                "warmup": WARMUP, "rounds": ROUNDS,
                "order": "seeded random order each round, one untimed run before each block",
                "runs_per_variant": ROUNDS * max(1, args.runs // ROUNDS),
                "calibration_images": CALIBRATION_IMAGES,
                "calibration_source": "seeded subset of the train split",
                "nncf_images_per_item": NNCF_BATCH, "quick": args.quick,
                "inputs": "real test images, normalized",
                "openvino_compile": "INFERENCE_PRECISION_HINT stated (f32, or bf16 for "
                                    "ov-bf16), PERFORMANCE_HINT LATENCY, 1 stream, "
                                    "INFERENCE_NUM_THREADS = threads, no CPU pinning (as the "
                                    "runner compiles; NNCF's model compiled the same way)",
                "machine_load": "shared machine: other jobs were loading the CPU during the "
                                "run; ratios within a group are what to read, not absolute ms",
                "idle_threads": "no busy-waiting: onnxruntime allow_spinning=0, "
                                f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"}
    write_results(out, "runtime_peers",
                  "modelzip's runner (onnxruntime and OpenVINO backends, fp32/bf16/int8) "
                  "against NNCF + OpenVINO int8 and torchao int8, batch 1 and 64, 1 and all "
                  "threads, interleaved in one process run; accuracy on the full test split",
                  rows, settings=settings, **_versions(), openvino_version=openvino.__version__,
                  nncf_version=nncf.__version__, cpu=cpu_features().to_dict(),
                  cpu_count=os.cpu_count(), load_average_before=load_before,
                  load_average_after=[round(v, 2) for v in os.getloadavg()],
                  summary_batch1_1thread=summ,
                  total_wall_time_s=round(time.perf_counter() - t_start, 1), **log)
    _say(f"wrote {out} in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
