"""Structured pruning on models the zoo does not know: a user's own CNN (residual add, concat,
depthwise and grouped convs) and transformers architectures (ResNet-18, MobileNetV2, ConvNeXt,
ViT, BERT) traced on their own example inputs (a tensor, or a dict of keyword tensors).

Every pruned model must run with its output shape unchanged and rebuild from plain data: a
fresh model whose modules get the pruned one's simple attributes and parameter shapes loads
its state dict and computes exactly the same outputs."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from examples import hf_models
from examples.custom_cnn import build_net
from torch import nn

from modelzip.core.dataset import call_model
from modelzip.errors import ConfigError
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.prune.structured import (
    StructuredPruneConfig,
    channel_groups,
    example_input_for,
    prunable_channel_layers,
    prune_in_place,
    remove_output_channels,
)
from modelzip.registry import Context, apply_technique

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUILDERS: dict[str, Callable[[], nn.Module]] = {"custom_cnn": build_net, **hf_models.BUILDERS}
NAMES = list(BUILDERS)


def _inputs(name: str) -> torch.Tensor | dict[str, torch.Tensor]:
    if name == "custom_cnn":
        return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return hf_models.example_inputs(name)


@torch.no_grad()
def _model(name: str) -> nn.Module:
    """The example model with every parameter and BatchNorm statistic perturbed, so that a
    wrongly sliced channel changes the outputs (fresh init has many equal values)."""
    torch.manual_seed(0)
    model = BUILDERS[name]()
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _out(model: nn.Module, x) -> torch.Tensor:
    with torch.no_grad():
        return call_model(model.eval(), x)


_SIMPLE = (int, float, bool, tuple)


def _rebuild_like(pruned: nn.Module, fresh: nn.Module) -> nn.Module:
    """The generic rebuild: give every module of ``fresh`` the simple attributes (ints,
    floats, bools, tuples) of its pruned counterpart where they differ, and empty parameters
    and buffers of the pruned shapes; then load the pruned state dict."""
    modules = dict(fresh.named_modules())
    for name, pm in pruned.named_modules():
        fm = modules[name]
        for attr, value in vars(pm).items():
            if not attr.startswith("_") and isinstance(value, _SIMPLE) \
                    and getattr(fm, attr, None) != value:
                setattr(fm, attr, value)
        for pname, p in pm._parameters.items():
            if p is not None and fm._parameters[pname].shape != p.shape:
                fm._parameters[pname] = nn.Parameter(torch.empty_like(p))
        for bname, b in pm._buffers.items():
            if b is not None and fm._buffers[bname].shape != b.shape:
                fm._buffers[bname] = torch.empty_like(b)
    fresh.load_state_dict(pruned.state_dict())
    return fresh.eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- every model
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("global_ranking", [False, True], ids=["per-layer", "global"])
def test_prunes_runs_and_rebuilds(name: str, global_ranking: bool) -> None:
    model, x = _model(name), _inputs(name)
    ctx = Context(example_inputs=x, progress=False)
    ratio = 0.4 if global_ranking else 0.5
    pruned = apply_technique(model, StructuredPruneConfig(ratio=ratio,
                                                          global_ranking=global_ranking), ctx)
    before, after = _out(model, x), _out(pruned, x)
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert _params(pruned) < 0.85 * _params(model)
    rec = ctx.records[-1]
    assert rec["params_after"] == _params(pruned) and rec["macs_after"] < rec["macs_before"]
    rebuilt = _rebuild_like(pruned, BUILDERS[name]())
    assert torch.equal(_out(rebuilt, x), after)


@pytest.mark.parametrize("name", NAMES)
def test_every_listed_layer_can_lose_a_unit(name: str) -> None:
    """No layer is listed as prunable that cannot be pruned: removing one unit (a channel,
    a grouped-conv position, a head) of each prunable group leaves a model that runs."""
    model, x = _model(name), _inputs(name)
    groups = channel_groups(model, x)
    listed = prunable_channel_layers(model, x)
    assert listed == [n for n, _ in model.named_modules()
                      if n in {m for g in groups if g.prunable for m in g.layers}]
    for g in groups:
        if not g.prunable:
            continue
        pruned = copy.deepcopy(model)
        remove_output_channels(pruned, g.root, g.units[0], x)
        assert _out(pruned, x).shape == _out(model, x).shape, g.root
        assert _params(pruned) < _params(model), g.root


# ---------------------------------------------------------------------------- custom CNN
@torch.no_grad()
def _silence(model: nn.Module, where: dict[str, list[int]]) -> None:
    """Zero the given output channels after their BatchNorm: conv filters and BN shift/mean."""
    modules = dict(model.named_modules())
    for name, idxs in where.items():
        modules[f"{name}.0"].weight[idxs] = 0
        modules[f"{name}.1"].bias[idxs] = 0
        modules[f"{name}.1"].running_mean[idxs] = 0


def test_custom_cnn_grouped_conv_units_equal_silenced_channels() -> None:
    model, x = _model("custom_cnn"), _inputs("custom_cnn")
    groups = {g.root: g for g in channel_groups(model, x)}
    # down's 32 channels feed `grouped` (groups=4, 8 inputs per group): position j of each
    # group goes together, as does each output position of `grouped` (16 per group)
    assert groups["down.0"].units[1] == (1, 9, 17, 25)
    assert groups["grouped.0"].units[0] == (0, 16, 32, 48) and len(groups["grouped.0"].units) == 16
    assert all(g.prunable for g in groups.values() if g.root != "classifier")
    silenced = copy.deepcopy(model)
    _silence(silenced, {"down": [1, 9, 17, 25], "grouped": [2, 18, 34, 50]})
    remove_output_channels(model, "down.0", [25, 1, 17, 9], x)
    remove_output_channels(model, "grouped.0", [2, 18, 34, 50], x)
    g = model.grouped[0]
    assert (g.in_channels, g.out_channels, g.groups, tuple(g.weight.shape[:2])) == (28, 60, 4,
                                                                                   (60, 7))
    assert model.branch_a[0].in_channels == model.branch_b[0].in_channels == 60
    torch.testing.assert_close(_out(model, x), _out(silenced, x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"grouped convolution grouped\.0 \(groups=4\)"):
        remove_output_channels(model, "down.0", [0, 8], x)


def test_custom_cnn_per_layer_ratio_on_the_grouped_conv() -> None:
    model, x = _model("custom_cnn"), _inputs("custom_cnn")
    pruned = apply_technique(model, StructuredPruneConfig(ratio={"grouped.0": 0.5,
                                                                 "down.0": 0.25}),
                             Context(example_inputs=x))
    g = pruned.grouped[0]
    assert (g.in_channels, g.out_channels, g.groups) == (24, 32, 4)
    assert pruned.down[0].out_channels == 24 and pruned.stem[0].out_channels == 16
    assert _out(pruned, x).shape == (2, 10)


# ---------------------------------------------------------------------------- transformers
def test_vit_heads_and_mlp_are_pruned_and_attributes_follow() -> None:
    model, x = _model("vit"), _inputs("vit")
    groups = {g.root: g for g in channel_groups(model, x)}
    heads = groups["model.vit.layers.0.attention.q_proj"]
    assert sorted(heads.layers) == [f"model.vit.layers.0.attention.{p}_proj" for p in "kqv"]
    assert heads.units == tuple(tuple(range(8 * h, 8 * h + 8)) for h in range(4))
    # the patch embedding is the whole residual stream: cls token, positions, every norm
    stream = groups["model.vit.embeddings.patch_embeddings.projection"]
    assert stream.prunable and "model.vit.layers.1.mlp.fc2" in stream.layers
    ratio = {"model.vit.layers.0.attention.q_proj": 0.5, "model.vit.layers.1.mlp.fc1": 0.25}
    pruned = apply_technique(model, StructuredPruneConfig(ratio=ratio),
                             Context(example_inputs=x))
    att = pruned.model.vit.layers[0].attention
    assert att.num_attention_heads == 2 and att.head_dim == 8
    assert att.q_proj.out_features == att.k_proj.out_features == att.o_proj.in_features == 16
    assert pruned.model.vit.layers[1].attention.num_attention_heads == 4
    assert pruned.model.vit.layers[1].mlp.fc1.out_features == 48
    assert _out(pruned, x).shape == (2, 10)


def test_vit_removing_a_head_equals_silencing_its_values() -> None:
    """Head 1 contributes nothing once its value rows are zero: removing it (through any of
    q/k/v) must compute exactly that."""
    model, x = _model("vit"), _inputs("vit")
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        v = silenced.model.vit.layers[0].attention.v_proj
        v.weight[8:16] = 0
        v.bias[8:16] = 0
    remove_output_channels(model, "model.vit.layers.0.attention.k_proj", range(8, 16), x)
    assert model.model.vit.layers[0].attention.num_attention_heads == 3
    torch.testing.assert_close(_out(model, x), _out(silenced, x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"split attention heads.*whole heads of 8"):
        remove_output_channels(model, "model.vit.layers.0.attention.q_proj", [0, 1], x)


def test_vit_residual_stream_is_sliced_consistently() -> None:
    model, x = _model("vit"), _inputs("vit")
    pruned = copy.deepcopy(model)
    removed = [1, 5, 7, 30]
    remove_output_channels(pruned, "model.vit.embeddings.patch_embeddings.projection", removed, x)
    keep = [i for i in range(32) if i not in removed]
    e0, e1 = model.model.vit.embeddings, pruned.model.vit.embeddings
    assert torch.equal(e1.cls_token, e0.cls_token[..., keep])
    assert torch.equal(e1.position_embeddings, e0.position_embeddings[..., keep])
    l0, l1 = model.model.vit.layers[1], pruned.model.vit.layers[1]
    assert torch.equal(l1.layernorm_before.weight, l0.layernorm_before.weight[keep])
    assert torch.equal(l1.attention.q_proj.weight, l0.attention.q_proj.weight[:, keep])
    assert torch.equal(l1.mlp.fc2.weight, l0.mlp.fc2.weight[keep])
    assert pruned.model.vit.layernorm.normalized_shape == (28,)
    assert torch.equal(pruned.model.classifier.weight, model.model.classifier.weight[:, keep])


def _surviving(full: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of ``full`` the rows of ``pruned`` are (each must match exactly one)."""
    out = []
    for row in pruned:
        hits = [i for i in range(full.shape[0]) if torch.equal(full[i], row)]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def test_convnext_layer_norm_and_layer_scale_follow_the_channels() -> None:
    model, x = _model("convnext"), _inputs("convnext")
    root = "model.convnext.encoder.stages.1.downsampling_layer.1"
    pruned = apply_technique(model, StructuredPruneConfig(ratio={root: 0.5}),
                             Context(example_inputs=x))
    before = model.model.convnext.encoder.stages[1]
    after = pruned.model.convnext.encoder.stages[1]
    keep = _surviving(before.downsampling_layer[1].weight, after.downsampling_layer[1].weight)
    assert len(keep) == 8
    old, new = before.layers[0], after.layers[0]
    assert new.dwconv.groups == new.dwconv.out_channels == 8
    assert new.layernorm.normalized_shape == (8,)
    assert torch.equal(new.layernorm.weight, old.layernorm.weight[keep])
    assert torch.equal(new.layer_scale_parameter, old.layer_scale_parameter[keep])
    assert torch.equal(new.pwconv2.weight, old.pwconv2.weight[keep])
    assert new.pwconv1.in_features == 8
    nxt = pruned.model.convnext.encoder.stages[2].downsampling_layer
    assert nxt[0].normalized_shape == (8,) and nxt[1].in_channels == 8
    assert _out(pruned, x).shape == (2, 10)


