"""An ONNX graph carried inside a .mzip: the graph without its weights, plus the weights as
named arrays that modelzip's coder compresses.

Pack time (may use onnx and torch): every initializer of the graph is moved out into a numpy
array of exactly its dtype (int8 weights, int32 biases, float scales, uint8 zero points, ...)
and left in the graph as an *external-data placeholder*: its name, dtype and shape, no data.
The stripped graph is stored as one blob, the arrays as tensors, through ``write_artifact``.

Run time (numpy + onnxruntime only, no onnx, no torch): onnxruntime is handed the stripped
graph bytes and the arrays through ``SessionOptions.add_external_initializers``; it replaces
each placeholder by the array of that name, checking its dtype and shape, before optimizing the
graph. The session is therefore built from the same graph, with the same weights, as the one
that was measured: outputs are bit-identical to a session on the original ONNX bytes.

Why placeholders and not a graph without initializers: onnxruntime refuses a graph whose nodes
read a name that is neither a graph input, an initializer nor a node output, and
``add_initializer`` only overrides initializers that exist. Declaring the weights as graph
inputs instead would make them non-constant, which disables constant folding and the fusion of
QuantizeLinear/DequantizeLinear pairs into integer kernels: a different graph from the one
measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelzip.errors import ConfigError, ModelzipError

if TYPE_CHECKING:  # pack-time types only; the runner never imports these
    import onnxruntime
    from torch import nn

    from modelzip.codec.artifact import Artifact

__all__ = [
    "GRAPH_BLOB",
    "OnnxGraphSpec",
    "OnnxPackage",
    "build_session",
    "input_spec_text",
    "load_onnx_package",
    "pack_model_onnx",
    "pack_onnx",
    "split_initializers",
]

GRAPH_BLOB = "onnx_graph"  # blob name of the stripped graph in the artifact
MODEL_FORMAT = "onnx"  # artifact.model["format"] of an artifact that carries a graph
# external_data "location" of a stripped initializer. onnxruntime never opens it when the array
# is supplied; a name that cannot be a real file makes a missing array fail loudly.
PLACEHOLDER_LOCATION = "modelzip:stripped-initializer"

# ONNX TensorProto element types the artifact can store, as numpy dtype names (the values of
# onnx.TensorProto.DataType; listed here so the runner needs no onnx).
_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16"}
_NUMPY_DTYPES = {"float32", "float16", "int8", "uint8", "int32", "int64"}
# Operators whose presence makes a graph integer-quantized.
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
              "QLinearMatMul", "QLinearAdd", "QLinearMul", "ConvInteger", "MatMulInteger"}


@dataclass(frozen=True)
class OnnxGraphSpec:
    """What the runner needs to know about the graph's input and output."""

    input_name: str
    input_shape: tuple[int, ...]  # per sample, e.g. (1, 28, 28)
    input_dtype: str  # numpy dtype name
    batch: int | None  # fixed batch size of the graph, None when dynamic
    output_name: str
    num_outputs: int | None  # classes, when the graph says
    precision: str  # "fp32" or "int8"

    def to_dict(self) -> dict[str, Any]:
        return {"input_name": self.input_name, "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype, "batch": self.batch,
                "output_name": self.output_name, "num_outputs": self.num_outputs,
                "precision": self.precision}


# ---------------------------------------------------------------------------- pack time
def split_initializers(onnx_bytes: bytes) -> tuple[bytes, dict[str, np.ndarray], OnnxGraphSpec]:
    """Move every initializer of the main graph whose dtype the artifact can store out into a
    numpy array; return the stripped graph (serialized), the arrays by initializer name, and
    the graph's input/output spec. Other initializers (float64, bool, ...) stay in the graph."""
    import onnx
    from onnx import numpy_helper

    model = _parse_onnx(onnx_bytes)
    graph = model.graph
    names = [t.name for t in graph.initializer]
    if len(set(names)) != len(names):
        raise ConfigError("the ONNX graph has two initializers with the same name")
    arrays: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        external = tensor.data_location == onnx.TensorProto.EXTERNAL
        if tensor.data_type not in _ONNX_TO_NUMPY or external:
            continue
        array = numpy_helper.to_array(tensor)
        if array.dtype.name != _ONNX_TO_NUMPY[tensor.data_type]:  # defensive: exact dtype only
            continue
        arrays[tensor.name] = np.require(array, requirements="C")  # keeps 0-d scalars 0-d
        name, data_type, dims = tensor.name, tensor.data_type, list(tensor.dims)
        tensor.Clear()
        tensor.name, tensor.data_type = name, data_type
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", PLACEHOLDER_LOCATION
    return model.SerializeToString(), arrays, _graph_spec(model)


def _parse_onnx(onnx_bytes: bytes):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except (DecodeError, ValueError) as exc:
        raise ConfigError(f"not a valid ONNX model ({exc})") from None
    if not model.graph.node:
        raise ConfigError("the ONNX model has an empty graph")
    return model


