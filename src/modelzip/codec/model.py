"""Packing any ``nn.Module`` into .mzip bytes and back: the torch side of the codec.

The artifact holds the whole ``state_dict()`` (parameters and buffers, e.g. BatchNorm running
statistics) and, as its ``model``, how to put the weights back (``model_record``)::

    kind          "state-dict" (an artifact with an ONNX graph says "onnx-graph")
    structure     the structural changes since the model as built (``core.modelrec``):
                  pruned channel counts, factorized or removed modules; {} when none
    zoo, kwargs   a modelzip.zoo model and its arguments, when it is one: unpacked by name
    builder       "package.module:function" that built a user's model, when known (shown to
                  the user; never imported from a file); also with kwargs
    name          zoo name, builder or class name (for people and tables)
    input_shape   per-sample input shape when known (C, H, W)
    parameters    the parameter count (dense fp32 bytes = 4 x this)
    torch_dtypes  {tensor: dtype} for dtypes numpy lacks (bfloat16), if any: each names a
                  stored int16 tensor (checked when unpacking)

``unpack(data, model=skeleton)`` replays the structure on a freshly built copy of the user's
model and loads every tensor bit for bit; a zoo model needs no skeleton. Every stored tensor
is checked against the rebuilt model: same shape, and the same dtype (a floating-point tensor
may come back in another floating-point dtype: a float16 model stays one), so that a forged
dtype cannot slip into the model. Records written before ``structure`` existed
(``layer_changes`` of zoo layers) still unpack.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.atomic import write_atomic
from modelzip.codec.artifact import (
    Artifact,
    protect_artifact,
    read_artifact,
    read_artifact_file,
    write_artifact,
)
from modelzip.core.builders import build_from_target, source_of
from modelzip.core.modelrec import (
    BASE_ATTR,
    apply_structure,
    architecture,
    base_architecture,
    mark_base,
    structure_changes,
)
from modelzip.errors import ArtifactError, ModelzipError

__all__ = ["model_from_artifact", "model_record", "pack", "pack_file", "rebuild", "unpack",
           "unpack_file"]

STATE_DICT_KIND = "state-dict"
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


def _fresh(source: dict[str, Any] | None) -> nn.Module | None:
    """The model as its recorded source builds it (None when modelzip cannot build it)."""
    if not source:
        return None
    if "zoo" in source:
        from modelzip.zoo import build_model

        return build_model(source["zoo"], **source.get("kwargs", {}))
    if "builder" in source:
        return build_from_target(source["builder"], source.get("kwargs"))
    return None


def model_record(model: nn.Module, *, skeleton: nn.Module | None = None) -> dict[str, Any]:
    """How to put ``model``'s weights back into a freshly built copy of it. The structural
    changes are taken against ``skeleton`` when given, else against the architecture the model
    had before its first structural change (remembered by ``modelzip.apply``), else against a
    fresh build of its zoo entry or builder; with none of these, the model counts as built."""
    source = source_of(model)
    if skeleton is not None:
        base = architecture(skeleton)
    else:
        base = base_architecture(model)
        if base is None and source is not None:
            fresh = _fresh(source)
            base = architecture(fresh) if fresh is not None else None
    record: dict[str, Any] = {"kind": STATE_DICT_KIND,
                              "structure": structure_changes(base, model) if base else {},
                              "parameters": sum(p.numel() for p in model.parameters())}
    if source and "zoo" in source:
        record.update(zoo=source["zoo"], name=source["zoo"], kwargs=source.get("kwargs", {}))
    elif source and "builder" in source:
        record.update(builder=source["builder"], name=source["builder"],
                      kwargs=source.get("kwargs", {}))
    else:
        record["name"] = type(model).__name__
    spec = getattr(model, "modelzip_spec", None)
    if spec is not None and getattr(spec, "input_shape", None):
        record["input_shape"] = list(spec.input_shape)
    return record


def pack(model: nn.Module, *, coder: str = "best", meta: dict | None = None,
         skeleton: nn.Module | None = None) -> bytes:
    """Any model (possibly pruned, factorized, quantized) as .mzip bytes. ``coder``: best,
    huffman, rans or raw. ``skeleton``: a freshly built copy of the model, when modelzip did
    not make the structural changes itself.

    Before returning, the bytes are read back, the model is rebuilt from its record on a fresh
    skeleton (when one can be had: ``skeleton``, the zoo or the model's builder) and every
    tensor is compared bit for bit: nothing is written that cannot be read back."""
    record = model_record(model, skeleton=skeleton)
    arrays, viewed = _state_arrays(model)
    if viewed:
        record["torch_dtypes"] = viewed
    blob = write_artifact(arrays, model=record, meta=meta, coder=coder, **_hints(model))
    fresh = copy.deepcopy(skeleton) if skeleton is not None else _fresh(source_of(model))
    if fresh is not None:
        rebuilt = model_from_artifact(read_artifact(blob), "the packed model", model=fresh)
        _check_same_state(model, rebuilt)
    return blob


def _hints(model: nn.Module) -> dict[str, Any]:
    """Per-tensor coding hints: the affine grids that uniform quantization leaves on modules."""
    from modelzip.quant.grid import grid_hints

    hints = grid_hints(model)
    return {"hints": hints} if hints else {}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _check_same_state(model: nn.Module, rebuilt: nn.Module) -> None:
    ours, theirs = model.state_dict(), rebuilt.state_dict()
    for key, tensor in ours.items():
        other = theirs.get(key)
        if other is None or other.shape != tensor.shape or other.dtype != tensor.dtype or \
                not torch.equal(_bits(other), _bits(tensor)):
            raise ArtifactError(f"the packed model does not read back bit-exactly at {key!r}; "
                                "this is a bug in modelzip, please report it")


def _legacy_skeleton(record: dict[str, Any], what: str) -> nn.Module:
    """A zoo model of a record written before ``structure`` existed: ``layer_changes`` holds
    {layer: {field: value}} of the zoo's layer descriptions."""
    from modelzip.zoo import build_model, layer_shapes

    name, kwargs = record.get("name"), record.get("kwargs", {})
    changes = record.get("layer_changes", {})
    if not (isinstance(name, str) and isinstance(kwargs, dict) and isinstance(changes, dict)
            and all(isinstance(v, dict) for v in changes.values())):
        raise ArtifactError(f"{what} does not describe a zoo model (model.name, kwargs, "
                            "layer_changes); read it with modelzip.codec.read_artifact")
    try:
        with torch.device("meta"):  # compare shapes first: allocate nothing
            fresh = layer_shapes(build_model(name, **kwargs))
        unknown = sorted(set(changes) - set(fresh))
        if unknown:
            raise ArtifactError(f"the model of {what} does not rebuild: layer {unknown[0]!r} "
                                f"does not exist in a {name}")
        layers = {k: {**fresh[k], **diff} for k, diff in changes.items()} or None
        base = architecture(build_model(name, **kwargs))
        model = build_model(name, layer_shapes=layers, **kwargs)
        object.__setattr__(model, BASE_ATTR, base)
        return model
    except ArtifactError:
        raise
    except ModelzipError as exc:
        raise ArtifactError(f"the model of {what} does not rebuild: {exc}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ArtifactError(f"the model of {what} does not rebuild ({exc})") from None


def _skeleton(record: dict[str, Any], what: str) -> nn.Module:
    """A freshly built model for a record, when modelzip can build it (a zoo model)."""
    if "zoo" in record:
        from modelzip.zoo import build_model

        name, kwargs = record["zoo"], record.get("kwargs", {})
        if not (isinstance(name, str) and isinstance(kwargs, dict)):
            raise ArtifactError(f"{what} does not describe a zoo model (model.zoo, kwargs)")
        try:
            return build_model(name, **kwargs)
        except ModelzipError as exc:
            raise ArtifactError(f"the model of {what} does not rebuild: {exc}") from None
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"the model of {what} does not rebuild ({exc})") from None
    hint = (f"it was packed from {record['builder']}(**{record.get('kwargs', {})}); "
            f"pass model={record['builder'].rpartition(':')[2]}(...) (CLI: --model "
            f"{record['builder']})" if isinstance(record.get("builder"), str)
            else f"it holds a {record.get('name', 'model')}; pass model= a freshly built copy "
                 "(CLI: --model MODULE:FUNCTION)")
    raise ArtifactError(f"{what} holds a user model that modelzip cannot build by itself: "
                        f"{hint}")


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def rebuild(record: dict[str, Any], shapes: dict[str, tuple[int, ...]], what: str, *,
            model: nn.Module | None = None) -> nn.Module:
    """The model a record describes, with the recorded structure, its state shapes checked
    against ``shapes`` (the stored tensors): a skeleton of another architecture or width is
    named at its first mismatching layer. ``model`` (a fresh skeleton) is changed in place."""
    if "layer_changes" in record and "structure" not in record and model is None:
        return _checked(_legacy_skeleton(record, what), shapes, what)
    structure = record.get("structure", {})
    _check_structure_shapes(structure, shapes, what)
    if model is None:
        # a hostile record could name a giant zoo model: build it on the meta device first,
        # which allocates nothing, and compare its shapes with the (bounded) stored tensors.
        # A factory that cannot run there (one that loads pretrained weights) is built as is.
        try:
            with torch.device("meta"):
                meta_model = _skeleton(record, what)
        except Exception:  # whatever the factory does on meta; the real build says why
            meta_model = None
        if meta_model is not None:
            _checked(_structured(meta_model, structure, what), shapes, what)
        model = _skeleton(record, what)
    return _checked(_structured(model, structure, what), shapes, what)


def _structured(model: nn.Module, structure: dict[str, Any], what: str) -> nn.Module:
    """``model`` (freshly built) with the recorded structure; it remembers the architecture it
    was built with, so that a later pack records the changes against that, not against the
    already changed model."""
    mark_base(model)
    try:
        return apply_structure(model, structure)
    except ModelzipError as exc:
        raise ArtifactError(f"{what}: {exc}") from None


def _checked(model: nn.Module, shapes: dict[str, tuple[int, ...]], what: str) -> nn.Module:
    expected = _expected_shapes(model)
    for key in list(expected) + [k for k in shapes if k not in expected]:
        if expected.get(key) != shapes.get(key):
            layer = key.rpartition(".")[0] or key
            raise ArtifactError(
                f"the model does not match {what} at layer {layer!r}: tensor {key!r} is "
                f"{_shape_text(expected.get(key))} in the model and "
                f"{_shape_text(shapes.get(key))} in {what} (another architecture or width); "
                "build the model with the arguments it was packed from")
    return model


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "missing" if shape is None else str(tuple(shape))


def _check_structure_shapes(structure: Any, shapes: dict[str, tuple[int, ...]],
                            what: str) -> None:
    """Every tensor shape the record would allocate must be that of a stored tensor, so that a
    hostile record cannot make us allocate more than the (bounded) artifact holds."""
    if not isinstance(structure, dict):
        raise ArtifactError(f"{what}: the structure record must be a mapping")

    def check(key: str, shape: Any) -> None:
        if not isinstance(shape, list) or shapes.get(key) != tuple(shape):
            raise ArtifactError(f"{what}: the structure record gives {key} the shape {shape}, "
                                f"but the stored tensor is {_shape_text(shapes.get(key))}")

    def walk(prefix: str, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise ArtifactError(f"{what}: bad module record at {prefix!r}")
        for group in ("parameters", "buffers"):
            for key, shape in (spec.get(group) or {}).items():
                full = f"{prefix}.{key}" if prefix else key
                if shape is None or (group == "buffers" and full not in shapes):
                    continue  # a non-persistent buffer: checked by size below
                check(full, shape)
        for child, sub in (spec.get("children") or {}).items():
            walk(f"{prefix}.{child}" if prefix else child, sub)

    for name, entry in structure.items():
        if not isinstance(entry, dict):
            raise ArtifactError(f"{what}: the structure record of {name!r} must be a mapping")
        if "replace" in entry:
            walk(name, entry["replace"])
        for key, pair in (entry.get("tensors") or {}).items():
            full = f"{name}.{key}" if name else key
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ArtifactError(f"{what}: bad tensor record at {full!r}")
            if full in shapes or not isinstance(pair[1], list):
                check(full, pair[1])


def unpack(data: bytes, *, model: nn.Module | None = None,
           trusted_keys: Sequence[bytes] | None = None) -> nn.Module:
    """The model in .mzip bytes written by ``pack``, every tensor bit for bit, in eval mode.
    ``model``: a freshly built copy of the user's model (changed in place and returned); not
    needed for a zoo model. ``trusted_keys``: see ``read_artifact``."""
    return model_from_artifact(read_artifact(data, trusted_keys=trusted_keys), model=model)


def _torch_dtypes(record: dict[str, Any], arrays: dict[str, np.ndarray],
                  what: str) -> dict[str, torch.dtype]:
    """The record's dtype table, checked: each entry names a stored tensor of the integer
    dtype that stands in for a dtype numpy lacks."""
    viewed = record.get("torch_dtypes") or {}
    if not isinstance(viewed, dict):
        raise ArtifactError(f"{what}: the model record's torch_dtypes is not a mapping")
    out = {}
    for key, name in viewed.items():
        target = getattr(torch, name, None) if isinstance(name, str) else None
        if target not in _VIEW_AS:
            raise ArtifactError(f"{what}: tensor {key!r} has unknown dtype {name!r} in the "
                                f"model record (known: "
                                f"{', '.join(str(d).removeprefix('torch.') for d in _VIEW_AS)})")
        stored = arrays.get(key)
        if stored is None:
            raise ArtifactError(f"{what}: the model record gives a dtype to tensor {key!r}, "
                                "which is not stored")
        expected = str(_VIEW_AS[target]).removeprefix("torch.")
        if stored.dtype != np.dtype(expected):
            raise ArtifactError(f"{what}: tensor {key!r} is stored as {stored.dtype}; a "
                                f"{name} tensor is stored as {expected}")
        out[key] = target
    return out


def _check_dtypes(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every stored tensor has the dtype of the model's own tensor (floating point may differ
    in width: a float16 model); a forged dtype is named."""
    for key, ours in net.state_dict().items():
        stored = state[key]
        if stored.dtype == ours.dtype or (stored.dtype.is_floating_point
                                          and ours.dtype.is_floating_point):
            continue
        raise ArtifactError(f"{what}: tensor {key!r} is stored as "
                            f"{str(stored.dtype).removeprefix('torch.')}, but the model's is "
                            f"{str(ours.dtype).removeprefix('torch.')}: the file is forged or "
                            "for another model")


def model_from_artifact(artifact: Artifact, what: str = "this artifact", *,
                        model: nn.Module | None = None) -> nn.Module:
    """The model of an artifact read with ``read_artifact`` (``what`` names it in errors)."""
    record = artifact.model
    if not isinstance(record, dict):
        raise ArtifactError(f"{what} holds no model record; read it with "
                            "modelzip.codec.read_artifact")
    if record.get("kind", STATE_DICT_KIND) != STATE_DICT_KIND or record.get("format") == "onnx":
        raise ArtifactError(f"{what} carries an ONNX graph, not PyTorch weights; run it with: "
                            "modelzip run FILE --input inputs.npy")
    arrays = artifact.tensors
    viewed = _torch_dtypes(record, arrays, what)
    net = rebuild(record, {k: tuple(a.shape) for k, a in arrays.items()}, what, model=model)
    state = {}
    for key, array in arrays.items():
        t = torch.from_numpy(array)
        state[key] = t.view(viewed[key]) if key in viewed else t
    _check_dtypes(net, state, what)
    # assign: the model takes the stored tensors themselves, with their dtypes (a float16 or
    # bfloat16 model comes back as one), instead of copying them into float32 ones
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def pack_file(model: nn.Module, path: str | os.PathLike[str], *, coder: str = "best",
              meta: dict | None = None, skeleton: nn.Module | None = None,
              fec: float | str | None = None, sign: Any = None) -> Path:
    """``pack`` written atomically to ``path``; returns the path. ``sign`` (an Ed25519 private
    key or its PEM file) and ``fec`` (parity per data byte, 0.08 or "8%"): see
    ``protect_artifact``."""
    path = Path(path)
    blob = protect_artifact(pack(model, coder=coder, meta=meta, skeleton=skeleton), fec=fec,
                            sign=sign)
    write_atomic(path, blob)
    return path


def unpack_file(path: str | os.PathLike[str], *, model: nn.Module | None = None,
                trusted_keys: Sequence[bytes] | None = None) -> nn.Module:
    """``unpack`` of a file; errors name the path."""
    return model_from_artifact(read_artifact_file(path, trusted_keys=trusted_keys), str(path),
                               model=model)
