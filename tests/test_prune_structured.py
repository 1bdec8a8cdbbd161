"""Structured (filter) pruning: physical channel removal through Torch-Pruning's dependency
graph on residual, concat and depthwise graphs; the l1-filter technique; checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError
from modelzip.metrics import count_macs
from modelzip.prune.masks import apply_masks
from modelzip.prune.structured import (
    StructuredPruneConfig,
    channel_groups,
    filter_norms,
    group_importance,
    kept_channels,
    l1_importance,
    l2_importance,
    prunable_channel_layers,
    remove_output_channels,
    structured_prune,
)
from modelzip.registry import Context, apply_technique, config_from_dict, get_technique
from modelzip.zoo import build_model


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that a wrong channel shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _randomise(build_model(name, **kwargs))


def _x(model: nn.Module, n: int = 1) -> torch.Tensor:
    shape = model.modelzip_spec.input_shape
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _silence(model: nn.Module, where: dict[str, list[int]]) -> None:
    """Make the given output channels exactly zero: filter (and bias) zero; BatchNorm shift and
    running mean zero, so the normalised channel is zero as well."""
    modules = dict(model.named_modules())
    for name, idxs in where.items():
        m = modules[name]
        m.weight[idxs] = 0
        if isinstance(m, nn.BatchNorm2d):
            m.bias[idxs] = 0
            m.running_mean[idxs] = 0
        elif m.bias is not None:
            m.bias[idxs] = 0


def _channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ---------------------------------------------------------------------------- importance
def test_filter_norms_are_per_output_filter() -> None:
    w = torch.tensor([[[[1.0, -2.0]]], [[[3.0, 4.0]]]])  # 2 filters of 1x1x2
    assert torch.allclose(l1_importance(w), torch.tensor([3.0, 7.0]))
    assert torch.allclose(l2_importance(w), torch.tensor([5.0 ** 0.5, 5.0]))
    lin = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, -2.0]])
    assert torch.allclose(filter_norms(lin, 1), torch.tensor([3.0, 2.0]))
    # ConvTranspose weights hold output channels on dim 1
    assert filter_norms(torch.ones(2, 5, 3, 3), 1, transposed=True).shape == (5,)


def test_group_importance_normalises_each_layer() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])  # mean 2
    b = torch.tensor([100.0, 100.0, 400.0])  # mean 200: must not dominate
    imp = group_importance(3, [(a, [0, 1, 2]), (b, [0, 1, 2])])
    assert torch.allclose(imp, torch.tensor([0.5 * (0.5 + 0.5), 0.5 * (1 + 0.5),
                                             0.5 * (1.5 + 2.0)], dtype=torch.float64))
    part = group_importance(4, [(a[:2], [2, 3])])  # a layer holding only some root channels
    assert part[0] == 0 and part[1] == 0 and part[3] > part[2]


@pytest.mark.parametrize(("n", "ratio", "round_to", "kept"), [
    (16, 0.5, 1, 8), (16, 0.3, 8, 8), (32, 0.3, 8, 24), (64, 0.3, 8, 48), (128, 0.3, 8, 88),
    (10, 0.0, 1, 10), (12, 0.1, 16, 12), (4, 0.9, 1, 0), (20, 0.95, 4, 4),
])
def test_kept_channels(n: int, ratio: float, round_to: int, kept: int) -> None:
    assert kept_channels(n, ratio, round_to) == kept


# ---------------------------------------------------------------------------- the primitive
def test_prunable_layers_exclude_the_classifier() -> None:
    m = build_model("resconcat")
    assert prunable_channel_layers(m, _x(m)) == [
        "stem.0", "res_conv1.0", "res_conv2", "branch_a.0", "branch_b.0", "depthwise.0",
        "pointwise.0"]
    e = build_model("eurosat_cnn")
    assert prunable_channel_layers(e, _x(e)) == [
        "features.0.0", "features.2.0", "features.4.0", "features.6.0", "features.7.0"]
    groups = {g.root: g for g in channel_groups(m, _x(m))}
    assert groups["stem.0"].layers == ("stem.0", "res_conv2")  # the residual partner
    assert groups["branch_b.0"].layers == ("branch_b.0", "depthwise.0")
    assert not groups["classifier"].prunable
    assert "model output" in groups["classifier"].reason


def test_remove_output_channels_resconcat_equals_silenced_channels() -> None:
    """Removing channels must compute exactly what the full model computes with those channels
    silenced: that checks the residual partner, the concat offsets and the depthwise conv."""
    model = _model("resconcat")
    x = _x(model, 4)
    silenced = copy.deepcopy(model)
    # stem channels 1, 3 -> the same channels of res_conv2 / res_bn2 (residual addition)
    _silence(silenced, {"stem.0": [1, 3], "stem.1": [1, 3], "res_conv2": [1, 3],
                        "res_bn2": [1, 3]})
    # branch_b channels 2, 5 sit at 16 + 2, 16 + 5 after the concatenation
    _silence(silenced, {"branch_b.0": [2, 5], "branch_b.1": [2, 5],
                        "depthwise.0": [18, 21], "depthwise.1": [18, 21]})
    # res_conv1 channel 2 -> res_conv2 input 2 only (inside the residual branch)
    _silence(silenced, {"res_conv1.0": [2], "res_conv1.1": [2]})
    # pointwise output 7 -> classifier input 7
    _silence(silenced, {"pointwise.0": [7], "pointwise.1": [7]})
    with torch.no_grad():
        expected = silenced(x)
    remove_output_channels(model, "stem.0", [3, 1], _x(model))
    remove_output_channels(model, "branch_b.0", [2, 5], _x(model))
    remove_output_channels(model, "res_conv1.0", [2], _x(model))
    remove_output_channels(model, "pointwise.0", [7], _x(model))
    ch = _channels(model)
    assert ch["stem.0"] == ch["res_conv2"] == 14
    assert ch["res_conv1.0"] == model.res_conv2.in_channels == 15
    assert model.res_bn2.num_features == model.stem[1].num_features == 14
    assert model.res_conv1[0].in_channels == model.branch_a[0].in_channels == 14
    assert ch["branch_b.0"] == 14 and ch["branch_a.0"] == 16
    assert ch["depthwise.0"] == model.depthwise[0].groups == model.depthwise[0].in_channels == 30
    assert model.pointwise[0].in_channels == 30 and model.classifier.in_features == 31
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_remove_output_channels_through_depthwise_root() -> None:
    """A depthwise conv's output channel i is branch_a's i or branch_b's i - 16."""
    model = _model("resconcat")
    x = _x(model, 2)
    silenced = copy.deepcopy(model)
    _silence(silenced, {"branch_a.0": [0], "branch_a.1": [0], "branch_b.0": [4],
                        "branch_b.1": [4], "depthwise.0": [0, 20], "depthwise.1": [0, 20]})
    remove_output_channels(model, "depthwise.0", [20, 0], _x(model))
    assert (model.branch_a[0].out_channels, model.branch_b[0].out_channels) == (15, 15)
    with torch.no_grad():
        assert torch.allclose(model(x), silenced(x), atol=1e-5)


