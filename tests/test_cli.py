"""The ``modelzip`` command, run as a subprocess: the happy paths, and user errors that must
print exactly one ``error:`` line and exit with code 2, leaving no half-written output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from modelzip.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from modelzip.zoo import build_model, list_models


def run_cli(*args: str | Path, without: tuple[str, ...] = (),
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m modelzip.cli ARGS`` with this session's environment (isolated cache,
    offline), minus the variables named in ``without``."""
    env = {k: v for k, v in os.environ.items() if k not in without}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        env["OMP_NUM_THREADS"] = "1"  # two workers share two cores
    return subprocess.run([sys.executable, "-m", "modelzip.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                          check=False)


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code 2, stderr exactly one non-empty ``error:`` line, no traceback."""
    detail = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, detail
    lines = result.stderr.splitlines()
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith("error:"), detail
    assert line[len("error:"):].strip(), detail
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in line, detail
    return line


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def lenet300_ckpt(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "lenet300"
    result = run_cli("train", "lenet300", "--dataset", "mnist", "--epochs", "1",
                     "--limit", "3000", "--no-progress", "-o", out)
    assert_ok(result)
    assert "test error" in result.stdout
    return out


def _image_folder(root: Path, classes: list[str], per_class: int, size: int) -> Path:
    """One folder per class of small constant-colour RGB PNGs."""
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (size, size), (20 * ci, 20 * j, 5)).save(root / cls / f"{cls}_{j}.png")
    return root


@pytest.fixture
def rgb_folder(tmp_path: Path) -> Path:
    """Three classes of five 8x8 RGB PNGs."""
    return _image_folder(tmp_path / "tiles", ["a", "b", "c"], 5, 8)


# ---------------------------------------------------------------------------- happy paths
def test_help() -> None:
    result = run_cli("--help")
    assert_ok(result)
    for command in ("train", "eval", "inspect", "demo"):
        assert command in result.stdout


def test_train_writes_checkpoint(lenet300_ckpt: Path) -> None:
    assert sorted(p.name for p in lenet300_ckpt.iterdir()) == [WEIGHTS_FILE, META_FILE]
    ckpt = load_checkpoint(lenet300_ckpt)
    meta = ckpt.meta
    assert meta["model"]["name"] == "lenet300"
    assert meta["dataset"]["name"] == "mnist"
    assert meta["dataset"]["input_shape"] == [1, 28, 28]
    assert meta["training"]["train_images"] == 3000
    assert meta["training"]["epochs"] == 1
    assert len(meta["training"]["history"]) == 1
    assert meta["metrics"]["total"] == 10000
    assert meta["metrics"]["test_error_pct"] < 50


def test_eval(lenet300_ckpt: Path) -> None:
    result = run_cli("eval", lenet300_ckpt)
    assert_ok(result)
    saved = json.loads((lenet300_ckpt / META_FILE).read_text())["metrics"]
    # the same model on the same test split gives the error recorded when it was saved
    assert f"lenet300 on mnist test: error {saved['test_error_pct']:.2f}%" in result.stdout
    assert f"({saved['errors']} of 10000)" in result.stdout


def test_inspect(lenet300_ckpt: Path) -> None:
    result = run_cli("inspect", lenet300_ckpt)
    assert_ok(result)
    for text in ("fc1", "fc2", "fc3", "266,610", "266,200", "when saved"):
        assert text in result.stdout


def test_inspect_json(lenet300_ckpt: Path) -> None:
    result = run_cli("inspect", lenet300_ckpt, "--json")
    assert_ok(result)
    d = json.loads(result.stdout)
    assert d["params"] == 266610
    assert d["macs"] == 266200
    assert [layer["name"] for layer in d["layers"]] == ["fc1", "fc2", "fc3"]
    assert d["latency"] == []


def test_demo_offline_sample(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--epochs", "1", "--no-progress", "-o", out,
                     without=("MODELZIP_DATA",))
    assert_ok(result)
    assert "mnist-sample" in result.stdout
    assert "4000 training" in result.stdout
    ckpt = load_checkpoint(out)
    assert ckpt.meta["model"]["name"] == "lenet5"
    assert ckpt.meta["dataset"]["name"] == "mnist-sample"
    assert ckpt.meta["metrics"]["total"] == 1000
    assert ckpt.meta["metrics"]["test_error_pct"] < 50
    assert "conv1" in result.stdout  # the rendered profile
    # then the Deep Compression recipe: a .mzip, and the table with its size
    artifact = out / "compressed" / "model.mzip"
    assert artifact.is_file()
    assert f"{artifact.stat().st_size:,} (.mzip)" in result.stdout
    assert "deep-compression" in result.stdout


# ---------------------------------------------------------------------------- user errors
def test_unknown_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = assert_user_error(run_cli("train", "resnet50", "-o", out, "--no-progress"),
                             "resnet50")
    for name in list_models():
        assert name in line
    assert not out.exists()


def test_bad_config(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_user_error(run_cli("train", "lenet300", "--epochs", "0", "-o", out), "epochs")
    assert_user_error(run_cli("train", "lenet300", "--schedule", "step", "-o", out),
                      "schedule")
    assert not out.exists()


def test_missing_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    line = assert_user_error(
        run_cli("train", "lenet300", "--data", empty, "--epochs", "1", "--no-progress",
                "-o", out, without=("MODELZIP_DATA",)),
        "mnist not found", str(empty), "train-images-idx3-ubyte.gz")
    assert os.environ["MODELZIP_CACHE"] in line
    assert not out.exists()


def test_corrupt_idx(tmp_path: Path, data_root: Path) -> None:
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        os.symlink(data_root / "mnist" / name, folder / name)
    blob = (data_root / "mnist" / "train-images-idx3-ubyte.gz").read_bytes()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[:100_000])
    out = tmp_path / "out"
    assert_user_error(
        run_cli("train", "lenet300", "--data", tmp_path / "data", "--epochs", "1",
                "--no-progress", "-o", out),
        "train-images-idx3-ubyte.gz", "truncated")
    assert not out.exists()


def test_failed_train_keeps_existing_checkpoint(tmp_path: Path, rgb_folder: Path) -> None:
    out = tmp_path / "ckpt"
    save_checkpoint(build_model("lenet300"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_user_error(
        run_cli("train", "lenet300", "--dataset", f"folder:{rgb_folder}", "--epochs", "1",
                "--no-progress", "--force", "-o", out),
        "1x28x28", "3x8x8")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = tmp_path / "fresh"
    assert_user_error(
        run_cli("train", "lenet300", "--dataset", f"folder:{rgb_folder}", "--epochs", "1",
                "--no-progress", "-o", fresh),
        "1x28x28")
    assert not fresh.exists()


def test_eval_weights_of_another_architecture(tmp_path: Path, lenet300_ckpt: Path) -> None:
    other = tmp_path / "lenet5"
    save_checkpoint(build_model("lenet5"), other)
    mixed = tmp_path / "mixed"
    shutil.copytree(lenet300_ckpt, mixed)
    shutil.copy(other / WEIGHTS_FILE, mixed / WEIGHTS_FILE)
    assert_user_error(run_cli("eval", mixed), "fc1.weight", "another architecture")
    assert_user_error(run_cli("inspect", mixed), "fc1.weight")


def test_eval_wrong_input_shape(lenet300_ckpt: Path, rgb_folder: Path) -> None:
    assert_user_error(run_cli("eval", lenet300_ckpt, "--dataset", f"folder:{rgb_folder}"),
                      "lenet300", "1x28x28", "3x8x8")


def test_missing_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_user_error(run_cli("eval", missing), "checkpoint folder not found", str(missing))
    assert_user_error(run_cli("inspect", missing), "checkpoint folder not found")


def test_corrupt_checkpoint_weights(tmp_path: Path, lenet300_ckpt: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(lenet300_ckpt, broken)
    blob = (broken / WEIGHTS_FILE).read_bytes()
    (broken / WEIGHTS_FILE).write_bytes(blob[: len(blob) // 3])
    assert_user_error(run_cli("inspect", broken), "not a valid safetensors")


def test_usage_errors_are_clean(tmp_path: Path) -> None:
    """Command-line mistakes are reported by the argument parser with its exit code 2."""
    missing_out = run_cli("train", "lenet300")
    assert missing_out.returncode == 2, missing_out.stderr
    assert "Traceback" not in missing_out.stderr
    assert "Missing" in missing_out.stderr
    bad_int = run_cli("train", "lenet300", "-o", tmp_path / "x", "--epochs", "abc")
    assert bad_int.returncode == 2, bad_int.stderr
    assert "Traceback" not in bad_int.stderr
    assert "--epochs" in bad_int.stderr
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- folder / eurosat
def test_train_resconcat_on_eurosat(tmp_path: Path) -> None:
    """``train resconcat --dataset eurosat`` builds the RGB 64x64 variant (here on a tiny
    stand-in EuroSAT folder so that it stays fast)."""
    _image_folder(tmp_path / "data" / "eurosat", ["AnnualCrop", "SeaLake"], 5, 64)
    out = tmp_path / "out"
    result = run_cli("train", "resconcat", "--dataset", "eurosat", "--data", tmp_path / "data",
                     "--epochs", "1", "--no-progress", "-o", out)
    assert_ok(result)
    meta = load_checkpoint(out).meta
    assert meta["model"]["input_shape"] == [3, 64, 64]
    assert meta["model"]["kwargs"]["in_channels"] == 3


def test_eval_folder_checkpoint_uses_its_dataset(tmp_path: Path) -> None:
    """``eval`` without --dataset evaluates on the dataset the checkpoint was trained on, also
    when that was a ``folder:PATH`` dataset."""
    tiles = _image_folder(tmp_path / "tiles", ["a", "b"], 5, 64)
    out = tmp_path / "ckpt"
    assert_ok(run_cli("train", "eurosat_cnn", "--dataset", f"folder:{tiles}", "--epochs", "1",
                      "--no-progress", "-o", out))
    result = run_cli("eval", out)
    assert_ok(result)
    assert "of 2)" in result.stdout  # the test split: one image per class


def test_train_folder_with_more_than_ten_classes(tmp_path: Path) -> None:
    """A folder dataset with 11 classes either trains an 11-way model or is refused with a
    one-line error; it must not crash."""
    tiles = _image_folder(tmp_path / "tiles", [f"c{i:02d}" for i in range(11)], 5, 64)
    out = tmp_path / "ckpt"
    result = run_cli("train", "eurosat_cnn", "--dataset", f"folder:{tiles}", "--epochs", "1",
                     "--no-progress", "-o", out)
    if result.returncode == 2:
        assert_user_error(result)
        assert not out.exists()
    else:
        assert_ok(result)
        model = load_checkpoint(out).model
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 11)
