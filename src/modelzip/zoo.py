"""Reference models, each built by name plus keyword arguments.

``build_model(name, **kwargs)`` returns an ``nn.Module`` carrying a ``modelzip_spec``
(name, arguments, input shape) so that checkpoints and artifacts can rebuild it. A model
whose layers were resized (structured pruning) is rebuilt from the same name and arguments
plus its recorded layer shapes (see ``layer_shapes`` / ``apply_layer_shapes``).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelzip.errors import CheckpointError, ShapeError, UnknownModelError

__all__ = [
    "ModelSpec",
    "apply_layer_shapes",
    "build_model",
    "check_input_shape",
    "layer_shapes",
    "list_models",
    "model_kwargs_for_data",
    "register_model",
]


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: zoo name, its keyword arguments, and its input shape."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = ()


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], Callable[..., tuple[int, ...]]]] = {}


def register_model(name: str, input_shape: Callable[..., tuple[int, ...]]):
    """Register a model factory under ``name``; ``input_shape(**kwargs)`` gives (C, H, W)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = (factory, input_shape)
        return factory

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, *, layer_shapes: dict[str, dict[str, Any]] | None = None,
                **kwargs: Any) -> nn.Module:
    """Build a zoo model by name. ``layer_shapes`` (from a checkpoint) resizes layers that
    structured pruning made smaller."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    factory, shape_fn = _REGISTRY[name]
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UnknownModelError(f"model {name!r} does not take these arguments: {exc}") from None
    if layer_shapes:
        apply_layer_shapes(model, layer_shapes)
    model.modelzip_spec = ModelSpec(name, dict(kwargs), tuple(shape_fn(**kwargs)))
    return model


def model_kwargs_for_data(name: str, data: Any) -> dict[str, Any]:
    """Arguments that fit a model to a dataset's classes and input shape, for the factory
    parameters it has (``num_classes``, ``in_channels``, ``image_size``)."""
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    params = inspect.signature(_REGISTRY[name][0]).parameters
    c, h, w = data.input_shape
    kwargs: dict[str, Any] = {}
    if "num_classes" in params and data.num_classes != 10:
        kwargs["num_classes"] = data.num_classes
    if "in_channels" in params and c != params["in_channels"].default:
        kwargs["in_channels"] = c
    if "image_size" in params and h == w and h != params["image_size"].default:
        kwargs["image_size"] = h
    return kwargs


def model_spec(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "modelzip_spec", None)
    if not isinstance(spec, ModelSpec):
        raise CheckpointError("this model was not built by modelzip.zoo.build_model, so it "
                              "cannot be rebuilt by name; build it with build_model")
    return spec


def check_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Raise ShapeError when a per-sample input shape (C, H, W) does not fit the model."""
    spec = getattr(model, "modelzip_spec", None)
    if isinstance(spec, ModelSpec) and spec.input_shape and tuple(shape) != spec.input_shape:
        raise ShapeError(f"model {spec.name} expects inputs of shape "
                         f"{'x'.join(map(str, spec.input_shape))} (CxHxW), got "
                         f"{'x'.join(map(str, shape))}")


# ---------------------------------------------------------------------------- layer shapes
def _describe(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels,
                "out_channels": module.out_channels, "kernel_size": list(module.kernel_size),
                "stride": list(module.stride), "padding": list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups,
                "bias": module.bias is not None}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features,
                "out_features": module.out_features, "bias": module.bias is not None}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"type": type(module).__name__, "num_features": module.num_features,
                "eps": module.eps, "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    return None


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The constructor arguments of every Conv2d, Linear and BatchNorm layer, by name."""
    out = {}
    for name, module in model.named_modules():
        desc = _describe(module)
        if desc is not None:
            out[name] = desc
    return out


def _construct(desc: dict[str, Any]) -> nn.Module:
    kind = desc.get("type")
    if kind == "Conv2d":
        return nn.Conv2d(desc["in_channels"], desc["out_channels"], tuple(desc["kernel_size"]),
                         stride=tuple(desc["stride"]), padding=tuple(desc["padding"]),
                         dilation=tuple(desc["dilation"]), groups=desc["groups"],
                         bias=desc["bias"])
    if kind == "Linear":
        return nn.Linear(desc["in_features"], desc["out_features"], bias=desc["bias"])
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        cls = nn.BatchNorm1d if kind == "BatchNorm1d" else nn.BatchNorm2d
        return cls(desc["num_features"], eps=desc["eps"], momentum=desc["momentum"],
                   affine=desc["affine"], track_running_stats=desc["track_running_stats"])
    raise CheckpointError(f"cannot rebuild a layer of type {kind!r}")


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> None:
    """Replace every layer whose recorded shape differs from the freshly built one."""
    modules = dict(model.named_modules())
    for name, desc in shapes.items():
        if name not in modules:
            raise CheckpointError(f"recorded layer {name!r} does not exist in this model")
        current = _describe(modules[name])
        if current == desc:
            continue
        if current is None or current["type"] != desc.get("type"):
            raise CheckpointError(f"layer {name!r} is a {type(modules[name]).__name__} here but "
                                  f"a {desc.get('type')} in the recorded shapes")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _construct(desc))


# ---------------------------------------------------------------------------- models
@register_model("lenet300", input_shape=lambda **_: (1, 28, 28))
def lenet300(num_classes: int = 10, dropout: float = 0.0,
             hidden: tuple[int, ...] | list[int] = (300, 100)) -> nn.Module:
    """LeNet-300-100: 784-300-100-10 fully connected with ReLU (266,610 parameters).
    ``hidden``: other hidden widths, e.g. (1200, 1200) or (800, 800) for Hinton et al.'s
    distillation nets (layers fc1, relu1, drop1, ..., then the output layer)."""
    widths = [784, *(int(h) for h in hidden)]
    if len(widths) < 2 or min(widths) < 1:
        raise TypeError(f"hidden must be one or more positive widths, got {hidden!r}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(1, len(widths)):
        layers += [(f"fc{i}", nn.Linear(widths[i - 1], widths[i])), (f"relu{i}", nn.ReLU()),
                   (f"drop{i}", nn.Dropout(dropout))]
    layers.append((f"fc{len(widths)}", nn.Linear(widths[-1], num_classes)))
    return nn.Sequential(OrderedDict(layers))


class LeNet5(nn.Module):
    """The Caffe LeNet used by Han et al.: conv 20@5x5, max-pool, conv 50@5x5, max-pool,
    fc 500, ReLU, fc 10 (no activation after the convolutions; 431,080 parameters)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(800, 500)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.dropout(self.relu(self.fc1(self.flatten(x)))))


