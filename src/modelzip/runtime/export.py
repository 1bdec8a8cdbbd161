"""ONNX export of modelzip models, checked against PyTorch with onnxruntime.

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

import numpy as np
import onnx
import torch
from torch import nn

from modelzip.data import ImageDataset
from modelzip.errors import ExportError
from modelzip.train import EvalResult
from modelzip.zoo import ModelSpec, check_input_shape

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "INPUT_NAME", "OUTPUT_NAME", "evaluate_onnx",
           "export_onnx", "max_abs_diff"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17  # QDQ per-channel quantization needs >= 13; 17 is well supported by both
DYNAMO_OPSET = 18  # the oldest opset the dynamo exporter writes without converting down
EXPORTERS = ("torchscript", "dynamo")


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
                      "built by modelzip.zoo.build_model; pass input_shape=(C, H, W) or "
                      "check_inputs")


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


def _export_torchscript(model: nn.Module, example: torch.Tensor, dynamic_batch: bool,
                        opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The deprecation notice of the TorchScript exporter (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), buf, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
            if dynamic_batch else None)
    return buf.getvalue()


def _export_dynamo(model: nn.Module, example: torch.Tensor, dynamic_batch: bool,
                   opset: int) -> bytes:
    # The forward's first argument name keys dynamic_shapes; a tuple keys it by position.
    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=dynamic, verbose=False)
    return program.model_proto.SerializeToString()


def max_abs_diff(model: nn.Module, onnx_model: bytes, inputs: torch.Tensor,
                 batch_size: int = 500) -> float:
    """Largest |onnxruntime output - PyTorch output| over ``inputs`` (one thread, the
    fp32 graph as onnxruntime optimizes it)."""
    from modelzip.runtime.ort import make_session, run_batches

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = torch.cat([model(inputs[i:i + batch_size])
                                  for i in range(0, len(inputs), batch_size)]).numpy()
    finally:
        model.train(was_training)
    got = run_batches(make_session(onnx_model, threads=1), inputs.numpy(), batch_size)
    if got.shape != expected.shape:
        raise ExportError(f"the ONNX graph gives outputs of shape {got.shape}, PyTorch "
                          f"{expected.shape}")
    return float(np.max(np.abs(got - expected))) if got.size else 0.0


def evaluate_onnx(onnx_model: bytes, data: ImageDataset, *, threads: int = 1,
                  batch_size: int = 500) -> EvalResult:
    """Error % (and count) and mean cross-entropy of an ONNX model (fp32 or int8) on the whole
    of ``data``, run by onnxruntime; the counterpart of ``modelzip.train.evaluate``."""
    from modelzip.runtime.ort import make_session, run_batches

    session = make_session(onnx_model, threads=threads)
    logits = np.concatenate([run_batches(session, x.numpy(), batch_size)
                             for x, _ in data.batches(batch_size)])
    labels = data.labels.numpy()
    errors = int((logits.argmax(1) != labels).sum())
    shifted = logits - logits.max(1, keepdims=True)  # log-softmax without overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else 0.0
    return EvalResult(error_pct=100.0 * errors / max(len(data), 1), errors=errors,
                      total=len(data), loss=loss)


def export_onnx(model: nn.Module, *, dynamic_batch: bool = True, opset: int | None = None,
                check_inputs: torch.Tensor | None = None, atol: float = 1e-4,
                input_shape: tuple[int, ...] | None = None,
                exporter: str = "torchscript") -> bytes:
    """Export ``model`` (in eval mode) to a serialized ONNX ModelProto with one float32 input
    ``"input"`` (N, C, H, W) and one output ``"logits"``; the batch dimension is dynamic
    unless ``dynamic_batch=False`` (then it is 1).

    With ``check_inputs`` (float32, N x C x H x W, normalized as in training), onnxruntime
    runs the graph on them and ExportError is raised when max |ort - torch| > ``atol``.
    ``input_shape`` (C, H, W) is needed only for models not built by ``modelzip.zoo``
    when no check inputs are given."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise ExportError(f"export_onnx needs a torch.nn.Module, got {type(model).__name__}")
    if opset is None:
        opset = DEFAULT_OPSET if exporter == "torchscript" else DYNAMO_OPSET
    if opset < 13:
        raise ExportError(f"opset {opset} is too old: int8 per-channel quantization needs "
                          f">= 13; leave it at the default ({DEFAULT_OPSET})")
    if check_inputs is not None:
        if not isinstance(check_inputs, torch.Tensor) or check_inputs.dtype != torch.float32 \
                or check_inputs.ndim < 2 or len(check_inputs) == 0:
            raise ExportError("check_inputs must be a non-empty float32 tensor (N, C, H, W), "
                              "normalized as in training")
        check_input_shape(model, tuple(check_inputs.shape[1:]))
    shape = _input_shape(model, input_shape, check_inputs)
    net = _densified(model)
    example = torch.zeros((1 if not dynamic_batch else 2, *shape), dtype=torch.float32)
    was_training = net.training
    net.eval()
    try:
        export = _export_torchscript if exporter == "torchscript" else _export_dynamo
        blob = export(net, example, dynamic_batch, opset)
    except ExportError:
        raise
    except Exception as exc:  # tracing errors: name the model and the shape tried
        raise ExportError(f"cannot export {type(model).__name__} with inputs of shape "
                          f"{'x'.join(map(str, example.shape))}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                          ) from None
    finally:
        net.train(was_training)
    proto = onnx.load_from_string(blob)
    onnx.checker.check_model(proto)
    outputs = [o.name for o in proto.graph.output]
    if outputs != [OUTPUT_NAME]:
        raise ExportError(f"the model must return one tensor of logits; its graph has outputs "
                          f"{outputs}")
    if check_inputs is not None:
        diff = max_abs_diff(net, blob, check_inputs)
        if not diff <= atol:  # also catches NaN
            raise ExportError(f"the ONNX graph disagrees with PyTorch: max |ort - torch| = "
                              f"{diff:.3g} > atol {atol:g} on {len(check_inputs)} inputs")
    return blob
