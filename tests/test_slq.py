"""The ``slq`` and ``mlq`` techniques (Xu et al. 2018): the loss-based partition, at most
2^bits shared values per layer, zeros kept, the order in which clusters and layers are
fixed, retraining between rounds, and bad configs refused. Tiny synthetic data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.data import ImageDataset
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.quant.slq import MLQConfig, SLQConfig, cluster_losses, partition_clusters
from modelzip.registry import Context, apply, config_from_dict, list_techniques

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 128, seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = torch.randint(0, 60, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        images[i, 0, :, y * 3:(y + 1) * 3] += 150
    return ImageDataset(images, labels, name="halves", split="train", classes=("l", "r"),
                        mean=(0.4,), std=(0.3,))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 2))


def _distinct_nonzero(w: torch.Tensor) -> int:
    return len(torch.unique(w[w != 0]))


def test_cluster_losses_and_partition_pick_the_lowest_loss_clusters() -> None:
    values = torch.tensor([0.0, 0.1, 1.0, 1.0, 5.0, 7.0])
    centroids = torch.tensor([0.05, 1.0, 6.0])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    losses = cluster_losses(values, centroids, labels)
    assert losses.tolist() == pytest.approx([0.005, 0.0, 2.0])
    assert partition_clusters(losses, 2).tolist() == [True, True, False]
    assert partition_clusters(losses, 1).tolist() == [False, True, False]


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_slq_leaves_at_most_2_to_the_bits_values_and_keeps_zeros(bits: int) -> None:
    model = _mlp()
    with torch.no_grad():
        model[1].weight[:, :10] = 0.0
    ctx = Context(progress=False)
    out = apply(model, SLQConfig(bits=bits, finetune=FinetuneConfig(epochs=0)), ctx)
    for layer in (out[1], out[3]):
        assert 1 <= _distinct_nonzero(layer.weight.detach()) <= 2**bits
    assert bool((out[1].weight[:, :10] == 0).all())
    assert int((out[1].weight[:, 10:] == 0).sum()) == 0  # no kept weight became a zero
    assert torch.equal(ctx.masks["1.weight"], out[1].weight != 0)
    assert ctx.records[-1]["step"] == "slq"


def test_slq_rounds_fix_clusters_incrementally_and_retrain_the_rest() -> None:
    model = _mlp()
    data = _data()
    ctx = Context(train_data=data, val_data=_data(64, seed=1), progress=False)
    tune = FinetuneConfig(epochs=1, lr=0.01, batch_size=32)
    out = apply(model, SLQConfig(bits=3, portion=0.5, finetune=tune), ctx)
    rounds = ctx.records[-1]["rounds"]
    # 8 shared values: 4 fixed, then 2, then 1, then the last one
    assert [r["fixed_clusters"]["1"] for r in rounds] == [4, 2, 1, 1]
    assert rounds[-1]["float_weights_left"] == 0
    assert all("val_error_pct" in r for r in rounds[:-1])
    assert _distinct_nonzero(out[1].weight.detach()) <= 8
    # retraining moved the weights that were still float: not plain k-means of the input
    plain = apply(model, SLQConfig(bits=3, portion=1.0), Context(progress=False))
    assert not torch.equal(out[1].weight, plain[1].weight)


def test_mlq_goes_layer_by_layer_and_retrains_the_later_layers() -> None:
    model = _mlp()
    ctx = Context(train_data=_data(), progress=False)
    out = apply(model, MLQConfig(bits=2, order="largest",
                                 finetune=FinetuneConfig(epochs=1, lr=0.01, batch_size=32)), ctx)
    rounds = ctx.records[-1]["rounds"]
    layers_in_order = [next(iter(r["fixed_clusters"])) for r in rounds]
    # the larger layer first (2 + 1 + 1 clusters), then the smaller one
    assert layers_in_order == ["1", "1", "1", "3", "3", "3"]
    for layer in (out[1], out[3]):
        assert _distinct_nonzero(layer.weight.detach()) <= 4
    # while layer 1 was quantized, layer 3 was trained as a float layer
    assert not torch.equal(out[3].weight.detach(), model[3].weight.detach())


def test_slq_and_mlq_are_registered_and_refuse_bad_configs() -> None:
    assert {"slq", "mlq"} <= set(list_techniques("quantize"))
    bad = [("slq", {"bits": 0}, "bits must be an integer from 1 to 8"),
           ("slq", {"bits": 9}, "from 1 to 8"), ("mlq", {"bits": {"fc": 12}}, "of layer 'fc'"),
           ("slq", {"portion": 0}, "portion"), ("mlq", {"portion": 1.5}, "portion"),
           ("mlq", {"order": "random"}, "order must be one of"),
           ("slq", {"init": "zeros"}, "init must be one of"), ("slq", {"rounds": 3}, "unknown")]
    for name, values, words in bad:
        with pytest.raises(ConfigError, match=words):
            config_from_dict(name, values)


def test_slq_retraining_needs_training_data() -> None:
    with pytest.raises(ConfigError, match="train data"):
        apply(_mlp(), SLQConfig(bits=2), Context(progress=False))



def test_the_cli_lists_the_new_techniques() -> None:
    from tests.test_cli import assert_ok, run_cli

    listed = run_cli("techniques")
    assert_ok(listed)
    for name in ("slq", "mlq", "sparse-vd"):
        assert name in listed.stdout


def test_bias_bits_share_the_non_zero_biases_and_keep_zero_biases() -> None:
    model = _mlp()
    with torch.no_grad():
        model[1].bias[:5] = 0.0
    ctx = Context(progress=False)
    out = apply(model, SLQConfig(bits=2, portion=1.0, bias_bits=2), ctx)
    assert bool((out[1].bias[:5] == 0).all()) and bool((out[1].bias[5:] != 0).all())
    assert _distinct_nonzero(out[1].bias.detach()) <= 4
    assert ctx.records[-1]["bias_values"]["1"] <= 4
    with pytest.raises(ConfigError, match="bias_bits"):
        config_from_dict("mlq", {"bias_bits": 0})


def test_bias_grid_puts_the_biases_on_a_grid_that_the_file_stores_without_a_codebook() -> None:
    from modelzip.codec.artifact import summarize_artifact
    from modelzip.codec.model import pack, unpack

    def shared(config: SLQConfig) -> nn.Module:
        model = _mlp()
        with torch.no_grad():
            model[1].bias[:5] = 0.0
        return apply(model, config, Context(progress=False))

    kmeans_model = shared(SLQConfig(bits=2, portion=1.0, bias_bits=5))
    grid_model = shared(SLQConfig(bits=2, portion=1.0, bias_bits=5, bias_grid=True))
    bias = grid_model[1].bias.detach()
    assert bool((bias[:5] == 0).all())
    step = (bias.max().clamp(min=0) - bias.min().clamp(max=0)) / 31
    codes = bias / step
    assert torch.allclose(codes - codes.round(), torch.zeros_like(codes), atol=1e-3)
    assert _distinct_nonzero(bias) <= 32
    sizes = {}
    for label, model in (("kmeans", kmeans_model), ("grid", grid_model)):
        blob = pack(model)
        back = unpack(blob, model=_mlp())
        for key, value in model.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key
        sizes[label] = {t["name"]: t for t in summarize_artifact(blob)["tensors"]}
    assert sizes["grid"]["1.bias"]["bytes"] < sizes["kmeans"]["1.bias"]["bytes"]
    with pytest.raises(ConfigError, match="bias_grid needs bias_bits"):
        config_from_dict("slq", {"bias_grid": True})
    with pytest.raises(ConfigError, match="bias_grid must be true or false"):
        config_from_dict("mlq", {"bias_bits": 4, "bias_grid": "yes"})
