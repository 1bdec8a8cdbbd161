"""Checkpoints of any model: a folder with ``model.safetensors`` (every parameter and buffer)
and ``modelzip.json`` (how to rebuild the model: the record of ``modelzip.codec.model``, with
its structural changes; dataset, training settings, metrics, SHA-256 of the weights). Nothing
is ever pickled or unpickled. ``load_checkpoint(path, model=skeleton)`` replays the recorded
changes on a freshly built copy of a user's model; a zoo model needs no skeleton. Version 1
folders (zoo name + ``layer_shapes``) still load. A checkpoint is saved as a whole folder,
written under a temporary name and renamed into place once; its JSON fields are checked by
type when it is read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from modelzip import __version__
from modelzip.atomic import staged_folder, write_atomic
from modelzip.core.builders import source_of
from modelzip.errors import CheckpointError, ModelzipError
from modelzip.zoo import build_model

__all__ = [
    "Checkpoint",
    "check_state",
    "checkpoint_files",
    "load_checkpoint",
    "load_state",
    "load_weights",
    "save_checkpoint",
    "write_atomic",
    "write_checkpoint_files",
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
    keep_others: bool = True,
) -> Path:
    """Save any model to ``directory`` (created if needed). The record is checked first by
    rebuilding the model from it (as ``pack`` does), so nothing is written that cannot be
    read back. Both files are written into a temporary folder beside ``directory``, which
    then replaces it in one rename: a crash leaves the old checkpoint or the new one, never
    new weights beside old JSON. ``keep_others``: carry the folder's other entries (e.g. a
    report) into the new one (as hard links where possible); False replaces the whole
    folder. ``force=False`` refuses an existing checkpoint folder."""
    directory = Path(directory)
    if not force and (directory / META_FILE).exists():
        raise CheckpointError(f"{directory} holds a checkpoint already; pass --force to "
                              "replace it")
    blob, meta_text = _checkpoint_files(model, directory, dataset=dataset, training=training,
                                        metrics=metrics, extra=extra, skeleton=skeleton)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file; a checkpoint is a folder")
    with staged_folder(directory) as staged:
        if keep_others and directory.is_dir():
            for entry in directory.iterdir():
                if entry.name not in (WEIGHTS_FILE, META_FILE) and not (
                        entry.name.startswith(".") and entry.name.endswith(".tmp")):
                    _carry(entry, staged / entry.name)
        write_checkpoint_files(staged, blob, meta_text)
    return directory


def _carry(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def checkpoint_files(model: nn.Module, *, dataset: dict[str, Any] | None = None,
                     training: dict[str, Any] | None = None,
                     metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                     skeleton: nn.Module | None = None) -> tuple[bytes, bytes]:
    """The two files of a checkpoint (weights, JSON), checked as ``save_checkpoint`` checks
    them, for a caller that writes a whole folder itself (``write_checkpoint_files``)."""
    return _checkpoint_files(model, "the checkpoint", dataset=dataset, training=training,
                             metrics=metrics, extra=extra, skeleton=skeleton)


def write_checkpoint_files(folder: str | os.PathLike[str], blob: bytes, meta_text: bytes
                           ) -> None:
    """Write a checkpoint's files into ``folder`` (a staged folder: ``atomic.staged_folder``);
    the JSON last."""
    write_atomic(Path(folder) / WEIGHTS_FILE, blob)
    write_atomic(Path(folder) / META_FILE, meta_text)


def _checkpoint_files(model: nn.Module, where: Any, *, dataset: dict[str, Any] | None,
                      training: dict[str, Any] | None, metrics: dict[str, Any] | None,
                      extra: dict[str, Any] | None, skeleton: nn.Module | None
                      ) -> tuple[bytes, bytes]:
    from modelzip.codec.model import _fresh, model_record, rebuild

    record = model_record(model, skeleton=skeleton)
    fresh = copy.deepcopy(skeleton) if skeleton is not None else _fresh(source_of(model))
    if fresh is not None:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        try:
            rebuild(record, shapes, "the model to save", model=fresh)
        except ModelzipError as exc:
            raise CheckpointError(f"{where}: not saved: {exc}") from None
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
    return blob, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()


def load_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], bytes]:
    """Read a safetensors file (never pickle); returns the tensors and the raw bytes."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
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
    except OSError as exc:
        raise CheckpointError(f"{meta_path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path}: not a modelzip checkpoint (format field missing)")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{meta_path}: checkpoint format version "
                              f"{meta.get('format_version')} is not supported (this modelzip "
                              f"reads version {FORMAT_VERSION})")
    _check_meta_fields(meta, meta_path)
    return meta


