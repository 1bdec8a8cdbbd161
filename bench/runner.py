"""The on-board runner, measured: for lenet5 and eurosat_cnn, fp32 and static int8 .mzip
artifacts that carry their ONNX graph.

    MODELZIP_DATA=../shared/data python bench/runner.py [--models lenet5 eurosat_cnn]

Per model and variant (one flat row each, in bench/results/runner.json):
- ``file_bytes``: the .mzip file on disk (graph, coded weights, manifest, checksums);
- ``closure_installed_bytes``: what must be installed to run it: the installed size of every
  distribution the runner process imports (numpy, onnxruntime, ... from their pip RECORDs)
  plus the modelzip files it imports; the Python standard library is not counted (given);
- peak memory of one inference at batch 1 in a fresh process: RSS high-water mark (VmHWM)
  after loading the artifact, the extra peak during the first inference (the high-water mark
  is reset just before it, via /proc/self/clear_refs), the process's total peak, and the peak
  of the real ``modelzip run`` command (``ru_maxrss`` of the child process);
- accuracy of the runner on the full test split (uint8 images, normalized by the runner with
  the mean/std stored in the artifact), and its agreement with PyTorch on the same images.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchlib import write_results
from modelzip import __version__
from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import summarize_artifact
from modelzip.codec.model import unpack
from modelzip.data import ImageDataset, load_dataset
from modelzip.runtime.export import export_onnx
from modelzip.runtime.int8 import quantize_onnx_int8
from modelzip.runtime.onnx_artifact import pack_onnx, split_initializers
from modelzip.runtime.runner import Runner

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results" / "runner.json"
CHECKPOINTS = BENCH / "checkpoints"
MODELS = ("lenet5", "eurosat_cnn")
# Besides the trained model, the compressed ones a satellite would receive: lenet5 pruned and
# weight-shared (the smallest file of bench/deep_compression.py), eurosat_cnn structurally
# pruned (bench/pruning_structured.py).
COMPRESSED = {
    "lenet5": ("deep-compressed", BENCH / "results" / "mzip" / "grid-lenet5-max-3bit-lloyd.mzip"),
    "eurosat_cnn": ("pruned", CHECKPOINTS / "pruned" / "eurosat_cnn-l1"),
}


def compressed_model(name: str) -> tuple[str, torch.nn.Module] | None:
    if name not in COMPRESSED:
        return None
    label, path = COMPRESSED[name]
    if path.suffix == ".mzip":
        return label, unpack(path.read_bytes())
    return label, load_checkpoint(path).model
CALIBRATION_IMAGES = 300
CALIBRATION_METHOD = "minmax"
BATCH_SIZE = 256  # for the accuracy pass

# Runs in a fresh interpreter: load the artifact, one inference at batch 1, then report memory
# and every imported module's file. Only the standard library besides the runner.
PROBE = r"""
import json, os, re, sys
at_startup = set(sys.modules)  # site's own imports (e.g. setuptools' _distutils_hack)
def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) * 1024
out = {"rss_interpreter_bytes": status("VmRSS")}
from modelzip.runtime.runner import Runner, load_images
out["peak_rss_after_import_bytes"] = status("VmHWM")
runner = Runner.from_file(sys.argv[1], threads=1)
out["peak_rss_after_load_bytes"] = status("VmHWM")
out["rss_after_load_bytes"] = status("VmRSS")
images = load_images(sys.argv[2])
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    out["hwm_reset"] = True
except OSError:
    out["hwm_reset"] = False
before = status("VmHWM")
preds, _ = runner.predict(images, batch_size=1)
after = status("VmHWM")
out.update(rss_before_inference_bytes=before, peak_rss_after_inference_bytes=after,
           inference_peak_extra_bytes=after - before, prediction=int(preds[0]))
out["peak_rss_bytes"] = max(out["peak_rss_after_load_bytes"], after)
out["modules"] = {name: os.path.realpath(m.__file__) for name, m in list(sys.modules.items())
                  if getattr(m, "__file__", None) and name not in at_startup}
with open("/proc/self/maps") as f:
    out["mapped_files"] = sorted({line.split()[-1] for line in f
                                  if len(line.split()) >= 6 and line.split()[-1].startswith("/")})
print(json.dumps(out))
"""


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"modelzip_version": __version__, "numpy_version": np.__version__,
            "onnxruntime_version": onnxruntime.__version__, "onnx_version": onnx.__version__,
            "torch_version": torch.__version__, "python_version": platform.python_version()}


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": src if not path else f"{src}{os.pathsep}{path}"}


# ---------------------------------------------------------------------------- closure size
def _distribution_sizes() -> tuple[dict[str, list[str]], dict[str, int]]:
    """Import name -> distributions, and each distribution's installed bytes (its RECORD)."""
    owners = importlib.metadata.packages_distributions()
    sizes: dict[str, int] = {}
    for dist in importlib.metadata.distributions():
        total = 0
        for f in dist.files or []:
            path = Path(dist.locate_file(f))
            if path.is_file():
                total += path.stat().st_size
        sizes[dist.metadata["Name"].lower()] = total
    return {k: [d.lower() for d in v] for k, v in owners.items()}, sizes


