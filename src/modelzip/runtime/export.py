"""ONNX export of PyTorch models, checked against PyTorch with onnxruntime.

Which models: modelzip's zoo models (their input shape is recorded, so nothing else is needed)
and any other ``nn.Module`` given ``example_inputs``: a tensor, a tuple of tensors (positional
arguments) or a dict of tensors (keyword arguments, e.g. ``input_ids`` int64 and
``attention_mask`` of a text encoder), each with the batch on its first axis. The graph's
inputs are named ``"input"`` for a single tensor (or a 1-tuple), ``input_0``, ``input_1``, ...
for a tuple, and by their keywords for a dict; the batch axis is dynamic unless
``dynamic_batch=False``. The model may return a tensor, or a tuple, list, dict or
``ModelOutput``-like mapping: the first tensor in it (depth first, ``None`` entries skipped) is
exported as ``"logits"``, unless ``output_names`` chooses: entries of those keys of a mapping,
else the first ``len(output_names)`` tensors, named so.

Which exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) by default.
Both exporters fold BatchNorm into the convolutions and keep a dynamic batch, but for
``AdaptiveAvgPool2d(1)`` + ``Flatten`` the TorchScript one writes ``GlobalAveragePool`` +
``Flatten``, which onnxruntime runs in int8 (QLinearGlobalAveragePool), while the dynamo
exporter writes ``ReduceMean`` + ``Reshape``, and ReduceMean stays fp32 between a
DequantizeLinear/QuantizeLinear pair after int8 quantization. It is also ~50x faster to run
(0.07 s vs 3.5 s for eurosat_cnn). It is deprecated in torch 2.13: ``exporter="dynamo"``
gives the torch.export-based graph (onnxscript), for when it is removed.

Pruned models export as they are: magnitude-pruned weights are zeros in dense tensors,
structurally pruned layers have their smaller shapes, and CSR layers (``SparseLinear``) are
turned back into dense Linear layers, since ONNX has no sparse matmul that onnxruntime runs
on CPU faster than the dense one for these sizes.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from modelzip.data import ImageDataset
from modelzip.errors import ExportError, ShapeError
from modelzip.train import EvalResult
from modelzip.zoo import ModelSpec, check_input_shape

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "INPUT_NAME", "OUTPUT_NAME", "ExampleInputs",
           "eval_result", "evaluate_onnx", "export_onnx", "max_abs_diff"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17  # QDQ per-channel quantization needs >= 13; 17 is well supported by both
DYNAMO_OPSET = 18  # the oldest opset the dynamo exporter writes without converting down
EXPORTERS = ("torchscript", "dynamo")
# What a model is called with: one tensor, positional tensors, or keyword tensors.
ExampleInputs = torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, torch.Tensor]
_WRAPPED = "wrapped"  # attribute of the wrapped model in _Exportable; stripped from names


@dataclass(frozen=True)
class _Inputs:
    """Model inputs, flattened: their graph names and tensors, and how the model takes them
    (``keywords``: as keyword arguments, else positionally)."""

    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]
    keywords: bool

    @property
    def batch(self) -> int:
        return int(self.tensors[0].shape[0])

    def rows(self, index: slice | torch.Tensor) -> _Inputs:
        return _Inputs(self.names, tuple(t[index] for t in self.tensors), self.keywords)

    def call(self, model: nn.Module) -> Any:
        if self.keywords:
            return model(**dict(zip(self.names, self.tensors, strict=True)))
        return model(*self.tensors)

    def text(self) -> str:
        return ", ".join(f"{n} {'x'.join(map(str, t.shape))} {str(t.dtype).removeprefix('torch.')}"
                         for n, t in zip(self.names, self.tensors, strict=True))


def _as_inputs(value: Any, what: str) -> _Inputs:
    """Check and flatten example or check inputs (see the module docstring for the names)."""
    if isinstance(value, torch.Tensor):
        names, tensors, keywords = (INPUT_NAME,), (value,), False
    elif isinstance(value, tuple | list):
        tensors, keywords = tuple(value), False
        names = (INPUT_NAME,) if len(tensors) == 1 else tuple(
            f"{INPUT_NAME}_{i}" for i in range(len(tensors)))
    elif isinstance(value, Mapping):
        names, tensors, keywords = tuple(value), tuple(value.values()), True
        bad = [n for n in names if not isinstance(n, str) or not n.isidentifier()]
        if bad:
            raise ExportError(f"{what} keys must be the model's keyword argument names, got "
                              f"{bad[0]!r}")
    else:
        raise ExportError(f"{what} must be a tensor, a tuple of tensors or a dict of tensors, "
                          f"got {type(value).__name__}")
    if not tensors:
        raise ExportError(f"{what} holds no tensor")
    for name, t in zip(names, tensors, strict=True):
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"{what}: {name} is a {type(t).__name__}, not a tensor")
        if t.ndim == 0 or t.shape[0] == 0:
            raise ExportError(f"{what}: {name} has shape {tuple(t.shape)}; every input needs "
                              "a non-empty batch axis first")
    if len({t.shape[0] for t in tensors}) > 1:
        raise ExportError(f"{what}: the inputs have different batch sizes "
                          f"({', '.join(str(t.shape[0]) for t in tensors)})")
    return _Inputs(names, tuple(t.detach() for t in tensors), keywords)


def _check_like(check: _Inputs, example: _Inputs) -> None:
    """Check inputs must be the example's inputs: same names, dtypes and per-sample shapes."""
    if check.names != example.names:
        raise ExportError(f"check_inputs has inputs {list(check.names)}, example_inputs "
                          f"{list(example.names)}")
    for name, c, e in zip(check.names, check.tensors, example.tensors, strict=True):
        if c.dtype != e.dtype or c.shape[1:] != e.shape[1:]:
            raise ExportError(f"check_inputs {name} is {'x'.join(map(str, c.shape[1:]))} "
                              f"{c.dtype} per sample, example_inputs "
                              f"{'x'.join(map(str, e.shape[1:]))} {e.dtype}")