# field: (types it may have, what it should be); absent fields take their defaults
_META_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((dict,), "an object (the model record)"),
    "dataset": ((dict,), "an object"),
    "training": ((dict,), "an object"),
    "metrics": ((dict,), "an object"),
    "quantization_grids": ((dict,), "an object"),
    "layer_shapes": ((dict, type(None)), "an object"),
    "weights_file": ((str,), "a file name"),
    "weights_sha256": ((str,), "a SHA-256 in hex"),
}
_TRAINING_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "epochs": ((int,), "an integer"), "batch_size": ((int,), "an integer"),
    "seed": ((int,), "an integer"), "lr": ((int, float), "a number"),
    "weight_decay": ((int, float), "a number"), "momentum": ((int, float), "a number"),
    "label_smoothing": ((int, float), "a number"), "optimizer": ((str,), "a name"),
    "schedule": ((str,), "a name"), "augment": ((str,), "a name"),
}


def _check_meta_fields(meta: dict[str, Any], meta_path: Path) -> None:
    """The fields modelzip reads back, by type: a hand-edited or forged file fails here with
    the field's name, not later with a traceback."""
    def bad(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"{meta_path}: field {field!r} must be {what}, got "
                               f"{json.dumps(value)[:60]}; the file was edited or damaged, "
                               "save the checkpoint again")

    for field, (types, what) in _META_FIELDS.items():
        value = meta.get(field)
        if field in meta and (not isinstance(value, types) or isinstance(value, bool)):
            raise bad(field, what)
    value = meta.get("weights_file", WEIGHTS_FILE)
    if Path(value).name != value or value in ("", ".", ".."):
        raise bad("weights_file", "a file name in the checkpoint folder")
    for field, (types, what) in _TRAINING_FIELDS.items():
        value = (meta.get("training") or {}).get(field)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise bad(f"training.{field}", what)
    dataset = meta.get("dataset") or {}
    for field in ("name",):
        value = dataset.get(field)
        if value is not None and not isinstance(value, str):
            raise bad(f"dataset.{field}", "a name")
    for field in ("mean", "std", "input_shape", "classes"):
        value = dataset.get(field)
        if value is not None and not isinstance(value, list):
            raise bad(f"dataset.{field}", "a list")
    model = meta.get("model") or {}
    for field in ("name", "zoo", "builder"):
        value = model.get(field)
        if value is not None and not isinstance(value, str):
            raise bad(f"model.{field}", "a name")
    for field in ("kwargs", "structure"):
        value = model.get(field)
        if value is not None and not isinstance(value, dict):
            raise bad(f"model.{field}", "an object")


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
    """The coding hints quantization left on the model (plain module attributes, so a reload
    would lose them and the .mzip would store the weights as floats again)."""
    from modelzip.quant.grid import grid_hints

    return {key: {k: _hint_value_to_json(v) for k, v in hint.items()}
            for key, hint in grid_hints(model).items()}


_PACKED_ARRAY = "packed_array"  # a hint array too long for a JSON list (a Bloomier table, ...)
_PACK_ABOVE = 64  # elements; shorter arrays (per-channel scales) stay readable lists
_MAX_HINT_BYTES = 1 << 30


def _hint_value_to_json(value: Any) -> Any:
    import base64
    import zlib

    import numpy as np

    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and \
            value.size > _PACK_ABOVE:
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
        return {_PACKED_ARRAY: {"dtype": value.dtype.newbyteorder("<").str,
                                "shape": list(value.shape),
                                "zlib_base64": base64.b64encode(zlib.compress(data, 9)).decode()}}
    return value.tolist() if hasattr(value, "tolist") else value


def _hint_value_from_json(value: Any, where: str) -> Any:
    """A packed hint array back as numpy; CheckpointError when it is malformed (the file is
    the user's: nothing here trusts its sizes)."""
    import base64
    import binascii
    import zlib

    import numpy as np

    if not (isinstance(value, dict) and set(value) == {_PACKED_ARRAY}):
        return value
    spec = value[_PACKED_ARRAY]
    try:
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
        if dtype.kind not in "biuf" or any(n < 0 for n in shape):
            raise ValueError("not a numeric array")
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes > _MAX_HINT_BYTES:
            raise ValueError(f"declares {nbytes} bytes")
        inflater = zlib.decompressobj()
        data = inflater.decompress(base64.b64decode(spec["zlib_base64"], validate=True),
                                   nbytes + 1)
        if len(data) != nbytes or not inflater.eof:
            raise ValueError(f"holds other than the {nbytes} bytes its shape declares")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError, binascii.Error, zlib.error) as exc:
        raise CheckpointError(f"modelzip.json: the quantization hint {where} is malformed "
                              f"({exc}); re-save the checkpoint with modelzip") from None


def _grids_from_json(model: nn.Module, grids: dict[str, Any]) -> None:
    import numpy as np

    from modelzip.quant.grid import set_grid_hint

    modules = dict(model.named_modules())
    for key, hint in grids.items():
        owner, _, name = key.rpartition(".")
        if owner not in modules or not isinstance(hint, dict):
            continue  # a hint only shrinks the .mzip; a stale one is dropped, never trusted
        hint = {k: _hint_value_from_json(v, f"{key}.{k}") for k, v in hint.items()}
        set_grid_hint(modules[owner], name, {
            **hint, "scale": np.asarray(hint.get("scale", []), dtype=np.float32),
            "zero_point": np.asarray(hint.get("zero_point", []), dtype=np.int64)})