def test_remove_output_channels_eurosat_into_classifier() -> None:
    model = _model("eurosat_cnn", width=8)
    x = _x(model, 2)
    silenced = copy.deepcopy(model)
    _silence(silenced, {"features.7.0": [0, 9], "features.7.1": [0, 9]})
    remove_output_channels(model, "features.7.0", [0, 9], _x(model))
    assert model.classifier.in_features == 62 and model.features[7][0].out_channels == 62
    with torch.no_grad():
        assert torch.allclose(model(x), silenced(x), atol=1e-5)


def test_remove_output_channels_flatten_into_linear() -> None:
    """LeNet-5: conv2's channels are 4x4 blocks of fc1's inputs after the flatten."""
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    x = _x(model, 2)
    silenced = copy.deepcopy(model)
    _silence(silenced, {"conv2": [3, 10]})
    remove_output_channels(model, "conv2", [3, 10], _x(model))
    assert model.fc1.in_features == 48 * 16
    with torch.no_grad():
        assert torch.allclose(model(x), silenced(x), atol=1e-5)


def test_remove_output_channels_errors() -> None:
    model = build_model("resconcat")
    x = _x(model)
    with pytest.raises(ConfigError, match=r"no Conv/Linear layer named 'nope'.*stem\.0"):
        remove_output_channels(model, "nope", [0], x)
    with pytest.raises(ConfigError, match="classifier produces the model output"):
        remove_output_channels(model, "classifier", [0], x)
    with pytest.raises(ConfigError, match=r"out of range for stem\.0"):
        remove_output_channels(model, "stem.0", [16], x)
    with pytest.raises(ConfigError, match=r"every output channel of stem\.0"):
        remove_output_channels(model, "stem.0", range(16), x)
    # emptying branch_a through the depthwise conv it feeds
    with pytest.raises(ConfigError, match=r"every output channel of branch_a\.0"):
        remove_output_channels(model, "depthwise.0", range(16), x)
    assert _channels(model)["stem.0"] == 16  # nothing was changed


