"""An ONNX graph carried inside a .mzip: the graph without its weights, plus the weights as
named arrays that modelzip's coder compresses.

Pack time (may use onnx and torch): the graph's *weights* are moved out into numpy arrays of
exactly their dtype and left in the graph as *external-data placeholders*: name, dtype and
shape, no data. The stripped graph is stored as one blob, the arrays as tensors, through
``write_artifact``.

Which initializers are weights (``is_stored_initializer``): those of a floating dtype
(float16, float32, float64) or of a quantized one (int8, uint8, int16, uint16 weights and zero
points, int32 biases) with at least ``MIN_STORED_ELEMENTS`` (16) elements. Everything else
stays in the graph with its data: int64 tensors (the shapes, axes, starts/ends and indices
read by Reshape, Slice, Unsqueeze, Expand, Gather...), bool and other dtypes, and every
tensor of fewer than 16 elements (scalar constants, per-tensor scales and zero points). Why:
onnxruntime reads the *values* of shape-like inputs while it resolves the graph, before the
external arrays are put in place, and fails on a placeholder ("Cannot parse data from
external tensors"); and a small tensor costs less in the graph than its manifest entry.

Run time (numpy + onnxruntime only, no onnx, no torch): onnxruntime is handed the stripped
graph bytes and the arrays through ``SessionOptions.add_external_initializers``; it replaces
each placeholder by the array of that name, checking its dtype and shape, before optimizing the
graph. The session is therefore built from the same graph, with the same weights, as the one
that was measured: outputs are bit-identical to a session on the original ONNX bytes.
``pack_onnx`` checks exactly that before it returns: it decodes the bytes it wrote, builds the
runner's session and compares every output with a session on the original graph, bit for bit,
on check inputs (given, or seeded random ones made from the graph's input spec).

Why placeholders and not a graph without initializers: onnxruntime refuses a graph whose nodes
read a name that is neither a graph input, an initializer nor a node output, and
``add_initializer`` only overrides initializers that exist. Declaring the weights as graph
inputs instead would make them non-constant, which disables constant folding and the fusion of
QuantizeLinear/DequantizeLinear pairs into integer kernels: a different graph from the one
measured.

The manifest's ``model`` record of such an artifact (``kind`` "onnx-graph"; an artifact of
``modelzip.codec.model.pack`` says "state-dict" and carries no graph)::

    kind, format       "onnx-graph", "onnx"
    graph_blob         name of the blob holding the stripped graph ("onnx_graph")
    inputs             [{name, shape, dtype}]: every graph input, its per-sample shape (null
                       for a dimension the graph leaves free) and numpy dtype name
    outputs            [name, ...]: every graph output, in order
    input_name, input_shape, input_dtype   the first input (as in the first version)
    batch              fixed batch size of the graph, null when dynamic
    output_name        the first output: what the runner returns
    num_outputs        last dimension of a 2-D first output (classes), when fixed
    precision          "int8" when the graph holds quantization operators, else "fp32"
    initializers       names of the stored tensors (the placeholders' arrays)

The runner does not trust this record: it reads the input and output names, dtypes and
shapes, the batch and the precision from the stored graph itself (``graph_spec_of``: a
bounded reader of the few protobuf fields involved, so that it needs no onnx package), and
refuses a file whose record disagrees with its graph (a manifest edited with its checksums
recomputed) with one error line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelzip.errors import ConfigError, ModelzipError

if TYPE_CHECKING:  # pack-time types only; the runner never imports these
    import onnxruntime
    from torch import nn

    from modelzip.codec.artifact import Artifact

__all__ = [
    "GRAPH_BLOB",
    "MIN_STORED_ELEMENTS",
    "MODEL_KIND",
    "InputSpec",
    "NoOnnxGraphError",
    "OnnxGraphSpec",
    "OnnxPackage",
    "build_session",
    "check_feeds",
    "input_spec_text",
    "is_stored_initializer",
    "load_onnx_package",
    "pack_model_onnx",
    "pack_onnx",
    "pack_onnx_file",
    "split_initializers",
]

GRAPH_BLOB = "onnx_graph"  # blob name of the stripped graph in the artifact
MODEL_FORMAT = "onnx"  # artifact.model["format"] of an artifact that carries a graph
MODEL_KIND = "onnx-graph"  # artifact.model["kind"] of an artifact that carries a graph
STATE_DICT_KIND = "state-dict"  # what modelzip.codec.model.pack writes: weights, no graph
# external_data "location" of a stripped initializer. onnxruntime never opens it when the array
# is supplied; a name that cannot be a real file makes a missing array fail loudly.
PLACEHOLDER_LOCATION = "modelzip:stripped-initializer"
MIN_STORED_ELEMENTS = 16  # smaller initializers stay in the graph (see the module docstring)
CHECK_BATCH = 2  # batch of the generated check inputs (when the graph's batch is free)
FREE_DIM_SIZE = 16  # size given to other free dimensions in generated check inputs

# ONNX TensorProto element types (the values of onnx.TensorProto.DataType, listed here so the
# runner needs no onnx) as numpy dtype names: those of weights moved out of the graph...
_STORED = {1: "float32", 10: "float16", 11: "float64", 3: "int8", 2: "uint8", 5: "int16",
           4: "uint16", 6: "int32"}
# ...and those a graph input may have.
_INPUT_DTYPES = {**_STORED, 7: "int64", 12: "uint32", 13: "uint64", 9: "bool"}
_INPUT_DTYPE_NAMES = frozenset(_INPUT_DTYPES.values())
# Operators whose presence makes a graph integer-quantized.
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
              "QLinearMatMul", "QLinearAdd", "QLinearMul", "ConvInteger", "MatMulInteger"}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, per-sample shape (None: a free dimension) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OnnxGraphSpec:
    """What the runner needs to know about the graph's inputs and outputs. The ``input_*``
    fields describe the first input, ``output_name`` the first output; ``inputs`` and
    ``outputs`` list them all (derived from the first ones when not given)."""

    input_name: str
    input_shape: tuple[int | None, ...]  # per sample, e.g. (1, 28, 28)
    input_dtype: str  # numpy dtype name
    batch: int | None  # fixed batch size of the graph, None when dynamic
    output_name: str
    num_outputs: int | None  # classes, when the graph says
    precision: str  # "fp32" or "int8"
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.inputs:
            object.__setattr__(self, "inputs", (InputSpec(
                self.input_name, tuple(self.input_shape), self.input_dtype),))
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.output_name,))

    def to_dict(self) -> dict[str, Any]:
        return {"input_name": self.input_name, "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype, "batch": self.batch,
                "output_name": self.output_name, "num_outputs": self.num_outputs,
                "precision": self.precision, "inputs": [i.to_dict() for i in self.inputs],
                "outputs": list(self.outputs)}


# ---------------------------------------------------------------------------- pack time
def is_stored_initializer(data_type: int, dims: list[int] | tuple[int, ...]) -> bool:
    """Whether an initializer of this ONNX element type and shape is a weight moved out of
    the graph into a stored tensor (the rule of the module docstring)."""
    return data_type in _STORED and int(np.prod(dims, dtype=np.int64)) >= MIN_STORED_ELEMENTS


def split_initializers(onnx_bytes: bytes) -> tuple[bytes, dict[str, np.ndarray], OnnxGraphSpec]:
    """Move the weights of the main graph (``is_stored_initializer``) out into numpy arrays;
    return the stripped graph (serialized), the arrays by initializer name, and the graph's
    input/output spec. Every other initializer stays in the graph with its data."""
    import onnx
    from onnx import numpy_helper

    model = _parse_onnx(onnx_bytes)
    graph = model.graph
    names = [t.name for t in graph.initializer]
    if len(set(names)) != len(names):
        raise ConfigError("the ONNX graph has two initializers with the same name")
    spec = _graph_spec(model)
    arrays: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ConfigError(f"initializer {tensor.name!r} keeps its data in an external "
                              "file; load the model with its data (onnx.load, or "
                              "pack_onnx_file on the .onnx file beside that data)")
        if not is_stored_initializer(tensor.data_type, tensor.dims):
            continue
        array = numpy_helper.to_array(tensor)
        if array.dtype.name != _STORED[tensor.data_type]:  # defensive: exact dtype only
            continue
        arrays[tensor.name] = np.require(array, requirements="C")
        name, data_type, dims = tensor.name, tensor.data_type, list(tensor.dims)
        tensor.Clear()
        tensor.name, tensor.data_type = name, data_type
        tensor.dims.extend(dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", PLACEHOLDER_LOCATION
    return model.SerializeToString(), arrays, spec


def _parse_onnx(onnx_bytes: bytes):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(bytes(onnx_bytes))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"not a valid ONNX model: it does not parse ({exc}); it is "
                          "truncated or not an ONNX file") from None
    if not model.graph.node:
        raise ConfigError("not a valid ONNX model: its graph has no nodes (an empty, "
                          "truncated or other kind of file)")
    if not model.opset_import:
        raise ConfigError("not a valid ONNX model: it declares no opset (truncated, or not "
                          "an ONNX file)")
    return model


def _dims(value_info) -> list[int | None] | None:
    """The declared dimensions of a tensor value (None: free), or None without a shape."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _graph_spec(model) -> OnnxGraphSpec:
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in init_names]
    if not graph_inputs or not graph.output:
        raise ConfigError(f"the ONNX graph has {len(graph_inputs)} inputs and "
                          f"{len(graph.output)} outputs; the runner needs at least one of each")
    inputs, batches = [], set()
    for value in graph_inputs:
        if not value.type.HasField("tensor_type"):
            raise ConfigError(f"graph input {value.name!r} is not a tensor; the runner feeds "
                              "tensors")
        elem = value.type.tensor_type.elem_type
        if elem not in _INPUT_DTYPES:
            raise ConfigError(f"graph input {value.name!r} has ONNX element type {elem}; the "
                              f"runner feeds {', '.join(sorted(_INPUT_DTYPE_NAMES))}")
        dims = _dims(value)
        if not dims:
            raise ConfigError(f"graph input {value.name!r} has "
                              f"{'no declared shape' if dims is None else 'no dimensions'}; "
                              "the runner needs a batch dimension first")
        if dims[0] is not None:
            batches.add(dims[0])
        inputs.append(InputSpec(value.name, tuple(dims[1:]), _INPUT_DTYPES[elem]))
    if len(batches) > 1:
        raise ConfigError(f"the graph's inputs have different fixed batch sizes "
                          f"{sorted(batches)}; the runner feeds one batch to all of them")
    out_dims = _dims(graph.output[0]) or []
    ops = {n.op_type for n in graph.node}
    first = inputs[0]
    return OnnxGraphSpec(
        input_name=first.name, input_shape=first.shape, input_dtype=first.dtype,
        batch=batches.pop() if batches else None, output_name=graph.output[0].name,
        num_outputs=out_dims[-1] if len(out_dims) == 2 else None,
        precision="int8" if ops & _QUANT_OPS else "fp32", inputs=tuple(inputs),
        outputs=tuple(o.name for o in graph.output))


