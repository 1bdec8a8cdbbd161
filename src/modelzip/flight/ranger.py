"""Activation range clipping (Ranger-style bound checking) for fault-tolerant inference.

A bit flip in a weight's exponent turns one product into a huge value that then runs through
every later layer. Clipping each activation to the range it takes on real data stops that
spread: a value far outside what calibration ever saw is a fault, not a feature. Chen et al.,
"A Low-cost Fault Corrector for Deep Neural Networks through Range Restriction" (Ranger,
DSN 2021), clip after the activation functions to bounds recorded on training images.

Here it is done at pack time, on the ONNX graph (``pack_model_onnx(..., clip_activations=
True)``, ``modelzip pack-onnx --clip-activations``): the graph is run with onnxruntime on the
calibration inputs, the smallest and largest value of every activation output is recorded,
and each activation gets its bound in the graph itself: a ``Relu`` becomes ``Clip(0, max)``
(onnxruntime fuses it into the convolution as it fuses the Relu: no cost at run time), other
activations are followed by a ``Clip(min, max)``. The runner then needs nothing new: the
bounds travel in the graph, and are also listed in ``meta["activation_clip"]``. On clean
inputs nothing changes on the calibration set (the bounds are its own extremes) and little
elsewhere; measured in ``bench/seu.py``. An int8 graph is clipped before it is quantized,
and its activations are also bounded by their quantization range.

Pack time only: needs onnx and onnxruntime (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelzip.errors import ConfigError

__all__ = ["ACTIVATIONS", "activation_ranges", "clip_activations"]

# ONNX operators treated as activation functions (their outputs get a bound)
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Elu", "Selu", "Gelu", "Softplus", "HardSwish",
                         "PRelu", "Mish", "Celu", "ThresholdedRelu"})
_BATCH = 256


def _feeds(calibration: np.ndarray | Mapping[str, np.ndarray], names: list[str]
           ) -> dict[str, np.ndarray]:
    if isinstance(calibration, Mapping):
        return {n: np.asarray(calibration[n]) for n in names}
    if len(names) != 1:
        raise ConfigError(f"the graph takes {len(names)} inputs; pass the calibration inputs "
                          "as a dict by input name")
    return {names[0]: np.asarray(calibration, dtype=np.float32)}


def activation_ranges(onnx_bytes: bytes, calibration: np.ndarray | Mapping[str, np.ndarray]
                      ) -> dict[str, tuple[float, float]]:
    """The (min, max) of every activation output of the graph on ``calibration`` (inputs as
    the graph takes them), by output name."""
    return {k: v[:2] for k, v in _ranges(onnx_bytes, calibration).items()}


def _ranges(onnx_bytes: bytes, calibration: np.ndarray | Mapping[str, np.ndarray]
            ) -> dict[str, tuple[float, float, np.dtype]]:
    import onnx

    from modelzip.runtime.ort import make_session

    model = onnx.load_model_from_string(onnx_bytes)
    outputs = [n.output[0] for n in model.graph.node if n.op_type in ACTIVATIONS]
    if not outputs:
        return {}
    known = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = make_session(model.SerializeToString(), optimization="basic")
    feeds = _feeds(calibration, [i.name for i in session.get_inputs()])
    total = len(next(iter(feeds.values())))
    if total == 0:
        raise ConfigError("activation clipping needs calibration inputs (a few hundred "
                          "training images); none were given")
    lo = dict.fromkeys(outputs, np.inf)
    hi = dict.fromkeys(outputs, -np.inf)
    dtypes: dict[str, np.dtype] = {}
    for start in range(0, total, _BATCH):
        batch = {k: v[start:start + _BATCH] for k, v in feeds.items()}
        for name, value in zip(outputs, session.run(outputs, batch), strict=True):
            value = np.asarray(value)
            dtypes[name] = value.dtype
            if value.size:
                lo[name] = min(lo[name], float(np.min(value)))
                hi[name] = max(hi[name], float(np.max(value)))
    return {name: (lo[name], hi[name], dtypes[name]) for name in outputs
            if dtypes[name].kind == "f" and np.isfinite([lo[name], hi[name]]).all()}


def clip_activations(onnx_bytes: bytes, calibration: np.ndarray | Mapping[str, np.ndarray]
                     ) -> tuple[bytes, dict[str, Any]]:
    """The graph with every activation bounded to its range on ``calibration`` (see the
    module docstring), and the bounds by activation output name ({name: [min, max]})."""
    import onnx
    from onnx import helper, numpy_helper

    ranges = _ranges(onnx_bytes, calibration)
    model = onnx.load_model_from_string(onnx_bytes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 11:
        raise ConfigError(f"activation clipping needs ONNX opset >= 11 (Clip with bound "
                          f"inputs); this graph has opset {opset}: export it again")
    graph = model.graph
    nodes, bounds = [], {}
    for node in graph.node:
        name = node.output[0] if node.output else ""
        if node.op_type not in ACTIVATIONS or name not in ranges:
            nodes.append(node)
            continue
        lo, hi, dtype = ranges[name]
        if node.op_type == "Relu":
            lo = 0.0
        bounds[name] = [lo, hi]
        lo_name, hi_name = f"{name}_clip_min", f"{name}_clip_max"
        graph.initializer.extend([numpy_helper.from_array(np.array(lo, dtype), lo_name),
                                  numpy_helper.from_array(np.array(hi, dtype), hi_name)])
        if node.op_type == "Relu":  # Clip(0, max) is a Relu with a ceiling
            nodes.append(helper.make_node("Clip", [node.input[0], lo_name, hi_name], [name],
                                          name=f"{node.name or name}_clipped"))
            continue
        unclipped = f"{name}_unclipped"
        node.output[0] = unclipped
        nodes.append(node)
        nodes.append(helper.make_node("Clip", [unclipped, lo_name, hi_name], [name],
                                      name=f"{node.name or name}_clip"))
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), bounds