def test_bert_heads_and_mlp_with_keyword_inputs() -> None:
    model, x = _model("bert_encoder"), _inputs("bert_encoder")
    assert isinstance(x, dict) and set(x) == {"input_ids", "attention_mask"}
    groups = {g.root: g for g in channel_groups(model, x)}
    stream = groups["bert.encoder.layer.0.attention.output.dense"]
    assert not stream.prunable and "produces the model output" in stream.reason
    assert "bert.embeddings.word_embeddings" not in prunable_channel_layers(model, x)
    ctx = Context(example_inputs=x)
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5), ctx)
    att = pruned.bert.encoder.layer[1].attention.self
    assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (2, 8, 16)
    assert pruned.bert.encoder.layer[1].intermediate.dense.out_features == 32
    assert pruned.bert.embeddings.word_embeddings.embedding_dim == 32
    assert {h["heads_after"] for h in ctx.records[-1]["heads"]} == {2}
    assert _out(pruned, x).shape == (2, 32)


# ---------------------------------------------------------------------------- inputs
class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x) + self.b(y)))


def test_tuple_inputs_are_positional_arguments() -> None:
    model = _TwoInputs().eval()
    x = (torch.randn(2, 6), torch.randn(2, 4))
    ctx = Context(example_inputs=x)
    assert example_input_for(model, ctx) is not x and len(example_input_for(model, ctx)) == 2
    assert prunable_channel_layers(model, x) == ["a", "b"]  # added together: one group
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5), ctx)
    assert pruned.a.out_features == pruned.b.out_features == pruned.head.in_features == 4
    assert pruned(*x).shape == (2, 3)
    record = prune_in_place(copy.deepcopy(model), StructuredPruneConfig(ratio=0.25), list(x))
    assert record["params_after"] < record["params_before"]


