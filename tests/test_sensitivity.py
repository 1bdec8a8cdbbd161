"""Sensitivity analysis: curves per layer (unstructured and channels), JSON/PNG, the allocation
rule for a sparsity or FLOPs target, and the auto-structured technique."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from modelzip.data import ImageDataset, load_dataset, train_val_split
from modelzip.errors import ConfigError
from modelzip.metrics import count_macs
from modelzip.prune.sensitivity import (
    AutoStructuredConfig,
    SensitivityCurves,
    allocate,
    allowed_level,
    channel_sensitivity,
    load_sensitivity,
    magnitude_sensitivity,
    monotone_drops,
    plot_sensitivity,
)
from modelzip.prune.structured import StructuredPruneConfig, prune_in_place
from modelzip.registry import Context, apply_technique, get_technique
from modelzip.train import TrainConfig, fit
from modelzip.zoo import build_model


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, ImageDataset]:
    """LeNet-300-100 trained for two epochs on the offline MNIST sample (seconds), and 500
    held-out images (half the sample's test split, stratified)."""
    train = load_dataset("mnist-sample", "train")
    val, _ = train_val_split(load_dataset("mnist-sample", "test"), 0.5, seed=0)
    torch.manual_seed(0)
    model = build_model("lenet300")
    fit(model, train, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    return model.eval(), val


@pytest.fixture(scope="module")
def curves(trained) -> tuple[SensitivityCurves, SensitivityCurves]:
    model, val = trained
    mag = magnitude_sensitivity(model, val, sparsities=(0.5, 0.9, 0.99))
    chan = channel_sensitivity(model, val, ratios=(0.25, 0.5, 0.95))
    return mag, chan


# ---------------------------------------------------------------------------- the rule
def test_monotone_drops_and_allowed_level() -> None:
    assert monotone_drops([0.5, 2.0, 1.0]) == [0.5, 2.0, 2.0]
    assert monotone_drops([-1.0, -0.5, 3.0]) == [0.0, 0.0, 3.0]
    levels = (0.25, 0.5, 0.75)
    drops = [0.5, 2.0, 1.0]  # the recovery at 0.75 is not trusted
    assert allowed_level(levels, drops, 0.0) == 0.0
    assert allowed_level(levels, drops, 0.25) == pytest.approx(0.125)
    assert allowed_level(levels, drops, 1.25) == pytest.approx(0.375)
    assert allowed_level(levels, drops, 2.0) == 0.75
    assert allowed_level(levels, drops, 5.0, max_level=0.6) == 0.6
    assert allowed_level(levels, [-1.0, -0.5, 3.0], 0.0) == 0.5  # free pruning is taken


def _synthetic(kind: str, drops: dict[str, list[float]], sizes: dict[str, int],
               levels: tuple[float, ...] = (0.25, 0.5, 0.75)) -> SensitivityCurves:
    return SensitivityCurves(kind, levels, 90.0,
                             {n: [90.0 - d for d in ds] for n, ds in drops.items()},
                             {n: list(levels) for n in drops}, sizes, 100)


def test_allocate_sparsity_prunes_sensitive_layers_less() -> None:
    curves = _synthetic("magnitude", {"a": [0.0, 0.2, 0.5], "b": [1.0, 5.0, 20.0]},
                        {"a": 100, "b": 300})
    alloc = allocate(curves, target_sparsity=0.5)
    assert alloc.achieved >= 0.5 - 1e-6
    assert alloc.levels["a"] > alloc.levels["b"]
    assert alloc.achieved == pytest.approx((100 * alloc.levels["a"] + 300 * alloc.levels["b"])
                                           / 400)
    with pytest.raises(ConfigError, match="does not reduce dense FLOPs"):
        allocate(curves, target_flops=0.5)
    with pytest.raises(ConfigError, match="cannot be reached"):
        allocate(curves, target_sparsity=0.9)  # 0.75 is the highest level measured
    with pytest.raises(ConfigError, match="exactly one"):
        allocate(curves)


def test_allocate_flops_on_a_residual_concat_graph() -> None:
    torch.manual_seed(0)
    model = build_model("resconcat").eval()
    drops = {"stem.0": [0.1, 0.3, 1.0], "res_conv1.0": [3.0, 10.0, 30.0],
             "branch_a.0": [0.0, 0.1, 0.2], "branch_b.0": [0.2, 0.4, 0.6],
             "pointwise.0": [0.5, 1.0, 2.0]}
    curves = _synthetic("channels", drops, {n: 16 for n in drops})
    curves.criterion = "l1"
    alloc = allocate(curves, target_flops=0.5, model=model, steps=8)
    assert alloc.achieved <= 0.5
    assert alloc.levels["res_conv1.0"] < min(v for k, v in alloc.levels.items()
                                             if k != "res_conv1.0")
    # the achieved figure is that of the model really pruned with those ratios
    pruned = build_model("resconcat")
    pruned.load_state_dict(model.state_dict())
    ratios = {n: r for n, r in alloc.levels.items() if r > 0}
    rec = prune_in_place(pruned, StructuredPruneConfig(ratio=ratios),
                         torch.randn(1, 1, 28, 28))
    assert rec["macs_after"] / rec["macs_before"] == pytest.approx(alloc.achieved)
    assert count_macs(pruned)[1] == rec["macs_after"]
    with pytest.raises(ConfigError, match="needs the model"):
        allocate(curves, target_flops=0.5)


# ---------------------------------------------------------------------------- curves
def test_magnitude_curves_are_sane(trained, curves) -> None:
    model, _ = trained
    mag, _ = curves
    assert mag.kind == "magnitude" and mag.levels == (0.5, 0.9, 0.99)
    assert list(mag.accuracy_pct) == ["fc1", "fc2", "fc3"]
    assert mag.baseline_accuracy_pct > 80.0
    assert mag.sizes == {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    for layer, acc in mag.accuracy_pct.items():
        assert acc[-1] <= acc[0] + 1.0, layer  # monotone-ish: more pruning, no better
        assert acc[0] >= mag.baseline_accuracy_pct - 5.0, layer  # 50% costs little
        assert mag.achieved[layer] == pytest.approx([0.5, 0.9, 0.99], abs=1e-3)
    assert mag.accuracy_pct["fc3"][-1] < mag.baseline_accuracy_pct - 10.0
    # the model is left as it was
    assert float((model.fc1.weight == 0).float().mean()) < 0.01


def test_channel_curves_are_sane(trained, curves) -> None:
    model, _ = trained
    _, chan = curves
    assert chan.kind == "channels" and chan.criterion == "l1"
    assert list(chan.accuracy_pct) == ["fc1", "fc2"]  # fc3 produces the output
    assert chan.sizes == {"fc1": 300, "fc2": 100}
    assert chan.achieved["fc2"] == pytest.approx([0.25, 0.5, 0.95])
    for layer, acc in chan.accuracy_pct.items():
        assert acc[-1] <= acc[0] + 1.0, layer
    assert chan.accuracy_pct["fc2"][-1] < chan.baseline_accuracy_pct - 5.0
    assert model.fc1.out_features == 300  # measured on copies


def test_json_and_png(tmp_path: Path, curves) -> None:
    mag, chan = curves
    path = chan.save_json(tmp_path / "sens.json")
    assert json.loads(path.read_text())["kind"] == "channels"
    again = load_sensitivity(path)
    assert again == chan
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"channels": chan.to_dict(), "magnitude": mag.to_dict()}))
    assert load_sensitivity(both, "magnitude") == mag
    png = plot_sensitivity([mag, chan], tmp_path / "sens.png", title="lenet300")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ConfigError, match="not a sensitivity JSON"):
        (tmp_path / "bad.json").write_text("{}")
        load_sensitivity(tmp_path / "bad.json")