def _where(path: Path) -> str:
    """modelzip, site (installed distributions), stdlib or system (shared libraries)."""
    paths = sysconfig.get_paths()
    if path.is_relative_to((ROOT / "src" / "modelzip").resolve()):
        return "modelzip"
    if any(path.is_relative_to(Path(paths[k]).resolve()) for k in ("purelib", "platlib")):
        return "site"  # checked before stdlib: in a venv, platstdlib contains site-packages
    if path.is_relative_to(Path(paths["stdlib"]).resolve()):
        return "stdlib"
    return "system"


def closure_size(modules: dict[str, str], mapped: list[str]) -> dict[str, Any]:
    """Installed size of what the probe imported, split into distributions, modelzip files
    and the standard library (not counted in the total)."""
    owners, sizes = _distribution_sizes()
    dists: set[str] = set()
    modelzip_files: set[Path] = set()
    stdlib_files: set[Path] = set()
    for name, file in modules.items():
        path = Path(file)
        where = _where(path)
        if where == "modelzip":
            modelzip_files.add(path)
        elif where == "site":
            top = name.split(".")[0]
            dists.update(owners.get(top, [f"unknown:{top}"]))
        elif where == "stdlib":
            stdlib_files.add(path)
    dists.discard("modelzip")  # an editable install: its files are counted one by one
    row: dict[str, Any] = {}
    for dist in sorted(dists):
        row[f"closure_{dist.replace('-', '_')}_bytes"] = sizes.get(dist, 0)
    modelzip_bytes = sum(p.stat().st_size for p in modelzip_files)
    row["closure_modelzip_bytes"] = modelzip_bytes
    row["closure_modelzip_files"] = sorted(str(p.relative_to(ROOT)) for p in modelzip_files)
    row["closure_distributions"] = sorted(dists)
    row["closure_installed_bytes"] = sum(sizes.get(d, 0) for d in dists) + modelzip_bytes
    row["closure_stdlib_modules_bytes"] = sum(p.stat().st_size for p in stdlib_files)
    # The part of those installs actually loaded: imported files and mapped shared libraries
    # outside the standard library (what a trimmed install would keep).
    libs = {Path(f) for f in mapped if ".so" in Path(f).name}
    loaded = {p for p in {Path(f) for f in modules.values()} | libs
              if p.is_file() and _where(p) in ("modelzip", "site")}
    row["closure_loaded_files_bytes"] = sum(p.stat().st_size for p in loaded)
    # Shared libraries from the system that onnxruntime/numpy link against (not counted).
    row["closure_system_libs"] = sorted(p.name for p in libs if _where(p) == "system")
    heavy = sorted({m.split(".")[0] for m in modules} & {"torch", "onnx", "typer", "rich"})
    row["closure_heavy_modules"] = heavy  # must be empty
    return row


# ---------------------------------------------------------------------------- memory
def probe(mzip: Path, one_image: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", PROBE, str(mzip), str(one_image)],
                            capture_output=True, text=True, env=_env(), timeout=300,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the memory probe failed on {mzip.name}:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


# A small launcher: a child's ru_maxrss keeps the high-water mark of the process it was forked
# from (Linux carries it across exec), so the command must not be forked from this big one.
LAUNCHER = r"""
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # kB on Linux
"""


def command_peak_rss(mzip: Path, one_image: Path, out: Path) -> int:
    """Peak RSS of the real ``modelzip run`` command, from the kernel's accounting for it."""
    command = [sys.executable, "-m", "modelzip.entry", "run", str(mzip), "--input",
               str(one_image), "--output", str(out)]
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True,
                            text=True, env=_env(), timeout=300, check=True)
    return int(result.stdout.split()[-1])


# ---------------------------------------------------------------------------- accuracy
def torch_logits(model: torch.nn.Module, ds: ImageDataset) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x) for x, _ in ds.batches(BATCH_SIZE)]).numpy()


def calibration_images(train: ImageDataset) -> np.ndarray:
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return train.normalize(train.images[idx[:CALIBRATION_IMAGES]]).numpy()


def run_model(name: str, workdir: Path) -> list[dict[str, Any]]:
    ckpt = load_checkpoint(CHECKPOINTS / name)
    model = ckpt.model
    ds_meta = ckpt.meta["dataset"]
    train, test = load_dataset(ds_meta["name"], "train"), load_dataset(ds_meta["name"], "test")
    meta = {"mean": ds_meta["mean"], "std": ds_meta["std"], "classes": ds_meta["classes"],
            "dataset": ds_meta["name"], "model": name}
    one_image = workdir / f"{name}-one.npy"
    np.save(one_image, test.images.numpy()[:1])  # uint8: the runner normalizes with meta
    sources = [("", model)]
    extra = compressed_model(name)
    if extra is not None:
        sources.append(extra)
    rows = []
    for label, source in sources:
        rows += run_variants(name, label, source, train, test, meta, workdir, one_image)
    return rows


