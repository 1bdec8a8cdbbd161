"""``modelzip prune``, ``compress``, ``sensitivity`` and ``techniques`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelzip.checkpoint import load_checkpoint
from modelzip.prune.masks import masks_from_zeros
from tests.test_cli import assert_ok, assert_user_error, run_cli

BENCH = Path(__file__).resolve().parent.parent / "bench" / "checkpoints"


@pytest.fixture(scope="module")
def lenet300(data_root: Path) -> Path:
    return BENCH / "lenet300"


def test_techniques_lists_registry() -> None:
    result = run_cli("techniques")
    assert_ok(result)
    for name in ("magnitude", "iterative-magnitude", "agp", "l1-filter", "drop-bound",
                 "finetune"):
        assert name in result.stdout


def test_prune_magnitude_keeps_zeros_through_finetuning(lenet300: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    result = run_cli("prune", lenet300, "--method", "magnitude", "--set", "sparsity=0.8",
                     "--finetune-epochs", "1", "--no-progress", "-o", out)
    assert_ok(result)
    assert "ratio" in result.stdout and "before" in result.stdout
    ckpt = load_checkpoint(out)
    masks = masks_from_zeros(ckpt.model)
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        kept = float(masks[name].float().mean())
        assert kept == pytest.approx(0.2, abs=1e-3), name
    assert ckpt.meta["compression"]["records"]
    assert ckpt.meta["metrics"]["total"] == 10000


def test_prune_l1_filter_shrinks_layers(lenet300: Path, tmp_path: Path) -> None:
    out = tmp_path / "l1"
    assert_ok(run_cli("prune", lenet300, "--method", "l1-filter", "--set", "ratio=0.5",
                      "--finetune-epochs", "0", "--no-progress", "-o", out))
    model = load_checkpoint(out).model
    assert model.fc1.out_features == 150 and model.fc2.in_features == 150
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_compress_with_recipe(lenet300: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: quick\nfinetune: {epochs: 1}\nsteps:\n"
                      "  - magnitude: {sparsity: 0.5}\n  - finetune: {}\n")
    out = tmp_path / "c"
    result = run_cli("compress", lenet300, "--recipe", recipe, "--no-progress", "-o", out)
    assert_ok(result)
    meta = json.loads((out / "modelzip.json").read_text())
    assert meta["compression"]["recipe"]["name"] == "quick"
    assert [next(iter(s)) for s in meta["compression"]["recipe"]["steps"]] == [
        "magnitude", "finetune"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--method", "magnitude", "--set", "sparsity=1.5"], ["sparsity", "1.5"]),
        (["--method", "magnitude", "--set", "layers=[fc9]", "--set", "sparsity=0.5"],
         ["fc9", "fc1"]),
        (["--method", "nope"], ["unknown technique 'nope'"]),
        (["--method", "magnitude", "--set", "sparsity"], ["KEY=VALUE"]),
        (["--method", "magnitude", "--set", "spars=0.5"], ["unknown option", "spars"]),
        (["--method", "l1-filter", "--set", "ratio={fc1: 1.0}"], ["fc1"]),
    ],
)
def test_prune_errors(lenet300: Path, tmp_path: Path, args: list[str],
                      needles: list[str]) -> None:
    out = tmp_path / "never"
    result = run_cli("prune", lenet300, *args, "--finetune-epochs", "0", "--no-progress",
                     "-o", out)
    assert_user_error(result, *needles)
    assert not out.exists()


def test_compress_bad_recipe(lenet300: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("steps:\n  - magnitude: {sparsity: 0.5, colour: red}\n")
    assert_user_error(run_cli("compress", lenet300, "--recipe", recipe, "-o", tmp_path / "x"),
                      "step 1", "colour")


def test_sensitivity_writes_json_and_png(lenet300: Path, tmp_path: Path) -> None:
    out = tmp_path / "sens"
    assert_ok(run_cli("sensitivity", lenet300, "--kind", "magnitude", "--images", "300",
                      "-o", out))
    curves = json.loads((out / "sensitivity_lenet300_magnitude.json").read_text())
    assert set(curves["accuracy_pct"]) == {"fc1", "fc2", "fc3"}
    assert curves["images"] == 300
    assert (out / "sensitivity_lenet300.png").read_bytes()[:4] == b"\x89PNG"
