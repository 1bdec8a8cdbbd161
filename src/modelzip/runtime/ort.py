"""onnxruntime sessions with a stated thread count. Torch-free: the on-board runner uses it.

Threads: ``intra_op_num_threads`` is the one that matters for these sequential graphs (the
work inside one Conv or Gemm is split across it); ``inter_op_num_threads`` is 1 and the
graph runs sequentially, so ``threads`` is the whole CPU budget of the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelzip.errors import ConfigError, ExportError, ShapeError

__all__ = ["OPTIMIZATION_LEVELS", "make_session", "run_batches", "session_options"]

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    # "all" adds the layout transformations (NCHWc for fp32 convs, NHWC for QLinearConv)
    # that make the CPU kernels fast; the default for timing and inference.
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(*, threads: int = 1, optimization: str = "all", spinning: bool = False,
                    profile_prefix: str | None = None,
                    optimized_model_path: str | os.PathLike[str] | None = None
                    ) -> ort.SessionOptions:
    """The options of every modelzip onnxruntime session: ``threads`` intra-op threads,
    sequential execution, the graph ``optimization`` level. ``spinning``: let idle worker
    threads busy-wait for the next run (onnxruntime's default); off here, since on a device it
    burns energy and on a shared CPU it takes cores from other work (measured: it slowed
    PyTorch, timed in between, 10-100x at 2 threads on 2 cores). ``profile_prefix`` turns on
    onnxruntime's per-operator profiler (``session.end_profiling()`` returns the JSON file);
    ``optimized_model_path`` saves the graph as onnxruntime rewrote it (which kernels run)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    if optimization not in OPTIMIZATION_LEVELS:
        raise ConfigError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, "
                          f"got {optimization!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: not the "hardware specific" notice on save
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    return opts


def make_session(model: bytes | str | os.PathLike[str], *, threads: int = 1,
                 optimization: str = "all", spinning: bool = False,
                 profile_prefix: str | None = None,
                 optimized_model_path: str | os.PathLike[str] | None = None
                 ) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (serialized ONNX bytes or a file path) with
    ``session_options(...)`` of the same arguments."""
    opts = session_options(threads=threads, optimization=optimization, spinning=spinning,
                           profile_prefix=profile_prefix,
                           optimized_model_path=optimized_model_path)
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.is_file():
            raise ExportError(f"{path}: ONNX model file not found")
        model = str(path)
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"onnxruntime cannot load this ONNX model: {first_line}") from None


def run_batches(session: ort.InferenceSession, inputs: np.ndarray,
                batch_size: int = 500) -> np.ndarray:
    """The session's first output for ``inputs`` (float32, N x ...), computed in batches and
    concatenated; the input shape is checked against the graph's (batch dimension free)."""
    meta = session.get_inputs()[0]
    expected = meta.shape[1:]
    if inputs.ndim != len(meta.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(expected, inputs.shape[1:],
                                                          strict=True)):
        raise ShapeError(f"the model expects inputs of shape N x "
                         f"{' x '.join(str(d) for d in expected)}, got "
                         f"{' x '.join(str(d) for d in inputs.shape)}")
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    if isinstance(meta.shape[0], int):  # a graph exported with a fixed batch size
        batch_size = meta.shape[0]
        if len(x) % batch_size:
            raise ShapeError(f"the model takes batches of exactly {batch_size}; got "
                             f"{len(x)} inputs")
    outs = [session.run(None, {meta.name: x[i:i + batch_size]})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