def _runner_meta(meta: dict[str, Any], spec: OnnxGraphSpec) -> dict[str, Any]:
    """Validate what the caller says about inputs (mean/std, classes) against the graph."""
    out = dict(meta)
    mean, std = meta.get("mean"), meta.get("std")
    if (mean is None) != (std is None):
        raise ConfigError("meta needs both 'mean' and 'std' (to normalize uint8 images) or "
                          "neither")
    if mean is not None:
        image = spec.inputs[0]
        channels = image.shape[0] if image.shape else None
        if len(spec.inputs) != 1 or image.dtype != "float32" or channels is None:
            raise ConfigError(f"meta 'mean'/'std' normalize the channels of one float32 image "
                              f"input; this graph takes {input_spec_text(spec)}")
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
              coder: str = "best",
              check_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None) -> bytes:
    """Pack an ONNX model into .mzip bytes: the graph without its weights as a blob, the
    weights as tensors coded by modelzip's coder (which ones: see the module docstring).

    ``meta`` may hold ``mean`` and ``std`` (per channel, for images scaled to [0, 1]; with them
    the runner also accepts raw uint8 images), ``classes`` (names, one per output) and anything
    else worth keeping (dataset name, metrics). The graph's inputs (names, per-sample shapes,
    dtypes), outputs and precision (fp32/int8) are read from the graph and recorded beside them.

    Before returning, the bytes are decoded again and the runner's session on them must give
    bit-identical outputs to a session on ``onnx_bytes`` on ``check_inputs`` (an array for a
    one-input graph, else a dict by input name; default: seeded random inputs, see
    ``check_feeds``); ModelzipError names the first output that differs."""
    from modelzip.codec.artifact import write_artifact

    graph_bytes, arrays, spec = split_initializers(onnx_bytes)
    runner_meta = _runner_meta(meta or {}, spec)
    feeds = check_feeds(spec, check_inputs)  # refuse bad check inputs before coding anything
    model_info = {"kind": MODEL_KIND, "format": MODEL_FORMAT, "graph_blob": GRAPH_BLOB,
                  **spec.to_dict(), "initializers": sorted(arrays)}
    data = write_artifact(arrays, model=model_info, blobs={GRAPH_BLOB: graph_bytes},
                          meta=runner_meta, coder=coder)
    _verify_packed(data, onnx_bytes, feeds, given=check_inputs is not None)
    return data


