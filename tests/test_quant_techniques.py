"""The ``kmeans`` (weight sharing) and ``uniform`` techniques on pruned zoo models: shared or
quantized values per layer, zeros kept exactly, centroid fine-tuning and quantization-aware
fine-tuning, unchanged state_dict keys, configs from YAML/CLI values, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.checkpoint import load_checkpoint
from modelzip.codec import describe_artifact, write_artifact
from modelzip.codec.model import unpack
from modelzip.core.selection import LayerSelector
from modelzip.data import ImageDataset
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.prune.masks import prunable_weights
from modelzip.quant import UniformQuantConfig, WeightSharingConfig, grid_hints
from modelzip.recipe import Recipe, run_recipe
from modelzip.registry import Context, apply_technique, config_from_dict, list_techniques
from modelzip.train import TrainConfig
from modelzip.zoo import build_model
from tests.test_cli import assert_ok, assert_user_error, run_cli

BENCH = Path(__file__).resolve().parent.parent / "bench" / "checkpoints"
FAST = TrainConfig(epochs=1, batch_size=64, lr=0.01, schedule="constant")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def train_512(mnist_train: ImageDataset) -> ImageDataset:
    idx = torch.randperm(len(mnist_train), generator=torch.Generator().manual_seed(3))[:512]
    return mnist_train.subset(idx.sort().values)


def _pruned(name: str = "lenet300", sparsity: float = 0.9) -> nn.Module:
    """A zoo model with 90% of each Linear/Conv weight set to exactly zero (by magnitude,
    as pruning leaves it); the masks are not handed on, as with a loaded checkpoint."""
    torch.manual_seed(0)
    model = build_model(name)
    return apply_technique(model, MagnitudePruneConfig(sparsity=sparsity), Context(progress=False))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in prunable_weights(model).items()}


def _distinct_nonzero(w: torch.Tensor) -> int:
    return len(torch.unique(w[w != 0]))


def _assert_plain(model: nn.Module, keys: list[str]) -> None:
    """A normal zoo model again: same state_dict keys in the same order, float32 weights that
    are trainable Parameters, no parametrization left."""
    assert list(model.state_dict()) == keys
    for module in model.modules():
        assert not parametrize.is_parametrized(module)
    for w in prunable_weights(model).values():
        assert type(w) is nn.Parameter and w.dtype == torch.float32 and w.requires_grad


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when equal values of ``a`` are exactly the equal values of ``b`` (a one-to-one
    map between their values)."""
    pairs = torch.unique(torch.stack([a.flatten(), b.flatten()]), dim=1)
    return pairs.shape[1] == len(torch.unique(a)) == len(torch.unique(b))


