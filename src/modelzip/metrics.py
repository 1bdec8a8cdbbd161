"""Measurements: parameters, non-zeros, MACs/FLOPs, bytes, latency, peak memory, accuracy.

Every figure here is measured on the model as it is: counts are read off its tensors, FLOPs
are counted by PyTorch's own ``FlopCounterMode`` while it runs, latency is timed, memory is
read from the operating system.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from modelzip.core.dataset import call_model
from modelzip.errors import ConfigError
from modelzip.zoo import check_input_shape

__all__ = [
    "LatencyStats",
    "LayerStats",
    "ModelProfile",
    "measure",
    "measure_latency",
    "measure_peak_memory",
    "profile_model",
    "render_profile",
]

FP32_BYTES = 4


@dataclass(frozen=True)
class LayerStats:
    """One layer with parameters of its own (Conv2d, Linear, BatchNorm, ...)."""

    name: str
    type: str
    weight_shape: tuple[int, ...]
    params: int
    nonzero: int
    macs: int  # multiply-accumulates for one sample of the profiled input shape
    dense_bytes: int  # fp32 bytes of all its parameters

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def kept_pct(self) -> float:
        return 100.0 * self.nonzero / self.params if self.params else 0.0


@dataclass
class ModelProfile:
    """Per-layer and total static figures of a model for one input shape (batch 1)."""

    input_shape: tuple[int, ...]
    layers: list[LayerStats]
    total_macs: int  # all counted ops, including those outside parameterised layers

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    @property
    def dense_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "nonzero_params": self.nonzero,
            "dense_fp32_bytes": self.dense_bytes,
            "macs": self.total_macs,
            "flops": self.total_flops,
            "layers": [{**asdict(layer), "weight_shape": list(layer.weight_shape),
                        "flops": layer.flops} for layer in self.layers],
        }


def _own_params(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters(recurse=False))


def _example_input(model: nn.Module, input_shape: tuple[int, ...] | None,
                   batch_size: int = 1, example_inputs: Any = None) -> Any:
    """Inputs for ``batch_size`` samples: ``example_inputs`` (a tensor, tuple or dict, batch
    first) cut or repeated to that batch, else seeded normal inputs of ``input_shape`` (or the
    zoo's recorded shape)."""
    if example_inputs is not None:
        return _with_batch(example_inputs, batch_size)
    if input_shape is None:
        spec = getattr(model, "modelzip_spec", None)
        if spec is None or not spec.input_shape:
            raise ConfigError(f"cannot tell what a {type(model).__name__} takes as input; pass "
                              "example_inputs (a tensor, tuple or dict of tensors, batch "
                              "first) or input_shape")
        input_shape = spec.input_shape
    check_input_shape(model, tuple(input_shape))
    return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))