def test_example_inputs_fall_back_to_the_first_batch_of_the_data() -> None:
    from modelzip.core.dataset import Dataset

    model = _TwoInputs().eval()
    batch = (torch.randn(5, 6), torch.randn(5, 4))
    example = example_input_for(model, Context(train_data=Dataset([(batch, torch.zeros(5))])))
    assert isinstance(example, tuple) and [t.shape[0] for t in example] == [2, 2]
    assert torch.equal(example[1], batch[1][:2])
    with pytest.raises(ConfigError, match="needs example inputs"):
        example_input_for(model, Context())


class _Branchy(nn.Module):
    """Takes another layer depending on the input values."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.a = nn.Conv2d(8, 8, 3)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        h = self.a(h) if x.sum() > 0 else self.b(h)
        return self.fc(h.mean((2, 3)))


def test_data_dependent_control_flow_is_a_one_line_error() -> None:
    model = _Branchy().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    for sign in (1, -1):
        with pytest.raises(ConfigError, match=r"depends on the input values \(after c1 it "
                                              r"calls [ab] .* but [ab] for others\)") as err:
            apply_technique(model, StructuredPruneConfig(ratio=0.5),
                            Context(example_inputs=sign * x))
        assert "\n" not in str(err.value) and "if x.sum() > 0:" in str(err.value)
    # unstructured pruning does not trace the graph: unaffected
    pruned = apply_technique(model, MagnitudePruneConfig(sparsity=0.5), Context())
    assert float((pruned.a.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


class _FusedAttention(nn.Module):
    """One Linear makes queries, keys and values (as timm's ViT does)."""

    def __init__(self, dim: int = 16, num_heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class _FusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.attn = _FusedAttention()
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(1))


def test_fused_qkv_projection_is_not_listed_but_the_rest_is_pruned() -> None:
    model, x = _FusedNet().eval(), torch.randn(2, 5, 4)
    groups = {g.root: g for g in channel_groups(model, x)}
    assert "fused query/key/value projection" in groups["attn.qkv"].reason
    assert prunable_channel_layers(model, x) == ["embed", "attn.proj"]
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5), Context(example_inputs=x))
    assert pruned.embed.out_features == pruned.attn.qkv.in_features == 8
    assert pruned.attn.qkv.out_features == 48 and pruned(x).shape == (2, 3)


def test_masks_follow_grouped_and_depthwise_convs() -> None:
    model, x = _model("custom_cnn"), _inputs("custom_cnn")
    gen = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=gen) > 0.3 for n, p in model.named_parameters()
             if n.endswith(".weight") and p.ndim > 1}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    ctx = Context(example_inputs=x, masks=masks)
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5), ctx)
    params = dict(pruned.named_parameters())
    assert ctx.masks.keys() == masks.keys()
    for name, mask in ctx.masks.items():
        assert torch.equal(mask, params[name] != 0), name
    assert ctx.masks["grouped.0.weight"].shape == (32, 4, 3, 3)
    assert ctx.masks["depthwise.0.weight"].shape == (16, 1, 3, 3)