def _graph_spec(model) -> OnnxGraphSpec:
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise ConfigError(f"the runner takes graphs with one input (images); this graph has "
                          f"{len(inputs)} inputs: {', '.join(i.name for i in inputs)}")
    tin = inputs[0].type.tensor_type
    if tin.elem_type not in _ONNX_TO_NUMPY:
        raise ConfigError(f"graph input {inputs[0].name!r} has ONNX element type "
                          f"{tin.elem_type}; the runner feeds float32, uint8 or int tensors")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tin.shape.dim]
    if len(dims) < 2 or any(d is None for d in dims[1:]):
        raise ConfigError(f"graph input {inputs[0].name!r} has shape {dims}; the runner needs a "
                          "batch dimension followed by a fixed per-sample shape")
    out_dims = [d.dim_value if d.HasField("dim_value") else None
                for d in graph.output[0].type.tensor_type.shape.dim]
    ops = {n.op_type for n in graph.node}
    return OnnxGraphSpec(
        input_name=inputs[0].name, input_shape=tuple(int(d) for d in dims[1:]),
        input_dtype=_ONNX_TO_NUMPY[tin.elem_type], batch=dims[0],
        output_name=graph.output[0].name,
        num_outputs=out_dims[-1] if len(out_dims) == 2 else None,
        precision="int8" if ops & _QUANT_OPS else "fp32")


def _runner_meta(meta: dict[str, Any], spec: OnnxGraphSpec) -> dict[str, Any]:
    """Validate what the caller says about inputs (mean/std, classes) against the graph."""
    out = dict(meta)
    channels = spec.input_shape[0]
    mean, std = meta.get("mean"), meta.get("std")
    if (mean is None) != (std is None):
        raise ConfigError("meta needs both 'mean' and 'std' (to normalize uint8 images) or "
                          "neither")
    if mean is not None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"meta 'mean'/'std' have {len(mean)}/{len(std)} values; the "
                              f"graph input has {channels} channels")
        if not all(s > 0 for s in std):
            raise ConfigError(f"meta 'std' must be positive, got {std}")
        out["mean"], out["std"] = mean, std
    classes = meta.get("classes")
    if classes is not None:
        classes = [str(c) for c in classes]
        if spec.num_outputs is not None and len(classes) != spec.num_outputs:
            raise ConfigError(f"meta 'classes' names {len(classes)} classes; the graph outputs "
                              f"{spec.num_outputs}")
        out["classes"] = classes
    for key, value in spec.to_dict().items():
        if key in meta and meta[key] != value:
            raise ConfigError(f"meta says {key}={meta[key]!r} but the graph has {value!r}")
    return out


def pack_onnx(onnx_bytes: bytes, *, meta: dict[str, Any] | None = None,
              coder: str = "best") -> bytes:
    """Pack an ONNX model into .mzip bytes: the graph without initializer data as a blob, the
    initializers as tensors coded by modelzip's coder.

    ``meta`` may hold ``mean`` and ``std`` (per channel, for images scaled to [0, 1]; with them
    the runner also accepts raw uint8 images), ``classes`` (names, one per output) and anything
    else worth keeping (dataset name, metrics). The graph's input name, per-sample shape, dtype,
    output name and precision (fp32/int8) are read from the graph and recorded beside them."""
    from modelzip.codec.artifact import write_artifact

    graph_bytes, arrays, spec = split_initializers(onnx_bytes)
    runner_meta = _runner_meta(meta or {}, spec)
    model_info = {"format": MODEL_FORMAT, "graph_blob": GRAPH_BLOB, **spec.to_dict(),
                  "initializers": sorted(arrays)}
    return write_artifact(arrays, model=model_info, blobs={GRAPH_BLOB: graph_bytes},
                          meta=runner_meta, coder=coder)


def pack_model_onnx(model: nn.Module, *, int8: bool, calibration: np.ndarray | None = None,
                    meta: dict[str, Any] | None = None, calibration_method: str = "minmax",
                    coder: str = "best") -> bytes:
    """Export a PyTorch model to ONNX (and quantize it to static int8 when ``int8``, calibrated
    on ``calibration``: normalized float32 images (N, C, H, W)), then ``pack_onnx`` it. When
    calibration images are given, the export is also checked against PyTorch on the first 64
    of them."""
    import torch

    from modelzip.runtime.export import export_onnx

    if int8 and (calibration is None or len(calibration) == 0):
        raise ConfigError("int8 packing needs calibration images (a few hundred normalized "
                          "training images, float32 (N, C, H, W))")
    check = None if calibration is None else torch.from_numpy(
        np.ascontiguousarray(calibration[:64], dtype=np.float32))
    onnx_bytes = export_onnx(model, check_inputs=check)
    info = dict(meta or {})
    if int8:
        from modelzip.runtime.int8 import quantize_onnx_int8

        onnx_bytes, report = quantize_onnx_int8(onnx_bytes, np.asarray(calibration),
                                                method=calibration_method)
        info.setdefault("quantization", _jsonable(report))
    return pack_onnx(onnx_bytes, meta=info, coder=coder)


