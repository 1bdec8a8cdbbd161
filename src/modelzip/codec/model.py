"""Packing a zoo model into .mzip bytes and back: the torch side of the codec.

The artifact holds the whole ``state_dict()`` (parameters and buffers, e.g. BatchNorm running
statistics) and, as its ``model``, how to rebuild the module::

    name, kwargs, input_shape   the zoo model and its arguments (``modelzip.zoo``)
    layer_changes               {layer: {field: value}}: only the fields of ``layer_shapes``
                                that differ from a freshly built model (structured pruning)
    parameters                  the parameter count (dense fp32 bytes = 4 x this)
    torch_dtypes                {tensor: dtype} for dtypes numpy lacks (bfloat16), if any

``unpack`` rebuilds the model and loads every tensor bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.checkpoint import check_state, write_atomic
from modelzip.codec.artifact import Artifact, read_artifact, read_artifact_file, write_artifact
from modelzip.errors import ArtifactError, ModelzipError
from modelzip.zoo import build_model, layer_shapes, model_spec

__all__ = ["model_from_artifact", "pack", "pack_file", "unpack", "unpack_file"]

# torch dtypes numpy lacks: stored as integers of the same width, the dtype kept in the model
_VIEW_AS = {torch.bfloat16: torch.int16}


def _state_arrays(model: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, viewed = {}, {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if t.dtype in _VIEW_AS:
            viewed[name] = str(t.dtype).removeprefix("torch.")
            t = t.view(_VIEW_AS[t.dtype])
        try:
            arrays[name] = t.numpy()
        except TypeError:
            raise ArtifactError(f"tensor {name!r} has dtype {t.dtype}, which a .mzip cannot "
                                "store") from None
    return arrays, viewed


def _model_record(model: nn.Module) -> dict[str, Any]:
    spec = model_spec(model)
    with torch.device("meta"):  # only the shapes are needed: allocate nothing
        fresh = layer_shapes(build_model(spec.name, **spec.kwargs))
    changes = {}
    for layer, desc in layer_shapes(model).items():
        base = fresh.get(layer, {})
        diff = {k: v for k, v in desc.items() if base.get(k) != v}
        if diff:
            changes[layer] = diff
    return {
        "name": spec.name, "kwargs": dict(spec.kwargs), "input_shape": list(spec.input_shape),
        "layer_changes": changes, "parameters": sum(p.numel() for p in model.parameters()),
    }


def pack(model: nn.Module, *, coder: str = "best", meta: dict | None = None) -> bytes:
    """A model built by ``modelzip.zoo.build_model`` (possibly pruned) as .mzip bytes.
    ``coder``: best, huffman, rans or raw."""
    record = _model_record(model)
    arrays, viewed = _state_arrays(model)
    if viewed:
        record["torch_dtypes"] = viewed
    # refuse now, not on the satellite, a model that its record does not rebuild
    _rebuild(record, {k: tuple(a.shape) for k, a in arrays.items()}, "this model")
    return write_artifact(arrays, model=record, meta=meta, coder=coder)


def _rebuild(record: dict[str, Any], shapes: dict[str, tuple[int, ...]], what: str
             ) -> nn.Module:
    """Build the recorded model: first on the meta device (allocates nothing) to compare its
    state shapes with the stored tensors, so that a hostile record cannot ask for a giant
    model; then for real."""
    name, kwargs = record.get("name"), record.get("kwargs", {})
    changes = record.get("layer_changes", {})
    if not (isinstance(name, str) and isinstance(kwargs, dict) and isinstance(changes, dict)
            and all(isinstance(v, dict) for v in changes.values())):
        raise ArtifactError(f"{what} does not describe a zoo model (model.name, kwargs, "
                            "layer_changes); read it with modelzip.codec.read_artifact")

    def build(layers: dict[str, Any] | None) -> nn.Module:
        try:
            return build_model(name, layer_shapes=layers, **kwargs)
        except ModelzipError as exc:
            raise ArtifactError(f"the model of {what} does not rebuild: {exc}") from None
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise ArtifactError(f"the model of {what} does not rebuild ({exc})") from None

    with torch.device("meta"):
        fresh = layer_shapes(build(None))
        unknown = sorted(set(changes) - set(fresh))
        if unknown:
            raise ArtifactError(f"the model of {what} does not rebuild: layer {unknown[0]!r} "
                                f"does not exist in a {name}")
        layers = {k: {**fresh[k], **diff} for k, diff in changes.items()} or None
        skeleton = build(layers)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for key in sorted(set(expected) | set(shapes)):
        if expected.get(key) != shapes.get(key):
            raise ArtifactError(f"the model of {what} does not match its tensors: "
                                f"{key!r} is {expected.get(key)} in the rebuilt model and "
                                f"{shapes.get(key)} in the stored state")
    return build(layers)


def unpack(data: bytes) -> nn.Module:
    """Rebuild the model in .mzip bytes written by ``pack``, every tensor bit for bit; in eval
    mode."""
    return model_from_artifact(read_artifact(data))


def model_from_artifact(artifact: Artifact, what: str = "this artifact") -> nn.Module:
    """The model of an artifact read with ``read_artifact`` (``what`` names it in errors)."""
    record = artifact.model
    if not isinstance(record, dict):
        raise ArtifactError(f"{what} holds no model record; read it with "
                            "modelzip.codec.read_artifact")
    arrays = artifact.tensors
    model = _rebuild(record, {k: tuple(a.shape) for k, a in arrays.items()}, what)
    viewed = record.get("torch_dtypes") or {}
    state = {}
    for key, array in arrays.items():
        t = torch.from_numpy(array)
        if key in viewed:
            target = getattr(torch, str(viewed[key]), None)
            if target not in _VIEW_AS:
                raise ArtifactError(f"{what}: tensor {key!r} has unknown dtype {viewed[key]!r}")
            t = t.view(target)
        state[key] = t
    try:
        check_state(model, state, source=what)
    except ModelzipError as exc:
        raise ArtifactError(str(exc)) from None
    # assign: the model takes the stored tensors themselves, with their dtypes (a float16 or
    # bfloat16 model comes back as one), instead of copying them into float32 ones
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def pack_file(model: nn.Module, path: str | os.PathLike[str], *, coder: str = "best",
              meta: dict | None = None) -> Path:
    """``pack`` written atomically to ``path``; returns the path."""
    path = Path(path)
    write_atomic(path, pack(model, coder=coder, meta=meta))
    return path


def unpack_file(path: str | os.PathLike[str]) -> nn.Module:
    """``unpack`` of a file; errors name the path."""
    return model_from_artifact(read_artifact_file(path), str(path))