def test_curve_errors(trained) -> None:
    model, val = trained
    with pytest.raises(ConfigError, match="increasing values in \\(0, 1\\)"):
        magnitude_sensitivity(model, val, sparsities=(0.5, 0.2))
    with pytest.raises(ConfigError, match="no layer named 'fc9'"):
        magnitude_sensitivity(model, val, layers=["fc9"])
    with pytest.raises(ConfigError, match="unknown or unprunable layer\\(s\\) fc3"):
        channel_sensitivity(model, val, layers=["fc3"])


def test_curves_take_a_layer_selector(trained) -> None:
    model, val = trained
    chan = channel_sensitivity(model, val, ratios=(0.5,), layers={"ignore": ["fc1"]})
    assert list(chan.accuracy_pct) == ["fc2"]  # fc3 gives the output: never a group
    chan = channel_sensitivity(model, val, ratios=(0.5,), layers=["fc*"])
    assert list(chan.accuracy_pct) == ["fc1", "fc2"]
    mag = magnitude_sensitivity(model, val, sparsities=(0.5,), layers={"types": ["Linear"],
                                                                       "ignore": ["fc2"]})
    assert list(mag.accuracy_pct) == ["fc1", "fc3"]
    config = get_technique("auto-structured").config_cls
    assert config(flops_kept=0.5, layers={"ignore": ["fc2"]}).layers.ignore == ("fc2",)


# ---------------------------------------------------------------------------- technique
def test_auto_structured_meets_the_flops_target(trained) -> None:
    model, val = trained
    assert get_technique("auto-structured").config_cls is AutoStructuredConfig
    ctx = Context(val_data=val, progress=False)
    config = AutoStructuredConfig(flops_kept=0.5, levels=(0.25, 0.5, 0.75), val_images=300)
    pruned = apply_technique(model, config, ctx)
    assert count_macs(pruned)[1] <= 0.5 * count_macs(model)[1]
    auto, l1 = ctx.records[-2], ctx.records[-1]
    assert auto["step"] == "auto-structured" and auto["target"] == "flops <= 0.5"
    assert auto["sensitivity"]["images"] == 300
    assert l1["step"] == "l1-filter" and l1["ratio"] == auto["ratios"]
    with pytest.raises(ConfigError, match="needs val data"):
        apply_technique(model, config, Context())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one target"),
    ({"flops_kept": 0.5, "sparsity": 0.5}, "exactly one target"),
    ({"flops_kept": 1.5}, "flops_kept must be in \\(0, 1\\)"),
    ({"sparsity": 0.5, "max_ratio": 1.0}, "max_ratio must be in \\(0, 1\\)"),
    ({"flops_kept": 0.5, "criterion": "l0"}, "criterion must be one of"),
    ({"flops_kept": 0.5, "levels": (0.5, 0.5)}, "increasing values"),
    ({"flops_kept": 0.5, "val_images": 5}, "val_images must be >= 10"),
])
def test_auto_structured_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoStructuredConfig(**kwargs)