@register_model("lenet5", input_shape=lambda **_: (1, 28, 28))
def lenet5(num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    return LeNet5(num_classes, dropout)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EuroSATCNN(nn.Module):
    """A small VGG-style CNN for 64x64 RGB tiles: four conv-BN-ReLU stages with max-pooling
    (64 -> 32 -> 16 -> 8), a second conv at 8x8, global average pooling, one Linear. Sized to
    train to >= 95% EuroSAT test accuracy on 2 CPU cores in under 15 minutes."""

    def __init__(self, num_classes: int = 10, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn_relu(3, w), nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn_relu(4 * w, 8 * w),
            _conv_bn_relu(8 * w, 8 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


@register_model("eurosat_cnn", input_shape=lambda **_: (3, 64, 64))
def eurosat_cnn(num_classes: int = 10, width: int = 16, dropout: float = 0.1) -> nn.Module:
    return EuroSATCNN(num_classes, width, dropout)


class EuroSATThin(nn.Module):
    """A thin, deeper student for ``eurosat_cnn`` (FitNets, Romero et al. 2015): eight
    conv-BN-ReLU layers of at most 48 channels (eurosat_cnn: five, up to 128) in four stages at
    64, 32, 16 and 8 pixels, a third of its MACs. ``features.6`` ends the 16-pixel stage, as
    eurosat_cnn's ``features.4`` does: a natural guided / hint layer pair."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 8), nn.MaxPool2d(2),
            _conv_bn_relu(8, 12), _conv_bn_relu(12, 12), nn.MaxPool2d(2),
            _conv_bn_relu(12, 24), _conv_bn_relu(24, 24), nn.MaxPool2d(2),
            _conv_bn_relu(24, 48), _conv_bn_relu(48, 48), _conv_bn_relu(48, 48),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


@register_model("eurosat_thin", input_shape=lambda **_: (3, 64, 64))
def eurosat_thin(num_classes: int = 10, dropout: float = 0.1) -> nn.Module:
    return EuroSATThin(num_classes, dropout)


class ResConcatNet(nn.Module):
    """A small network with the graph cases structured pruning must handle: a residual
    addition, a channel concatenation of two branches, and a depthwise (grouped) conv."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn_relu(in_channels, w)
        # residual block: the two ends of the addition must keep the same channels
        self.res_conv1 = _conv_bn_relu(w, w)
        self.res_conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.res_bn2 = nn.BatchNorm2d(w)
        self.pool = nn.MaxPool2d(2)
        # concat block: the consumer sees branch_a's channels followed by branch_b's
        self.branch_a = _conv_bn_relu(w, w, k=1)
        self.branch_b = _conv_bn_relu(w, w, k=3)
        # depthwise + pointwise on the concatenation
        self.depthwise = _conv_bn_relu(2 * w, 2 * w, k=3, groups=2 * w)
        self.pointwise = _conv_bn_relu(2 * w, 2 * w, k=1)
        self.head_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res_bn2(self.res_conv2(self.res_conv1(x))))
        x = self.pool(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pointwise(self.depthwise(x))
        return self.classifier(self.flatten(self.head_pool(x)))


@register_model("resconcat",
                input_shape=lambda in_channels=1, image_size=28, **_: (in_channels, image_size,
                                                                        image_size))
def resconcat(in_channels: int = 1, num_classes: int = 10, width: int = 16,
              image_size: int = 28) -> nn.Module:
    """``image_size`` only sets the recorded input shape; the network is fully convolutional."""
    return ResConcatNet(in_channels, num_classes, width)
