"""Drop-bound filter pruning (Huang et al. 2018): the reward, the agent and its REINFORCE
update on their own, channel masking against physical removal, and the whole technique on a
small trained CNN with dead filters."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from modelzip.core.selection import LayerSelector
from modelzip.data import ImageDataset, train_val_split
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.prune.drop_bound import (
    ChannelMasker,
    DropBoundConfig,
    FilterPolicy,
    _bisect_restore,
    _layer_order,
    _ValSet,
    accuracy_term,
    drop_bound_prune,
    drop_bound_reward,
    efficiency_term,
    filter_features,
    train_policy,
)
from modelzip.prune.structured import prunable_channel_layers, remove_output_channels
from modelzip.registry import Context, config_from_dict, list_techniques
from modelzip.train import TrainConfig, evaluate, fit
from modelzip.zoo import build_model


# ---------------------------------------------------------------------------- reward
def test_accuracy_term_values() -> None:
    assert accuracy_term(0.0, 2.0) == 1.0
    assert accuracy_term(1.0, 2.0) == 0.5
    assert accuracy_term(2.0, 2.0) == 0.0
    assert accuracy_term(-1.0, 2.0) == 1.5  # better than the reference: more than 1
    assert accuracy_term(4.0, 2.0) == pytest.approx(-math.log(2.0))
    assert accuracy_term(2.5, 2.0) < 0
    # continuous, with the same slope -1/b, on both sides of the bound
    eps = 1e-6
    left = (accuracy_term(2.0, 2.0) - accuracy_term(2.0 - eps, 2.0)) / eps
    right = (accuracy_term(2.0 + eps, 2.0) - accuracy_term(2.0, 2.0)) / eps
    assert left == pytest.approx(-0.5, rel=1e-4)
    assert right == pytest.approx(-0.5, rel=1e-4)
    with pytest.raises(ValueError):
        accuracy_term(0.0, 0.0)


def test_efficiency_term_values() -> None:
    assert efficiency_term(8, 8) == 0.0
    assert efficiency_term(8, 4) == pytest.approx(math.log(2))
    assert efficiency_term(8, 0) == pytest.approx(math.log(8))  # clamped: no division by 0
    for bad in ((8, 9), (8, -1), (0, 0)):
        with pytest.raises(ValueError):
            efficiency_term(*bad)


def test_reward_signs() -> None:
    b, n = 1.0, 16
    assert drop_bound_reward(0.5, b, n, n) == 0.0  # nothing removed, nothing earned
    inside = [drop_bound_reward(0.5, b, n, kept) for kept in (12, 8, 4)]
    assert all(r > 0 for r in inside)
    assert inside == sorted(inside)  # same drop, more removed: more reward
    assert drop_bound_reward(0.2, b, n, 8) > drop_bound_reward(0.8, b, n, 8)
    outside = [drop_bound_reward(3.0, b, n, kept) for kept in (12, 8, 4)]
    assert all(r < 0 for r in outside)
    assert outside == sorted(outside, reverse=True)  # beyond the bound: more removed, worse
    assert drop_bound_reward(1.0, b, n, 4) == 0.0  # exactly at the bound


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs", [
    {"bound_points": 0.0}, {"bound_points": -1.0}, {"bound_points": float("nan")},
    {"iterations": 0}, {"samples_per_iteration": 0}, {"val_images": 0},
    {"init_keep_prob": 1.0}, {"min_keep": 0}, {"finetune_samples": 0}, {"agent_lr": 0.0},
])
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="drop-bound"):
        DropBoundConfig(**kwargs)


def test_registered_and_built_from_plain_values() -> None:
    assert "drop-bound" in list_techniques()
    cfg = config_from_dict("drop-bound", {"bound_points": 1, "layers": ["a", "b"],
                                          "finetune": {"epochs": 0}})
    assert cfg.bound_points == 1.0 and cfg.layers == LayerSelector(names=("a", "b"))
    assert cfg.finetune_config(TrainConfig()) is None  # epochs 0: no fine-tuning
    default = DropBoundConfig().finetune_config(TrainConfig(epochs=5, lr=0.2))
    assert default is not None and (default.epochs, default.lr) == (1, 0.2)
    with pytest.raises(ConfigError, match="drop-bound: finetune: epochs must be an integer"):
        config_from_dict("drop-bound", {"finetune": {"epochs": -1}})
    with pytest.raises(ConfigError, match="drop-bound: finetune_images is now finetune_samples"):
        config_from_dict("drop-bound", {"finetune_images": 1000})
    with pytest.raises(ConfigError):
        config_from_dict("drop-bound", {"bound_points": 0})
    with pytest.raises(ConfigError, match="unknown option"):
        config_from_dict("drop-bound", {"bound": 1})


def test_missing_validation_data_is_a_config_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ConfigError, match="val_data"):
        drop_bound_prune(model, DropBoundConfig(), Context(train_data=object()))


# ---------------------------------------------------------------------------- agent
def test_filter_features_shape_and_scale_invariance() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, 3, 3, generator=gen)
    f = filter_features(w)
    assert f.shape == (6, 2)
    torch.testing.assert_close(f.mean(0), torch.zeros(2), atol=1e-5, rtol=0)  # z-scored
    torch.testing.assert_close(filter_features(10 * w), f)  # the layer's scale does not matter
    gamma, beta = torch.rand(6, generator=gen) + 0.1, torch.randn(6, generator=gen)
    assert filter_features(w, gamma, beta).shape == (6, 4)
    dead = w.clone()
    dead[2] = 0
    fd = filter_features(dead)
    assert torch.isfinite(fd).all()
    assert int(fd[:, 0].argmin()) == 2  # the all-zero filter has the lowest norm


def test_policy_starts_at_init_prob_and_decides() -> None:
    policy = FilterPolicy(torch.randn(5, 4), init_keep_prob=0.8, seed=0)
    torch.testing.assert_close(policy.keep_probs(), torch.full((5,), 0.8))
    assert policy.decide().all()
    with torch.no_grad():
        policy.filter_bias.fill_(-10.0)  # every filter below 0.5
    keep = policy.decide(min_keep=2)
    assert int(keep.sum()) == 2


def _synthetic_reward(keep: torch.Tensor) -> float:
    # Removing filters 0-3 pays, removing filters 4-7 costs twice as much.
    return float((~keep[:4]).sum()) - 2.0 * float((~keep[4:]).sum())


def test_reinforce_moves_keep_probabilities_the_right_way() -> None:
    features = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    policy = FilterPolicy(features, hidden=8, init_keep_prob=0.5, seed=0)
    seen = []
    result = train_policy(policy, _synthetic_reward, iterations=60, samples=8, lr=0.1, seed=0,
                          on_iteration=lambda it, row: seen.append(row["mean_reward"]))
    probs = result.keep_probs
    assert (probs[:4] < 0.2).all() and (probs[4:] > 0.8).all()
    assert result.keep.tolist() == [False] * 4 + [True] * 4
    assert sum(seen[-10:]) / 10 > sum(seen[:10]) / 10  # the mean reward rose
    assert len(result.history) == 60 and 0 < result.evaluations <= 60 * 8


def test_reinforce_single_step_direction() -> None:
    policy = FilterPolicy(torch.randn(8, 6, generator=torch.Generator().manual_seed(2)),
                          hidden=8, init_keep_prob=0.5, seed=0)
    before = policy.keep_probs().detach()
    after = train_policy(policy, _synthetic_reward, iterations=5, samples=64, lr=0.05,
                         seed=3).keep_probs
    assert after[:4].mean() < before[:4].mean()
    assert after[4:].mean() > before[4:].mean()


def test_reinforce_with_one_sample_per_iteration_uses_a_running_baseline() -> None:
    policy = FilterPolicy(torch.randn(8, 6, generator=torch.Generator().manual_seed(1)),
                          hidden=8, init_keep_prob=0.5, seed=0)
    result = train_policy(policy, _synthetic_reward, iterations=150, samples=1, lr=0.1, seed=0)
    assert result.keep_probs[:4].mean() < 0.5 < result.keep_probs[4:].mean()


def test_train_policy_is_reproducible() -> None:
    def run() -> torch.Tensor:
        policy = FilterPolicy(torch.randn(8, 6, generator=torch.Generator().manual_seed(1)),
                              hidden=8, seed=4)
        return train_policy(policy, _synthetic_reward, iterations=5, samples=4, seed=7).keep_probs

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_bisect_restore_puts_back_the_fewest_filters() -> None:
    keep = torch.tensor([True, False, False, False, False, True])
    order = torch.tensor([3, 1, 4, 2])  # removed filters, most likely to be kept first

    def drop_of(k: torch.Tensor) -> float:  # 1 point per removed filter
        return float((~k).sum())

    new_keep, back = _bisect_restore(order, keep, drop_of, bound=2.0)
    assert back == 2
    assert new_keep.tolist() == [True, True, False, True, False, True]
    same, none_back = _bisect_restore(order, keep, drop_of, bound=10.0)
    assert none_back == 0 and torch.equal(same, keep)


# ---------------------------------------------------------------------------- masking
def _randomise_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics: a masked channel's BN
            n = m.num_features              # output would not be zero by accident
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen))


@pytest.mark.parametrize("name,kwargs,shape", [
    ("resconcat", {"width": 4}, (1, 28, 28)),
    ("eurosat_cnn", {"width": 4}, (3, 64, 64)),
    ("lenet5", {}, (1, 28, 28)),
])
def test_masking_matches_physical_removal(name: str, kwargs: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    _randomise_bn(model, 1)
    example = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    convs = [n for n in prunable_channel_layers(model, example)
             if isinstance(model.get_submodule(n), nn.Conv2d)]
    assert convs
    gen = torch.Generator().manual_seed(3)
    for layer in convs:
        n = model.get_submodule(layer).out_channels
        removed = torch.randperm(n, generator=gen)[: max(1, n // 2)].tolist()
        pruned = copy.deepcopy(model)
        remove_output_channels(pruned, layer, removed, example)
        with torch.no_grad():
            expected = pruned(x)
            with ChannelMasker(model, layer, example) as masker:
                masker.set_removed(removed)
                masked = model(x)
                masker.set_removed([])
                unmasked = model(x)
            after = model(x)
        torch.testing.assert_close(masked, expected, atol=1e-5, rtol=1e-4, msg=layer)
        assert not torch.allclose(masked, unmasked)  # the mask did something
        torch.testing.assert_close(after, unmasked, rtol=0, atol=0)  # hooks are gone


# ---------------------------------------------------------------------------- end to end
def _tiny_cnn() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc", nn.Linear(16 * 7 * 7, 10)),
    ]))


def _add_dead_filters(model: nn.Sequential, extra: int) -> nn.Sequential:
    """conv1 gets ``extra`` all-zero filters (zero bias: their output is exactly 0 after the
    ReLU); conv2 reads them with large random weights, so they are dead only because their
    output is zero."""
    old1, old2 = model.conv1, model.conv2
    new1 = nn.Conv2d(1, old1.out_channels + extra, 3, padding=1)
    new2 = nn.Conv2d(old2.in_channels + extra, old2.out_channels, 3, padding=1)
    with torch.no_grad():
        new1.weight.zero_()
        new1.bias.zero_()
        new1.weight[: old1.out_channels] = old1.weight
        new1.bias[: old1.out_channels] = old1.bias
        new2.weight.copy_(torch.randn(new2.weight.shape,
                                      generator=torch.Generator().manual_seed(5)))
        new2.weight[:, : old2.in_channels] = old2.weight
        new2.bias.copy_(old2.bias)
    model.conv1, model.conv2 = new1, new2
    return model


@pytest.fixture(scope="module")
def mnist_small(mnist_train: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
    train, val = train_val_split(mnist_train, 0.1, seed=0)
    return train.subset(torch.arange(6000)), val.subset(torch.arange(1000))


@pytest.fixture(scope="module")
def trained_tiny(mnist_small: tuple[ImageDataset, ImageDataset]) -> nn.Sequential:
    torch.manual_seed(0)
    model = _tiny_cnn()
    fit(model, mnist_small[0], TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=0),
        progress=False)
    return model.eval()


def test_drop_bound_removes_dead_filters_within_the_bound(
        trained_tiny: nn.Sequential, mnist_small: tuple[ImageDataset, ImageDataset]) -> None:
    train, val = mnist_small
    model = _add_dead_filters(copy.deepcopy(trained_tiny), 4)
    x = val.normalize(val.images[:64])
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained_tiny(x), atol=1e-5, rtol=1e-5)
    reference = evaluate(model, val).accuracy_pct
    assert reference > 80  # a model worth pruning
    bound = 1.0
    ctx = Context(train_data=train, val_data=val, progress=False,
                  finetune=TrainConfig(epochs=1, batch_size=64, lr=0.01, seed=0))
    cfg = DropBoundConfig(bound_points=bound, iterations=30, samples_per_iteration=6,
                          agent_lr=0.2, init_keep_prob=0.8, finetune=FinetuneConfig(epochs=1),
                          finetune_samples=1000, seed=0)
    pruned = drop_bound_prune(model, cfg, ctx)
    records = [r for r in ctx.records if r["step"] == "drop-bound"]
    assert [r["layer"] for r in records] == ["conv1", "conv2"]
    first = records[0]
    assert first["filters_before"] == 12
    assert {8, 9, 10, 11} <= set(first["removed"])  # every dead filter went
    assert pruned.conv1.out_channels == first["filters_after"] <= 8
    assert pruned.conv2.in_channels == first["filters_after"]
    for r in records:
        assert r["val_drop_points"] <= bound + 1e-9  # before fine-tuning, on val
        assert r["val_images"] == len(val)
        assert r["filters_after"] == r["filters_before"] - len(r["removed"])
        assert "val_drop_after_finetune_points" in r and "reward" in r
    assert pruned(x).shape == (64, 10)


def _random_dataset(model: nn.Module, shape: tuple, n: int, seed: int) -> ImageDataset:
    """Random images labelled by ``model`` itself: the unpruned model scores 100%, and every
    change of its predictions shows in the accuracy."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    data = ImageDataset(images, torch.zeros(n, dtype=torch.int64), name="random", split="val",
                        classes=[str(i) for i in range(10)], mean=(0.5,) * shape[0],
                        std=(0.25,) * shape[0])
    with torch.no_grad():
        data.labels = model.eval()(data.normalize(images)).argmax(1)
    return data