def _with_batch(inputs: Any, n: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        reps = -(-n // max(int(inputs.shape[0]), 1))
        return inputs.repeat(reps, *([1] * (inputs.ndim - 1)))[:n]
    if isinstance(inputs, dict):
        return {k: _with_batch(v, n) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(_with_batch(v, n) for v in inputs)
    return inputs


def _sample_shape(inputs: Any) -> tuple[int, ...]:
    """The per-sample shape of single-tensor inputs; () for tuple/dict inputs."""
    return tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else ()


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
               example_inputs: Any = None) -> tuple[dict[str, int], int]:
    """MACs per module name and in total, for one sample, as counted by PyTorch's
    ``FlopCounterMode`` (matmul and convolution ops; element-wise ops are not counted)."""
    x = _example_input(model, input_shape, 1, example_inputs)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            call_model(model, x)
    finally:
        model.train(was_training)
    per_module: dict[str, int] = {}
    total = 0
    for key, ops in counter.get_flop_counts().items():
        flops = int(sum(ops.values()))
        if key == "Global":
            total = flops // 2
            continue
        # Keys are "<RootClass>.<qualified name>"; the root itself has no dot.
        _, _, name = key.partition(".")
        per_module[name] = flops // 2
    return per_module, total


def profile_model(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                  example_inputs: Any = None) -> ModelProfile:
    """Per-layer parameters, non-zeros, MACs and dense bytes for one sample of
    ``example_inputs`` (any model) or of ``input_shape`` (a zoo model knows its own)."""
    x = _example_input(model, input_shape, 1, example_inputs)
    macs, total = count_macs(model, example_inputs=x)
    layers = []
    for name, module in model.named_modules():
        params = _own_params(module)
        if not params:
            continue
        weight = dict(params).get("weight", params[0][1])
        n = sum(p.numel() for _, p in params)
        nz = sum(int(torch.count_nonzero(p.detach())) for _, p in params)
        layers.append(LayerStats(
            name=name or "(root)", type=type(module).__name__,
            weight_shape=tuple(weight.shape), params=n, nonzero=nz,
            macs=macs.get(name, 0), dense_bytes=n * FP32_BYTES))
    return ModelProfile(input_shape=_sample_shape(x), layers=layers, total_macs=total)


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock time of one forward pass, in milliseconds, over ``runs`` timed runs."""

    batch_size: int
    threads: int
    runs: int
    warmup: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "iqr_ms": self.iqr_ms}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                    batch_size: int = 1, threads: int = 1, warmup: int = 10,
                    runs: int = 50, example_inputs: Any = None) -> LatencyStats:
    """Median and quartiles of the forward time after ``warmup`` untimed runs, in eval mode,
    with ``threads`` intra-op threads."""
    if runs < 5:
        raise ConfigError(f"runs must be >= 5 for quartiles to mean anything, got {runs}")
    if threads < 1 or batch_size < 1:
        raise ConfigError("threads and batch_size must be >= 1")
    x = _example_input(model, input_shape, batch_size, example_inputs)
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch_threads(threads):
            for _ in range(warmup):
                call_model(model, x)
            for _ in range(runs):
                t0 = time.perf_counter()
                call_model(model, x)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was_training)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return LatencyStats(batch_size=batch_size, threads=threads, runs=runs, warmup=warmup,
                        median_ms=statistics.median(times), q1_ms=q1, q3_ms=q3,
                        min_ms=min(times), max_ms=max(times))


def _read_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so the next peak is not hidden by
    pages the allocator kept from earlier work."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@torch.no_grad()
def measure_peak_memory(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                        batch_size: int = 1, repeats: int = 3,
                        example_inputs: Any = None) -> int | None:
    """Extra resident memory (bytes) that one inference needs in steady state: the process's
    peak RSS during the forward pass minus its RSS just before, after one untimed warm-up
    (which pays one-time kernel set-up) and with freed heap memory returned to the OS; the
    median of ``repeats`` runs. Linux only (reads /proc, resets the peak through
    /proc/self/clear_refs); None where that is not available."""
    x = _example_input(model, input_shape, batch_size, example_inputs)
    was_training = model.training
    model.eval()
    samples = []
    try:
        call_model(model, x)
        for _ in range(repeats):
            _release_free_memory()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to current RSS
            except OSError:
                return None
            before = _read_status_kib("VmRSS")
            call_model(model, x)
            peak = _read_status_kib("VmHWM")
            if before is None or peak is None:
                return None
            samples.append(max(peak - before, 0) * 1024)
    finally:
        model.train(was_training)
    return int(statistics.median(samples))


@dataclass
class Measurement:
    """All figures of one model: profile, latency per (batch, threads), memory, accuracy."""

    profile: ModelProfile
    latency: list[LatencyStats] = field(default_factory=list)
    peak_memory_bytes: dict[int, int | None] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.profile.to_dict(),
            "latency": [s.to_dict() for s in self.latency],
            "peak_inference_memory_bytes": {str(k): v for k, v in self.peak_memory_bytes.items()},
            "accuracy": self.accuracy,
        }


def measure(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
            data: Any = None, batch_sizes: tuple[int, ...] = (1, 64),
            threads: tuple[int, ...] | None = None, runs: int = 50,
            latency: bool = True, example_inputs: Any = None) -> Measurement:
    """Profile, and optionally time, ``model`` on ``example_inputs`` (any model) or
    ``input_shape``; evaluate it on ``data`` if given."""
    from modelzip.train import evaluate

    prof = profile_model(model, input_shape, example_inputs=example_inputs)
    result = Measurement(profile=prof)
    if latency:
        thread_counts = threads or tuple(sorted({1, torch.get_num_threads()}))
        for bs in batch_sizes:
            for th in thread_counts:
                result.latency.append(measure_latency(
                    model, input_shape, batch_size=bs, threads=th, runs=runs,
                    example_inputs=example_inputs))
            result.peak_memory_bytes[bs] = measure_peak_memory(
                model, input_shape, batch_size=bs, example_inputs=example_inputs)
    if data is not None:
        result.accuracy = evaluate(model, data).to_dict()
    return result


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def render_profile(measurement: Measurement | ModelProfile, title: str = "") -> Any:
    """A rich Table: one row per layer, then totals, latency and accuracy below."""
    from rich.table import Table

    m = measurement if isinstance(measurement, Measurement) else Measurement(measurement)
    prof = m.profile
    table = Table(title=title or None, show_footer=True)
    total_macs = max(prof.total_macs, 1)
    table.add_column("layer", footer="total")
    table.add_column("type")
    table.add_column("weight shape")
    table.add_column("params", justify="right", footer=f"{prof.params:,}")
    table.add_column("non-zero", justify="right", footer=f"{prof.nonzero:,}")
    table.add_column("kept %", justify="right",
                     footer=f"{100.0 * prof.nonzero / max(prof.params, 1):.1f}")
    table.add_column("MACs", justify="right", footer=f"{prof.total_macs:,}")
    table.add_column("MACs %", justify="right", footer="100.0")
    table.add_column("fp32 bytes", justify="right", footer=_human_bytes(prof.dense_bytes))
    for layer in prof.layers:
        table.add_row(layer.name, layer.type, "x".join(map(str, layer.weight_shape)),
                      f"{layer.params:,}", f"{layer.nonzero:,}", f"{layer.kept_pct:.1f}",
                      f"{layer.macs:,}", f"{100.0 * layer.macs / total_macs:.1f}",
                      _human_bytes(layer.dense_bytes))
    captions = [f"input {'x'.join(map(str, prof.input_shape))}, MACs per sample "
                "(conv and matmul ops, counted by torch.utils.flop_counter)"]
    for s in m.latency:
        captions.append(f"latency batch {s.batch_size}, {s.threads} thread(s): median "
                        f"{s.median_ms:.3f} ms, IQR {s.iqr_ms:.3f} ms over {s.runs} runs")
    for bs, mem in m.peak_memory_bytes.items():
        if mem is not None:
            captions.append(f"peak extra memory of one inference at batch {bs}: "
                            f"{_human_bytes(mem)}")
    if m.accuracy:
        captions.append(f"test error {m.accuracy['test_error_pct']:.2f}% "
                        f"({m.accuracy['errors']} of {m.accuracy['total']})")
    table.caption = "\n".join(captions)
    return table