class _Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 8, 3, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(self.c1(x)).mean((2, 3)))


class _ChannelSplit(nn.Module):
    """Folds channels with a reshape; Torch-Pruning takes it for an element-wise op."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        b, _, h, w = x.shape
        x = x.view(b, 2, 4, h, w).sum(1)
        return self.fc(self.c2(x).mean((2, 3)))


def test_grouped_conv_loses_the_same_positions_in_each_group() -> None:
    """c2 has groups=2 over 8 channels: channel j of c1 goes with channel j + 4, and removing
    them computes what the full model computes with them silenced."""
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = _Grouped().eval()
    assert prunable_channel_layers(model, x) == ["c1", "c2"]
    groups = {g.root: g for g in channel_groups(model, x)}
    assert groups["c1"].units == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert not groups["c1"].channelwise and groups["c2"].units[0] == (0, 4)
    silenced = copy.deepcopy(model)
    _silence(silenced, {"c1": [1, 5], "c2": [2, 6]})
    remove_output_channels(model, "c1", [5, 1], x)
    remove_output_channels(model, "c2", [2, 6], x)
    assert (model.c1.out_channels, model.c2.in_channels, model.c2.groups) == (6, 6, 2)
    assert model.c2.weight.shape == (6, 3, 3, 3) and model.fc.in_features == 6
    with torch.no_grad():
        assert torch.allclose(model(x), silenced(x), atol=1e-5)
    with pytest.raises(ConfigError, match=r"grouped convolution c2 \(groups=2\) unevenly"):
        remove_output_channels(model, "c1", [0], x)


class _ConcatIntoGrouped(nn.Module):
    """Two branches concatenated into a groups=2 conv: each branch is one of its groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(8, 8, 3, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


def test_grouped_conv_fed_by_two_groups_keeps_their_channels() -> None:
    """Removing position j from one group of g needs the other branch to lose its j too:
    a coupling across channel groups, so both branches keep their channels."""
    x = torch.randn(2, 3, 8, 8)
    model = _ConcatIntoGrouped().eval()
    groups = {g.root: g for g in channel_groups(model, x)}
    assert groups["a"].units == () and "tied to channels of another group" in groups["a"].reason
    assert prunable_channel_layers(model, x) == ["g"]
    with pytest.raises(ConfigError, match=r"grouped convolution g \(groups=2\) unevenly"):
        remove_output_channels(model, "a", [0], x)


def test_grouped_conv_technique_keeps_groups_even() -> None:
    from modelzip.zoo import ModelSpec

    model = _Grouped()
    model.modelzip_spec = ModelSpec("grouped", {}, (3, 12, 12))
    ctx = Context()
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5), ctx)
    assert (pruned.c1.out_channels, pruned.c2.in_channels, pruned.c2.out_channels) == (4, 4, 4)
    assert pruned.c2.groups == 2 and pruned.c2.weight.shape == (4, 2, 3, 3)
    assert ctx.records[-1]["skipped"] == [{"layers": ["fc"],
                                           "reason": "fc produces the model output"}]
    with torch.no_grad():
        assert pruned(torch.randn(2, 3, 12, 12)).shape == (2, 2)


def test_graphs_torch_pruning_cannot_handle_name_the_layer() -> None:
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(ConfigError, match="channels of c1 the model no longer runs"):
        remove_output_channels(_ChannelSplit(), "c1", [0], x)
    with pytest.raises(ConfigError, match="needs example inputs"):
        apply_technique(_ChannelSplit(), StructuredPruneConfig(ratio=0.5), Context())