def _input_shape(model: nn.Module, input_shape: tuple[int, ...] | None,
                 check_inputs: torch.Tensor | None) -> tuple[int, ...]:
    """The per-sample input shape (C, H, W): given, recorded by the zoo, or that of the
    check inputs."""
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ExportError(f"input_shape must be positive sizes (C, H, W), got {input_shape}")
        return shape
    spec = getattr(model, "modelzip_spec", None)
    if isinstance(spec, ModelSpec) and spec.input_shape:
        return tuple(spec.input_shape)
    if check_inputs is not None:
        return tuple(check_inputs.shape[1:])
    raise ExportError(f"cannot tell the input shape of this {type(model).__name__}: it was not "
                      "built by modelzip.zoo.build_model; pass example_inputs (a tensor, tuple "
                      "or dict of tensors), input_shape=(C, H, W) or check_inputs")


def _densified(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy with every SparseLinear (CSR) turned back into nn.Linear."""
    from modelzip.prune.sparse import SparseLinear

    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        return model
    # CSR tensors cannot be deep-copied; the memo makes the copy share them (they are only
    # read, to build the dense weights).
    shared = {id(m.weight_csr): m.weight_csr for m in model.modules()
              if isinstance(m, SparseLinear)}
    model = copy.deepcopy(model, shared)
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            dense = nn.Linear(module.in_features, module.out_features,
                              bias=module.bias is not None)
            with torch.no_grad():
                dense.weight.copy_(module.weight_csr.to_dense())
                if module.bias is not None:
                    dense.bias.copy_(module.bias)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, dense)
    return model


# ---------------------------------------------------------------------------- outputs
def _tensors_in(result: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, depth first (mappings in their order; None skipped)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, Mapping):
        items: Any = result.values()
    elif isinstance(result, tuple | list):
        items = result
    else:
        return []
    return [t for item in items for t in _tensors_in(item)]


def _select_outputs(result: Any, output_names: Sequence[str] | None) -> list[torch.Tensor]:
    """The output tensors to export: the first tensor, or those ``output_names`` chooses."""
    if output_names is not None and isinstance(result, Mapping) and all(
            isinstance(result.get(n), torch.Tensor) for n in output_names):
        return [result[n] for n in output_names]
    found = _tensors_in(result)
    wanted = 1 if output_names is None else len(output_names)
    if len(found) < wanted:
        raise ExportError(f"the model returns {len(found)} tensor(s) ({type(result).__name__}); "
                          f"{wanted} output(s) were asked for"
                          + ("" if output_names is None else f": {list(output_names)}"))
    return found[:wanted]


class _Exportable(nn.Module):
    """A model called with positional tensors that returns exactly the chosen outputs: what
    the exporters trace when the model takes keywords or returns more than one tensor."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], keywords: bool,
                 output_names: Sequence[str] | None) -> None:
        super().__init__()
        setattr(self, _WRAPPED, model)
        self.names, self.keywords = names, keywords
        self.output_names = None if output_names is None else list(output_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        model = getattr(self, _WRAPPED)
        result = (model(**dict(zip(self.names, inputs, strict=True))) if self.keywords
                  else model(*inputs))
        outputs = _select_outputs(result, self.output_names)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _strip_prefix(proto: onnx.ModelProto, prefix: str) -> None:
    """Rename initializers ``prefix.NAME`` to ``NAME`` (the model's own parameter names),
    everywhere they are read, when the short name is free."""
    graph = proto.graph
    used = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {
        o for n in graph.node for o in n.output}
    renames = {}
    for t in graph.initializer:
        if t.name.startswith(prefix) and t.name[len(prefix):] not in used:
            renames[t.name] = t.name[len(prefix):]
    if not renames:
        return
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)
    for v in list(graph.input) + list(graph.value_info):
        v.name = renames.get(v.name, v.name)

    def rename_nodes(nodes: Any) -> None:
        for node in nodes:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
            for attr in node.attribute:  # subgraphs may read outer initializers
                if attr.HasField("g"):
                    rename_nodes(attr.g.node)
                for g in attr.graphs:
                    rename_nodes(g.node)

    rename_nodes(graph.node)


