"""Checkpoints of any model: a folder with ``model.safetensors`` (every parameter and buffer)
and ``modelzip.json`` (how to rebuild the model: the record of ``modelzip.codec.model``, with
its structural changes; dataset, training settings, metrics, SHA-256 of the weights). Nothing
is ever pickled or unpickled. ``load_checkpoint(path, model=skeleton)`` replays the recorded
changes on a freshly built copy of a user's model; a zoo model needs no skeleton. Version 1
folders (zoo name + ``layer_shapes``) still load.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from modelzip import __version__
from modelzip.atomic import write_atomic
from modelzip.core.builders import source_of
from modelzip.errors import CheckpointError, ModelzipError
from modelzip.zoo import build_model

__all__ = [
    "Checkpoint",
    "check_state",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "save_checkpoint",
    "write_atomic",
]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "modelzip.json"
FORMAT_NAME = "modelzip-checkpoint"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (in eval mode) and its metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path


def _state_bytes(model: nn.Module) -> bytes:
    # Contiguous copies: safetensors refuses shared or strided storage.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return safetensors.torch.save(state, metadata={"format": "pt", "producer": "modelzip"})


def save_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    dataset: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    skeleton: nn.Module | None = None,
    force: bool = True,
) -> Path:
    """Save any model to ``directory`` (created if needed). The record is checked first by
    rebuilding the model from it (as ``pack`` does), so nothing is written that cannot be
    read back. The weights are written first and the JSON last, each atomically; the JSON
    records the weights' SHA-256. ``force=False`` refuses an existing checkpoint folder."""
    from modelzip.codec.model import _fresh, model_record, rebuild

    directory = Path(directory)
    if not force and (directory / META_FILE).exists():
        raise CheckpointError(f"{directory} holds a checkpoint already; pass --force to "
                              "replace it")
    record = model_record(model, skeleton=skeleton)
    fresh = copy.deepcopy(skeleton) if skeleton is not None else _fresh(source_of(model))
    if fresh is not None:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        try:
            rebuild(record, shapes, "the model to save", model=fresh)
        except ModelzipError as exc:
            raise CheckpointError(f"{directory}: not saved: {exc}") from None
    blob = _state_bytes(model)
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "producer": f"modelzip {__version__}",
        "torch_version": torch.__version__,
        "model": record,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "dataset": dataset or {},
        "training": training or {},
        "metrics": metrics or {},
    }
    grids = _grids_to_json(model)
    if grids:
        meta["quantization_grids"] = grids
    if extra:
        meta.update(extra)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / WEIGHTS_FILE, blob)
    meta_text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    write_atomic(directory / META_FILE, meta_text.encode())
    return directory


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], bytes]:
    """Read a safetensors file (never pickle); returns the tensors and the raw bytes."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    try:
        return safetensors.torch.load(blob), blob
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); the file is "
                              "corrupt or truncated, save it again") from None


def check_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "") -> None:
    """Raise CheckpointError naming the first tensor that is missing, unexpected or of another
    shape (the sign of a checkpoint for another architecture)."""
    where = f"{source}: " if source else ""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise CheckpointError(f"{where}tensor {name!r} of this model is missing from the "
                                  "checkpoint; it was saved from another architecture")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}tensor {name!r} has shape {tuple(state[name].shape)} "
                                  f"in the checkpoint but {tuple(tensor.shape)} in the model; "
                                  "it was saved from another architecture")
    for name in state:
        if name not in expected:
            raise CheckpointError(f"{where}checkpoint tensor {name!r} does not exist in this "
                                  "model; it was saved from another architecture")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "") -> None:
    """Load ``state`` into ``model`` after ``check_state``; the model is untouched on error."""
    check_state(model, state, source=source)
    model.load_state_dict(state, strict=True)


def _read_meta(directory: Path) -> dict[str, Any]:
    if not directory.exists():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    meta_path = directory / META_FILE if directory.is_dir() else directory
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {META_FILE} here; not a modelzip checkpoint "
                              "folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: corrupt JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path}: not a modelzip checkpoint (format field missing)")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{meta_path}: checkpoint format version "
                              f"{meta.get('format_version')} is not supported (this modelzip "
                              f"reads version {FORMAT_VERSION})")
    return meta


def load_checkpoint(directory: str | os.PathLike[str], model: nn.Module | None = None
                    ) -> Checkpoint:
    """Rebuild the model a checkpoint describes and load its weights. ``model``: a freshly
    built copy of a user's model (changed in place); not needed for a zoo model."""
    from modelzip.codec.model import rebuild

    directory = Path(directory)
    meta = _read_meta(directory)
    if directory.is_file():
        directory = directory.parent
    state, blob = load_state(directory / meta.get("weights_file", WEIGHTS_FILE))
    info = meta.get("model") or {}
    if meta.get("format_version") == 1:  # a zoo model with its layer shapes
        if model is None:
            from modelzip.core.modelrec import BASE_ATTR, architecture

            name, kwargs = info.get("name", "?"), info.get("kwargs") or {}
            base = architecture(build_model(name, **kwargs))  # as built, before pruning
            model = build_model(name, layer_shapes=meta.get("layer_shapes"), **kwargs)
            object.__setattr__(model, BASE_ATTR, base)
    else:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        try:
            model = rebuild(info, shapes, str(directory), model=model)
        except ModelzipError as exc:
            raise CheckpointError(str(exc)) from None
    check_state(model, state, source=str(directory))
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} does not match the SHA-256 recorded "
                              f"in {META_FILE}; the weights were changed or damaged after saving")
    model.load_state_dict(state, strict=True)
    _grids_from_json(model, meta.get("quantization_grids") or {})
    model.eval()
    return Checkpoint(model=model, meta=meta, path=directory)


def _grids_to_json(model: nn.Module) -> dict[str, Any]:
    """The affine grids uniform quantization left on the model (plain module attributes, so
    a reload would lose them and the .mzip would store the weights as floats again)."""
    from modelzip.quant.grid import grid_hints

    return {key: {k: v.tolist() if hasattr(v, "tolist") else v for k, v in hint.items()}
            for key, hint in grid_hints(model).items()}


def _grids_from_json(model: nn.Module, grids: dict[str, Any]) -> None:
    import numpy as np

    from modelzip.quant.grid import set_grid_hint

    modules = dict(model.named_modules())
    for key, hint in grids.items():
        owner, _, name = key.rpartition(".")
        if owner not in modules or not isinstance(hint, dict):
            continue  # a hint only shrinks the .mzip; a stale one is dropped, never trusted
        set_grid_hint(modules[owner], name, {
            **hint, "scale": np.asarray(hint.get("scale", []), dtype=np.float32),
            "zero_point": np.asarray(hint.get("zero_point", []), dtype=np.int64)})
