"""A user's own model from the shell: weights as safetensors, the builder by import path;
compress, unpack, eval, inspect and run, each in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from modelzip.codec.artifact import read_artifact
from tests.test_cli import assert_ok, assert_user_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
BUILDER = "examples.custom_cnn:build_net"

RECIPE = """
name: user-quick
finetune: {epochs: 1, lr: 0.01, batch_size: 16}
steps:
  - l1-filter: {ratio: 0.25}
  - magnitude: {sparsity: 0.5}
  - finetune: {epochs: 1}
"""


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 64x64 RGB tiles, told apart by their mean colour."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        (root / f"class{c}").mkdir()
        for i in range(20):
            tile = np.clip(rng.normal(colour, 40, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(tile).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sys

    sys.path.insert(0, str(ROOT))
    from examples.custom_cnn import build_net

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("user") / "net.safetensors"
    safetensors.torch.save_file(build_net(num_classes=3).state_dict(), str(path))
    return path


def test_user_model_end_to_end(tmp_path: Path, image_folder: Path, weights: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    dataset = f"folder:{image_folder}"
    result = run_cli("compress", weights, "--model", BUILDER, "--model-arg", "num_classes=3",
                     "--dataset", dataset, "--recipe", recipe, "--no-progress", "-o", out,
                     cwd=ROOT)
    assert_ok(result)
    assert "(.mzip)" in result.stdout
    artifact = out / "model.mzip"
    record = read_artifact(artifact.read_bytes()).model
    assert record["builder"] == BUILDER and record["kwargs"] == {"num_classes": 3}
    assert record["structure"], "the channels l1-filter removed are recorded"
    meta = json.loads((out / "modelzip.json").read_text())
    assert meta["compression"]["settings"]["validation"].startswith("seeded 10%")

    # without the builder, the artifact says which one it needs
    assert_user_error(run_cli("unpack", artifact, "-o", tmp_path / "x", cwd=ROOT),
                      f"--model {BUILDER}")
    back = tmp_path / "back"
    assert_ok(run_cli("unpack", artifact, "--model", BUILDER, "-o", back, cwd=ROOT))
    result = run_cli("eval", back, "--model", BUILDER, "--dataset", dataset, cwd=ROOT)
    assert_ok(result)
    assert "error" in result.stdout
    result = run_cli("inspect", back, "--model", BUILDER, cwd=ROOT)
    assert_ok(result)
    assert "features" in result.stdout or "conv" in result.stdout.lower()
    # the checkpoint written by compress and the one unpacked from the artifact hold the
    # same weights, bit for bit
    a = safetensors.torch.load_file(str(out / "model.safetensors"))
    b = safetensors.torch.load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_skeleton_of_another_width_is_named(tmp_path: Path, image_folder: Path,
                                               weights: Path) -> None:
    out = tmp_path / "packed.mzip"
    ckpt = tmp_path / "ckpt"
    assert_ok(run_cli("unpack", _pack(weights, tmp_path), "--model", BUILDER,
                      "-o", ckpt, cwd=ROOT))
    assert_user_error(run_cli("unpack", _pack(weights, tmp_path), "--model", BUILDER,
                              "--model-arg", "width=8", "-o", tmp_path / "y", cwd=ROOT),
                      "does not match", "another architecture or width")
    assert not out.exists() and not (tmp_path / "y").exists()


def _pack(weights: Path, tmp_path: Path) -> Path:
    out = tmp_path / "w.mzip"
    if not out.exists():
        assert_ok(run_cli("pack", weights, "--model", BUILDER, "--model-arg", "num_classes=3",
                          "-o", out, cwd=ROOT))
    return out


def test_plain_weights_need_their_model(tmp_path: Path, weights: Path) -> None:
    assert_user_error(run_cli("pack", weights, "-o", tmp_path / "x.mzip", cwd=ROOT),
                      "pass --model")
    assert_user_error(run_cli("pack", weights, "--model", "nope.module:build",
                              "-o", tmp_path / "x.mzip", cwd=ROOT), "cannot import nope.module")
    assert not (tmp_path / "x.mzip").exists()


def test_version_and_images_helper(tmp_path: Path, image_folder: Path) -> None:
    result = run_cli("--version")
    assert_ok(result)
    assert result.stdout.startswith("modelzip ")
    out = tmp_path / "images.npy"
    assert_ok(run_cli("images", image_folder / "class1", "-o", out))
    array = np.load(out, allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape == (20, 3, 64, 64)
    assert_user_error(run_cli("images", image_folder, "-o", out), "exists; pass --force")
    assert_ok(run_cli("images", image_folder, "-o", out, "--size", "32x32", "--force"))
    assert np.load(out, allow_pickle=False).shape == (60, 3, 32, 32)  # class subfolders
    assert_user_error(run_cli("images", tmp_path / "none", "-o", tmp_path / "x.npy"),
                      "folder not found")


def test_unknown_model_is_named_before_any_data_is_read(tmp_path: Path) -> None:
    assert_user_error(run_cli("train", "resnet50", "--dataset", "mnist", "-o", tmp_path / "r",
                              without=("MODELZIP_DATA",)), "unknown model 'resnet50'")


def test_train_with_a_seed_is_repeatable(tmp_path: Path) -> None:
    """The model is built after seeding: the same seed gives the same weights."""
    for name in ("a", "b"):
        assert_ok(run_cli("train", "lenet300", "--dataset", "mnist-sample", "--epochs", "1",
                          "--limit", "300", "--seed", "3", "--no-progress",
                          "-o", tmp_path / name))
    a = safetensors.torch.load_file(str(tmp_path / "a" / "model.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