# ---------------------------------------------------------------------------- exporters
def _export_torchscript(model: nn.Module, example: _Inputs, output_names: list[str],
                        dynamic_outputs: list[str], dynamic_batch: bool, opset: int) -> bytes:
    buf = io.BytesIO()
    axes = {n: {0: "batch"} for n in (*example.names, *dynamic_outputs)}
    with warnings.catch_warnings():
        # The deprecation notice of the TorchScript exporter (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, example.tensors, buf, dynamo=False, opset_version=opset,
            input_names=list(example.names), output_names=output_names,
            dynamic_axes=axes if dynamic_batch else None)
    return buf.getvalue()


def _export_dynamo(model: nn.Module, example: _Inputs, output_names: list[str],
                   dynamic_outputs: list[str], dynamic_batch: bool, opset: int) -> bytes:
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        per_input = tuple({0: batch} for _ in example.names)
        # a wrapped model takes *inputs: its dynamic shapes nest under that one argument
        dynamic = (per_input,) if isinstance(model, _Exportable) else per_input
    program = torch.onnx.export(model, example.tensors, dynamo=True, opset_version=opset,
                                input_names=list(example.names), output_names=output_names,
                                dynamic_shapes=dynamic, verbose=False)
    return program.model_proto.SerializeToString()


# ---------------------------------------------------------------------------- checks
def _torch_outputs(model: nn.Module, inputs: _Inputs, output_names: Sequence[str] | None,
                   batch_size: int) -> list[np.ndarray]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = [_select_outputs(inputs.rows(slice(i, i + batch_size)).call(model),
                                     output_names)
                     for i in range(0, inputs.batch, batch_size)]
    finally:
        model.train(was_training)
    return [torch.cat([p[k] for p in parts]).numpy() for k in range(len(parts[0]))]


def max_abs_diff(model: nn.Module, onnx_model: bytes, inputs: ExampleInputs,
                 batch_size: int = 500, *, output_names: Sequence[str] | None = None) -> float:
    """Largest |onnxruntime output - PyTorch output| over ``inputs`` (a tensor, tuple or dict,
    named as ``export_onnx`` names them) and over every output of the graph (one thread, the
    graph as onnxruntime optimizes it). ``output_names``: as given to ``export_onnx``; by
    default the graph's own output names choose, unless it has the one output "logits"."""
    return _max_abs_diff(model, onnx_model, _as_inputs(inputs, "inputs"), batch_size,
                         output_names)


