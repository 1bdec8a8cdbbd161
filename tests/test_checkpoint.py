"""Checkpoints: bit-exact round trips, recorded metadata, and every way loading can fail."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from modelzip.checkpoint import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
    write_atomic,
)
from modelzip.errors import CheckpointError
from modelzip.zoo import build_model


def _trained_bn(name: str, **kwargs) -> nn.Module:
    """A BatchNorm model after a few train-mode forwards: running stats are non-trivial."""
    model = build_model(name, **kwargs)
    shape = model.modelzip_spec.input_shape
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(torch.randn(4, *shape, generator=torch.Generator().manual_seed(i)) * 2 + 1)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 3
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    return model.eval()


def _shrunk_lenet5() -> nn.Module:
    model = build_model("lenet5")
    model.conv2 = nn.Conv2d(20, 12, 5)
    model.fc1 = nn.Linear(12 * 16, 64)
    model.fc2 = nn.Linear(64, 10)
    return model.eval()


def _shrunk_resconcat() -> nn.Module:
    model = _trained_bn("resconcat")
    # branch_b: 16 -> 8 output channels; the depthwise/pointwise convs see 16 + 8 = 24
    model.branch_b[0] = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    model.branch_b[1] = nn.BatchNorm2d(8)
    model.depthwise[0] = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
    model.depthwise[1] = nn.BatchNorm2d(24)
    model.pointwise[0] = nn.Conv2d(24, 32, 1, bias=False)
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet300": lambda: build_model("lenet300").eval(),
    "lenet5": lambda: build_model("lenet5").eval(),
    "lenet5-dropout": lambda: build_model("lenet5", dropout=0.3, num_classes=7).eval(),
    "eurosat_cnn-bn": lambda: _trained_bn("eurosat_cnn", width=8),
    "resconcat-bn": lambda: _trained_bn("resconcat"),
    "resconcat-rgb64": lambda: _trained_bn("resconcat", in_channels=3, image_size=64),
    "lenet5-shrunk": _shrunk_lenet5,
    "resconcat-shrunk": _shrunk_resconcat,
}


@pytest.mark.parametrize("key", list(MODELS))
def test_round_trip_bit_exact(tmp_path: Path, key: str) -> None:
    torch.manual_seed(0)
    model = MODELS[key]()
    spec = model.modelzip_spec
    folder = save_checkpoint(model, tmp_path / "ckpt", dataset={"name": "mnist"},
                             training={"epochs": 3}, metrics={"test_error_pct": 1.5})
    assert folder == tmp_path / "ckpt"
    assert sorted(p.name for p in folder.iterdir()) == [WEIGHTS_FILE, META_FILE]

    ckpt = load_checkpoint(folder)
    loaded = ckpt.model
    assert loaded is not model
    assert not loaded.training
    assert loaded.modelzip_spec == spec
    original, restored = model.state_dict(), loaded.state_dict()
    assert list(restored) == list(original)
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype, name
        assert torch.equal(restored[name], tensor), name
    x = torch.randn(5, *spec.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    meta = json.loads((folder / META_FILE).read_text())
    assert meta == ckpt.meta
    assert meta["format"] == "modelzip-checkpoint"
    assert meta["format_version"] == FORMAT_VERSION
    assert {k: meta["model"][k] for k in ("kind", "zoo", "name", "kwargs", "input_shape")} == {
        "kind": "state-dict", "zoo": spec.name, "name": spec.name, "kwargs": spec.kwargs,
        "input_shape": list(spec.input_shape)}
    # only what differs from a freshly built model is recorded
    assert bool(meta["model"]["structure"]) == key.endswith("shrunk")
    assert meta["weights_sha256"] == hashlib.sha256(
        (folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["dataset"] == {"name": "mnist"}
    assert meta["training"] == {"epochs": 3}
    assert meta["metrics"] == {"test_error_pct": 1.5}
    assert ckpt.path == folder


def test_load_from_json_path_and_into_given_model(tmp_path: Path) -> None:
    model = build_model("lenet300")
    save_checkpoint(model, tmp_path)
    ckpt = load_checkpoint(tmp_path / META_FILE)
    assert ckpt.path == tmp_path
    target = build_model("lenet300").train()
    ckpt2 = load_checkpoint(tmp_path, model=target)
    assert ckpt2.model is target
    assert not target.training
    assert torch.equal(target.fc1.weight, model.fc1.weight)


def test_channels_last_model_saves_values(tmp_path: Path) -> None:
    model = build_model("lenet5").to(memory_format=torch.channels_last)
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path).model
    assert torch.equal(loaded.conv2.weight, model.conv2.weight)


def test_resave_overwrites(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    second = build_model("lenet300")
    save_checkpoint(second, tmp_path, metrics={"run": 2})
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.meta["metrics"] == {"run": 2}
    assert torch.equal(ckpt.model.fc1.weight, second.fc1.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE, META_FILE]


def test_any_model_saves_and_loads_onto_a_skeleton(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.LayerNorm(6), nn.Flatten(), nn.Linear(24, 3))
    save_checkpoint(model, tmp_path / "x")
    with pytest.raises(CheckpointError, match="pass model= a freshly built copy"):
        load_checkpoint(tmp_path / "x")
    skeleton = nn.Sequential(nn.Conv1d(2, 4, 3), nn.LayerNorm(6), nn.Flatten(),
                             nn.Linear(24, 3))
    loaded = load_checkpoint(tmp_path / "x", model=skeleton).model
    x = torch.randn(2, 2, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    wider = nn.Sequential(nn.Conv1d(2, 5, 3), nn.LayerNorm(6), nn.Flatten(), nn.Linear(30, 3))
    with pytest.raises(CheckpointError, match="at layer '0'"):
        load_checkpoint(tmp_path / "x", model=wider)


# ---------------------------------------------------------------------------- wrong weights
def test_weights_of_another_architecture(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path / "a")
    save_checkpoint(build_model("lenet5"), tmp_path / "b")
    shutil.copy(tmp_path / "b" / WEIGHTS_FILE, tmp_path / "a" / WEIGHTS_FILE)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "a")
    msg = str(info.value)
    # lenet300's first tensor exists in lenet5 too, with another shape
    assert "'fc1.weight'" in msg
    assert "(500, 800)" in msg
    assert "(300, 784)" in msg
    assert "another architecture" in msg
    assert str(tmp_path / "a") in msg


def test_load_weights_names_first_mismatch(tmp_path: Path) -> None:
    lenet5_state = build_model("lenet5").state_dict()
    with pytest.raises(CheckpointError, match=r"'fc1\.weight' has shape"):
        load_weights(build_model("lenet300"), lenet5_state)
    # a tensor the model has but the checkpoint lacks
    with pytest.raises(CheckpointError, match=r"'conv1\.weight' of this model is missing"):
        load_weights(build_model("lenet5"), build_model("lenet300").state_dict())
    # a tensor the checkpoint has but the model lacks
    state = dict(build_model("lenet300").state_dict())
    state["fc4.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"'fc4\.weight' does not exist in this model"):
        load_weights(build_model("lenet300"), state, source="somewhere")
    # a wider model of the same name: the first BatchNorm-free conv differs in shape
    with pytest.raises(CheckpointError, match=r"'features\.0\.0\.weight' has shape"):
        load_weights(build_model("eurosat_cnn", width=8),
                     build_model("eurosat_cnn").state_dict())


def test_given_model_of_another_architecture(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    with pytest.raises(CheckpointError, match=r"'conv1\.weight'"):
        load_checkpoint(tmp_path, model=build_model("lenet5"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_file(tmp_path: Path, damage: str) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    path = tmp_path / WEIGHTS_FILE
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[: len(blob) // 2],
                      "garbage": b"\x00\x01garbage" * 100,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as info:
        load_checkpoint(tmp_path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_state(path)


def test_weights_changed_after_saving(tmp_path: Path) -> None:
    model = build_model("lenet300")
    save_checkpoint(model, tmp_path)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc3.bias"][0] += 1.0
    (tmp_path / WEIGHTS_FILE).write_bytes(safetensors.torch.save(state))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_missing_weights_file(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------- bad metadata
def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found") as info:
        load_checkpoint(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_missing_json(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    (tmp_path / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"no {META_FILE} here"):
        load_checkpoint(tmp_path)


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta))


def test_wrong_format_version(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    _edit_meta(tmp_path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        load_checkpoint(tmp_path)


def test_wrong_format_name(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    _edit_meta(tmp_path, format="something-else")
    with pytest.raises(CheckpointError, match="not a modelzip checkpoint"):
        load_checkpoint(tmp_path)


def test_corrupt_json(tmp_path: Path) -> None:
    save_checkpoint(build_model("lenet300"), tmp_path)
    (tmp_path / META_FILE).write_text('{"format": "modelzip-checkpoint", ')
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / META_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a modelzip checkpoint"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------- write_atomic
def test_write_atomic_writes(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.bin"
    write_atomic(target, b"hello")
    assert target.read_bytes() == b"hello"
    write_atomic(target, b"again")
    assert target.read_bytes() == b"again"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_write_atomic_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             failing: str) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old contents")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new contents that never land")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_model("lenet300")
    save_checkpoint(first, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(build_model("lenet300"), tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert torch.equal(load_checkpoint(tmp_path).model.fc1.weight, first.fc1.weight)


def test_saved_files_respect_umask(tmp_path: Path) -> None:
    """Checkpoint files get the permissions of any other file the user creates (0o666 less
    the umask), so they can be shared like one; mkstemp alone would leave them 0o600."""
    old = os.umask(0o022)
    try:
        save_checkpoint(build_model("lenet300"), tmp_path / "ckpt")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    assert expected == 0o644
    for name in (WEIGHTS_FILE, META_FILE):
        assert (tmp_path / "ckpt" / name).stat().st_mode & 0o777 == expected, name