# ============================================================================ kmeans
@pytest.mark.parametrize("bits", [2, 4, 5])
def test_kmeans_shares_at_most_2_to_the_bits_values_and_keeps_zeros(bits: int) -> None:
    model = _pruned()
    before = _weights(model)
    keys = list(model.state_dict())
    ctx = Context(progress=False)
    model = apply_technique(model, WeightSharingConfig(bits=bits), ctx)
    _assert_plain(model, keys)
    for name, w in _weights(model).items():
        assert torch.equal(w == 0, before[name] == 0), name  # zeros exactly, no new ones
        assert not bool(torch.signbit(w[w == 0]).any())
        assert _distinct_nonzero(w) == 2**bits  # the kept weights are plenty for 2^bits
        err = (w - before[name]).abs()[before[name] != 0]
        assert float(err.max()) < float(before[name].abs().max()) / 2**(bits - 2)
    record = ctx.records[-1]
    assert record["step"] == "kmeans" and record["method"] == "lloyd"
    assert [(r["layer"], r["bits"], r["k"], r["distinct_nonzero"]) for r in record["layers"]] \
        == [(n, bits, 2**bits, 2**bits) for n in ("fc1", "fc2", "fc3")]
    # the masks of the pruned layers are handed on to later fine-tuning steps
    assert set(ctx.masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_kmeans_default_bits_are_8_for_conv_and_5_for_fc() -> None:
    model = _pruned("lenet5", sparsity=0.5)
    ctx = Context(progress=False)
    model = apply_technique(model, config_from_dict("kmeans", {}), ctx)
    bits = {r["layer"]: r["bits"] for r in ctx.records[-1]["layers"]}
    assert bits == {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5}
    for name, w in prunable_weights(model).items():
        limit = 2**bits[name.removesuffix(".weight")]
        assert _distinct_nonzero(w) <= limit
    assert _distinct_nonzero(model.conv2.weight) == 256  # 12,500 kept weights


def test_kmeans_optimal_is_at_least_as_close_as_lloyd() -> None:
    records = {}
    for method in ("lloyd", "optimal"):
        ctx = Context(progress=False)
        apply_technique(_pruned(), WeightSharingConfig(bits=3, method=method), ctx)
        records[method] = {r["layer"]: r["rmse"] for r in ctx.records[-1]["layers"]}
    for layer, rmse in records["optimal"].items():
        assert rmse <= records["lloyd"][layer] * (1 + 1e-6)


def test_kmeans_centroid_finetuning_moves_centroids_but_keeps_clusters(
        train_512: ImageDataset) -> None:
    clustered = _pruned()
    clustered = apply_technique(clustered, WeightSharingConfig(bits=4), Context(progress=False))
    model = _pruned()
    keys = list(model.state_dict())
    bias_before = model.fc1.bias.detach().clone()
    ctx = Context(train_data=train_512, finetune=FAST, progress=False)
    model = apply_technique(model, WeightSharingConfig(bits=4, finetune=FinetuneConfig(epochs=1)),
                            ctx)
    _assert_plain(model, keys)
    shared = _weights(clustered)
    for name, w in prunable_weights(model).items():
        w = w.detach()
        assert torch.equal(w == 0, shared[name] == 0), name  # zero pattern kept
        assert _distinct_nonzero(w) == 16
        assert _same_partition(w, shared[name]), name  # every weight kept its cluster
        assert not torch.equal(w, shared[name]), name  # ... and the centroids moved
    assert not torch.equal(model.fc1.bias, bias_before)  # biases train as usual
    record = ctx.records[-1]
    assert record["finetune_epochs"] == 1 and record["train"]["epochs"] == 1
    assert all(shift > 0 for shift in record["centroid_max_shift"].values())


def test_kmeans_on_some_layers_keeps_the_masks_of_the_others(train_512: ImageDataset) -> None:
    model = _pruned()
    before = _weights(model)
    ctx = Context(train_data=train_512, finetune=FAST, progress=False)
    ctx.masks = {n: w != 0 for n, w in before.items()}  # as a pruning step leaves them
    config = config_from_dict("kmeans", {"bits": {"fc1": 3}, "finetune": {"epochs": 1}})
    model = apply_technique(model, config, ctx)
    after = _weights(model)
    assert _distinct_nonzero(after["fc1.weight"]) == 8
    assert [r["layer"] for r in ctx.records[-1]["layers"]] == ["fc1"]
    for name in ("fc2.weight", "fc3.weight"):  # trained normally, zeros kept
        assert torch.equal(after[name] == 0, before[name] == 0)
        assert not torch.equal(after[name], before[name])
        assert _distinct_nonzero(after[name]) == int((before[name] != 0).sum())


def test_kmeans_in_a_recipe() -> None:
    recipe = Recipe.from_dict({"name": "deep-compression", "steps": [
        {"magnitude": {"sparsity": 0.9}},
        {"kmeans": {"bits": {"fc1": 4, "fc2": 5, "fc3.weight": 6}, "init": "density"}}]})
    torch.manual_seed(0)
    model = build_model("lenet300")
    ctx = Context(progress=False)
    ctx.log = lambda message: None  # type: ignore[method-assign]
    model = run_recipe(model, recipe, ctx)
    assert [_distinct_nonzero(w) for w in prunable_weights(model).values()] == [16, 32, 64]
    for name, w in prunable_weights(model).items():
        assert torch.equal(w != 0, ctx.masks[name])


# ============================================================================ uniform
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", ["affine", "symmetric"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_uniform_puts_weights_on_a_grid_and_keeps_zeros(bits: int, scheme: str,
                                                        per_channel: bool) -> None:
    model = _pruned()
    before = _weights(model)
    keys = list(model.state_dict())
    ctx = Context(progress=False)
    model = apply_technique(model, UniformQuantConfig(bits=bits, scheme=scheme,
                                                      per_channel=per_channel), ctx)
    _assert_plain(model, keys)
    for (name, w), record in zip(prunable_weights(model).items(), ctx.records[-1]["layers"],
                                 strict=True):
        w = w.detach()
        assert bool((w[before[name] == 0] == 0).all())  # pruned stay exactly zero
        # kept weights within half a step of 0 round to 0 too; none otherwise
        assert int(((w == 0) & (before[name] != 0)).sum()) == record["rounded_to_zero"]
        for row in (w if per_channel else w.reshape(1, -1)):
            assert len(torch.unique(row)) <= 2**bits
        if not per_channel:  # values are integer multiples of the scale
            steps = w.double() / record["scale"]
            assert torch.allclose(steps, steps.round(), atol=1e-6)