def _max_abs_diff(model: nn.Module, onnx_model: bytes, spec: _Inputs, batch_size: int,
                  output_names: Sequence[str] | None) -> float:
    from modelzip.runtime.ort import make_session

    session = make_session(onnx_model, threads=1)
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if output_names is None and graph_outputs != [OUTPUT_NAME]:
        output_names = graph_outputs
    missing = sorted(set(graph_inputs) - set(spec.names))
    if missing:
        raise ExportError(f"the ONNX graph reads input(s) {missing}, which the given inputs "
                          f"({', '.join(spec.names)}) lack")
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int):  # a graph exported with a fixed batch size
        if spec.batch % fixed:
            raise ShapeError(f"the model takes batches of exactly {fixed}; got {spec.batch} "
                             "inputs")
        batch_size = fixed
    arrays = {n: t.numpy() for n, t in zip(spec.names, spec.tensors, strict=True)}
    runs = [session.run(None, {n: arrays[n][i:i + batch_size] for n in graph_inputs})
            for i in range(0, spec.batch, batch_size)]
    got = [np.concatenate([r[k] for r in runs]) for k in range(len(graph_outputs))]
    expected = _torch_outputs(model, spec, output_names, batch_size)
    diff = 0.0
    for name, g, e in zip(graph_outputs, got, expected, strict=True):
        if g.shape != e.shape:
            raise ExportError(f"the ONNX graph gives {name} of shape {g.shape}, PyTorch "
                              f"{e.shape}")
        if g.size:
            d = np.abs(g.astype(np.float64) - e.astype(np.float64))
            d[np.isnan(g) & np.isnan(e)] = 0.0  # NaN where PyTorch gives NaN too
            diff = max(diff, float(np.max(d)))
    return diff


def evaluate_onnx(onnx_model: bytes, data: ImageDataset, *, threads: int = 1,
                  batch_size: int = 500) -> EvalResult:
    """Error % (and count) and mean cross-entropy of an ONNX model (fp32 or int8) on the whole
    of ``data``, run by onnxruntime; the counterpart of ``modelzip.train.evaluate``."""
    from modelzip.runtime.ort import make_session, run_batches

    session = make_session(onnx_model, threads=threads)
    logits = np.concatenate([run_batches(session, x.numpy(), batch_size)
                             for x, _ in data.batches(batch_size)])
    return eval_result(logits, data.labels.numpy())


def eval_result(logits: np.ndarray, labels: np.ndarray) -> EvalResult:
    """Error % (and count) and mean cross-entropy of class scores against integer labels."""
    errors = int((logits.argmax(1) != labels).sum())
    shifted = logits - logits.max(1, keepdims=True)  # log-softmax without overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else 0.0
    return EvalResult(error_pct=100.0 * errors / max(len(labels), 1), errors=errors,
                      total=len(labels), loss=loss)


