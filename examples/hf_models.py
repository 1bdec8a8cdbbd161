"""Standard architectures from ``transformers`` configs, randomly initialised (nothing is
downloaded), at small widths so that tests stay fast.

Each image builder returns a small ``nn.Module`` whose ``forward(pixel_values)`` returns the
logits tensor; ``bert_encoder`` returns one whose ``forward(input_ids, attention_mask)``
returns the mean of the last hidden states over the unmasked tokens (a sentence embedding).
``example_inputs(name)`` gives a matching batch: a tensor for the image models, a dict of
keyword tensors for BERT. Attention runs the "eager" implementation: plain matmul/softmax
that a graph tracer can follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "BUILDERS",
    "BertEmbedder",
    "ImageClassifier",
    "bert_encoder",
    "convnext",
    "example_inputs",
    "mobilenet_v2",
    "resnet18",
    "vit",
]

IMAGE_SIZE = 32
SEQ_LEN = 12
VOCAB_SIZE = 100


class ImageClassifier(nn.Module):
    """A ``*ForImageClassification`` model reduced to ``pixel_values -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class BertEmbedder(nn.Module):
    """A BERT encoder as a sentence embedder: the mean of the last hidden states over the
    tokens where ``attention_mask`` is 1."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def resnet18(num_classes: int = 10, width: int = 8, image_size: int = IMAGE_SIZE) -> nn.Module:
    """ResNet-18 layout (basic blocks, depths 2-2-2-2) with stage widths ``width`` x 1-2-4-8."""
    from transformers import ResNetConfig, ResNetForImageClassification

    del image_size  # any size works; kept so that every image builder takes it
    config = ResNetConfig(num_labels=num_classes, embedding_size=width, layer_type="basic",
                          hidden_sizes=[width, 2 * width, 4 * width, 8 * width],
                          depths=[2, 2, 2, 2])
    return ImageClassifier(ResNetForImageClassification(config))


def mobilenet_v2(num_classes: int = 10, depth_multiplier: float = 0.25,
                 image_size: int = IMAGE_SIZE) -> nn.Module:
    """MobileNetV2 (inverted residuals with depthwise convs) at ``depth_multiplier``."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(num_labels=num_classes, depth_multiplier=depth_multiplier,
                               depth_divisible_by=4, min_depth=4, expand_ratio=4.0,
                               finegrained_output=False, image_size=image_size)
    return ImageClassifier(MobileNetV2ForImageClassification(config))


def convnext(num_classes: int = 10, width: int = 8, depths: tuple[int, ...] = (1, 1, 2, 1),
             image_size: int = IMAGE_SIZE) -> nn.Module:
    """ConvNeXt: depthwise 7x7 convs, LayerNorm over channels, Linear MLPs and layer scale
    parameters; stage widths ``width`` x 1-2-4-8."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_labels=num_classes, patch_size=4,
                            hidden_sizes=[width, 2 * width, 4 * width, 8 * width],
                            depths=list(depths), layer_scale_init_value=0.5,
                            image_size=image_size)
    return ImageClassifier(ConvNextForImageClassification(config))


def vit(num_classes: int = 10, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
        intermediate_size: int = 64, patch_size: int = 8,
        image_size: int = IMAGE_SIZE) -> nn.Module:
    """A Vision Transformer (ViT): patch embedding, class token, pre-norm encoder layers."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(num_labels=num_classes, hidden_size=hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads,
                       intermediate_size=intermediate_size, image_size=image_size,
                       patch_size=patch_size, attn_implementation="eager")
    return ImageClassifier(ViTForImageClassification(config))


def bert_encoder(hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
                 intermediate_size: int = 64, vocab_size: int = VOCAB_SIZE,
                 max_length: int = 32, num_classes: int | None = None) -> nn.Module:
    """A BERT encoder returning a ``hidden_size`` sentence embedding (``num_classes`` is
    accepted for a uniform builder signature and ignored: there is no classifier)."""
    from transformers import BertConfig, BertModel

    del num_classes
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size, max_position_embeddings=max_length,
                        attn_implementation="eager")
    return BertEmbedder(BertModel(config, add_pooling_layer=False))


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "convnext": convnext,
    "vit": vit,
    "bert_encoder": bert_encoder,
}


def example_inputs(name: str, batch: int = 2, *, image_size: int = IMAGE_SIZE,
                   seq_len: int = SEQ_LEN, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> Any:
    """A seeded example batch for the model ``name`` of ``BUILDERS``: a (batch, 3, H, W)
    tensor for the image models, ``{"input_ids", "attention_mask"}`` for ``bert_encoder``
    (the second sequence ends in padding)."""
    gen = torch.Generator().manual_seed(seed)
    if name not in BUILDERS:
        raise KeyError(f"unknown example model {name!r}; known: {', '.join(BUILDERS)}")
    if name == "bert_encoder":
        ids = torch.randint(1, vocab_size, (batch, seq_len), generator=gen)
        mask = torch.ones(batch, seq_len, dtype=torch.int64)
        if batch > 1:
            mask[1, seq_len // 2:] = 0
            ids[1, seq_len // 2:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return torch.randn(batch, 3, image_size, image_size, generator=gen)
