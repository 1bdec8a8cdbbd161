"""The middle layer: the structure record replayed on a skeleton, the copy-and-rollback rule
of ``apply``, kinds and plugins, and the data protocol with a user's own task."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import modelzip
from modelzip.codec.model import pack, unpack
from modelzip.core.context import Context
from modelzip.core.dataset import Dataset
from modelzip.core.modelrec import apply_structure, architecture, structure_changes
from modelzip.core.registry import apply, get_technique, list_techniques, register_technique
from modelzip.errors import CheckpointError, ConfigError
from modelzip.prune.magnitude import MagnitudePruneConfig


class Net(nn.Module):
    """A user's model with the module types techniques resize: Conv1d, LayerNorm, GroupNorm,
    an embedding and a bare parameter."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, width)
        self.pos = nn.Parameter(torch.randn(1, 5, width))
        self.conv = nn.Conv1d(width, width, 3, padding=1)
        self.gn = nn.GroupNorm(2, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos
        x = self.gn(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.head(self.norm(x).mean(1))


def _shrink(net: Net, width: int) -> Net:
    """Hand surgery as a structured pruner does it: attributes and parameter shapes."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        net.embed.weight = nn.Parameter(net.embed.weight[:, :width].clone())
        net.embed.embedding_dim = width
        net.pos = nn.Parameter(net.pos[..., :width].clone())
        net.conv.weight = nn.Parameter(net.conv.weight[:width, :width].clone())
        net.conv.bias = nn.Parameter(net.conv.bias[:width].clone())
        net.conv.in_channels = net.conv.out_channels = width
        for norm in (net.gn, net.norm):
            norm.weight = nn.Parameter(norm.weight[:width].clone())
            norm.bias = nn.Parameter(norm.bias[:width].clone())
        net.gn.num_channels = width
        net.norm.normalized_shape = (width,)
        net.head.weight = nn.Parameter(net.head.weight[:, :width].clone())
        net.head.in_features = width
    return net


TOKENS = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 29]])


def test_structure_replays_on_a_skeleton_through_json() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    small = _shrink(net, 4)
    changes = json.loads(json.dumps(structure_changes(architecture(net), small)))
    assert changes["gn"]["attrs"] == {"num_channels": [8, 4]}
    assert changes["norm"]["attrs"] == {"normalized_shape": [[8], [4]]}
    assert changes[""]["tensors"] == {"pos": [[1, 5, 8], [1, 5, 4]]}
    rebuilt = apply_structure(Net(), changes)
    rebuilt.load_state_dict(small.state_dict())
    assert torch.equal(rebuilt.eval()(TOKENS), small(TOKENS))


def test_replaced_and_removed_modules_replay() -> None:
    net = Net().eval()
    changed = copy.deepcopy(net)
    changed.head = nn.Sequential(nn.Linear(8, 2, bias=False), nn.Linear(2, 3))  # factorized
    changed.gn = nn.Identity()
    changes = json.loads(json.dumps(structure_changes(architecture(net), changed)))
    assert changes["head"]["replace"]["type"] == "torch.nn.modules.container.Sequential"
    rebuilt = apply_structure(Net(), changes)
    rebuilt.load_state_dict(changed.state_dict())
    assert torch.equal(rebuilt.eval()(TOKENS), changed(TOKENS))


def test_a_skeleton_of_another_width_is_named() -> None:
    net = Net()
    changes = structure_changes(architecture(net), _shrink(net, 4))
    with pytest.raises(CheckpointError,
                       match=re.escape("pos has shape [1, 5, 6] here but [1, 5, 8]")):
        apply_structure(Net(width=6), changes)


def test_a_replacement_outside_torch_is_refused() -> None:
    class Mine(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    net = Net()
    changed = copy.deepcopy(net)
    changed.gn = Mine()
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        structure_changes(architecture(net), changed)


def test_pack_unpack_of_a_resized_user_model() -> None:
    net = Net().eval()
    small = _shrink(net, 4)
    data = pack(small, skeleton=Net())
    restored = unpack(data, model=Net())
    assert torch.equal(restored(TOKENS), small(TOKENS))
    with pytest.raises(modelzip.ModelzipError, match="pos has shape"):
        unpack(data, model=Net(width=6))


# ---------------------------------------------------------------------------- apply
@dataclass(frozen=True)
class _BreakConfig:
    after: int = 1


@register_technique("test-break-half-way", _BreakConfig, kind="prune")
def _break_half_way(model: nn.Module, config: _BreakConfig, ctx: Context) -> nn.Module:
    """Zeroes a weight, adds a mask, then fails (as a technique can, half-way)."""
    with torch.no_grad():
        model.head.weight.zero_()
    ctx.masks["head.weight"] = torch.zeros_like(model.head.weight, dtype=torch.bool)
    ctx.records.append({"step": "half"})
    raise ConfigError("failed half-way")


def test_a_failed_step_leaves_model_and_context_as_they_were() -> None:
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ctx = Context(masks={"conv.weight": torch.ones(8, 8, 3, dtype=torch.bool)},
                  records=[{"step": "earlier"}])
    with pytest.raises(ConfigError, match="failed half-way"):
        apply(net, _BreakConfig(), ctx)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert list(ctx.masks) == ["conv.weight"] and ctx.records == [{"step": "earlier"}]


def test_apply_returns_a_copy_and_kinds_are_listed() -> None:
    net = Net()
    pruned = modelzip.apply(net, MagnitudePruneConfig(sparsity=0.5), Context())
    assert pruned is not net
    assert float((pruned.head.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.05)
    assert not bool((net.head.weight == 0).any())
    assert "magnitude" in list_techniques("prune") and "kmeans" in list_techniques("quantize")
    assert get_technique("kmeans").kind == "quantize"
    assert "et al" in get_technique("l1-filter").summary or get_technique("l1-filter").summary


def test_a_broken_plugin_is_reported_and_modelzip_starts(monkeypatch) -> None:
    import modelzip.techniques as techniques

    class _EntryPoint:
        name, value = "broken", "broken_plugin.module"

        def load(self) -> None:
            raise ImportError("No module named 'broken_plugin'")

    monkeypatch.setattr(techniques, "_loaded", False)
    monkeypatch.setattr(techniques, "entry_points", lambda group: [_EntryPoint()])
    monkeypatch.setattr(techniques, "plugin_errors", {})
    techniques.load_techniques()
    assert "No module named 'broken_plugin'" in techniques.plugin_errors["broken"]
    assert "magnitude" in list_techniques()


# ---------------------------------------------------------------------------- any task
def test_a_regression_model_is_fine_tuned_by_the_users_loss_and_evaluator() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    data = Dataset(batches, name="regression")
    assert len(data) == 256

    def mse(model: nn.Module, d: Dataset) -> float:
        with torch.no_grad():
            return float(sum(nn.functional.mse_loss(model(a), b, reduction="sum")
                             for a, b in d.batches()) / len(d))

    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    result = modelzip.compress(
        model, {"steps": [{"magnitude": {"sparsity": 0.5}},
                          {"finetune": {"epochs": 3, "lr": 0.01, "optimizer": "adamw",
                                        "schedule": "constant"}}]},
        data=data, val_data=data, test_data=data, loss_fn=nn.functional.mse_loss,
        evaluator=mse, progress=False)
    assert result.artifact_kind == "state-dict"
    assert result.val_error_after < result.val_error_before  # it trained on the MSE
    pruned = result.model[0].weight
    assert float((pruned == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert result.settings["validation"].startswith("given")
    assert result.after.nonzero < result.before.nonzero


def test_the_public_verbs_stay_callable_after_their_packages_are_imported() -> None:
    """``modelzip.prune`` is also a subpackage, and ``measure``'s module is ``metrics``: the
    verbs must still be the functions after ``import modelzip.prune`` and ``measure`` runs."""
    import modelzip.prune  # sets modelzip.prune to the package
    from modelzip.quant import UniformQuantConfig

    net = Net()
    pruned = modelzip.prune(net, MagnitudePruneConfig(sparsity=0.5))
    assert float((pruned.head.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.05)
    assert modelzip.quantize(net, UniformQuantConfig(bits=4)) is not net
    with pytest.raises(ConfigError, match="a quantize technique"):
        modelzip.prune(net, UniformQuantConfig(bits=4))
    for _ in range(2):
        assert modelzip.measure(pruned, example_inputs=TOKENS, latency=False).profile.params
