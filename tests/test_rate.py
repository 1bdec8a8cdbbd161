"""The ``sparse-vd`` technique (sparse variational dropout): the KL approximation, pruning by
log alpha, plain Linear/Conv2d layers with exact zeros and masks afterwards, earlier pruning
kept, and bad configs refused with one clear error. Tiny synthetic data, no real dataset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.data import ImageDataset
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.quant import WeightSharingConfig
from modelzip.rate import SparseVDConfig, kl_approx, log_alpha
from modelzip.rate.dead_units import zero_dead_biases
from modelzip.registry import Context, apply, config_from_dict, list_techniques
from modelzip.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 256, seed: int = 0) -> ImageDataset:
    """8x8 one-channel images whose class (of 2) is which half is brighter."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    for i, y in enumerate(labels.tolist()):
        images[i, 0, :, y * 4:(y + 1) * 4] += 150
    return ImageDataset(images, labels, name="halves", split="train", classes=("l", "r"),
                        mean=(0.4,), std=(0.3,))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * 6 * 6, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(self.conv(x)))))


def _ctx(data: ImageDataset) -> Context:
    return Context(train_data=data, val_data=_data(64, seed=1), progress=False)


def test_kl_approx_falls_as_alpha_grows_and_vanishes_at_large_alpha() -> None:
    la = torch.linspace(-6, 7.9, 50)
    per_weight = torch.stack([kl_approx(v.reshape(1)) for v in la])
    assert bool((per_weight[1:] < per_weight[:-1]).all())
    assert float(kl_approx(torch.tensor([8.0]))) == pytest.approx(0.0, abs=5e-3)
    assert float(kl_approx(torch.tensor([-6.0]))) > 2.0


def test_log_alpha_is_the_variance_over_the_squared_mean_clamped() -> None:
    theta = torch.tensor([1.0, 0.1, 1e-6])
    la = log_alpha(theta, torch.log(torch.tensor([1.0, 1.0, 1.0])))
    assert la[0] == pytest.approx(0.0, abs=1e-6)
    assert la[1] == pytest.approx(float(torch.log(torch.tensor(100.0))), rel=1e-5)
    assert la[2] == 8.0  # clamped


def _trained() -> nn.Module:
    torch.manual_seed(0)
    model = _Tiny()
    fit(model, _data(), TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=0), progress=False)
    return model


def test_sparse_vd_prunes_by_the_kl_term_and_leaves_plain_layers_with_masks() -> None:
    model = _trained()
    keys = list(model.state_dict())
    before = model.fc1.weight.detach().clone()
    tune = FinetuneConfig(epochs=3, lr=0.05, batch_size=32)
    no_prior = Context(train_data=_data(), progress=False)
    dense = apply(model, SparseVDConfig(finetune=tune, kl_weight=0.0), no_prior)
    assert no_prior.records[-1]["kept"] > 0.9 * no_prior.records[-1]["params"]
    ctx = _ctx(_data())
    out = apply(model, SparseVDConfig(finetune=tune, init_log_sigma2=-8.0), ctx)
    assert type(out.conv) is nn.Conv2d and type(out.fc1) is nn.Linear
    assert type(dense.fc2) is nn.Linear
    assert list(out.state_dict()) == keys
    record = ctx.records[-1]
    assert record["step"] == "sparse-vd"
    for name in ("conv", "fc1", "fc2"):
        w = out.get_submodule(name).weight.detach()
        mask = ctx.masks[f"{name}.weight"]
        assert torch.equal(mask, w != 0)
        assert not bool(torch.signbit(w[w == 0]).any())  # +0.0, no sign bits to store
    assert record["kept"] < 0.2 * record["params"]
    assert record["kept"] == sum(int((out.get_submodule(n).weight != 0).sum())
                                 for n in ("conv", "fc1", "fc2"))
    assert record["val_error_pct"] < 10.0  # the easy task is still solved
    assert torch.equal(model.fc1.weight.detach(), before)  # the caller's model is untouched


def test_sparse_vd_keeps_earlier_pruning_and_then_kmeans_keeps_its_zeros() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        model.fc1.weight[:, :40] = 0.0
    ctx = _ctx(_data())
    config = config_from_dict("sparse-vd", {"finetune": {"epochs": 1, "lr": 0.01},
                                            "layers": ["fc1"]})
    out = apply(model, config, ctx)
    assert bool((out.fc1.weight[:, :40] == 0).all())
    assert set(ctx.masks) == {"fc1.weight"}
    shared = apply(out, WeightSharingConfig(bits=2), ctx)
    w = shared.fc1.weight.detach()
    assert bool((w[:, :40] == 0).all())
    assert torch.equal(w != 0, ctx.masks["fc1.weight"])
    assert len(torch.unique(w[w != 0])) <= 4


def test_sparse_vd_is_registered_and_refuses_bad_configs() -> None:
    assert "sparse-vd" in list_techniques("prune")
    bad = [({"threshold": 9.0}, "threshold"), ({"kl_weight": -1}, "kl_weight"),
           ({"finetune": {"epochs": 0}}, "epochs must be >= 1"),
           ({"train_size": 0}, "train_size"), ({"layers": []}, "layers is empty"),
           ({"kl_warmup_epochs": "2"}, "kl_warmup_epochs"), ({"epochs": 3}, "unknown option")]
    for values, words in bad:
        with pytest.raises(ConfigError, match=words):
            config_from_dict("sparse-vd", values)


def test_sparse_vd_needs_training_data_and_known_layers() -> None:
    with pytest.raises(ConfigError, match="train data"):
        apply(_Tiny(), SparseVDConfig(), Context(progress=False))
    with pytest.raises(ConfigError, match="nope"):
        apply(_Tiny(), SparseVDConfig(layers=["nope"]), _ctx(_data(32)))


def test_dead_unit_biases_are_zeroed_only_where_no_weight_reads_them() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        model.fc2.weight[:, :10] = 0.0  # fc1 units 0-9 are read by nothing
        model.fc1.weight.view(32, 4, 36)[:, 1] = 0.0  # conv channel 1 is read by nothing
    before = model(x)
    zeroed = zero_dead_biases(model, x)
    assert zeroed == {"conv": 1, "fc1": 10}
    assert bool((model.fc1.bias[:10] == 0).all()) and bool((model.fc1.bias[10:] != 0).all())
    assert float(model.conv.bias.detach()[1]) == 0.0 and int((model.conv.bias == 0).sum()) == 1
    assert torch.equal(model(x), before)


def test_dead_unit_biases_stay_when_something_else_reads_the_unit() -> None:
    class Skip(_Tiny):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.relu(self.fc1(self.flatten(self.conv(x))))
            return self.fc2(h) + h[:, :2]  # units 0 and 1 reach the output another way

    torch.manual_seed(0)
    model = Skip()
    with torch.no_grad():
        model.fc2.weight[:, :4] = 0.0
    saved = model.fc1.bias.detach().clone()
    assert zero_dead_biases(model, torch.randn(5, 1, 8, 8)) == {}
    assert torch.equal(model.fc1.bias, saved)
