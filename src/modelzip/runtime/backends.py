"""The runner's inference backends: onnxruntime (the default, everywhere) and OpenVINO (the
optional extra ``modelzip[openvino]``, for x86 boards). Torch-free: numpy, onnxruntime and,
when asked for, openvino.

Both run the same artifact: the stored graph with its decoded arrays put back in place.
onnxruntime takes the arrays as external initializers (``onnx_artifact.build_session``);
OpenVINO reads whole ONNX models, so ``embed_initializers`` writes each array into its
placeholder (with the ``onnx`` package, which the ``openvino`` extra brings) and
``openvino.Core.read_model`` converts the result.

Precision is never changed silently. OpenVINO's CPU plugin runs "fp32" graphs in bf16 on CPUs
with AMX or AVX-512 BF16 unless told otherwise, so every compile states
``INFERENCE_PRECISION_HINT`` (f32, or bf16 when asked for on a CPU that has it), and the
precision each backend actually executes is reported: read off OpenVINO's runtime graph (the
precision of its convolutions and matrix products), or the graph's own for onnxruntime.

``auto`` picks the faster backend by a short interleaved measurement at batch 1 when the runner
loads, or takes the choice recorded in the artifact's ``meta["backend_choice"]`` when it was
measured on a CPU with the same features. A graph OpenVINO cannot compile falls back to
onnxruntime under ``auto`` (logged, with OpenVINO's reason) and is refused under an explicit
``openvino``.

An int8 graph packed with full 8-bit weights (chosen for a CPU with VNNI or AMX) would
saturate the int16 sums of the int8 kernels of an x86 CPU without them; there the runner
warns and runs the weights dequantized in fp32 instead (onnxruntime with the QuantizeLinear /
DequantizeLinear pairs left unfused: exact, slower).
"""

from __future__ import annotations

import logging
import re
import statistics
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np

from modelzip.errors import ConfigError, ModelzipError
from modelzip.runtime.cpu import CpuFeatures, cpu_features, int8_weight_bits
from modelzip.runtime.onnx_artifact import OnnxPackage, build_session

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendError", "CpuFeatureWarning",
           "OnnxruntimeBackend", "OpenvinoBackend", "embed_initializers", "measure_backends",
           "open_backend", "recorded_weight_bits"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
OPENVINO_EXTRA = "pip install 'modelzip[openvino]'"
AUTO_ROUNDS = 7  # interleaved rounds of the load-time measurement...
AUTO_RUNS = 5  # ...of this many batch-1 inferences per backend
AUTO_WARMUP = 3
# OpenVINO layer types that do the arithmetic; their runtime precision is what "executed in"
# means (the rest are reorders, reshapes and the like).
_COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution",
                             "FullyConnected", "MatMul", "RNNCell", "RNNSeq", "ScaledAttn"})
_OV_PRECISION = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f16": "fp16", "f32": "fp32"}
_PRECISION_ORDER = ("int8", "bf16", "fp16", "fp32")


class BackendError(ModelzipError):
    """A backend is not installed, cannot run this graph, or cannot give this precision."""


class CpuFeatureWarning(UserWarning):
    """The artifact was made for a CPU feature that this CPU lacks; a fallback runs."""