def _jsonable(report: Any) -> Any:
    """The quantization report as JSON-friendly data (a dataclass, a dict or its repr)."""
    import dataclasses
    import json

    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        report = dataclasses.asdict(report)
    elif hasattr(report, "to_dict"):
        report = report.to_dict()
    try:
        json.dumps(report)
    except (TypeError, ValueError):
        return repr(report)
    return report


# ---------------------------------------------------------------------------- run time
@dataclass(frozen=True)
class OnnxPackage:
    """An artifact's ONNX graph (initializers stripped), its arrays, and what it expects."""

    graph: bytes
    initializers: dict[str, np.ndarray]
    spec: OnnxGraphSpec
    meta: dict[str, Any]

    @property
    def mean(self) -> tuple[float, ...] | None:
        return tuple(self.meta["mean"]) if self.meta.get("mean") is not None else None

    @property
    def std(self) -> tuple[float, ...] | None:
        return tuple(self.meta["std"]) if self.meta.get("std") is not None else None

    @property
    def classes(self) -> tuple[str, ...] | None:
        return tuple(self.meta["classes"]) if self.meta.get("classes") is not None else None


class NoOnnxGraphError(ModelzipError):
    """The artifact was packed without an ONNX graph, so the runner cannot run it."""


def load_onnx_package(artifact: Artifact, *, source: str = "the artifact") -> OnnxPackage:
    """The ONNX graph, arrays and input spec of a decoded artifact. Raises NoOnnxGraphError for
    an artifact without a graph, and ModelzipError when its parts do not fit together."""
    model = artifact.model or {}
    blobs = artifact.blobs or {}
    if model.get("format") != MODEL_FORMAT:
        raise NoOnnxGraphError(
            f"{source} carries no ONNX graph (it holds weights for a PyTorch model), so the "
            "runner cannot run it; pack it with the ONNX graph: modelzip pack-onnx CHECKPOINT "
            "-o FILE.mzip [--int8]")
    if model.get("graph_blob", GRAPH_BLOB) not in blobs:
        raise ModelzipError(f"{source}: the manifest describes an ONNX model but the file holds "
                            "no graph blob; pack the model again")
    try:
        spec = OnnxGraphSpec(
            input_name=str(model["input_name"]),
            input_shape=tuple(int(d) for d in model["input_shape"]),
            input_dtype=str(model["input_dtype"]),
            batch=None if model.get("batch") is None else int(model["batch"]),
            output_name=str(model["output_name"]),
            num_outputs=None if model.get("num_outputs") is None else int(model["num_outputs"]),
            precision=str(model.get("precision", "fp32")))
        names = [str(n) for n in model["initializers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelzipError(f"{source}: the ONNX model description in the manifest is "
                            f"incomplete ({exc!r}); pack the model again") from None
    if spec.input_dtype not in _NUMPY_DTYPES:
        raise ModelzipError(f"{source}: unsupported graph input dtype {spec.input_dtype!r}")
    tensors = artifact.tensors
    missing = sorted(set(names) - set(tensors))
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ModelzipError(f"{source}: the graph's weights and the stored tensors differ "
                            f"(missing: {missing[:3]}, unexpected: {extra[:3]}); pack it again")
    arrays = {n: np.require(tensors[n], requirements="C") for n in names}
    return OnnxPackage(graph=blobs[model.get("graph_blob", GRAPH_BLOB)], initializers=arrays,
                       spec=spec, meta=dict(artifact.meta or {}))


def build_session(package: OnnxPackage, *, threads: int = 1,
                  options: onnxruntime.SessionOptions | None = None
                  ) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the package's graph with its arrays put back in place. The
    OrtValues are kept on the session (onnxruntime reads the arrays' memory)."""
    import onnxruntime as ort

    from modelzip.runtime.ort import session_options

    opts = options if options is not None else session_options(threads=threads)
    names = list(package.initializers)
    values = [ort.OrtValue.ortvalue_from_numpy(package.initializers[n]) for n in names]
    if names:
        opts.add_external_initializers(names, values)
    try:
        session = ort.InferenceSession(package.graph, sess_options=opts,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph)
        raise ModelzipError(f"onnxruntime cannot load the stored graph: {exc}") from None
    session.modelzip_initializers = values  # keep the buffers alive as long as the session
    return session


def input_spec_text(spec: OnnxGraphSpec, package: OnnxPackage | None = None) -> str:
    """The inputs a model accepts, in words, for error messages."""
    shape = ", ".join(str(d) for d in spec.input_shape)
    batch = "N" if spec.batch is None else str(spec.batch)
    text = f"({batch}, {shape}) {spec.input_dtype}"
    if package is not None and package.mean is not None:
        c, *hw = spec.input_shape
        raw = [f"({batch}, {', '.join(str(d) for d in spec.input_shape)})"]
        if c == 1:
            raw.insert(0, f"({batch}, {', '.join(str(d) for d in hw)})")
        else:
            raw.append(f"({batch}, {', '.join(str(d) for d in (*hw, c))})")
        text += (f" (or uint8 images {' or '.join(raw)}, which are normalized with the stored "
                 "mean/std)")
    return text