# ---------------------------------------------------------------------------- export
def _legacy_inputs(model: nn.Module, check_inputs: torch.Tensor | None,
                   input_shape: tuple[int, ...] | None, dynamic_batch: bool
                   ) -> tuple[_Inputs, _Inputs | None]:
    """Image models without example inputs: a float32 (N, C, H, W) input of zeros."""
    check = None
    if check_inputs is not None:
        if not isinstance(check_inputs, torch.Tensor) or check_inputs.dtype != torch.float32 \
                or check_inputs.ndim < 2 or len(check_inputs) == 0:
            raise ExportError("check_inputs must be a non-empty float32 tensor (N, C, H, W), "
                              "normalized as in training")
        check_input_shape(model, tuple(check_inputs.shape[1:]))
        check = _as_inputs(check_inputs, "check_inputs")
    shape = _input_shape(model, input_shape, check_inputs)
    example = torch.zeros((2 if dynamic_batch else 1, *shape), dtype=torch.float32)
    return _as_inputs(example, "example"), check


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def export_onnx(model: nn.Module, *, dynamic_batch: bool = True, opset: int | None = None,
                check_inputs: ExampleInputs | None = None, atol: float = 1e-4,
                input_shape: tuple[int, ...] | None = None,
                exporter: str = "torchscript", example_inputs: ExampleInputs | None = None,
                output_names: Sequence[str] | None = None) -> bytes:
    """Export ``model`` (in eval mode) to a serialized ONNX ModelProto and check it against
    PyTorch with onnxruntime; ExportError when max |ort - torch| > ``atol``.

    ``example_inputs``: what the model is called with (a tensor, a tuple of tensors, or a dict
    of keyword tensors, any dtypes, batch first); the graph is traced on them (repeated to a
    batch of 2 when they hold one sample and the batch is dynamic) and checked on them, or on
    ``check_inputs`` (the same inputs for more samples) when given. Without example inputs the
    model is an image model: one float32 input ``"input"`` (N, C, H, W) whose shape is recorded
    by ``modelzip.zoo``, or given as ``input_shape`` (C, H, W), or that of ``check_inputs``
    (float32, normalized as in training); checked only when ``check_inputs`` are given.

    Input and output names are described in the module docstring; the batch axis is dynamic
    unless ``dynamic_batch=False`` (then it is that of the examples, 1 for image models)."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise ExportError(f"export_onnx needs a torch.nn.Module, got {type(model).__name__}")
    if opset is None:
        opset = DEFAULT_OPSET if exporter == "torchscript" else DYNAMO_OPSET
    if opset < 13:
        raise ExportError(f"opset {opset} is too old: int8 per-channel quantization needs "
                          f">= 13; leave it at the default ({DEFAULT_OPSET})")
    if output_names is not None:
        output_names = [str(n) for n in output_names]
        if not output_names or len(set(output_names)) != len(output_names):
            raise ExportError(f"output_names must be distinct names, got {output_names}")
    if example_inputs is None and check_inputs is not None \
            and not isinstance(check_inputs, torch.Tensor):
        example_inputs = check_inputs  # a tuple or dict of check inputs is the example
    if example_inputs is None:
        example, check = _legacy_inputs(model, check_inputs, input_shape, dynamic_batch)
    else:
        if input_shape is not None:
            raise ExportError("pass example_inputs or input_shape, not both")
        example = _as_inputs(example_inputs, "example_inputs")
        if len(example.names) == 1 and example.tensors[0].dtype == torch.float32:
            check_input_shape(model, tuple(example.tensors[0].shape[1:]))
        check = example
        if check_inputs is not None:
            check = _as_inputs(check_inputs, "check_inputs")
            _check_like(check, example)
    if dynamic_batch and example.batch == 1:  # a batch of one lets tracing bake sizes of 1
        example = example.rows(torch.tensor([0, 0]))

    net = _densified(model)
    was_training = net.training
    net.eval()
    try:
        try:
            with torch.no_grad():
                result = example.call(net)
        except Exception as exc:  # the model's own error on these inputs
            raise ExportError(f"{type(model).__name__} fails on inputs {example.text()}: "
                              f"{_first_line(exc)}") from None
        outputs = _select_outputs(result, output_names)
        names = list(output_names) if output_names is not None else [OUTPUT_NAME]
        dynamic_outputs = [n for n, t in zip(names, outputs, strict=True)
                           if t.ndim >= 1 and t.shape[0] == example.batch]
        wrapped = example.keywords or not isinstance(result, torch.Tensor)
        traced = _Exportable(net, example.names, example.keywords, output_names).eval() \
            if wrapped else net
        export = _export_torchscript if exporter == "torchscript" else _export_dynamo
        blob = export(traced, example, names, dynamic_outputs, dynamic_batch, opset)
    except ExportError:
        raise
    except Exception as exc:  # tracing errors: name the model and the inputs tried
        raise ExportError(f"cannot export {type(model).__name__} with inputs "
                          f"{example.text()}: {_first_line(exc)}") from None
    finally:
        net.train(was_training)
    proto = onnx.load_from_string(blob)
    if wrapped:
        _strip_prefix(proto, _WRAPPED + ".")
        blob = proto.SerializeToString()
    onnx.checker.check_model(proto)
    graph_outputs = [o.name for o in proto.graph.output]
    if graph_outputs != names:
        raise ExportError(f"the graph has outputs {graph_outputs}, expected {names}; the model "
                          "must return tensors (pass output_names to choose them)")
    if check is not None:
        _check_export(net, blob, check, output_names, atol, dynamic_batch, example.batch)
    return blob


def _check_export(net: nn.Module, blob: bytes, check: _Inputs,
                  output_names: Sequence[str] | None, atol: float, dynamic_batch: bool,
                  traced_batch: int) -> None:
    """max |ort - torch| <= atol on the check inputs; also on one more sample when they have
    the traced batch size (a batch size baked into the graph would otherwise pass)."""
    runs = [check]
    if dynamic_batch and check.batch == traced_batch:
        runs.append(check.rows(torch.arange(check.batch + 1) % check.batch))
    for inputs in runs:
        try:
            diff = _max_abs_diff(net, blob, inputs, 500, output_names)
        except ExportError:
            raise
        except Exception as exc:  # onnxruntime refuses the batch size, or fails in a kernel
            raise ExportError(f"the ONNX graph fails on inputs {inputs.text()}: "
                              f"{_first_line(exc)}") from None
        if not diff <= atol:  # also catches NaN
            raise ExportError(f"the ONNX graph disagrees with PyTorch: max |ort - torch| = "
                              f"{diff:.3g} > atol {atol:g} on {inputs.batch} inputs")
