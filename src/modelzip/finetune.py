"""Fine-tuning as a recipe step: train on the context's data, keeping pruning masks."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from torch import nn

from modelzip.prune.masks import MaskKeeper
from modelzip.registry import Context, register_technique
from modelzip.train import TrainConfig

__all__ = ["FinetuneConfig", "finetune"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Overrides of the context's fine-tuning TrainConfig (None keeps its value)."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    schedule: str | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    label_smoothing: float | None = None
    augment: str | None = None
    seed: int | None = None

    def merged(self, base: TrainConfig | None) -> TrainConfig:
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(base or TrainConfig(), **changes)


@register_technique("finetune", FinetuneConfig, kind="train")
def finetune(model: nn.Module, config: FinetuneConfig, ctx: Context) -> nn.Module:
    """Train the model on the context's training data; pruned weights stay zero."""
    ctx.require("train_data", "finetune")
    cfg = config.merged(ctx.finetune)
    start = time.perf_counter()
    with MaskKeeper(model, ctx.masks) as keeper:
        ctx.train(model, cfg, step_callbacks=[keeper], technique="finetune")
    record = {"step": "finetune", "epochs": cfg.epochs, "lr": cfg.lr,
              "wall_time_s": round(time.perf_counter() - start, 2)}
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    return model