@pytest.mark.parametrize("scheme", ["binary", "ternary"])
def test_uniform_binary_and_ternary_value_sets(scheme: str) -> None:
    model = _pruned()
    before = _weights(model)
    ctx = Context(progress=False)
    model = apply_technique(model, config_from_dict("uniform", {"scheme": scheme}), ctx)
    for (name, w), record in zip(prunable_weights(model).items(), ctx.records[-1]["layers"],
                                 strict=True):
        alpha = torch.tensor(record["scale"], dtype=torch.float32)
        assert set(torch.unique(w.detach()).tolist()) <= {-float(alpha), 0.0, float(alpha)}
        assert bool((w[before[name] == 0] == 0).all())
        if scheme == "binary":
            assert torch.equal(w == 0, before[name] == 0)


@pytest.mark.parametrize(("bits", "per_channel"), [(4, False), (4, True), (8, False)])
def test_uniform_qat_trains_through_the_quantizer(train_512: ImageDataset, bits: int,
                                                  per_channel: bool) -> None:
    # (At 8 bits a step is so small that a pruned latent weight that moved at all would
    # show up as a non-zero value.)
    plain = apply_technique(_pruned(), UniformQuantConfig(bits=bits, per_channel=per_channel),
                            Context(progress=False))
    model = _pruned()
    before = _weights(model)
    keys = list(model.state_dict())
    ctx = Context(train_data=train_512, finetune=FAST, progress=False)
    model = apply_technique(model, UniformQuantConfig(
        bits=bits, per_channel=per_channel, finetune=FinetuneConfig(epochs=1, lr=0.02)), ctx)
    _assert_plain(model, keys)
    for name, w in prunable_weights(model).items():
        w = w.detach()
        assert bool((w[before[name] == 0] == 0).all())  # pruned stay exactly zero
        for row in (w if per_channel else w.reshape(1, -1)):
            assert len(torch.unique(row)) <= 2**bits
        assert not torch.equal(w, _weights(plain)[name])  # training changed the values
        # the result is on its own grid: quantizing again changes nothing
        again = UniformQuantConfig(bits=bits, per_channel=per_channel, layers=(name,))
        copy = _pruned()
        copy.load_state_dict(model.state_dict())
        copy = apply_technique(copy, again, Context(progress=False))
        torch.testing.assert_close(prunable_weights(copy)[name].detach(), w, rtol=1e-6, atol=0)
    record = ctx.records[-1]
    assert record["qat_epochs"] == 1 and record["train"]["lr"] == 0.02
    # the grid hints describe the trained weights: the codec stores them as integers
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    rows = describe_artifact(write_artifact(arrays, hints=grid_hints(model)))
    assert {r["name"] for r in rows if r["value_coding"] == "grid"} == set(before)


# ============================================================================ configs
def test_techniques_are_registered() -> None:
    assert {"kmeans", "uniform"} <= set(list_techniques())


