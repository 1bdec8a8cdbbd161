"""modelzip.compress: the one workflow, on zoo and user models, one call after another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import modelzip
from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.codec.artifact import read_artifact
from modelzip.codec.model import unpack
from modelzip.core.dataset import Dataset
from modelzip.errors import ConfigError
from modelzip.zoo import build_model

CHECKPOINTS = Path(__file__).resolve().parents[1] / "bench" / "checkpoints"


def _images(n: int = 32, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Dataset([(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)], name="random")


def test_compress_twice_records_structure_against_the_model_as_built(tmp_path: Path) -> None:
    model = build_model("resconcat").eval()
    first = modelzip.compress(model, {"steps": [{"l1-filter": {"ratio": 0.5}}]},
                              progress=False)
    assert first.after.params < first.before.params
    second = modelzip.compress(first.model, {"steps": [{"magnitude": {"sparsity": 0.5}}]},
                               progress=False, out=tmp_path / "m.mzip")
    record = read_artifact((tmp_path / "m.mzip").read_bytes()).model
    assert record["structure"], "the channels removed by the first call are still recorded"
    restored = unpack((tmp_path / "m.mzip").read_bytes())  # onto a fresh zoo build
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(restored(x), second.model(x))
    with pytest.raises(ConfigError, match="exists; pass force=True"):
        modelzip.compress(first.model, {"steps": [{"magnitude": {"sparsity": 0.5}}]},
                          progress=False, out=tmp_path / "m.mzip")


def test_a_structurally_pruned_checkpoint_compresses(tmp_path: Path) -> None:
    pruned = load_checkpoint(CHECKPOINTS / "pruned" / "eurosat_cnn-l1").model
    result = modelzip.compress(pruned, {"steps": [{"magnitude": {"sparsity": 0.3}}]},
                               progress=False)
    save_checkpoint(result.model, tmp_path / "again")
    again = load_checkpoint(tmp_path / "again").model
    assert again.features[0][0].out_channels == pruned.features[0][0].out_channels
    sa, sb = result.model.state_dict(), again.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_result_is_plain_data_and_settings_are_recorded() -> None:
    result = modelzip.compress(
        build_model("lenet5"),
        {"name": "tiny", "steps": [{"magnitude": {"sparsity": 0.5}}, {"finetune": {
            "epochs": 1, "lr": 0.001}}]},
        data=_images(64), val_data=_images(32, 1), test_data=_images(32, 2), progress=False)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["recipe"]["name"] == "tiny"
    assert doc["settings"]["validation"].startswith("given")
    assert doc["settings"]["calibration_samples"] == 64
    assert doc["artifact_bytes"] == len(result.artifact) and doc["ratio_vs_dense_fp32"] > 1
    assert [r["step"] for r in doc["records"]] == ["magnitude", "finetune"]


def test_distilling_from_the_original_leaves_the_input_model_as_it_was() -> None:
    model = build_model("lenet5").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = modelzip.compress(
        model, {"steps": [{"magnitude": {"sparsity": 0.5}}, {"finetune": {
            "epochs": 1, "lr": 0.01, "distill": {"teacher": "original", "T": 4.0}}}]},
        data=_images(64), val_data=_images(32, 1), progress=False)
    assert any(not torch.equal(result.model.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())


def test_a_user_model_without_builder_reads_back_onto_itself() -> None:
    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
            self.head = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).mean((2, 3)))

    model = Mine().eval()
    result = modelzip.compress(model, {"steps": [{"l1-filter": {"ratio": 0.5}}]},
                               example_inputs=torch.randn(2, 1, 12, 12), progress=False)
    assert result.model.body[0].out_channels == 4
    assert model.body[0].out_channels == 8  # the caller's model is as it was
    # a second call on the pruned model has no fresh copy to read back onto: say so
    with pytest.raises(ConfigError, match="pass skeleton= a freshly built copy"):
        modelzip.compress(result.model, {"steps": [{"magnitude": {"sparsity": 0.5}}]},
                          example_inputs=torch.randn(2, 1, 12, 12), progress=False)
    again = modelzip.compress(result.model, {"steps": [{"magnitude": {"sparsity": 0.5}}]},
                              example_inputs=torch.randn(2, 1, 12, 12), progress=False,
                              skeleton=Mine())
    assert again.model.body[0].out_channels == 4


def test_the_runnable_graph_is_emitted_and_runs(tmp_path: Path) -> None:
    from modelzip.runtime.runner import Runner

    data = _images(64)
    model = build_model("lenet5").eval()
    result = modelzip.compress(model, {"steps": [{"magnitude": {"sparsity": 0.5}}],
                                       "pack": {"format": "onnx", "int8": True}},
                               data=data, progress=False, out=tmp_path / "g.mzip")
    assert result.artifact_kind == "onnx-graph"
    record = read_artifact(result.artifact).model
    assert record["kind"] == "onnx-graph" and record["precision"] == "int8"
    x = torch.randn(4, 1, 28, 28).numpy()
    logits = Runner.from_file(tmp_path / "g.mzip").logits(x)
    assert np.asarray(logits).shape == (4, 10)


def test_pack_fec_protects_the_artifact_and_it_reads_back_after_damage(tmp_path: Path) -> None:
    model = build_model("lenet300").eval()
    plain = modelzip.compress(model, {"steps": [{"magnitude": {"sparsity": 0.5}}]},
                              progress=False)
    result = modelzip.compress(model, {"steps": [{"magnitude": {"sparsity": 0.5}}],
                                       "pack": {"fec": 0.08}}, progress=False)
    assert len(result.artifact) > len(plain.artifact) * 1.07
    damaged = bytearray(result.artifact)
    for i in range(100, len(damaged), 5000):  # one flipped byte every 5,000
        damaged[i] ^= 0xFF
    restored = unpack(bytes(damaged))
    sa, sb = restored.state_dict(), plain.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ConfigError, match="fec"):
        modelzip.compress(model, {"steps": [{"magnitude": {"sparsity": 0.5}}],
                                  "pack": {"fec": 5}}, progress=False)