# ---------------------------------------------------------------------------- ONNX bytes
def embed_initializers(graph: bytes, arrays: dict[str, np.ndarray]) -> bytes:
    """A stripped ONNX model (``onnx_artifact.split_initializers``) with its arrays written back
    into the placeholders of its main graph: a self-contained ONNX model (bytes). Needs the
    ``onnx`` package (part of the ``openvino`` extra, as OpenVINO reads whole ONNX models)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError:
        raise BackendError(f"the openvino backend needs the onnx package: {OPENVINO_EXTRA}"
                           ) from None
    try:
        model = onnx.load_model_from_string(graph)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelzipError(f"the stored graph is not a valid ONNX model ({exc}); pack the "
                            "model again") from None
    filled: set[str] = set()
    for tensor in model.graph.initializer:
        array = arrays.get(tensor.name)
        if array is None or tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        expected = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if array.dtype != expected or list(array.shape) != list(tensor.dims):
            raise ModelzipError(f"stored tensor {tensor.name!r} is {array.dtype} "
                                f"{list(array.shape)}, but the graph expects {expected} "
                                f"{list(tensor.dims)}; pack it again")
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        filled.add(tensor.name)
    missing = sorted(set(arrays) - filled)
    if missing:
        raise ModelzipError(f"the stored graph has no placeholder for tensors {missing[:3]}; "
                            "pack the model again")
    return model.SerializeToString()


# ---------------------------------------------------------------------------- backends
def recorded_weight_bits(package: OnnxPackage) -> int | None:
    """The int8 weight width the artifact was quantized with (None: not int8, or unknown)."""
    if package.spec.precision != "int8":
        return None
    quant = package.meta.get("quantization")
    if not isinstance(quant, dict) or not isinstance(quant.get("reduce_range"), bool):
        return None
    return 7 if quant["reduce_range"] else 8


class Backend:
    """One way to run an artifact's graph: ``run(feeds)`` gives the first output; ``info``
    says which backend and version ran it, at which precision."""

    name = "backend"
    version = ""
    precision = "fp32"
    threads = 1
    reason = "asked for"  # why this backend runs (auto: the measurement or the record)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self.version, "precision": self.precision,
                "threads": self.threads, "chosen_by": self.reason}


class OnnxruntimeBackend(Backend):
    """onnxruntime's CPU session on the graph (``dequantized``: the QuantizeLinear /
    DequantizeLinear pairs left unfused, so int8 weights run in fp32 arithmetic)."""

    name = "onnxruntime"

    def __init__(self, package: OnnxPackage, *, threads: int = 1,
                 dequantized: bool = False) -> None:
        import onnxruntime

        from modelzip.runtime.ort import session_options

        self.version = onnxruntime.__version__
        self.threads = threads
        self.output = package.spec.output_name
        opts = session_options(threads=threads,
                               optimization="basic" if dequantized else "all")
        self.session = build_session(package, options=opts)
        self.precision = ("fp32 (dequantized int8 weights)" if dequantized
                          and package.spec.precision == "int8" else package.spec.precision)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendError(f"the openvino backend needs the openvino package: "
                           f"{OPENVINO_EXTRA}") from None
    return openvino


_OV_NOISE = re.compile(r"Exception from \S+:\d+:\s*|Check '.*?' failed at \S+:\d+:\s*|"
                       r"FrontEnd API failed with \w+:\s*|\s*To facilitate .*", re.DOTALL)


def _reason(exc: BaseException) -> str:
    """OpenVINO's reason on one line, without its source locations (it names the ops it
    could not convert)."""
    text = " ".join(_OV_NOISE.sub(" ", str(exc)).split())
    return text[:400] or type(exc).__name__


class OpenvinoBackend(Backend):
    """OpenVINO's CPU plugin on the graph, compiled for latency with ``threads`` threads and
    the stated inference precision (fp32 unless bf16 is asked for)."""

    name = "openvino"

    def __init__(self, package: OnnxPackage, *, threads: int = 1, precision: str = "fp32",
                 cpu: CpuFeatures | None = None) -> None:
        ov = _import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{precision!r}")
        cpu = cpu or cpu_features()
        if precision == "bf16" and not cpu.has_bf16:
            raise BackendError("bf16 needs a CPU with avx512_bf16 or amx_bf16, which this one "
                               f"({cpu.model or cpu.machine}) lacks; run in fp32")
        self.version = ov.__version__.split("-")[0]
        self.threads = threads
        core = ov.Core()
        try:
            model = core.read_model(embed_initializers(package.graph, package.initializers))
            self.compiled = core.compile_model(model, "CPU", {
                hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
                props.inference_num_threads: threads,
                hints.performance_mode: hints.PerformanceMode.LATENCY,
                props.num_streams: 1,
                # Not pinned to a core: on a CPU shared with other work a pinned thread waits
                # for its busy core (measured: the same model compiled twice ran 0.37 ms
                # unpinned, 0.62 and 0.93 ms pinned, on 2 loaded cores).
                hints.enable_cpu_pinning: False,
            })
        except ModelzipError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with details
            raise BackendError(f"OpenVINO cannot compile this graph: {_reason(exc)}") from None
        self.request = self.compiled.create_infer_request()
        self.executed = self._executed_precisions()
        self.precision = "+".join(p for p in _PRECISION_ORDER if p in self.executed) or "fp32"

    def _executed_precisions(self) -> dict[str, int]:
        """How many compute layers of the compiled graph run in each precision."""
        counts: Counter[str] = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if rt["layerType"].astype(str) in _COMPUTE_LAYERS:
                prec = rt["runtimePrecision"].astype(str).lower()
                counts[_OV_PRECISION.get(prec, prec)] += 1
        return dict(counts)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # share_inputs: no copy of the (already contiguous) inputs; outputs are copied out
        return self.request.infer(feeds, share_inputs=True)[0]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "compute_layers_by_precision": self.executed}


def _sample_feeds(package: OnnxPackage) -> dict[str, np.ndarray]:
    """Seeded batch-1 inputs (the graph's fixed batch if it has one) for timing."""
    rng = np.random.default_rng(0)
    feeds = {}
    for item in package.spec.inputs:
        shape = (package.spec.batch or 1, *(16 if d is None else d for d in item.shape))
        dtype = np.dtype(item.dtype)
        feeds[item.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                            else np.zeros(shape, dtype))
    return feeds


def measure_backends(backends: dict[str, Backend], feeds: dict[str, np.ndarray], *,
                     rounds: int = AUTO_ROUNDS, runs: int = AUTO_RUNS,
                     warmup: int = AUTO_WARMUP) -> dict[str, float]:
    """Median milliseconds per inference of each backend on ``feeds``, from interleaved
    rounds (so that drift on a shared CPU hits all alike), each block after one untimed run."""
    names = list(backends)
    for name in names:
        for _ in range(warmup):
            backends[name].run(feeds)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            backends[name].run(feeds)  # untimed: the switch from the other backend costs
            for _ in range(runs):
                t0 = time.perf_counter()
                backends[name].run(feeds)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(t) for n, t in times.items()}