def pack_onnx_file(path: str | os.PathLike[str], *, meta: dict[str, Any] | None = None,
                   coder: str = "best",
                   check_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None) -> bytes:
    """``pack_onnx`` of a user's .onnx file (weights kept in external data files beside it are
    read too). Errors name the path: a missing file, one that is not ONNX or is truncated."""
    import onnx

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: ONNX file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass an .onnx file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        model = _parse_onnx(data)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            try:
                onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
            except Exception as exc:  # missing file, a location outside the folder...
                raise ConfigError(f"cannot read its external weight data "
                                  f"({_first_line(exc)})") from None
            data = model.SerializeToString()
        return pack_onnx(data, meta=meta, coder=coder, check_inputs=check_inputs)
    except ModelzipError as exc:
        raise type(exc)(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------- pack check
def check_feeds(spec: OnnxGraphSpec,
                check_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None
                ) -> dict[str, np.ndarray]:
    """The inputs that ``pack_onnx`` checks the packed artifact on: ``check_inputs`` (checked
    against the graph's input names and dtypes), or seeded random inputs made from ``spec``:
    a batch of 2 (or the graph's fixed batch), free dimensions of size 16, floating inputs
    drawn from N(0, 1), integer and bool inputs from {0, 1} (valid token ids and masks)."""
    names = [i.name for i in spec.inputs]
    if check_inputs is None:
        rng = np.random.default_rng(0)
        feeds = {}
        for item in spec.inputs:
            shape = (spec.batch or CHECK_BATCH,
                     *(FREE_DIM_SIZE if d is None else d for d in item.shape))
            dtype = np.dtype(item.dtype)
            if dtype.kind == "f":
                feeds[item.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[item.name] = rng.integers(0, 2, shape).astype(dtype)
        return feeds
    if isinstance(check_inputs, Mapping):
        given = dict(check_inputs)
    elif len(names) == 1:
        given = {names[0]: check_inputs}
    else:
        raise ConfigError(f"check_inputs must be a dict of arrays by input name for this "
                          f"graph, which takes {', '.join(names)}")
    if sorted(given) != sorted(names):
        raise ConfigError(f"check_inputs has inputs {sorted(given)}; the graph takes "
                          f"{sorted(names)}")
    feeds = {}
    for item in spec.inputs:
        array = given[item.name]
        if not isinstance(array, np.ndarray) or array.dtype != np.dtype(item.dtype):
            what = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise ConfigError(f"check_inputs {item.name!r} must be a numpy {item.dtype} "
                              f"array, got {what}")
        if array.ndim != 1 + len(item.shape) or len(array) == 0:
            raise ConfigError(f"check_inputs {item.name!r} has shape {array.shape}; the graph "
                              f"takes {_shape_text('N', item.shape)}")
        feeds[item.name] = np.ascontiguousarray(array)
    return feeds


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _verify_packed(data: bytes, onnx_bytes: bytes, feeds: dict[str, np.ndarray], *,
                   given: bool) -> None:
    """Decode ``data`` as the runner does, build its session, and compare every output with
    a session on the original graph, bit for bit."""
    from modelzip.codec.artifact import read_artifact
    from modelzip.runtime.ort import make_session

    what = "the check inputs" if given else "seeded random check inputs " + ", ".join(
        f"{n} {'x'.join(map(str, a.shape))} {a.dtype}" for n, a in feeds.items())
    original = make_session(onnx_bytes, threads=1)
    try:
        expected = original.run(None, feeds)
    except Exception as exc:  # onnxruntime's own exception types
        hint = "" if given else "; pass check_inputs that it runs on"
        raise ConfigError(f"onnxruntime cannot run the ONNX graph on {what} "
                          f"({_first_line(exc)}){hint}") from None
    package = load_onnx_package(read_artifact(data), source="the packed artifact")
    try:
        session = build_session(package, threads=1)
        got = session.run(None, feeds)
    except Exception as exc:  # a defect of packing, not of the user's model
        raise ModelzipError(f"pack check failed: the packed artifact does not run "
                            f"({_first_line(exc)}); please report this with the ONNX "
                            "model") from None
    for name, g, e in zip((o.name for o in original.get_outputs()), got, expected,
                          strict=True):
        g, e = np.asarray(g), np.asarray(e)
        if g.dtype != e.dtype or g.shape != e.shape or g.tobytes() != e.tobytes():
            diff = ""
            if g.shape == e.shape and g.dtype == e.dtype and g.dtype.kind in "fiu" and g.size:
                diff = f", max |diff| {np.max(np.abs(g.astype(np.float64) - e)):.3g}"
            raise ModelzipError(f"pack check failed: output {name!r} of the packed artifact "
                                f"differs from the original graph's on {what}{diff}; please "
                                "report this with the ONNX model")


def pack_model_onnx(model: nn.Module, *, int8: bool,
                    calibration: np.ndarray | Mapping[str, np.ndarray] | None = None,
                    meta: dict[str, Any] | None = None, calibration_method: str = "minmax",
                    coder: str = "best", example_inputs: Any = None,
                    reduce_range: bool | None = None, clip_activations: bool = False) -> bytes:
    """Export a PyTorch model to ONNX (and quantize it to static int8 when ``int8``, calibrated
    on ``calibration``: inputs as the graph takes them, e.g. normalized float32 images
    (N, C, H, W), or a dict by input name for a model of several inputs), then ``pack_onnx``
    it. ``example_inputs`` (a tensor, tuple or dict of tensors) is what a model that does not
    take one image tensor is traced with; ``reduce_range``: 7-bit int8 weights, None: decided
    by this CPU's features and recorded in meta["quantization"] (see ``quantize_onnx_int8``).
    ``clip_activations``: bound every activation to its range on the calibration inputs
    (before quantizing; ``modelzip.flight.ranger``), the bounds recorded in
    meta["activation_clip"].
    When calibration inputs are given, the export is
    also checked against PyTorch on the first 64 of them, and the packed artifact against the
    ONNX graph on the first 8."""
    import torch

    from modelzip.runtime.export import export_onnx

    def first(n: int, as_torch: bool) -> Any:
        if isinstance(calibration, Mapping):
            return {k: torch.from_numpy(np.ascontiguousarray(v[:n])) if as_torch
                    else np.ascontiguousarray(v[:n]) for k, v in calibration.items()}
        part = np.ascontiguousarray(calibration[:n], dtype=np.float32)
        return torch.from_numpy(part) if as_torch else part

    if (int8 or clip_activations) and (calibration is None or len(calibration) == 0):
        raise ConfigError(f"{'int8 packing' if int8 else 'activation clipping'} needs "
                          "calibration inputs (a few hundred normalized training images, "
                          "float32 (N, C, H, W), or a dict by input name)")
    check = None if calibration is None else first(64, True)
    onnx_bytes = export_onnx(model, check_inputs=check, example_inputs=example_inputs)
    info = dict(meta or {})
    if clip_activations:
        from modelzip.flight.ranger import clip_activations as clip

        data = dict(calibration) if isinstance(calibration, Mapping) else np.asarray(calibration)
        onnx_bytes, bounds = clip(onnx_bytes, data)
        info["activation_clip"] = bounds
    if int8:
        from modelzip.runtime.int8 import quantize_onnx_int8

        data = dict(calibration) if isinstance(calibration, Mapping) else np.asarray(calibration)
        onnx_bytes, report = quantize_onnx_int8(onnx_bytes, data, method=calibration_method,
                                                reduce_range=reduce_range)
        info.setdefault("quantization", _jsonable(report))
    check_inputs = None if calibration is None else first(8, False)
    return pack_onnx(onnx_bytes, meta=info, coder=coder, check_inputs=check_inputs)


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
    """An artifact's ONNX graph (weights stripped), its arrays, and what it expects."""

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


# ---------------------------------------------------------------------------- graph I/O
# The protobuf wire format of the few ONNX fields the runner needs (onnx.proto3 numbers):
# ModelProto.graph 7; GraphProto node 1, initializer 5, input 11, output 12; NodeProto
# op_type 4; TensorProto name 8; ValueInfoProto name 1, type 2; TypeProto tensor_type 1;
# TypeProto.Tensor elem_type 1, shape 2; TensorShapeProto dim 1; Dimension dim_value 1.
_MAX_GRAPH_DIMS = 64


class _Wire:
    """The fields of one protobuf message: {number: [values]} (ints for varint and fixed
    fields, memoryviews for length-delimited ones); ValueError on malformed bytes."""

    def __init__(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.fields: dict[int, list[Any]] = {}
        pos, end = 0, len(view)
        while pos < end:
            key, pos = self._varint(view, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = self._varint(view, pos)
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                value, pos = int.from_bytes(view[pos:pos + size], "little"), pos + size
            elif wire == 2:
                size, pos = self._varint(view, pos)
                value, pos = view[pos:pos + size], pos + size
            else:
                raise ValueError(f"protobuf wire type {wire}")
            if pos > end or number == 0:
                raise ValueError("truncated or malformed protobuf")
            self.fields.setdefault(number, []).append(value)

    @staticmethod
    def _varint(view: memoryview, pos: int) -> tuple[int, int]:
        value = shift = 0
        for i in range(10):
            if pos + i >= len(view):
                break
            byte = view[pos + i]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos + i + 1
        raise ValueError("truncated or malformed varint")

    def messages(self, number: int) -> list[_Wire]:
        return [_Wire(v) for v in self._of(number, memoryview)]

    def message(self, number: int) -> _Wire | None:
        found = self.messages(number)
        return found[-1] if found else None

    def text(self, number: int) -> str:
        found = self._of(number, memoryview)
        return bytes(found[-1]).decode("utf-8") if found else ""

    def integer(self, number: int) -> int | None:
        found = self._of(number, int)
        return found[-1] if found else None

    def _of(self, number: int, kind: type) -> list[Any]:
        values = self.fields.get(number, [])
        if not all(isinstance(v, kind) for v in values):
            raise ValueError(f"protobuf field {number} has the wrong wire type")
        return values


def _wire_value(info: _Wire) -> tuple[str, int | None, list[int | None] | None]:
    """(name, ONNX element type or None when not a tensor, dimensions or None without a
    shape) of a ValueInfoProto."""
    name = info.text(1)
    tensor = (info.message(2) or _Wire(b"")).message(1)
    if tensor is None:
        return name, None, None
    shape = tensor.message(2)
    if shape is None:
        return name, tensor.integer(1), None
    dims: list[int | None] = []
    for dim in shape.messages(1)[:_MAX_GRAPH_DIMS + 1]:
        value = dim.integer(1)
        if value is not None and value >= 1 << 62:
            raise ValueError(f"input {name!r} has a negative or huge dimension")
        dims.append(value)
    if len(dims) > _MAX_GRAPH_DIMS:
        raise ValueError(f"input {name!r} has more than {_MAX_GRAPH_DIMS} dimensions")
    return name, tensor.integer(1), dims


def graph_spec_of(graph: bytes, *, source: str = "the artifact") -> OnnxGraphSpec:
    """The inputs, outputs, batch and precision of a serialized ONNX model, read from its
    bytes (no onnx package): what ``split_initializers`` records at pack time. Raises
    ModelzipError naming what it cannot read."""
    try:
        model = _Wire(graph)
        main = model.message(7)
        if main is None:
            raise ValueError("no graph")
        initializers = {t.text(8) for t in main.messages(5)}
        values = [_wire_value(v) for v in main.messages(11)]
        outputs = [_wire_value(v) for v in main.messages(12)]
        ops = {n.text(4) for n in main.messages(1)}
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelzipError(f"{source}: the stored graph is not a readable ONNX model ({exc}); "
                            "pack the model again") from None
    inputs, batches = [], set()
    for name, elem, dims in values:
        if name in initializers:
            continue
        if elem not in _INPUT_DTYPES or not dims:
            raise ModelzipError(f"{source}: graph input {name!r} is not a tensor of a dtype "
                                "and shape the runner feeds; pack the model again")
        if dims[0] is not None:
            batches.add(dims[0])
        inputs.append(InputSpec(name, tuple(dims[1:]), _INPUT_DTYPES[elem]))
    if not inputs or not outputs:
        raise ModelzipError(f"{source}: the stored graph has {len(inputs)} inputs and "
                            f"{len(outputs)} outputs; the runner needs at least one of each: "
                            "pack the model again")
    if len(batches) > 1:
        raise ModelzipError(f"{source}: the stored graph's inputs have different fixed batch "
                            f"sizes {sorted(batches)}; pack the model again")
    out_dims = outputs[0][2] or []
    first = inputs[0]
    return OnnxGraphSpec(
        input_name=first.name, input_shape=first.shape, input_dtype=first.dtype,
        batch=batches.pop() if batches else None, output_name=outputs[0][0],
        num_outputs=out_dims[-1] if len(out_dims) == 2 else None,
        precision="int8" if ops & _QUANT_OPS else "fp32", inputs=tuple(inputs),
        outputs=tuple(o[0] for o in outputs))


def _check_record(model: dict[str, Any], spec: OnnxGraphSpec, source: str) -> None:
    """Refuse a manifest record that disagrees with the graph (names, shapes, dtypes, batch,
    outputs, precision): the runner acts on the graph, and a record that says otherwise was
    edited or is from another tool."""
    for key, value in spec.to_dict().items():
        if key not in model:
            continue  # files packed before the field existed
        stated = model[key]
        if key == "inputs" and isinstance(stated, list):
            stated = [{**i, "shape": list(i["shape"])} if isinstance(i, dict)
                      and isinstance(i.get("shape"), list) else i for i in stated]
        if stated != value or type(stated) is not type(value):
            raise ModelzipError(f"{source}: the manifest says {key} is {stated!r} but the "
                                f"stored graph has {value!r}; the file was edited after it "
                                "was packed: pack the model again")


def load_onnx_package(artifact: Artifact, *, source: str = "the artifact") -> OnnxPackage:
    """The ONNX graph, arrays and input spec of a decoded artifact. Raises NoOnnxGraphError for
    an artifact without a graph, and ModelzipError when its parts do not fit together."""
    model = artifact.model or {}
    blobs = artifact.blobs or {}
    kind = model.get("kind")
    # artifacts written before "kind" existed say only format "onnx"
    if kind == STATE_DICT_KIND or (kind is None and model.get("format") != MODEL_FORMAT):
        raise NoOnnxGraphError(
            f"{source} carries no ONNX graph (it holds weights for a PyTorch model), so the "
            "runner cannot run it; pack it with the ONNX graph: modelzip pack-onnx CHECKPOINT "
            "-o FILE.mzip [--int8]")
    if kind is not None and kind != MODEL_KIND:
        raise ModelzipError(f"{source}: its model is of kind {kind!r}, which this runner does "
                            f"not know (it runs {MODEL_KIND!r}); use a newer modelzip")
    blob_name = model.get("graph_blob", GRAPH_BLOB)
    if not isinstance(blob_name, str) or blob_name not in blobs:
        raise ModelzipError(f"{source}: the manifest describes an ONNX model but the file holds "
                            "no graph blob; pack the model again")
    graph = blobs[blob_name]
    spec = graph_spec_of(graph, source=source)  # from the graph, not from the manifest
    _check_record(model, spec, source)
    names = model.get("initializers")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelzipError(f"{source}: the ONNX model description in the manifest has no "
                            "list of initializer names; pack the model again")
    tensors = artifact.tensors
    missing = sorted(set(names) - set(tensors))
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ModelzipError(f"{source}: the graph's weights and the stored tensors differ "
                            f"(missing: {missing[:3]}, unexpected: {extra[:3]}); pack it again")
    arrays = {n: np.require(tensors[n], requirements="C") for n in names}
    meta = dict(artifact.meta or {})
    _check_meta(meta, spec, source)
    return OnnxPackage(graph=graph, initializers=arrays, spec=spec, meta=meta)


def _real(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_meta(meta: dict[str, Any], spec: OnnxGraphSpec, source: str) -> None:
    """Refuse manifest fields the runner would act on wrongly: a mean/std that is not one
    finite number per input channel (std > 0), class names that are not one string per
    output. A forged ``mean: [null]`` must not quietly turn every image into one class."""
    mean, std = meta.get("mean"), meta.get("std")
    if mean is not None or std is not None:
        channels = spec.input_shape[0] if len(spec.input_shape) == 3 else None
        fits = (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
                and all(_real(m) for m in mean) and all(_real(v) and v > 0 for v in std)
                and (channels is None or len(mean) == channels))
        if not fits:
            raise ModelzipError(f"{source}: the manifest's mean/std ({mean!r} / {std!r}) are "
                                f"not one finite number per input channel (std > 0); pack the "
                                "model again")
    classes = meta.get("classes")
    if classes is not None and not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and (spec.num_outputs is None or len(classes) == spec.num_outputs)):
        raise ModelzipError(f"{source}: the manifest's class names are not one string per "
                            f"output ({spec.num_outputs} outputs); pack the model again")


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
        raise ModelzipError(f"onnxruntime cannot load the stored graph: "
                            f"{_first_line(exc)}") from None
    session.modelzip_initializers = values  # keep the buffers alive as long as the session
    return session


def _shape_text(batch: str, shape: tuple[int | None, ...]) -> str:
    return f"({', '.join([batch, *('?' if d is None else str(d) for d in shape)])})"


def input_spec_text(spec: OnnxGraphSpec, package: OnnxPackage | None = None) -> str:
    """The inputs a model accepts, in words, for error messages ("?": any size)."""
    batch = "N" if spec.batch is None else str(spec.batch)
    if len(spec.inputs) > 1:
        return ", ".join(f"{i.name} {_shape_text(batch, i.shape)} {i.dtype}"
                         for i in spec.inputs)
    text = f"{_shape_text(batch, spec.input_shape)} {spec.input_dtype}"
    if package is not None and package.mean is not None:
        c, *hw = spec.input_shape
        raw = [_shape_text(batch, spec.input_shape)]
        if c == 1:
            raw.insert(0, _shape_text(batch, tuple(hw)))
        if len(hw) == 2:
            raw.append(_shape_text(batch, (*hw, c)))
        text += (f" (or uint8 images {' or '.join(raw)}, which are normalized with the stored "
                 "mean/std)")
    return text
