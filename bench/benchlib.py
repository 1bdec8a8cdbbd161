"""What the bench scripts share: waiting for a baseline checkpoint, writing a results file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from modelzip.checkpoint import write_atomic

REPO = Path(__file__).resolve().parent.parent


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository, as results files name their outputs (a --quick
    run writes outside it: then the path as it is)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def wait_for_checkpoint(path: Path, timeout_s: float) -> None:
    """bench/baselines.py writes the JSON last, so its presence means the folder is whole."""
    deadline = time.monotonic() + timeout_s
    while not (path / "modelzip.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no checkpoint after {timeout_s:.0f} s; run "
                             "bench/baselines.py --models eurosat_cnn first")
        print(f"waiting for {path / 'modelzip.json'} ...", flush=True)
        time.sleep(30)


def cpu_info() -> dict[str, Any]:
    """The CPU model and the instruction sets that decide int8 speed (VNNI: int8 dot
    products without the int16 saturation of AVX2's VPMADDUBSW)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu_model": platform.processor() or None}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    bf16 = ("avx512_bf16", "amx_bf16")  # bf16 arithmetic (OpenVINO's default precision there)
    return {"cpu_model": model, "cpu_int8_flags": [f for f in wanted if f in flags],
            "cpu_bf16_flags": [f for f in bf16 if f in flags]}


def provenance() -> dict[str, Any]:
    """What a result depends on besides its settings: the git commit (with a flag when the
    code in the work tree differed from it), library versions and the CPU."""
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=root).stdout.strip() or None
    # benchmark outputs (results, checkpoints) change while benchmarks run: not counted
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                 ".", ":!bench/results", ":!bench/checkpoints"],
                                capture_output=True, text=True, cwd=root).stdout.strip())
    out: dict[str, Any] = {"git_commit": commit, "git_dirty": dirty}
    for pkg in ("modelzip", "torch", "numpy", "onnxruntime", "torch-pruning", "transformers"):
        try:
            out[f"{pkg.replace('-', '_')}_version"] = version(pkg)
        except PackageNotFoundError:
            out[f"{pkg.replace('-', '_')}_version"] = None
    return {**out, **cpu_info()}


# Taken when a benchmark starts (it imports this module first): the code it runs is the code
# of that moment, whatever is committed before it writes its results.
AT_START = provenance()


def write_results(path: Path, benchmark: str, description: str, rows: list[dict[str, Any]],
                  **extra: Any) -> dict[str, Any]:
    """Write one results file: what it is, when and where it was made (the commit, versions and
    CPU at the benchmark's start), then one flat object per model (``extra`` goes before the
    rows)."""
    doc = {"benchmark": benchmark, "description": description,
           "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **AT_START, **extra,
           "models": rows}
    write_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    return doc


def quick_data(train: Any, test: Any, n_train: int, n_test: int) -> tuple[Any, Any]:
    """Seeded subsets of a few hundred images, for the scripts' --quick mode."""
    from modelzip.pipeline import seeded_subset

    return seeded_subset(train, n_train), seeded_subset(test, n_test)


def quick_baseline(name: str, train: Any, augment: str = "none") -> Any:
    """A zoo model trained for one epoch on ``train``: a stand-in baseline for --quick."""
    import torch

    from modelzip.train import TrainConfig, fit
    from modelzip.zoo import build_model

    torch.manual_seed(0)  # the initial weights
    model = build_model(name)
    fit(model, train, TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=augment, seed=0),
        progress=False)
    return model.eval()


def time_interleaved(runners: dict[str, Any], rounds: int, per_round: int, warmup: int = 20,
                     seed: int = 0) -> dict[str, list[float]]:
    """Per-run wall times (ms) of each runner (a callable), interleaved: in every round each
    runs ``per_round`` timed times after one untimed run, the runners in a seeded random order.
    Random rather than rotating: in a fixed cycle a runner always follows the same one, and
    after a heavy AVX-512 fp32 one the next ran up to 1.7x slower for several runs."""
    import random

    order = list(runners)
    rng = random.Random(seed)
    for name in order:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in order}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = runners[name]
            fn()
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times