def _recorded_choice(package: OnnxPackage, cpu: CpuFeatures) -> str | None:
    """The backend recorded at pack time, if measured on a CPU with these features."""
    choice = package.meta.get("backend_choice")
    if not isinstance(choice, dict) or choice.get("backend") not in BACKENDS[1:]:
        return None
    flags = choice.get("cpu_flags")
    if cpu.flags is None or not isinstance(flags, list) or set(flags) != set(cpu.flags):
        return None
    return str(choice["backend"])


def open_backend(package: OnnxPackage, backend: str = "onnxruntime", *, threads: int = 1,
                 precision: str = "fp32", cpu: CpuFeatures | None = None) -> Backend:
    """The backend that runs ``package``: ``onnxruntime``, ``openvino`` or ``auto`` (the faster
    of the two here, see the module docstring). ``precision`` ``bf16`` needs OpenVINO and a
    CPU with bf16. The returned backend's ``info()`` says what was chosen and why."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                          f"{precision!r}")
    if backend == "onnxruntime" and precision == "bf16":
        raise BackendError("onnxruntime's CPU kernels have no bf16; use --backend openvino "
                           "for bf16")
    cpu = cpu or cpu_features()
    bits = recorded_weight_bits(package)
    if bits is not None and bits > int8_weight_bits(cpu):
        warnings.warn(
            f"this artifact's int8 weights use {bits} bits, chosen for a CPU with VNNI or AMX; "
            f"this CPU ({cpu.model or cpu.machine}) has neither, and its int8 kernels would "
            "saturate: running the weights dequantized in fp32 with onnxruntime (exact, "
            "slower). Pack with 7-bit weights (reduce_range) for this CPU",
            CpuFeatureWarning, stacklevel=2)
        chosen = OnnxruntimeBackend(package, threads=threads, dequantized=True)
        chosen.reason = "cpu-feature fallback"
        return chosen
    if backend == "onnxruntime":
        return OnnxruntimeBackend(package, threads=threads)
    if backend == "openvino":
        return OpenvinoBackend(package, threads=threads, precision=precision, cpu=cpu)
    return _auto(package, threads=threads, precision=precision, cpu=cpu)


def _auto(package: OnnxPackage, *, threads: int, precision: str, cpu: CpuFeatures) -> Backend:
    recorded = _recorded_choice(package, cpu)
    if recorded == "onnxruntime" and precision == "fp32":
        chosen: Backend = OnnxruntimeBackend(package, threads=threads)
        chosen.reason = "recorded at pack time"
        return chosen
    try:
        openvino = OpenvinoBackend(package, threads=threads, precision=precision, cpu=cpu)
    except BackendError as exc:
        if precision == "bf16":
            raise
        log.warning("backend auto: running onnxruntime; %s", exc)
        chosen = OnnxruntimeBackend(package, threads=threads)
        chosen.reason = f"openvino unavailable: {exc}"
        return chosen
    if recorded == "openvino" or precision == "bf16":
        openvino.reason = "recorded at pack time" if recorded else "bf16 needs openvino"
        return openvino
    ort_backend = OnnxruntimeBackend(package, threads=threads)
    ms = measure_backends({"onnxruntime": ort_backend, "openvino": openvino},
                          _sample_feeds(package))
    chosen = openvino if ms["openvino"] < ms["onnxruntime"] else ort_backend
    chosen.reason = "measured at load: " + ", ".join(f"{n} {t:.3f} ms" for n, t in ms.items())
    return chosen
