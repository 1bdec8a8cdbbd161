"""``modelzip prune``, ``compress``, ``sensitivity`` and ``techniques`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import describe_artifact
from modelzip.codec.model import unpack
from modelzip.prune.masks import masks_from_zeros
from tests.test_cli import assert_ok, assert_user_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "checkpoints"


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
    # the .mzip beside it rebuilds the saved model bit-exactly, and the table shows its size
    artifact = out / "model.mzip"
    size = artifact.stat().st_size
    assert f"{size:,} (.mzip)" in result.stdout
    packed = unpack(artifact.read_bytes())
    saved = load_checkpoint(out).model
    for (k, a), b in zip(saved.state_dict().items(), packed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert meta["metrics"]["total"] == 10000


def test_deep_compression_recipe_shares_and_packs(lenet300: Path, tmp_path: Path) -> None:
    """The shipped recipe end to end, shortened to one epoch per step, with the Huffman coder."""
    text = (ROOT / "src" / "modelzip" / "recipes" / "deep-compression.yaml").read_text()
    shortened = (text.replace("final_finetune: {epochs: 2}", "final_finetune: {epochs: 1}")
                 .replace("rounds: 3", "rounds: 1")
                 .replace("finetune: {epochs: 2, lr: 0.001}", "finetune: {epochs: 1, lr: 0.001}")
                 .replace("coder: best", "coder: huffman"))
    assert shortened.count("epochs: 1") == text.count("epochs: 1") + 2  # both were found
    text = shortened
    recipe = tmp_path / "dc.yaml"
    recipe.write_text(text)
    out = tmp_path / "dc"
    assert_ok(run_cli("compress", lenet300, "--recipe", recipe, "--no-progress", "-o", out))
    model = unpack((out / "model.mzip").read_bytes())
    weights = [getattr(model, name).weight.detach() for name in ("fc1", "fc2", "fc3")]
    kept = sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert kept == pytest.approx(0.08, abs=0.002)  # global_sparsity 0.92
    for w in weights:
        assert 0 < torch.unique(w[w != 0]).numel() <= 32  # fc: 5 bits
    rows = describe_artifact((out / "model.mzip").read_bytes())
    assert {r["coder"].split("/")[-1] for r in rows if r["name"].endswith("weight")} <= {
        "huffman", "plain"}


def test_compress_refuses_a_diverged_step(lenet300: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "hot.yaml"
    recipe.write_text("steps:\n  - magnitude: {sparsity: 0.9}\n"
                      "  - kmeans: {bits: 2, finetune: {epochs: 1, lr: 1.0e+30}}\n")
    out = tmp_path / "hot"
    assert_user_error(run_cli("compress", lenet300, "--recipe", recipe, "--no-progress",
                              "-o", out), "step 2 (kmeans)", "non-finite", "lr")
    assert not (out / "model.mzip").exists()


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
