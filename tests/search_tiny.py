"""A tiny trained classifier on synthetic 8x8 images, for the search tests (and for the
search-worker processes they start, which rebuild it from ``make``)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from modelzip.data import ImageDataset
from modelzip.pipeline import make_context
from modelzip.train import TrainConfig, fit


def synthetic(n: int, seed: int, split: str) -> ImageDataset:
    """Four classes: a bright quadrant on noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.randint(0, 90, (n, 1, 8, 8), generator=g)
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 2)
        images[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 120
    return ImageDataset(images.to(torch.uint8), labels, name="synthetic", split=split,
                        classes=["a", "b", "c", "d"], mean=[0.4], std=[0.2])


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 4))


@functools.cache
def _trained() -> dict[str, torch.Tensor]:
    model = tiny_model()
    fit(model, synthetic(600, 1, "train"), TrainConfig(epochs=3, lr=0.05, batch_size=64),
        progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def make() -> tuple[nn.Module, object]:
    """(trained model, context with training, validation and test data)."""
    torch.set_num_threads(1)
    model = tiny_model()
    model.load_state_dict(_trained())
    ctx = make_context(data=synthetic(600, 1, "train"), test_data=synthetic(200, 2, "test"),
                       finetune=TrainConfig(epochs=1, lr=0.01, batch_size=64),
                       progress=False)
    return model.eval(), ctx
