"""``modelzip compress --target``, ``search-worker`` and the BatchNorm techniques the search
uses."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from modelzip.checkpoint import save_checkpoint
from modelzip.core.builders import build_from_target
from modelzip.core.context import Context
from modelzip.registry import apply, config_from_dict
from modelzip.train import TrainConfig, fit
from modelzip.zoo import build_model
from tests.search_tiny import synthetic

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "modelzip.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A user's model (built by tests.search_tiny:tiny_model) trained on a folder dataset."""
    base = tmp_path_factory.mktemp("cli")
    data = synthetic(400, 3, "all")
    for i, (img, label) in enumerate(zip(data.images, data.labels.tolist(), strict=True)):
        folder = base / "images" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    torch.manual_seed(0)
    model = build_from_target("tests.search_tiny:tiny_model")
    from modelzip.data import load_dataset

    name = f"folder:{base / 'images'}"
    fit(model, load_dataset(name, "train"), TrainConfig(epochs=3, lr=0.05, batch_size=32),
        progress=False)
    save_checkpoint(model.eval(), base / "ckpt", dataset={"name": name})
    return base / "ckpt"


def test_compress_with_a_target_end_to_end(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    result = run_cli("compress", checkpoint, "-o", out, "--target", "size=2.4KB",
                     "--max-drop", "5", "--strategy", "uniform", "--trials", "3",
                     "--model", "tests.search_tiny:tiny_model", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "budget met" in result.stdout
    blob = (out / "model.mzip").read_bytes()
    assert len(blob) <= 2400
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (out / "model.mzip.study.db").is_file()  # the study, for a re-run to resume
    code, err = main_in_process(capsys, monkeypatch, "compress", checkpoint, "-o", out,
                                "--target", "size=2.4KB", "--no-progress")
    assert code == 2 and "--force" in err


def main_in_process(capsys, monkeypatch, *args: str | Path) -> tuple[int, str]:
    """``modelzip ARGS`` in this process: (exit code, stderr)."""
    from modelzip import cli

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["modelzip", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("args", "needle"), [
    (("--target", "size=32KX"), "KiB"),
    (("--target", "size=1KB", "--recipe", "deep-compression"), "either --recipe or"),
    (("--target", "size=1KB", "--strategy", "annealing"), "unknown search strategy"),
    ((), "needs --recipe"),
])
def test_compress_user_errors_are_one_line(tmp_path, capsys, monkeypatch, args, needle):
    code, err = main_in_process(capsys, monkeypatch, "compress", tmp_path / "ckpt", "-o",
                                tmp_path / "o", *args, "--no-progress")
    assert code == 2
    assert needle in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1


def test_search_worker_names_an_unreachable_storage(capsys, monkeypatch):
    code, err = main_in_process(capsys, monkeypatch, "search-worker", "--study", "s",
                                "--storage", "postgresql://me:secret@127.0.0.1:1/db",
                                "--no-progress")
    assert code == 2
    assert err.startswith("error: cannot reach study storage postgresql")
    assert "secret" not in err  # the password is not shown


# ---------------------------------------------------------------------------- BatchNorm
def _eurosat_with_stats() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("eurosat_cnn")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_fold_batchnorm_keeps_the_outputs_and_packs():
    from modelzip.codec.model import pack, unpack

    model = _eurosat_with_stats()
    x = torch.randn(3, 3, 64, 64)
    folded = apply(model, config_from_dict("fold-batchnorm", {}), Context(progress=False))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    back = unpack(pack(folded), model=build_model("eurosat_cnn"))  # onto a fresh skeleton
    torch.testing.assert_close(back(x), folded(x), rtol=0, atol=0)


def test_folding_before_clustering_keeps_the_graph_small():
    from modelzip.runtime.onnx_artifact import pack_model_onnx

    model = _eurosat_with_stats()
    ctx = Context(progress=False)
    kmeans = config_from_dict("kmeans", {"bits": 3})
    plain = apply(model, kmeans, ctx)
    folded = apply(apply(model, config_from_dict("fold-batchnorm", {}), ctx), kmeans, ctx)
    # export folds BatchNorm after the clustering: 8 values per channel instead of 8
    assert len(pack_model_onnx(folded, int8=False)) < 0.6 * len(pack_model_onnx(plain,
                                                                               int8=False))


def test_recalibrate_batchnorm_changes_only_the_statistics():
    model = _eurosat_with_stats()
    data = synthetic(64, 5, "train")
    data = type(data)(data.images.expand(-1, 3, 8, 8).repeat(1, 1, 8, 8).contiguous(),
                      data.labels, name="s", split="train", classes=data.classes,
                      mean=[0.4] * 3, std=[0.2] * 3)
    ctx = Context(train_data=data, progress=False)
    after = apply(model, config_from_dict("recalibrate-batchnorm", {"batches": 2,
                                                                     "batch_size": 32}), ctx)
    before = copy.deepcopy(model).state_dict()
    for key, value in after.state_dict().items():
        if "running_" in key:
            assert not torch.equal(value, before[key]), key
        elif "num_batches" not in key:
            assert torch.equal(value, before[key]), key
    assert ctx.records[-1] == {"step": "recalibrate-batchnorm", "layers": 5, "samples": 64}
