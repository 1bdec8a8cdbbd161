"""Static int8 quantization of an ONNX graph with onnxruntime's quantization tools. Torch-free.

What it does, as onnxruntime recommends for CPU (x86) inference:
1. pre-processing (``quant_pre_process``): symbolic shape inference and onnxruntime's basic
   graph optimizations (constant folding, Conv+BatchNorm/Mul/Add fusion), so that ranges are
   calibrated on the graph that will run;
2. ``quantize_static`` in QDQ format: weights int8 per output channel (symmetric; 8-bit on
   CPUs with VNNI or AMX, 7-bit on x86 CPUs without, see ``reduce_range``), activations
   uint8 (asymmetric; most of them follow a ReLU), ranges calibrated on the given images
   with min/max, percentile or entropy;
3. a report of what became int8 and what stayed fp32 (and why), read off the quantized graph
   and off the graph onnxruntime actually runs (``runtime_ops``: QLinearConv, QGemm, ... are
   int8 kernels; a DequantizeLinear -> op -> QuantizeLinear left in it is an fp32 op).

An op type that onnxruntime cannot quantize is not handed to the quantizer: it stays fp32,
reading dequantized inputs, and the report says so. It never makes quantization fail.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from modelzip.errors import ConfigError, ExportError, ShapeError
from modelzip.runtime.cpu import cpu_features, int8_weight_bits

__all__ = ["CALIBRATION_METHODS", "QUANTIZABLE_OP_TYPES", "quantize_onnx_int8", "runtime_ops"]

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
QUANT_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
# What quantize_static quantizes by default: the ops of both of its registries.
QUANTIZABLE_OP_TYPES = frozenset(QLinearOpsRegistry) | frozenset(QDQRegistry)
# Ops the quantizer drops when they follow a quantized op: an asymmetric uint8 range that
# starts at 0 already does what they do.
_FOLDABLE = frozenset({"Relu", "Clip"})
_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Kernels that compute in int8 in the graph onnxruntime runs (com.microsoft ops included).
_INT8_KERNELS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger",
                           "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
                           "QLinearAveragePool", "QLinearConcat", "QLinearLeakyRelu",
                           "QLinearSigmoid", "QLinearSoftmax", "QLinearReduceMean",
                           "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention"})


class _Batches(CalibrationDataReader):
    """Feeds the calibration inputs (arrays by graph input name) to the calibrator in
    batches."""

    def __init__(self, inputs: dict[str, np.ndarray], count: int, batch_size: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(
            [{name: x[i:i + batch_size] for name, x in inputs.items()}
             for i in range(0, count, batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _check_calibration(model: onnx.ModelProto,
                       calibration: np.ndarray | Mapping[str, np.ndarray]
                       ) -> tuple[dict[str, np.ndarray], int, int]:
    """The calibration inputs by graph input name, how many samples they hold, and the batch
    size the graph accepts (0: any)."""
    graph_inputs = [i for i in model.graph.input
                    if i.name not in {init.name for init in model.graph.initializer}]
    names = [i.name for i in graph_inputs]
    if isinstance(calibration, Mapping):
        given = dict(calibration)
        if sorted(given) != sorted(names):
            raise ConfigError(f"calibration has inputs {sorted(given)}; the graph takes "
                              f"{sorted(names)}")
    elif len(graph_inputs) == 1:
        given = {names[0]: calibration}
    else:
        raise ConfigError(f"this graph has inputs {names}: pass calibration as a dict of "
                          "arrays by input name")
    counts, fixed = set(), 0
    for graph_input in graph_inputs:
        array = given[graph_input.name]
        tensor_type = graph_input.type.tensor_type
        want = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if not isinstance(array, np.ndarray) or array.dtype != want:
            images = " of normalized images" if want == np.float32 else ""
            raise ConfigError(f"calibration {graph_input.name!r} must be a {want} numpy array "
                              f"(N x ...){images}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if array.ndim != len(dims) or any(
                d is not None and d != s for d, s in zip(dims[1:], array.shape[1:],
                                                         strict=True)):
            want_shape = " x ".join("N" if d is None else str(d) for d in dims)
            raise ShapeError(f"calibration {graph_input.name!r} must have shape {want_shape}, "
                             f"got {' x '.join(map(str, array.shape))}")
        counts.add(len(array))
        fixed = fixed or (dims[0] or 0)
    if len(counts) > 1:
        raise ConfigError(f"the calibration inputs hold different numbers of samples "
                          f"{sorted(counts)}")
    count = counts.pop()
    if count == 0:
        raise ConfigError("calibration needs at least one image (sample)")
    return given, count, fixed


def runtime_ops(model: bytes, optimization: str = "all") -> dict[str, int]:
    """Op types (with counts) of the graph onnxruntime runs for ``model`` after its graph
    optimizations: which kernels actually execute."""
    from modelzip.runtime.ort import make_session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        make_session(model, threads=1, optimization=optimization, optimized_model_path=path)
        return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def _node_report(float_model: onnx.ModelProto, quant_model: onnx.ModelProto,
                 excluded: frozenset[str]) -> tuple[dict[str, int], list[dict[str, str]]]:
    """Which nodes of the float graph were quantized (counted by op type) and which stayed
    fp32, each with its reason."""
    producers = {out: n for n in quant_model.graph.node for out in n.output}
    quant_nodes = {n.name: n for n in quant_model.graph.node if n.name}
    # QOperator format renames a quantized node "<name>_quant".
    quant_nodes.update({n.name.removesuffix("_quant"): n for n in quant_model.graph.node
                        if n.name.endswith("_quant")})
    quantized: Counter[str] = Counter()
    fp32: list[dict[str, str]] = []
    for node in float_model.graph.node:
        qnode = quant_nodes.get(node.name)
        if qnode is None:
            if node.op_type in _FOLDABLE:
                quantized[node.op_type] += 1  # folded into the previous op's output range
            continue
        handed_over = node.op_type in QUANTIZABLE_OP_TYPES and node.op_type not in excluded
        # An op the quantizer took reads dequantized int8 (QDQ) or became a QLinear* node
        # (QOperator). An fp32 op after a quantized one also reads a DequantizeLinear, hence
        # the first condition.
        if handed_over and (qnode.op_type != node.op_type or any(
                producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                for i in qnode.input)):
            quantized[node.op_type] += 1
            continue
        if node.op_type in excluded:
            reason = "excluded by the caller"
        elif node.op_type not in QUANTIZABLE_OP_TYPES:
            reason = (f"onnxruntime has no int8 kernel for {node.op_type} (not in its "
                      "quantization registry); it runs in fp32 on dequantized inputs")
        else:
            reason = (f"its input stays fp32: onnxruntime quantizes {node.op_type} only "
                      "between int8 tensors")
        fp32.append({"node": node.name, "op_type": node.op_type, "reason": reason})
    return dict(quantized), fp32


def quantize_onnx_int8(onnx_model: bytes, calibration: np.ndarray | Mapping[str, np.ndarray],
                       *, method: str = "minmax",
                       per_channel: bool = True, quant_format: str = "qdq",
                       activation_type: str = "uint8", weight_type: str = "int8",
                       reduce_range: bool | None = None, percentile: float = 99.999,
                       exclude_op_types: Sequence[str] = (), preprocess: bool = True,
                       batch_size: int = 64, signed_inputs: bool | None = None
                       ) -> tuple[bytes, dict[str, Any]]:
    """Static int8 quantization of a float ONNX model, calibrated on ``calibration``
    (float32 images, N x C x H x W, normalized as in training; for a graph with several
    inputs, a dict of arrays by input name, each of its input's dtype).

    ``method``: ``minmax``, ``percentile`` (``percentile`` of |x|) or ``entropy`` (KL
    divergence) calibration of the activation ranges. ``quant_format`` ``qdq`` (the default;
    QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8 kernels) or
    ``qoperator`` (QLinearConv etc. written directly). ``reduce_range`` True keeps weights in
    7 bits: x86 CPUs without VNNI (AVX2 only) multiply uint8 x int8 with VPMADDUBSW, whose
    int16 sums saturate with full 8-bit weights (on an AVX2-only CPU, 8-bit weights turned
    -2/+0 errors against fp32 into +10/+12 on lenet5/lenet300). With VNNI or AMX the sums are
    int32 and 8-bit weights are exact and more accurate. None (the default) decides by this
    CPU (``modelzip.runtime.cpu.int8_weight_bits``); the report records the CPU's flags and
    the choice, and the runner falls back when it runs on a CPU that lacks what was assumed.
    ``signed_inputs``: quantize the float graph inputs (normalized images: signed) to
    symmetric int8 instead of asymmetric uint8, so that OpenVINO's first convolution runs its
    signed int8 kernel without zero-point compensation (measured on an AMX CPU: eurosat_cnn
    batch 1 about 9% faster in OpenVINO, the same in onnxruntime, test errors within +-2).
    None: True on CPUs with VNNI or AMX, where it was measured; False elsewhere.
    Returns the int8 model bytes and a report: settings, ops quantized (by op type), ops left
    in fp32 (each with why), and the op types onnxruntime runs after its own optimizations.
    """
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                          f"got {method!r}")
    if quant_format not in QUANT_FORMATS:
        raise ConfigError(f"quant_format must be one of {', '.join(QUANT_FORMATS)}, got "
                          f"{quant_format!r}")
    for what, value in (("activation_type", activation_type), ("weight_type", weight_type)):
        if value not in QUANT_TYPES:
            raise ConfigError(f"{what} must be uint8 or int8, got {value!r}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    try:
        float_model = onnx.load_from_string(onnx_model)
    except Exception:  # protobuf's DecodeError and friends
        raise ExportError("the bytes to quantize are not a serialized ONNX model") from None
    inputs, count, fixed_batch = _check_calibration(float_model, calibration)
    if fixed_batch:  # a graph with a fixed batch size takes only whole batches
        batch = fixed_batch
        usable = count - count % batch
    else:
        # Equal batches: onnxruntime's histogram calibrators (percentile, entropy) stack the
        # batches of a tensor and fail on a shorter last one.
        usable = count
        batch = max(d for d in range(1, min(max(1, batch_size), usable) + 1) if usable % d == 0) \
            if usable else 1
    if usable == 0:
        raise ConfigError(f"the model takes batches of {batch}; pass at least {batch} "
                          "calibration images")
    inputs = {name: np.ascontiguousarray(x[:usable]) for name, x in inputs.items()}
    excluded = frozenset(exclude_op_types)
    cpu = cpu_features()
    chosen_by = "caller"
    if reduce_range is None:
        reduce_range = int8_weight_bits(cpu) < 8
        chosen_by = f"cpu ({cpu.int8_kind})"
    if signed_inputs is None:
        signed_inputs = cpu.has_vnni
    report: dict[str, Any] = {
        "method": method, "quant_format": quant_format.upper() if quant_format == "qdq"
        else "QOperator", "per_channel": per_channel, "activation_type": activation_type,
        "weight_type": weight_type, "reduce_range": reduce_range,
        "weight_bits": 7 if reduce_range else 8, "reduce_range_chosen_by": chosen_by,
        "cpu": cpu.to_dict(),
        "calibration_images": int(usable), "onnxruntime_version": onnxruntime.__version__,
        "signed_inputs": signed_inputs,
    }
    if method == "percentile":
        report["percentile"] = percentile

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_model)
        to_quantize_from = src
        if preprocess:
            try:
                quant_pre_process(str(src), str(pre))
                to_quantize_from = pre
                report["preprocessed"] = True
            except Exception as exc:  # symbolic shape inference fails on some exotic ops
                report["preprocessed"] = False
                report["preprocess_note"] = (f"pre-processing failed, quantized the graph as "
                                             f"exported: {str(exc).strip()[:200]}")
        else:
            report["preprocessed"] = False
        graph = onnx.load(str(to_quantize_from))
        op_types = {n.op_type for n in graph.graph.node}
        to_quantize = sorted((op_types & QUANTIZABLE_OP_TYPES) - excluded)
        extra: dict[str, Any] = {}
        if method == "percentile":
            extra["CalibPercentile"] = percentile
        if signed_inputs:
            extra["TensorQuantOverrides"] = {
                name: [{"quant_type": QuantType.QInt8, "symmetric": True}]
                for name in inputs if inputs[name].dtype == np.float32}
        logger = logging.getLogger()  # quantize_static logs its advice at WARNING
        level = logger.level
        logger.setLevel(logging.ERROR)
        # The histogram calibrators print their progress; keep stdout for our own output.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(
                    str(to_quantize_from), str(out), _Batches(inputs, usable, batch),
                    quant_format=QUANT_FORMATS[quant_format], op_types_to_quantize=to_quantize,
                    per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=QUANT_TYPES[activation_type],
                    weight_type=QUANT_TYPES[weight_type],
                    calibrate_method=CALIBRATION_METHODS[method], extra_options=extra)
        finally:
            logger.setLevel(level)
        int8_bytes = out.read_bytes()
        quantized, fp32 = _node_report(graph, onnx.load(str(out)), excluded)
    report["ops_quantized"] = quantized
    report["ops_fp32"] = fp32
    report["runtime_ops"] = runtime_ops(int8_bytes)
    report["runtime_int8_kernels"] = sum(c for op, c in report["runtime_ops"].items()
                                         if op in _INT8_KERNELS)
    return int8_bytes, report
