"""Training and evaluation: learning, determinism, callbacks, extra loss, config checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modelzip.data import ImageDataset
from modelzip.errors import ConfigError, ShapeError
from modelzip.train import EvalResult, TrainConfig, evaluate, fit, predict_logits
from modelzip.zoo import build_model


@pytest.fixture(scope="module")
def train_2k(mnist_train: ImageDataset) -> ImageDataset:
    idx = torch.randperm(len(mnist_train), generator=torch.Generator().manual_seed(123))[:2000]
    return mnist_train.subset(idx.sort().values)


@pytest.fixture(scope="module")
def train_500(train_2k: ImageDataset) -> ImageDataset:
    return train_2k.subset(range(500))


@pytest.fixture(scope="module")
def test_1k(mnist_test: ImageDataset) -> ImageDataset:
    return mnist_test.subset(range(1000))


def _model(name: str = "lenet300", seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **kwargs)


FAST = TrainConfig(epochs=1, batch_size=64, lr=0.05)


def test_fit_learns(train_2k: ImageDataset, test_1k: ImageDataset) -> None:
    model = _model()
    before = evaluate(model, test_1k)
    assert before.error_pct > 70  # an untrained model guesses
    hist = fit(model, train_2k, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    assert [m["epoch"] for m in hist.epochs] == [1, 2]
    assert hist.epochs[1]["train_loss"] < hist.epochs[0]["train_loss"]
    assert hist.epochs[1]["train_acc_pct"] > hist.epochs[0]["train_acc_pct"]
    assert hist.wall_time_s >= 0
    after = evaluate(model, test_1k)
    assert after.loss < before.loss
    assert after.error_pct < 25  # "well under 90%"; 2,000 images reach about 10%
    assert not model.training


def test_fit_is_deterministic(train_500: ImageDataset) -> None:
    init = _model("lenet5", seed=3).state_dict()
    cfg = TrainConfig(epochs=1, batch_size=50, lr=0.05, augment="shift", seed=7)

    def run(config: TrainConfig) -> dict[str, torch.Tensor]:
        model = build_model("lenet5", dropout=0.2)
        model.load_state_dict(init)
        fit(model, train_500, config, progress=False)
        return model.state_dict()

    a, b = run(cfg), run(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], init["conv1.weight"])  # it did train
    c = run(TrainConfig(epochs=1, batch_size=50, lr=0.05, augment="shift", seed=8))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_step_callback_keeps_mask(train_500: ImageDataset) -> None:
    model = _model("lenet5")
    mask = (torch.rand(model.conv2.weight.shape, generator=torch.Generator().manual_seed(0))
            > 0.5).float()
    fc_mask = torch.ones_like(model.fc1.weight)
    fc_mask[:, :400] = 0
    steps: list[int] = []

    def apply_mask(m: nn.Module, step: int) -> None:
        steps.append(step)
        with torch.no_grad():
            m.conv2.weight.mul_(mask)
            m.fc1.weight.mul_(fc_mask)

    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    fit(model, train_500, cfg, step_callbacks=[apply_mask], progress=False)
    assert steps == list(range(1, 2 * math.ceil(500 / 64) + 1))
    assert torch.all(model.conv2.weight[mask == 0] == 0)
    assert torch.all(model.fc1.weight[:, :400] == 0)
    assert torch.count_nonzero(model.conv2.weight[mask == 1]) == int(mask.sum())
    assert torch.count_nonzero(model.fc1.weight[:, 400:]) > 0


def test_extra_loss_is_called_and_its_gradient_flows(train_500: ImageDataset) -> None:
    init = _model().state_dict()
    calls: list[tuple] = []

    def l2(m: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor
           ) -> torch.Tensor:
        calls.append((x.shape, logits.shape, y.shape, logits.requires_grad))
        return 1.0 * sum(p.pow(2).sum() for p in m.parameters())

    def weight_norm(extra) -> float:
        model = build_model("lenet300")
        model.load_state_dict(init)
        fit(model, train_500, FAST, extra_loss=extra, progress=False)
        return float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    plain = weight_norm(None)
    penalised = weight_norm(l2)
    assert len(calls) == math.ceil(500 / 64)
    assert calls[0] == ((64, 1, 28, 28), (64, 10), (64,), True)
    assert calls[-1][0][0] == 500 - 7 * 64
    assert penalised < 0.5 * plain


def test_epoch_callbacks_get_metrics(train_500: ImageDataset, test_1k: ImageDataset) -> None:
    model = _model()
    seen: list[tuple[int, dict]] = []
    val = test_1k.subset(range(300))
    hist = fit(model, train_500, TrainConfig(epochs=2, batch_size=100, lr=0.05),
               val_data=val, epoch_callbacks=[lambda m, e, metrics: seen.append((e, metrics))],
               progress=False)
    assert [e for e, _ in seen] == [1, 2]
    assert [m for _, m in seen] == hist.epochs
    for _, metrics in seen:
        assert {"epoch", "train_loss", "train_acc_pct", "lr", "epoch_time_s",
                "val_error_pct", "val_loss"} <= set(metrics)
        assert math.isfinite(metrics["train_loss"])
        assert 0 <= metrics["train_acc_pct"] <= 100
    final = evaluate(model, val)
    assert seen[-1][1]["val_error_pct"] == final.error_pct
    assert seen[-1][1]["val_loss"] == pytest.approx(final.loss)


def test_epoch_metrics_without_val(train_500: ImageDataset) -> None:
    hist = fit(_model(), train_500, FAST, progress=True)  # the progress bar path runs too
    assert "val_error_pct" not in hist.epochs[0]


@pytest.mark.parametrize(
    ("changes", "check_lr"),
    [
        ({"schedule": "constant", "lr": 0.01}, lambda lrs: lrs == [0.01, 0.01]),
        ({"schedule": "cosine", "warmup_epochs": 1.0},
         # 5 steps per epoch: the last step of epoch 2 is 4 of 5 steps past the warm-up
         lambda lrs: lrs[0] == pytest.approx(0.05)
         and lrs[1] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 0.8)))),
        ({"schedule": "onecycle"}, lambda lrs: lrs[1] < lrs[0] < 0.05),
        ({"optimizer": "adamw", "lr": 1e-3, "schedule": "constant", "label_smoothing": 0.1,
          "augment": "flips"}, lambda lrs: lrs == [1e-3, 1e-3]),
        ({"momentum": 0.0, "schedule": "onecycle"}, lambda lrs: lrs[1] < lrs[0] < 0.05),
    ],
    ids=["constant", "cosine-warmup", "onecycle", "adamw", "no-momentum"],
)
def test_optimizers_and_schedules(train_500: ImageDataset, changes: dict, check_lr) -> None:
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 100, "lr": 0.05, **changes})
    model = _model()
    hist = fit(model, train_500, cfg, progress=False)
    lrs = [m["lr"] for m in hist.epochs]
    assert check_lr(lrs), lrs
    assert all(math.isfinite(m["train_loss"]) for m in hist.epochs)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_model_ends_in_eval_mode_and_contiguous(train_500: ImageDataset) -> None:
    model = _model("lenet5").train()
    fit(model, train_500, TrainConfig(epochs=1, batch_size=100, channels_last=True),
        progress=False)
    assert not model.training
    for name, p in model.named_parameters():
        assert p.is_contiguous(), name
    assert not model.conv2.weight.is_contiguous(memory_format=torch.channels_last)


def test_model_restored_when_training_fails(train_500: ImageDataset) -> None:
    model = _model("lenet5")

    def fail(m: nn.Module, step: int) -> None:
        if step == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fit(model, train_500, FAST, step_callbacks=[fail], progress=False)
    assert not model.training
    assert all(p.is_contiguous() for p in model.parameters())


def test_fit_checks_input_shape(train_500: ImageDataset) -> None:
    model = build_model("eurosat_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ShapeError, match="3x64x64"):
        fit(model, train_500, FAST, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------- evaluation
def test_evaluate_matches_manual_count(train_500: ImageDataset, test_1k: ImageDataset) -> None:
    model = _model()
    fit(model, train_500, FAST, progress=False)
    data = test_1k.subset(range(777))
    result = evaluate(model, data, batch_size=100)  # a last, partial batch
    with torch.no_grad():
        logits = model(data.normalize(data.images))
    manual = int((logits.argmax(1) != data.labels).sum())
    assert isinstance(result, EvalResult)
    assert result.errors == manual
    assert result.total == 777
    assert result.error_pct == pytest.approx(100 * manual / 777)
    assert result.accuracy_pct == pytest.approx(100 - result.error_pct)
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(logits, data.labels)),
                                        rel=1e-5)
    assert 0 < manual < 777
    assert torch.allclose(predict_logits(model, data, batch_size=64), logits, atol=1e-5)
    d = result.to_dict()
    assert d["test_error_pct"] == result.error_pct
    assert d["errors"] == manual


def test_predict_restores_mode_and_checks_shape(test_1k: ImageDataset) -> None:
    model = _model("lenet5", dropout=0.5).train()
    data = test_1k.subset(range(50))
    a = predict_logits(model, data)
    b = predict_logits(model, data)
    assert torch.equal(a, b)  # eval mode: dropout off
    assert model.training
    with pytest.raises(ShapeError):
        evaluate(build_model("resconcat", in_channels=3), data)


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0), ("batch_size", 0), ("optimizer", "adam"), ("lr", 0.0), ("lr", -1.0),
        ("lr", float("nan")), ("momentum", 1.0), ("momentum", -0.1), ("weight_decay", -1e-4),
        ("schedule", "step"), ("label_smoothing", 1.0), ("label_smoothing", -0.1),
        ("augment", "rotate"), ("warmup_epochs", -1.0),
    ],
)
def test_train_config_rejects(field: str, value) -> None:
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        TrainConfig(**{field: value})


def test_train_config_defaults() -> None:
    cfg = TrainConfig()
    d = cfg.to_dict()
    assert d["epochs"] == 10
    assert d["optimizer"] == "sgd"
    assert TrainConfig(**d) == cfg
