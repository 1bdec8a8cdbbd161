"""Unstructured magnitude pruning: mask math, schedules, the magnitude / iterative-magnitude /
agp techniques, masks kept through training, and pruned checkpoints."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.data import ImageDataset
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.prune import masks_from_zeros
from modelzip.prune.magnitude import (
    AGPConfig,
    IterativeMagnitudeConfig,
    MagnitudePruneConfig,
    global_sparsity_masks,
    n_pruned,
    prune_threshold,
    quality_threshold,
    sparsity_mask,
    threshold_mask,
)
from modelzip.prune.schedules import agp_sparsity, han_dropout, round_sparsities
from modelzip.registry import Context, apply_technique, config_from_dict
from modelzip.train import TrainConfig
from modelzip.zoo import build_model


class LogContext(Context):
    """A Context that keeps its log messages."""

    def __init__(self, **kwargs) -> None:
        super().__init__(progress=False, **kwargs)
        self.messages: list[str] = []

    def log(self, message: str) -> None:
        self.messages.append(message)


FAST = TrainConfig(epochs=1, batch_size=64, lr=0.02, momentum=0.9, weight_decay=1e-3,
                   schedule="constant")


@pytest.fixture(scope="module")
def train_1k(mnist_train: ImageDataset) -> ImageDataset:
    idx = torch.randperm(len(mnist_train), generator=torch.Generator().manual_seed(5))[:1000]
    return mnist_train.subset(idx.sort().values)


def _model(name: str = "lenet300", seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **kwargs)


def _zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


# ============================================================================ mask math
@pytest.mark.parametrize("n", [1, 7, 100, 1001])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.75, 0.9, 0.99])
def test_sparsity_mask_removes_exactly_round_s_n(n: int, sparsity: float) -> None:
    w = torch.randn(n, generator=torch.Generator().manual_seed(n))
    keep = sparsity_mask(w, sparsity)
    assert keep.dtype == torch.bool and keep.shape == w.shape
    assert int((~keep).sum()) == round(sparsity * n) == n_pruned(n, sparsity)
    if 0 < int(keep.sum()) < n:  # every pruned |w| <= every kept |w|
        assert w[~keep].abs().max() <= w[keep].abs().min()


def test_sparsity_mask_breaks_ties_by_position() -> None:
    # Many equal magnitudes (signs differ): the lower flat index is pruned first.
    w = torch.tensor([[2.0, -1.0, 1.0, 3.0], [1.0, -2.0, -1.0, 0.5]])
    keep = sparsity_mask(w, 0.5)  # 4 zeros: 0.5, then the first three of the four 1s
    assert keep.tolist() == [[True, False, False, True], [False, True, True, False]]
    assert torch.equal(sparsity_mask(w, 0.5), keep)  # deterministic
    assert prune_threshold(w, keep) == 1.0
    # Exactly round(s*n) even when every weight is equal.
    flat = torch.ones(10, 10)
    assert int((~sparsity_mask(flat, 0.37)).sum()) == 37
    assert (~sparsity_mask(flat, 0.37)).flatten().nonzero().flatten().tolist() == list(range(37))


def test_masks_only_shrink() -> None:
    w = torch.randn(50, 20, generator=torch.Generator().manual_seed(1))
    old = torch.rand(50, 20, generator=torch.Generator().manual_seed(2)) > 0.3  # ~30% pruned
    keep = sparsity_mask(w, 0.6, old)
    assert int((~keep).sum()) == 600
    assert not bool((keep & ~old).any())  # nothing pruned before is revived
    # Asking for less than is already pruned keeps the old mask as it is.
    assert torch.equal(sparsity_mask(w, 0.1, old), old)
    # The same holds for the threshold and the global masks.
    assert not bool((threshold_mask(w, 0.0, old) & ~old).any())
    g = global_sparsity_masks({"a": w, "b": w[:10]}, 0.2, {"a": old})
    assert not bool((g["a"] & ~old).any())


def test_quality_threshold_matches_hand_computation() -> None:
    w = torch.tensor([[0.5, -1.5, 0.25], [2.0, -0.125, 0.0]])  # exact in float32
    values = [0.5, -1.5, 0.25, 2.0, -0.125, 0.0]
    mean = sum(values) / 6
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 5)  # sample std, n - 1
    assert quality_threshold(w, 0.7) == pytest.approx(0.7 * std, rel=1e-12)
    # 0.7 * std = 0.790: |w| > threshold survives
    keep = threshold_mask(w, quality_threshold(w, 0.7))
    assert keep.tolist() == [[False, True, False], [True, False, False]]
    assert quality_threshold(w, 0.0) == 0.0
    assert threshold_mask(w, 0.0).tolist() == [[True, True, True], [True, True, False]]
    with pytest.raises(ConfigError, match="quality"):
        quality_threshold(w, -1.0)


def test_global_ranking_differs_from_per_layer() -> None:
    gen = torch.Generator().manual_seed(3)
    small = 0.01 * torch.randn(100, 10, generator=gen)  # a layer of small weights
    large = torch.randn(50, 10, generator=gen)
    g = global_sparsity_masks({"small": small, "large": large}, 0.5)
    assert int((~g["small"]).sum()) + int((~g["large"]).sum()) == 750  # exact in total
    assert int((~g["small"]).sum()) > 700  # the small layer takes nearly all of the cut
    kept = torch.cat([small[g["small"]], large[g["large"]]]).abs()
    cut = torch.cat([small[~g["small"]], large[~g["large"]]]).abs()
    assert cut.max() <= kept.min()  # one threshold for all layers
    per_layer = {"small": sparsity_mask(small, 0.5), "large": sparsity_mask(large, 0.5)}
    assert int((~per_layer["small"]).sum()) == 500 and int((~per_layer["large"]).sum()) == 250


# ============================================================================ schedules
def test_agp_schedule_endpoints_and_shape() -> None:
    kw = {"initial": 0.1, "final": 0.9, "start_step": 100, "n_prunes": 10, "every": 20}
    assert agp_sparsity(0, **kw) == 0.1  # before t0
    assert agp_sparsity(100, **kw) == 0.1
    assert agp_sparsity(300, **kw) == 0.9  # t0 + n dt
    assert agp_sparsity(10_000, **kw) == 0.9
    # Halfway: s_f + (s_i - s_f) (1 - 1/2)^3
    assert agp_sparsity(200, **kw) == pytest.approx(0.9 + (0.1 - 0.9) * 0.125)
    values = [agp_sparsity(t, **kw) for t in range(0, 400, 5)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    steps = [agp_sparsity(t, **kw) - agp_sparsity(t - 20, **kw) for t in range(120, 301, 20)]
    assert all(b < a for a, b in itertools.pairwise(steps))  # fast, then slower
    with pytest.raises(ConfigError, match="above the final"):
        agp_sparsity(0, initial=0.5, final=0.4, start_step=0, n_prunes=1, every=1)


@pytest.mark.parametrize("schedule", ["linear", "geometric", "cubic"])
def test_round_sparsities(schedule: str) -> None:
    s = round_sparsities(0.92, 4, schedule)
    assert len(s) == 4 and s[-1] == 0.92
    assert all(0 < a < b for a, b in itertools.pairwise(s))
    assert round_sparsities(0.5, 1, schedule) == [0.5]
    if schedule == "geometric":  # the same fraction of what remains goes each round
        kept = [1 - x for x in s]
        assert kept[1] / kept[0] == pytest.approx(kept[0]) == pytest.approx(0.08 ** 0.25)


def test_han_dropout() -> None:
    assert han_dropout(0.5, 10_000, 900) == pytest.approx(0.5 * 0.3)
    assert han_dropout(0.5, 100, 100) == 0.5
    with pytest.raises(ConfigError):
        han_dropout(0.5, 100, 200)


# ============================================================================ technique
def test_magnitude_per_layer_exact_and_biases_untouched() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = LogContext()
    model = apply_technique(model, MagnitudePruneConfig(sparsity=0.9), ctx)
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(model, name).weight
        assert _zeros(w) == round(0.9 * w.numel())
        assert torch.equal(ctx.masks[f"{name}.weight"], w != 0)
        assert torch.equal(getattr(model, name).bias, before[f"{name}.bias"])
        kept = before[f"{name}.weight"][ctx.masks[f"{name}.weight"]]
        assert torch.equal(w[w != 0], kept)  # kept weights keep their values
    rec = ctx.records[-1]
    assert rec["step"] == "magnitude" and rec["mode"] == "sparsity"
    assert [r["layer"] for r in rec["layers"]] == ["fc1", "fc2", "fc3"]
    fc1 = rec["layers"][0]
    assert fc1["params"] == 784 * 300 and fc1["kept"] == 784 * 300 - round(0.9 * 784 * 300)
    assert fc1["threshold"] == pytest.approx(float(before["fc1.weight"].abs()
                                                   [~ctx.masks["fc1.weight"]].max()))


def test_magnitude_mapping_merges_with_existing_masks() -> None:
    model = _model()
    ctx = LogContext()
    model = apply_technique(model, config_from_dict("magnitude", {"sparsity": {"fc1": 0.5,
                                                                       "fc3.weight": 0.2}}), ctx)
    first = {k: v.clone() for k, v in ctx.masks.items()}
    assert set(first) == {"fc1.weight", "fc3.weight"} and _zeros(model.fc2.weight) == 0
    model = apply_technique(model, MagnitudePruneConfig(sparsity={"fc1": 0.8, "fc2": 0.3}), ctx)
    assert _zeros(model.fc1.weight) == round(0.8 * 784 * 300)
    assert not bool((ctx.masks["fc1.weight"] & ~first["fc1.weight"]).any())
    assert torch.equal(ctx.masks["fc3.weight"], first["fc3.weight"])  # left as it was
    assert _zeros(model.fc2.weight) == round(0.3 * 30_000)
    # A lower target later does not revive anything.
    model = apply_technique(model, MagnitudePruneConfig(sparsity=0.1, layers=("fc1",)), ctx)
    assert _zeros(model.fc1.weight) == round(0.8 * 784 * 300)


def test_magnitude_global_on_lenet5() -> None:
    model = _model("lenet5")
    ctx = LogContext()
    model = apply_technique(model, MagnitudePruneConfig(global_sparsity=0.92), ctx)
    weights = [model.conv1.weight, model.conv2.weight, model.fc1.weight, model.fc2.weight]
    total = sum(w.numel() for w in weights)
    assert sum(_zeros(w) for w in weights) == round(0.92 * total)
    kept = {r["layer"]: r["kept"] / r["params"] for r in ctx.records[-1]["layers"]}
    assert kept["conv1"] > kept["fc1"]  # the ranking is global: layers differ
    assert all(_zeros(m.bias) == 0 for m in (model.conv1, model.fc2))


def test_magnitude_quality_mode() -> None:
    model = _model()
    w = model.fc2.weight.detach().clone()
    ctx = LogContext()
    model = apply_technique(model, MagnitudePruneConfig(quality=1.0, layers=("fc2",)), ctx)
    t = float(w.double().std())
    assert torch.equal(model.fc2.weight != 0, w.abs().double() > t)
    assert ctx.records[-1]["layers"][0]["threshold"] == pytest.approx(t)
    assert set(ctx.masks) == {"fc2.weight"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\), got 1.0"),
        ({"sparsity": -0.1}, r"got -0.1"),
        ({"sparsity": {"fc1": 1.5}}, r"sparsity of layer 'fc1' must be in \[0, 1\), got 1.5"),
        ({"global_sparsity": 2}, r"global_sparsity must be in \[0, 1\), got 2"),
        ({}, "exactly one of sparsity, global_sparsity, quality; got none"),
        ({"sparsity": 0.5, "quality": 1.0}, "got sparsity and quality"),
        ({"quality": -1.0}, "quality must be a number >= 0"),
        ({"sparsity": {}}, "mapping is empty"),
        ({"sparsity": {"fc1": 0.5}, "layers": ("fc2",)}, "not both"),
    ],
)
def test_bad_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MagnitudePruneConfig(**kwargs)


def test_bad_retrain_configs_raise() -> None:
    with pytest.raises(ConfigError, match="iterative-magnitude: rounds must be >= 1, got 0"):
        IterativeMagnitudeConfig(sparsity=0.5, rounds=0)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        IterativeMagnitudeConfig(sparsity=0.5, finetune=FinetuneConfig(lr=-1.0))
    with pytest.raises(ConfigError, match="iterative-magnitude: finetune: lr must be > 0"):
        config_from_dict("iterative-magnitude", {"sparsity": 0.5, "finetune": {"lr": -1}})
    with pytest.raises(ConfigError, match="final_finetune: epochs must be >= 1, got 0"):
        IterativeMagnitudeConfig(sparsity=0.5, final_finetune=FinetuneConfig(epochs=0))
    with pytest.raises(ConfigError, match="sparsity_schedule must be one of"):
        IterativeMagnitudeConfig(sparsity=0.5, sparsity_schedule="exp")
    with pytest.raises(ConfigError, match=r"agp: sparsity must be in \[0, 1\), got 1.2"):
        AGPConfig(sparsity=1.2)
    with pytest.raises(ConfigError, match=r"initial_sparsity 0\.6 is above"):
        AGPConfig(sparsity=0.5, initial_sparsity=0.6)
    with pytest.raises(ConfigError, match="unknown option"):
        config_from_dict("agp", {"sparsity": 0.5, "speed": 3})
    with pytest.raises(ConfigError, match="agp: finetune: epochs must be >= 1, got 0"):
        AGPConfig(sparsity=0.5, finetune=FinetuneConfig(epochs=0))


@pytest.mark.parametrize(("technique", "key", "now"), [
    ("iterative-magnitude", "epochs", "finetune: {epochs: N}"),
    ("iterative-magnitude", "final_epochs", "final_finetune: {epochs: N}"),
    ("iterative-magnitude", "lr", "finetune: {lr: ...}"),
    ("iterative-magnitude", "lr_schedule", "finetune: {schedule: ...}"),
    ("agp", "epochs", "finetune: {epochs: N}"),
    ("agp", "final_epochs", "final_finetune: {epochs: N}"),
    ("agp", "weight_decay", "finetune: {weight_decay: ...}"),
])
def test_old_retraining_options_say_their_new_name(technique: str, key: str, now: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(technique, {"sparsity": 0.5, key: 1})
    assert str(info.value).startswith(f"{technique}: {key} is now {now}")


def test_retraining_defaults_and_overrides() -> None:
    base = TrainConfig(epochs=7, lr=0.1, weight_decay=0.0)
    it = IterativeMagnitudeConfig(sparsity=0.5)
    assert it.round_finetune(final=False).merged(base).epochs == 2  # the technique's default
    assert it.round_finetune(final=True).merged(base).epochs == 2
    it = config_from_dict("iterative-magnitude", {
        "sparsity": 0.5, "finetune": {"epochs": 1, "lr": 0.01},
        "final_finetune": {"epochs": 3}})
    each, last = it.round_finetune(final=False).merged(base), \
        it.round_finetune(final=True).merged(base)
    assert (each.epochs, each.lr, each.weight_decay) == (1, 0.01, 0.0)
    assert (last.epochs, last.lr) == (3, 0.01)  # the last round only changes its epochs
    agp = AGPConfig(sparsity=0.5)
    assert agp.pruning_finetune().merged(base).epochs == 4
    assert agp.end_finetune().merged(base).epochs == 1
    agp = AGPConfig(sparsity=0.5, finetune=FinetuneConfig(lr=0.3),
                    final_finetune=FinetuneConfig(epochs=0))
    assert agp.pruning_finetune().merged(base).lr == 0.3
    assert agp.end_finetune().skips


def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"no layer named 'fc9'.*prunable layers: fc1, fc2, fc3"):
        apply_technique(_model(), MagnitudePruneConfig(sparsity=0.5, layers=("fc1", "fc9")),
                        LogContext())
    with pytest.raises(ConfigError, match=r"no layer named 'conv9'.*conv1, conv2, fc1, fc2"):
        apply_technique(_model("lenet5"), MagnitudePruneConfig(sparsity={"conv9": 0.5}),
                        LogContext())


def test_unprunable_layers_are_named_in_the_error() -> None:
    model = _model()
    ctx = LogContext()
    with pytest.raises(ConfigError) as info:
        apply_technique(model, MagnitudePruneConfig(sparsity=0.5,
                                                    layers=("fc1", "relu1", "fc2.bias")), ctx)
    message = str(info.value)
    assert "'relu1' is a ReLU (magnitude takes only Linear and Conv layers)" in message
    assert "'fc2.bias' is a parameter, not a layer" in message
    assert message.endswith("prunable layers: fc1, fc2, fc3") and not ctx.masks
    # patterns and types choose among the prunable layers; a weight names its layer
    model = apply_technique(model, MagnitudePruneConfig(
        sparsity=0.5, layers={"names": ["fc*"], "ignore": ["fc3.weight"]}), ctx)
    assert set(ctx.masks) == {"fc1.weight", "fc2.weight"}
    model = apply_technique(_model(), config_from_dict("magnitude", {
        "sparsity": {"fc*": 0.5, "fc2": 0.9}, "layers": {"ignore": "fc3"}}), ctx)
    assert [r["layer"] for r in ctx.records[-1]["layers"]] == ["fc1", "fc2"]
    assert ctx.records[-1]["target"] == {"fc1": 0.5, "fc2": 0.9}  # the exact name wins
    # Parameterised layers that are not Linear/Conv (BatchNorm) are named, not ignored.
    ctx = LogContext()
    apply_technique(build_model("resconcat", width=4), MagnitudePruneConfig(sparsity=0.5), ctx)
    assert any("not pruned" in m and "BatchNorm2d" in m for m in ctx.messages)
    # A one-weight layer has no std for Han's threshold: skipped, with a message.
    ctx = LogContext()
    apply_technique(nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 8)),
                    MagnitudePruneConfig(quality=0.5), ctx)
    assert set(ctx.masks) == {"1.weight"} and "fewer than 2 weights" in ctx.messages[-1]


# ============================================================================ training
def test_masks_survive_finetune_with_momentum(train_1k: ImageDataset) -> None:
    model = _model("lenet5")
    ctx = LogContext(train_data=train_1k, finetune=FAST)
    model = apply_technique(model, MagnitudePruneConfig(sparsity=0.8), ctx)
    masks = {k: v.clone() for k, v in ctx.masks.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = apply_technique(model, FinetuneConfig(epochs=1), ctx)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert _zeros(params[name]) == int((~mask).sum())
        assert not torch.equal(params[name], before[name])  # the kept weights trained


def test_iterative_magnitude_reaches_target(train_1k: ImageDataset) -> None:
    model = _model("lenet300", dropout=0.5)
    val = train_1k.subset(range(200))
    ctx = LogContext(train_data=train_1k.subset(range(200, 1000)), val_data=val, finetune=FAST)
    cfg = IterativeMagnitudeConfig(sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}, rounds=2,
                                   finetune=FinetuneConfig(epochs=1, lr=0.01, weight_decay=1e-4),
                                   scale_dropout=True)
    model = apply_technique(model, cfg, ctx)
    for name, s in (("fc1", 0.92), ("fc2", 0.91), ("fc3", 0.74)):
        w = getattr(model, name).weight
        assert _zeros(w) == round(s * w.numel()), name
        assert torch.equal(w != 0, ctx.masks[f"{name}.weight"])
    rec = ctx.records[-1]
    assert rec["step"] == "iterative-magnitude" and len(rec["rounds"]) == 2
    first = {r["layer"]: r["kept"] for r in rec["rounds"][0]["layers"]}
    assert first["fc1"] == 784 * 300 - round(round_sparsities(0.92, 2)[0] * 784 * 300)
    assert "val_error_pct" in rec["rounds"][1] and rec["epochs_total"] == 2
    assert rec["train"]["lr"] == 0.01 and rec["train"]["weight_decay"] == 1e-4
    # Han's dropout: each Dropout follows the layer whose outputs it drops.
    assert model.drop1.p == pytest.approx(0.5 * math.sqrt(0.08), rel=1e-3)
    assert model.drop2.p == pytest.approx(0.5 * math.sqrt(0.09), rel=1e-3)
    assert rec["rounds"][1]["dropout"] == {"drop1": model.drop1.p, "drop2": model.drop2.p}


def test_agp_prunes_gradually_and_masks_hold(train_1k: ImageDataset) -> None:
    model = _model("lenet5")
    ctx = LogContext(train_data=train_1k, finetune=FAST)
    cfg = AGPConfig(global_sparsity=0.9, prune_every=3, start_step=2, n_prunes=4,
                    finetune=FinetuneConfig(epochs=1), final_finetune=FinetuneConfig(epochs=1))
    model = apply_technique(model, cfg, ctx)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    total = sum(w.numel() for w in weights)
    assert sum(_zeros(w) for w in weights) == round(0.9 * total)
    for name, mask in ctx.masks.items():
        assert torch.equal(dict(model.named_parameters())[name] != 0, mask)
    rec = ctx.records[-1]
    assert rec["epochs_total"] == 2  # the pruning run and the final fine-tune
    assert [e["step"] for e in rec["events"]] == [2, 5, 8, 11, 14]
    sparsities = [e["sparsity"] for e in rec["events"]]
    assert sparsities[0] == 0.0 and sparsities[-1] == pytest.approx(0.9, abs=1e-6)
    assert all(b > a for a, b in itertools.pairwise(sparsities))
    expected = [agp_sparsity(t, initial=0.0, final=0.9, start_step=2, n_prunes=4, every=3)
                for t in (5, 8, 11)]
    assert sparsities[1:4] == pytest.approx(expected, abs=1e-5)
    assert all(_zeros(m.bias) == 0 for m in (model.conv1, model.conv2, model.fc1, model.fc2))
    with pytest.raises(ConfigError, match="the schedule ends at step"):
        apply_technique(_model(), AGPConfig(sparsity=0.5, finetune=FinetuneConfig(epochs=1),
                                            prune_every=100, n_prunes=10), ctx)


def test_retraining_needs_data() -> None:
    with pytest.raises(ConfigError, match="iterative-magnitude needs train data"):
        apply_technique(_model(), IterativeMagnitudeConfig(sparsity=0.5), LogContext())


# ============================================================================ checkpoint
def test_pruned_checkpoint_roundtrip(tmp_path: Path, train_1k: ImageDataset) -> None:
    model = _model("lenet5")
    ctx = LogContext(train_data=train_1k.subset(range(300)), finetune=FAST)
    model = apply_technique(model, AGPConfig(sparsity={"conv1": 0.3, "conv2": 0.8, "fc1": 0.95,
                                               "fc2": 0.8}, prune_every=1,
                                     finetune=FinetuneConfig(epochs=1),
                                     final_finetune=FinetuneConfig(epochs=0)), ctx)
    save_checkpoint(model, tmp_path / "pruned")
    loaded = load_checkpoint(tmp_path / "pruned").model
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    recovered = masks_from_zeros(loaded)
    assert recovered.keys() == ctx.masks.keys()
    assert all(torch.equal(recovered[k], ctx.masks[k]) for k in recovered)
    assert _zeros(loaded.fc1.weight) == round(0.95 * 400_000)
