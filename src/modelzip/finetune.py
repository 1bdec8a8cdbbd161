"""Fine-tuning settings, shared by every technique that retrains, and fine-tuning as a recipe
step (train on the context's data, keeping pruning masks).

Every retraining technique takes a ``finetune: FinetuneConfig`` (and some a
``final_finetune``). One rule resolves what a run uses (``resolve_finetune``): each setting
the step gives, else the technique's own default for it (e.g. iterative-magnitude retrains
2 epochs per round), else the context's fine-tuning settings (``Context.finetune``; a
recipe's ``finetune:`` block; the CLI takes them from the checkpoint's training). ``epochs:
0`` means no fine-tuning where a technique can do without it::

    kmeans: {bits: 5, finetune: {epochs: 2, lr: 0.001}}
    drop-bound: {bound_points: 1, finetune: {epochs: 0}}

Any fine-tuning can learn from a teacher as well (knowledge distillation, ``modelzip.distill``):
``distill: {teacher: original | CHECKPOINT, T: 4, alpha: 0.9}``, where ``original`` is the
model as ``compress()`` got it::

    kmeans: {bits: 4, finetune: {epochs: 2, distill: {teacher: original}}}
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from torch import nn

from modelzip.errors import ConfigError
from modelzip.registry import Context, register_technique
from modelzip.train import DistillSettings, TrainConfig, as_distill_settings

__all__ = ["FinetuneConfig", "finetune", "resolve_finetune"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Overrides of the context's fine-tuning TrainConfig (None keeps its value); ``epochs:
    0`` means no fine-tuning. Validated on creation."""

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
    distill: DistillSettings | None = None  # learn from a teacher too (modelzip.distill)

    def __post_init__(self) -> None:
        object.__setattr__(self, "distill", as_distill_settings(self.distill))  # frozen
        epochs = self.epochs
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                                   or epochs < 0):
            raise ConfigError(f"epochs must be an integer >= 0 (0: no fine-tuning), got "
                              f"{epochs!r}")
        # The other values are checked as TrainConfig checks them (lr > 0, known optimizer).
        given = {k: v for k, v in self.overrides().items() if k != "epochs"}
        if given:
            TrainConfig(**given)

    def overrides(self) -> dict[str, Any]:
        """The settings given (not None); ``distill`` stays a DistillSettings."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    @property
    def skips(self) -> bool:
        """``epochs: 0``: no fine-tuning at all."""
        return self.epochs == 0

    def over(self, default: FinetuneConfig | None) -> FinetuneConfig:
        """These settings, with the ones left out (None) taken from ``default``."""
        if default is None:
            return self
        return dataclasses.replace(default, **self.overrides())

    def merged(self, base: TrainConfig | None) -> TrainConfig:
        """The TrainConfig of a run: ``base`` (default ``TrainConfig()``) with these settings."""
        if self.skips:
            raise ConfigError("epochs is 0: there is no fine-tuning run to configure")
        return dataclasses.replace(base or TrainConfig(), **self.overrides())


def resolve_finetune(given: FinetuneConfig | None, default: FinetuneConfig | None,
                     base: TrainConfig | None) -> TrainConfig | None:
    """The TrainConfig a technique retrains with: the settings of ``given`` (the step's
    ``finetune``), those it leaves out from ``default`` (the technique's own), the rest from
    ``base`` (the context's). None when that comes to 0 epochs: no fine-tuning."""
    settings = (given or FinetuneConfig()).over(default)
    return None if settings.skips else settings.merged(base)


@register_technique("finetune", FinetuneConfig, kind="train")
def finetune(model: nn.Module, config: FinetuneConfig, ctx: Context) -> nn.Module:
    """Train the model on the context's training data; pruned weights stay zero: those in
    the context's masks, and the weights that are exactly 0.0 in a layer that has any (a
    model that comes pruned, e.g. from a checkpoint, brings no masks; its zeros are them)."""
    from modelzip.prune.masks import MaskKeeper, keep_zeros  # here: prune imports this module

    if config.skips:
        ctx.log("finetune: epochs is 0; nothing to do")
        ctx.records.append({"step": "finetune", "epochs": 0})
        return model
    ctx.require("train_data", "finetune")
    cfg = config.merged(ctx.finetune)
    start = time.perf_counter()
    with MaskKeeper(model, keep_zeros(model, ctx.masks)) as keeper:
        ctx.train(model, cfg, step_callbacks=[keeper], technique="finetune")
    record = {"step": "finetune", "epochs": cfg.epochs, "lr": cfg.lr,
              "wall_time_s": round(time.perf_counter() - start, 2)}
    if cfg.distill is not None:
        record["distill"] = cfg.distill.to_dict()
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    return model