def test_untraceable_model_is_a_config_error() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("custom op failed")

    with pytest.raises(ConfigError, match=r"fails on the example inputs \(RuntimeError: custom"):
        channel_groups(Broken(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="example inputs must be a tensor, a tuple"):
        channel_groups(_Grouped(), "not an input")


def test_masks_are_reindexed() -> None:
    model = _model("eurosat_cnn", width=8)
    gen = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=gen) > 0.3 for n, p in model.named_parameters()
             if n.endswith(".weight") and p.ndim > 1}
    masks["features.7.1.weight"] = torch.ones(64, dtype=torch.bool)  # a BN mask: 1-D slicing
    apply_masks(model, masks)
    remove_output_channels(model, "features.2.0", [1, 4, 5], _x(model), masks=masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert mask.shape == params[name].shape, name
        if params[name].ndim > 1:
            assert torch.equal(mask, params[name] != 0), name
    assert masks["features.2.0.weight"].shape == (13, 8, 3, 3)
    assert masks["features.4.0.weight"].shape == (32, 13, 3, 3)


# ---------------------------------------------------------------------------- the technique
def test_technique_is_registered_as_l1_filter() -> None:
    tech = get_technique("l1-filter")
    assert tech.config_cls is StructuredPruneConfig and tech.apply is structured_prune
    cfg = config_from_dict("l1-filter", {"ratio": {"stem.0": 0.5}, "round_to": 4,
                                         "layers": {"ignore": ["pointwise.0"]}})
    assert cfg == StructuredPruneConfig(ratio={"stem.0": 0.5}, round_to=4,
                                        layers=LayerSelector(ignore=("pointwise.0",)))
    assert config_from_dict("l1-filter", {"ratio": 0.25}).criterion == "l1"


@pytest.fixture(scope="module")
def resconcat_pruned() -> tuple[nn.Module, nn.Module, Context]:
    model = _model("resconcat")
    ctx = Context()
    return model, apply_technique(model, StructuredPruneConfig(ratio=0.5, round_to=4), ctx), ctx


def test_structured_resconcat_keeps_output_shape_and_runs(resconcat_pruned) -> None:
    model, pruned, ctx = resconcat_pruned
    assert pruned is not model and _channels(model)["stem.0"] == 16  # the input is untouched
    x = _x(model, 3)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (3, 10)
    assert _channels(pruned) == {"stem.0": 8, "res_conv1.0": 8, "res_conv2": 8,
                                 "branch_a.0": 8, "branch_b.0": 8, "depthwise.0": 16,
                                 "pointwise.0": 16}
    rec = ctx.records[-1]
    assert rec["step"] == "l1-filter" and rec["macs_after"] < 0.4 * rec["macs_before"]
    assert rec["macs_before"] == count_macs(model)[1]  # the same count as modelzip.metrics
    assert rec["macs_after"] == count_macs(pruned)[1]
    by_layer = {row["layer"]: row for row in rec["layers"]}
    assert by_layer["stem.0"]["out_before"] == 16 and by_layer["stem.0"]["out_after"] == 8
    assert by_layer["res_conv1.0"]["macs_after"] * 4 == by_layer["res_conv1.0"]["macs_before"]
    assert rec["params_after"] < rec["params_before"]
    assert rec["skipped"] == [{"layers": ["classifier"],
                               "reason": "classifier produces the model output"}]


@pytest.mark.parametrize(("ratio", "round_to", "expected"), [
    (0.5, 1, [8, 16, 32, 64, 64]),
    (0.3, 8, [8, 24, 48, 88, 88]),
    (0.25, 1, [12, 24, 48, 96, 96]),
])
def test_channel_counts_follow_ratio_and_round_to(ratio: float, round_to: int,
                                                  expected: list[int]) -> None:
    model = _model("eurosat_cnn")
    pruned = apply_technique(model, StructuredPruneConfig(ratio=ratio, round_to=round_to),
                             Context())
    assert list(_channels(pruned).values()) == expected
    assert pruned.classifier.in_features == expected[-1]


def test_lowest_l1_filters_are_removed_and_residual_partners_agree() -> None:
    model = _model("resconcat")
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.25), Context())
    stem_keep = _surviving(model.stem[0].weight, pruned.stem[0].weight)
    # res_conv1 alone in its group: exactly its 12 largest-L1 filters survive, in order
    keep = torch.sort(torch.topk(l1_importance(model.res_conv1[0].weight), 12).indices).values
    assert torch.equal(pruned.res_conv1[0].weight, model.res_conv1[0].weight[keep][:, stem_keep])
    # stem and res_conv2 are added together: the same channel indices must survive in both
    res_keep = _surviving(model.res_conv2.weight[:, keep], pruned.res_conv2.weight)
    assert stem_keep == res_keep and len(stem_keep) == 12
    assert torch.equal(pruned.res_bn2.running_mean, model.res_bn2.running_mean[stem_keep])
    assert torch.equal(pruned.stem[1].running_var, model.stem[1].running_var[stem_keep])