def test_prefix_cache_gives_the_same_accuracy() -> None:
    torch.manual_seed(0)
    model = build_model("eurosat_cnn", width=4).eval()
    _randomise_bn(model, 1)
    data = _random_dataset(model, (3, 64, 64), 96, seed=4)
    val = _ValSet(data, 96, seed=0, batch_size=40)  # 3 batches, the last one short
    example = torch.zeros(1, 3, 64, 64)
    gen = torch.Generator().manual_seed(5)
    for layer in ("features.0.0", "features.4.0", "features.7.0"):
        n = model.get_submodule(layer).out_channels
        removals = [torch.randperm(n, generator=gen)[: n // 2].tolist() for _ in range(3)]
        with ChannelMasker(model, layer, example) as masker:
            plain = []
            for r in removals:
                masker.set_removed(r)
                plain.append(val.accuracy_pct(model))
            with val.skip_prefix(model, layer) as shortened:
                cached = []
                for r in removals:
                    masker.set_removed(r)
                    cached.append(val.accuracy_pct(model))
        assert shortened == (0 if layer == "features.0.0" else 1)
        assert cached == plain
        assert min(plain) < 100.0  # the removals changed predictions
    assert "forward" not in vars(model.features)  # the shortened forward is gone


def test_batchnorm_params_follow_the_filters() -> None:
    model = build_model("resconcat", width=4).eval()
    _randomise_bn(model, 2)
    example = torch.zeros(1, 1, 28, 28)
    gamma, beta = ChannelMasker(model, "branch_b.0", example).batchnorm_params()
    torch.testing.assert_close(gamma, model.branch_b[1].weight.detach())
    torch.testing.assert_close(beta, model.branch_b[1].bias.detach())
    lenet = build_model("lenet5").eval()
    assert ChannelMasker(lenet, "conv1", torch.zeros(1, 1, 28, 28)).batchnorm_params() == (
        None, None)


def test_drop_bound_runs_on_residual_and_concat_graphs() -> None:
    torch.manual_seed(0)
    model = build_model("resconcat", width=4).eval()
    _randomise_bn(model, 3)
    data = _random_dataset(model, (1, 28, 28), 64, seed=6)
    ctx = Context(val_data=data, progress=False)
    cfg = DropBoundConfig(bound_points=50.0, iterations=3, samples_per_iteration=3,
                          init_keep_prob=0.5, finetune=FinetuneConfig(epochs=0), seed=0)
    pruned = drop_bound_prune(model, cfg, ctx)
    layers = [r["layer"] for r in ctx.records]
    # one agent per channel group: the residual pair (stem, res_conv2) and the concatenated
    # branches feeding the depthwise conv are pruned through their first layer only
    assert layers == ["stem.0", "res_conv1.0", "branch_a.0", "branch_b.0", "pointwise.0"]
    for r in ctx.records:
        assert pruned.get_submodule(r["layer"]).out_channels == r["filters_after"]
        assert r["val_drop_points"] <= 50.0
    assert pruned.res_conv2.out_channels == pruned.stem[0].out_channels
    assert pruned.depthwise[0].out_channels == (pruned.branch_a[0].out_channels
                                                + pruned.branch_b[0].out_channels)
    assert pruned(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_layer_selector_chooses_the_conv_layers() -> None:
    model = build_model("resconcat", width=4).eval()
    example = torch.zeros(1, 1, 28, 28)
    assert _layer_order(model, example, None) == ["stem.0", "res_conv1.0", "branch_a.0",
                                                  "branch_b.0", "pointwise.0"]
    assert _layer_order(model, example, LayerSelector(names=("branch_*",))) == [
        "branch_a.0", "branch_b.0"]
    # ignoring a layer keeps its whole channel group: the residual pair goes
    assert _layer_order(model, example, LayerSelector(ignore=("res_conv2",))) == [
        "res_conv1.0", "branch_a.0", "branch_b.0", "pointwise.0"]
    with pytest.raises(ConfigError, match=r"drop-bound: no layer named 'conv9'.*prunable conv "
                                          r"layers: stem\.0, res_conv1\.0, res_conv2"):
        _layer_order(model, example, LayerSelector(names=("conv9",)))