def run_variants(name: str, label: str, model: torch.nn.Module, train: ImageDataset,
                 test: ImageDataset, meta: dict[str, Any], workdir: Path, one_image: Path
                 ) -> list[dict[str, Any]]:
    """fp32 and int8 artifacts of one model, each measured as the runner runs it."""
    print(f"== {name} {label or 'trained'}: exporting, quantizing (int8, "
          f"{CALIBRATION_IMAGES} calibration images)", flush=True)
    fp32_onnx = export_onnx(model, check_inputs=test.normalize(test.images[:64]))
    int8_onnx, report = quantize_onnx_int8(fp32_onnx, calibration_images(train),
                                           method=CALIBRATION_METHOD)
    reference = torch_logits(model, test)
    labels = test.labels.numpy()
    images = test.images.numpy()
    rows = []
    for precision, onnx_bytes in (("fp32", fp32_onnx), ("int8", int8_onnx)):
        variant = f"{label}-{precision}" if label else precision
        mzip = workdir / f"{name}-{variant}.mzip"
        info = dict(meta)
        if precision == "int8":
            info["quantization"] = report
        mzip.write_bytes(pack_onnx(onnx_bytes, meta=info))
        graph, arrays, spec = split_initializers(onnx_bytes)
        summary = summarize_artifact(mzip.read_bytes())
        runner = Runner.from_file(mzip, threads=1)
        preds, logits = runner.predict(images, batch_size=BATCH_SIZE)
        errors = int((preds != labels).sum())
        mem = probe(mzip, one_image)
        row: dict[str, Any] = {
            "model": name, "variant": variant, "source": label or "trained",
            "dataset": meta["dataset"],
            "nonzero_params": int(sum(int((p != 0).sum()) for p in model.parameters())),
            "precision": spec.precision,
            "file_bytes": mzip.stat().st_size,
            "onnx_bytes": len(onnx_bytes),
            "graph_blob_bytes": len(graph),
            "weights_raw_bytes": sum(a.nbytes for a in arrays.values()),
            "initializers": len(arrays),
            "initializer_dtypes": sorted({a.dtype.name for a in arrays.values()}),
            "tensor_bytes": summary["tensor_bytes"],
            "blob_bytes": summary["blob_bytes"],
            "manifest_bytes": summary["manifest_bytes"],
            "coders": sorted({f"{t['layout']}:{t['coder']}" for t in summary["tensors"]}),
            "test_error_pct": round(100 * errors / len(labels), 4),
            "test_errors": errors,
            "test_images": len(labels),
            "pytorch_test_error_pct": round(100 * float((reference.argmax(1) != labels).mean()),
                                            4),
            "agreement_with_pytorch_pct": round(100 * float(
                (preds == reference.argmax(1)).mean()), 4),
            "max_abs_logit_diff_vs_pytorch": round(float(np.abs(logits - reference).max()), 6),
            "peak_rss_bytes": mem["peak_rss_bytes"],
            "peak_rss_after_import_bytes": mem["peak_rss_after_import_bytes"],
            "peak_rss_after_load_bytes": mem["peak_rss_after_load_bytes"],
            "rss_after_load_bytes": mem["rss_after_load_bytes"],
            "rss_interpreter_bytes": mem["rss_interpreter_bytes"],
            "inference_peak_extra_bytes": mem["inference_peak_extra_bytes"],
            "hwm_reset_before_inference": mem["hwm_reset"],
            "command_peak_rss_bytes": command_peak_rss(mzip, one_image,
                                                       workdir / "preds.npy"),
            "threads": 1, "inference_batch_size": 1,
            **closure_size(mem["modules"], mem["mapped_files"]),
        }
        if precision == "int8":
            row.update(calibration_method=CALIBRATION_METHOD,
                       calibration_images=report.get("calibration_images"),
                       runtime_int8_kernels=report.get("runtime_int8_kernels"),
                       ops_fp32=len(report.get("ops_fp32") or []))
        mib, kib = 2**20, 2**10
        print(f"   {name} {variant}: {row['file_bytes']:,} B file, error "
              f"{row['test_error_pct']:.2f}% ({errors}/{len(labels)}), peak RSS "
              f"{row['peak_rss_bytes'] / mib:.1f} MiB (+"
              f"{row['inference_peak_extra_bytes'] / kib:.0f} KiB for the inference), "
              f"closure {row['closure_installed_bytes'] / mib:.1f} MiB", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="modelzip-runner-") as tmp:
        for name in args.models:
            rows += run_model(name, Path(tmp))
    write_results(RESULTS, "runner",
                  "the torch-free runner (numpy + onnxruntime + modelzip's decoder) on .mzip "
                  "artifacts carrying their ONNX graph: file size, installed size of the "
                  "import closure, peak memory of one inference (batch 1, 1 thread, fresh "
                  "process), accuracy on the full test split",
                  rows, **versions())
    return 0


if __name__ == "__main__":
    sys.exit(main())
