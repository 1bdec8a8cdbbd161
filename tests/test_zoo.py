"""The model zoo: parameter counts, forward shapes, specs, layer shapes of resized models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modelzip.errors import CheckpointError, ShapeError, UnknownModelError
from modelzip.zoo import (
    ModelSpec,
    apply_layer_shapes,
    build_model,
    check_input_shape,
    layer_shapes,
    list_models,
    model_spec,
    register_model,
)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models() -> None:
    assert list_models() == ["eurosat_cnn", "eurosat_thin", "lenet300", "lenet5", "resconcat"]


@pytest.mark.parametrize(("name", "expected"), [("lenet300", 266610), ("lenet5", 431080)])
def test_parameter_counts(name: str, expected: int) -> None:
    assert _n_params(build_model(name)) == expected


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape"),
    [
        ("lenet300", {}, (1, 28, 28)),
        ("lenet5", {}, (1, 28, 28)),
        ("eurosat_cnn", {}, (3, 64, 64)),
        ("eurosat_cnn", {"width": 8}, (3, 64, 64)),
        ("resconcat", {}, (1, 28, 28)),
        ("resconcat", {"in_channels": 3, "image_size": 64}, (3, 64, 64)),
    ],
)
def test_forward_shapes_and_spec(name: str, kwargs: dict, input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    spec = model_spec(model)
    assert spec == ModelSpec(name, kwargs, input_shape)
    with torch.no_grad():
        out = model(torch.randn(3, *input_shape))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    check_input_shape(model, input_shape)  # no error


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "eurosat_cnn", "resconcat"])
def test_num_classes(name: str) -> None:
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *model_spec(model).input_shape))
    assert out.shape == (2, 7)
    assert model_spec(model).kwargs == {"num_classes": 7}


def test_smaller_width_has_fewer_parameters() -> None:
    assert _n_params(build_model("eurosat_cnn", width=8)) < _n_params(build_model("eurosat_cnn"))


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'resnet50'") as info:
        build_model("resnet50")
    for name in list_models():
        assert name in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(UnknownModelError, match=r"lenet5.*does not take"):
        build_model("lenet5", depth=3)


def test_register_twice_rejected() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_model("lenet5", input_shape=lambda **_: (1, 28, 28))(lambda: nn.Identity())


def test_model_spec_requires_zoo_model() -> None:
    with pytest.raises(CheckpointError, match="build_model"):
        model_spec(nn.Linear(2, 2))


def test_check_input_shape() -> None:
    model = build_model("lenet5")
    with pytest.raises(ShapeError) as info:
        check_input_shape(model, (3, 64, 64))
    msg = str(info.value)
    assert "lenet5" in msg
    assert "1x28x28" in msg
    assert "3x64x64" in msg
    rc = build_model("resconcat", in_channels=3, image_size=64)
    check_input_shape(rc, (3, 64, 64))
    with pytest.raises(ShapeError, match="3x64x64"):
        check_input_shape(rc, (1, 28, 28))
    check_input_shape(nn.Linear(2, 2), (9, 9, 9))  # models not from the zoo are not checked


# ---------------------------------------------------------------------------- layer shapes
def test_layer_shapes_describe_layers() -> None:
    shapes = layer_shapes(build_model("lenet5"))
    assert list(shapes) == ["conv1", "conv2", "fc1", "fc2"]
    assert shapes["conv2"] == {"type": "Conv2d", "in_channels": 20, "out_channels": 50,
                               "kernel_size": [5, 5], "stride": [1, 1], "padding": [0, 0],
                               "dilation": [1, 1], "groups": 1, "bias": True}
    assert shapes["fc1"] == {"type": "Linear", "in_features": 800, "out_features": 500,
                             "bias": True}
    bn_shapes = layer_shapes(build_model("eurosat_cnn"))
    assert bn_shapes["features.0.1"]["type"] == "BatchNorm2d"
    assert bn_shapes["features.0.1"]["num_features"] == 16
    assert bn_shapes["features.0.0"]["bias"] is False
    depthwise = layer_shapes(build_model("resconcat"))["depthwise.0"]
    assert depthwise["groups"] == 32


def test_apply_unchanged_shapes_keeps_modules() -> None:
    model = build_model("resconcat")
    before = dict(model.named_modules())
    apply_layer_shapes(model, json.loads(json.dumps(layer_shapes(model))))
    after = dict(model.named_modules())
    assert all(after[name] is module for name, module in before.items())


def _shrink_lenet5(model: nn.Module) -> nn.Module:
    """Keep the first 30 of conv2's 50 channels and the first 200 of fc1's 500 units."""
    keep_c, keep_u = 30, 200
    conv2 = nn.Conv2d(20, keep_c, 5)
    fc1 = nn.Linear(keep_c * 16, keep_u)
    fc2 = nn.Linear(keep_u, 10)
    with torch.no_grad():
        conv2.weight.copy_(model.conv2.weight[:keep_c])
        conv2.bias.copy_(model.conv2.bias[:keep_c])
        # fc1's inputs are the flattened (channel, 4, 4) maps: keep the first 30 channels
        w = model.fc1.weight.view(500, 50, 16)[:keep_u, :keep_c].reshape(keep_u, keep_c * 16)
        fc1.weight.copy_(w)
        fc1.bias.copy_(model.fc1.bias[:keep_u])
        fc2.weight.copy_(model.fc2.weight[:, :keep_u])
        fc2.bias.copy_(model.fc2.bias)
    model.conv2, model.fc1, model.fc2 = conv2, fc1, fc2
    return model


def test_rebuild_shrunk_lenet5() -> None:
    torch.manual_seed(0)
    small = _shrink_lenet5(build_model("lenet5")).eval()
    shapes = json.loads(json.dumps(layer_shapes(small)))  # as stored in a checkpoint
    assert shapes["conv2"]["out_channels"] == 30
    assert shapes["fc1"]["in_features"] == 480
    rebuilt = build_model("lenet5", layer_shapes=shapes).eval()
    assert layer_shapes(rebuilt) == shapes
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()}
    assert _n_params(rebuilt) == _n_params(small) < 431080
    assert model_spec(rebuilt) == ModelSpec("lenet5", {}, (1, 28, 28))
    rebuilt.load_state_dict(small.state_dict())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))


def test_rebuild_shrunk_eurosat_cnn_with_batchnorm() -> None:
    model = build_model("eurosat_cnn", width=8).eval()
    # first stage 8 -> 5 channels: its conv, its BatchNorm and the next conv's inputs
    model.features[0][0] = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    model.features[0][1] = nn.BatchNorm2d(5)
    model.features[2][0] = nn.Conv2d(5, 16, 3, padding=1, bias=False)
    shapes = layer_shapes(model)
    rebuilt = build_model("eurosat_cnn", width=8, layer_shapes=shapes).eval()
    assert layer_shapes(rebuilt) == shapes
    assert rebuilt.features[0][1].num_features == 5
    with torch.no_grad():
        assert rebuilt(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_apply_layer_shapes_errors() -> None:
    shapes = layer_shapes(build_model("lenet5"))
    model = build_model("lenet300")
    with pytest.raises(CheckpointError, match="'conv1' does not exist"):
        apply_layer_shapes(model, shapes)
    wrong_type = {"fc1": {"type": "Conv2d", "in_channels": 1, "out_channels": 2,
                          "kernel_size": [1, 1], "stride": [1, 1], "padding": [0, 0],
                          "dilation": [1, 1], "groups": 1, "bias": True}}
    with pytest.raises(CheckpointError, match="'fc1' is a Linear here but a Conv2d"):
        apply_layer_shapes(model, wrong_type)
