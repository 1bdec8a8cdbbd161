"""Checkpoints: a folder with ``model.safetensors`` (every parameter and buffer) and
``modelzip.json`` (model name, arguments, layer shapes, dataset, training settings, metrics,
SHA-256 of the weights). Nothing is ever pickled or unpickled.
"""

from __future__ import annotations

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
from modelzip.errors import CheckpointError
from modelzip.zoo import build_model, layer_shapes, model_spec

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
FORMAT_VERSION = 1


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
) -> Path:
    """Save a zoo-built model to ``directory`` (created if needed). The weights are written
    first and the JSON last, each atomically; the JSON records the weights' SHA-256."""
    spec = model_spec(model)
    directory = Path(directory)
    blob = _state_bytes(model)
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "producer": f"modelzip {__version__}",
        "torch_version": torch.__version__,
        "model": {"name": spec.name, "kwargs": spec.kwargs, "input_shape": list(spec.input_shape)},
        "layer_shapes": layer_shapes(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "dataset": dataset or {},
        "training": training or {},
        "metrics": metrics or {},
    }
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
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint format version "
                              f"{meta.get('format_version')} is not supported (this modelzip "
                              f"reads version {FORMAT_VERSION})")
    return meta


def load_checkpoint(directory: str | os.PathLike[str], model: nn.Module | None = None
                    ) -> Checkpoint:
    """Rebuild the model a checkpoint describes (or use ``model``) and load its weights."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if directory.is_file():
        directory = directory.parent
    if model is None:
        info = meta.get("model") or {}
        model = build_model(info.get("name", "?"), layer_shapes=meta.get("layer_shapes"),
                            **(info.get("kwargs") or {}))
    state, blob = load_state(directory / meta.get("weights_file", WEIGHTS_FILE))
    check_state(model, state, source=str(directory))
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} does not match the SHA-256 recorded "
                              f"in {META_FILE}; the weights were changed or damaged after saving")
    model.load_state_dict(state, strict=True)
    model.eval()
    return Checkpoint(model=model, meta=meta, path=directory)