def _surviving(full: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    out = []
    for row in pruned:
        hits = [i for i in range(full.shape[0]) if torch.equal(full[i], row)]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def test_per_layer_ratios_global_ranking_and_l2() -> None:
    model = _model("eurosat_cnn")
    pruned = apply_technique(model, StructuredPruneConfig(
        ratio={"features.2.0": 0.5, "features.7.0": 0.75}, criterion="l2"), Context())
    assert list(_channels(pruned).values()) == [16, 16, 64, 128, 32]
    g = apply_technique(model, StructuredPruneConfig(ratio=0.5, global_ranking=True,
                                                     round_to=4), Context())
    counts = list(_channels(g).values())
    assert all(c % 4 == 0 and c >= 4 for c in counts)
    assert abs(sum(counts) - 0.5 * 368) <= 5 * 4  # half of all channels, up to rounding
    x = _x(model, 2)
    with torch.no_grad():
        assert g(x).shape == (2, 10)


def test_ignored_layers_are_kept_and_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("resconcat")
    messages: list[str] = []
    ctx = Context()
    monkeypatch.setattr(ctx, "log", messages.append)
    pruned = apply_technique(model, StructuredPruneConfig(
        ratio=0.5, layers={"ignore": ["res_conv2"]}), ctx)
    ch = _channels(pruned)
    assert ch["stem.0"] == ch["res_conv2"] == 16  # coupled to the ignored layer
    assert ch["res_conv1.0"] == 8
    assert any("stem.0, res_conv2 (coupled to ignored layer(s) res_conv2)" in m
               for m in messages)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 1.0}, "ratio must be in \\[0, 1\\)"),
    ({"ratio": -0.1}, "ratio must be in \\[0, 1\\)"),
    ({"ratio": {"stem.0": 1.2}}, "ratio of layer 'stem.0' must be in \\[0, 1\\)"),
    ({"criterion": "l3"}, "criterion must be one of l1, l2"),
    ({"round_to": 0}, "round_to must be an integer >= 1"),
    ({"ratio": {"stem.0": 0.5}, "global_ranking": True}, "global_ranking needs one ratio"),
])
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StructuredPruneConfig(**kwargs)


def test_errors_that_need_the_model() -> None:
    model = build_model("resconcat")
    with pytest.raises(ConfigError, match=r"no layer named 'conv9' in this model; Conv/Linear "
                                          r"layers: stem\.0, res_conv1\.0, res_conv2"):
        apply_technique(model, StructuredPruneConfig(ratio={"conv9": 0.5}), Context())
    with pytest.raises(ConfigError, match="no layer named 'nope'"):
        apply_technique(model, StructuredPruneConfig(layers={"ignore": ["nope"]}), Context())
    with pytest.raises(ConfigError, match=r"every one of the 16 output channels of stem\.0"):
        apply_technique(model, StructuredPruneConfig(ratio={"stem.0": 0.97}), Context())
    with pytest.raises(ConfigError, match="share their output channels"):
        apply_technique(model, StructuredPruneConfig(ratio={"stem.0": 0.5, "res_conv2": 0.25}),
                        Context())


def test_technique_reindexes_context_masks() -> None:
    model = _model("resconcat")
    masks = {"res_conv1.0.weight": torch.rand(16, 16, 3, 3,
                                              generator=torch.Generator().manual_seed(0)) > 0.5}
    apply_masks(model, masks)
    ctx = Context(masks=masks)
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5), ctx)
    w = pruned.res_conv1[0].weight
    assert ctx.masks["res_conv1.0.weight"].shape == w.shape == (8, 8, 3, 3)
    assert torch.equal(ctx.masks["res_conv1.0.weight"], w != 0)


# ---------------------------------------------------------------------------- checkpoints
def _save_reload_exact(pruned: nn.Module, folder: Path) -> None:
    save_checkpoint(pruned, folder)
    loaded = load_checkpoint(folder).model
    assert _channels(loaded) == _channels(pruned)
    state, again = pruned.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        assert torch.equal(state[key], again[key]), key
    x = _x(pruned, 3)
    with torch.no_grad():
        assert torch.equal(pruned(x), loaded(x))


def test_pruned_resconcat_saves_and_reloads_bit_exactly(tmp_path: Path,
                                                        resconcat_pruned) -> None:
    _save_reload_exact(resconcat_pruned[1], tmp_path / "resconcat")


def test_pruned_eurosat_cnn_saves_and_reloads_bit_exactly(tmp_path: Path) -> None:
    model = _model("eurosat_cnn", width=8)
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.4, round_to=2), Context())
    _save_reload_exact(pruned, tmp_path / "eurosat")