@pytest.mark.parametrize(("technique", "values", "needle"), [
    ("kmeans", {"bits": 9}, "bits must be an integer from 1 to 8"),
    ("kmeans", {"bits": 0}, "bits must be"),
    ("kmeans", {"bits": {"fc1": 12}}, "bits of layer 'fc1'"),
    ("kmeans", {"bits": "4"}, "wrong type"),
    ("kmeans", {"init": "kmeans++"}, "init must be one of linear, density, random"),
    ("kmeans", {"method": "jenks"}, "method must be one of lloyd, optimal"),
    ("kmeans", {"finetune": {"epochs": -1}}, "kmeans: finetune: epochs must be an integer >= 0"),
    ("kmeans", {"finetune": {"lr": 0}}, "kmeans: finetune: lr must be > 0"),
    ("kmeans", {"finetune_epochs": 1}, "kmeans: finetune_epochs is now finetune: {epochs: N}"),
    ("kmeans", {"bits": {"fc1": 4}, "layers": ["fc2"]}, "not both"),
    ("kmeans", {"bits": {}}, "empty"),
    ("kmeans", {"clusters": 4}, "unknown option"),
    ("uniform", {"bits": 1}, "bits must be an integer from 2 to 8"),
    ("uniform", {"bits": 16}, "bits must be"),
    ("uniform", {"scheme": "log"}, "scheme must be one of affine, symmetric, binary, ternary"),
    ("uniform", {"scheme": "binary", "bits": 4}, "leave bits out"),
    ("uniform", {"finetune": {"epochs": -2}}, "uniform: finetune: epochs must be"),
    ("uniform", {"qat_epochs": 2}, "uniform: qat_epochs is now finetune: {epochs: N}"),
    ("uniform", {"layers": []}, "layers is empty"),
])
def test_bad_configs_name_the_problem(technique: str, values: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        config_from_dict(technique, values)
    assert "\n" not in str(info.value)


def test_unknown_layers_and_missing_data_are_user_errors() -> None:
    with pytest.raises(ConfigError, match=r"'relu1' is a ReLU \(kmeans takes only Linear, Conv "
                                          r"and Embedding layers\); quantizable layers: fc1, "
                                          r"fc2, fc3"):
        apply_technique(_pruned(), config_from_dict("kmeans", {"bits": {"relu1": 4}}),
                        Context(progress=False))
    with pytest.raises(ConfigError, match="needs train data"):
        apply_technique(_pruned(), WeightSharingConfig(finetune=FinetuneConfig(epochs=1)),
                        Context(progress=False))
    with pytest.raises(ConfigError, match="needs train data"):
        apply_technique(_pruned(), UniformQuantConfig(finetune=FinetuneConfig()),
                        Context(progress=False))


def test_configs_from_cli_values() -> None:
    cfg = config_from_dict("kmeans", {"bits": {"conv1": 8, "fc1": 5}, "method": "optimal"})
    assert cfg.bits == {"conv1": 8, "fc1": 5} and cfg.method == "optimal"
    cfg = config_from_dict("uniform", {"bits": 4, "scheme": "symmetric", "per_channel": True,
                                       "layers": ["fc1", "fc2"],
                                       "finetune": {"epochs": 2, "lr": 1e-3}})
    assert cfg.layers == LayerSelector(names=("fc1", "fc2")) and cfg.per_channel
    assert cfg.finetune == FinetuneConfig(epochs=2, lr=1e-3)


# ============================================================================ CLI
def test_cli_lists_and_runs_kmeans(tmp_path: Path, data_root: Path) -> None:
    result = run_cli("techniques")
    assert_ok(result)
    listed = [line.split(":")[0].split(" (")[0] for line in result.stdout.splitlines()
              if line[:1].isalpha()]
    assert {"kmeans", "uniform"} <= set(listed)
    source = BENCH / "pruned" / "magnitude-lenet300-12x"
    out = tmp_path / "shared"
    result = run_cli("quantize", source, "--method", "kmeans", "--set", "bits=4",
                     "--no-progress", "-o", out)
    assert_ok(result)
    original = load_checkpoint(source).model
    shared = load_checkpoint(out).model
    for name, w in prunable_weights(shared).items():
        assert torch.equal(w == 0, prunable_weights(original)[name] == 0)
        assert _distinct_nonzero(w.detach()) == 16
    # the .mzip beside it holds the same weights
    packed = unpack((out / "model.mzip").read_bytes())
    for (k, a), b in zip(shared.state_dict().items(), packed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert_user_error(run_cli("quantize", source, "--method", "kmeans", "--set", "bits=9",
                              "--no-progress", "-o", tmp_path / "bad"), "bits")
    assert not (tmp_path / "bad").exists()
    # prune refuses a quantizer: its fine-tuning step would undo the sharing
    assert_user_error(run_cli("prune", source, "--method", "kmeans", "--no-progress",
                              "-o", tmp_path / "bad2"), "modelzip quantize")
    assert not (tmp_path / "bad2").exists()


def test_kmeans_float16_codebook_halves_the_codebook_bytes_and_unpacks_exactly() -> None:
    from modelzip.codec.artifact import summarize_artifact
    from modelzip.codec.model import pack

    torch.manual_seed(0)
    model = build_model("lenet300")
    with torch.no_grad():
        model.fc1.weight[:, ::2] = 0.0
    out = {}
    for dtype in ("float32", "float16"):
        shared = apply_technique(model, WeightSharingConfig(bits=4, codebook_dtype=dtype),
                                 Context(progress=False))
        values = shared.fc1.weight.detach()
        assert bool((values[:, ::2] == 0).all()) and bool((values[:, 1::2] != 0).all())
        if dtype == "float16":  # every shared value is a float16
            assert torch.equal(values.half().float(), values)
        blob = pack(shared)
        back = unpack(blob)
        assert all(torch.equal(back.state_dict()[k], v) for k, v in shared.state_dict().items())
        out[dtype] = {t["name"]: t for t in summarize_artifact(blob)["tensors"]}
    assert out["float16"]["fc1.weight"]["bytes"] == out["float32"]["fc1.weight"]["bytes"] - 32
    with pytest.raises(ConfigError, match="codebook_dtype"):
        WeightSharingConfig(codebook_dtype="bfloat16")
