"""The context a technique runs in: the user's data, training loop, evaluation and example
inputs, plus what earlier steps leave for later ones (pruning masks, records).

Retraining techniques never call a training loop themselves: they call ``ctx.train(...)`` and
``ctx.val_error(...)``, which go to the user's ``trainer`` and ``evaluator`` (by default
modelzip's classification ``fit``/``evaluate`` with cross-entropy), so that a regression,
segmentation or embedding model is fine-tuned by its own loop and loss::

    ctx = Context(train_data=Dataset(loader), val_data=Dataset(val_loader),
                  loss_fn=torch.nn.functional.mse_loss,
                  evaluator=lambda model, data: my_val_mse(model, data))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from modelzip.errors import ConfigError

__all__ = ["Context", "Evaluator", "LossFn", "Trainer", "logger"]

logger = logging.getLogger("modelzip")

# trainer(model, data, config, *, val_data, step_callbacks, loss_fn, progress) -> TrainHistory
Trainer = Callable[..., Any]
# evaluator(model, data) -> an EvalResult (its error_pct is used) or a float, lower is better
Evaluator = Callable[[nn.Module, Any], Any]
# loss_fn(outputs, targets) -> scalar tensor
LossFn = Callable[[Any, Any], Any]


@dataclass
class Context:
    """Data, the user's loop and what steps hand to each other.

    ``train_data``/``val_data``/``test_data``/``calibration_data`` follow the data protocol
    (``modelzip.core.dataset``). ``val_data`` is held out from training: choices made on
    accuracy use it; ``test_data`` is only reported. ``example_inputs`` (a tensor, tuple or
    dict, batch first) is what graph tracing, MAC counting and export run the model on.
    ``finetune`` holds the default fine-tuning settings (a ``TrainConfig``) that a step's own
    ``finetune`` options override."""

    train_data: Any = None
    val_data: Any = None
    test_data: Any = None
    calibration_data: Any = None
    example_inputs: Any = None
    finetune: Any = None
    trainer: Trainer | None = None
    evaluator: Evaluator | None = None
    loss_fn: LossFn | None = None
    progress: bool = True
    masks: dict[str, Any] = field(default_factory=dict)  # parameter name -> bool tensor
    records: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # split, seeds: for the result
    # the model as compress() got it (a frozen copy): the teacher "original" of distillation
    original_model: nn.Module | None = None

    def log(self, message: str) -> None:
        """Progress and notes, through the ``modelzip`` logger (the CLI renders them)."""
        logger.info(message)

    def require(self, what: str, technique: str) -> Any:
        value = getattr(self, what)
        if value is None:
            raise ConfigError(f"{technique} needs {what.replace('_', ' ')}; pass it to "
                              "compress()/the Context (CLI: a dataset, e.g. --dataset mnist)")
        return value

    def train(self, model: nn.Module, config: Any = None, *, data: Any = None,
              step_callbacks: Sequence[Callable[[nn.Module, int], None]] = (),
              extra_loss: Callable[..., Any] | None = None, technique: str = "fine-tuning",
              validate: bool = True, loss_fn: LossFn | None = None) -> Any:
        """Train ``model`` in place with the user's trainer (default ``modelzip.train.fit``)
        on ``data`` (default ``train_data``) with ``config`` (default ``finetune``); returns a
        ``TrainHistory`` (the user trainer's own, or one with the wall time). ``loss_fn``: a
        technique's own loss instead of the context's. A config with ``distill`` settings
        adds the teacher's soft targets to the loss (``modelzip.distill``)."""
        from modelzip.train import TrainConfig, TrainHistory, fit

        data = data if data is not None else self.require("train_data", technique)
        config = config if config is not None else (self.finetune or TrainConfig())
        kwargs: dict[str, Any] = {"val_data": self.val_data if validate else None,
                                  "step_callbacks": list(step_callbacks),
                                  "progress": self.progress}
        if (loss_fn or self.loss_fn) is not None:
            kwargs["loss_fn"] = loss_fn or self.loss_fn
        if getattr(config, "distill", None) is not None:
            from modelzip.distill.recovery import distill_losses  # core imports no technique

            kwargs["loss_fn"], extra_loss = distill_losses(
                self, model, data, config, kwargs.get("loss_fn"), extra_loss, technique)
        if extra_loss is not None:
            kwargs["extra_loss"] = extra_loss
        trainer = self.trainer or fit
        if trainer is not fit:
            kwargs.pop("val_data")  # a user loop validates (or not) on its own
        start = time.perf_counter()
        history = trainer(model, data, config, **kwargs)
        if isinstance(history, TrainHistory):
            return history
        return TrainHistory(epochs=[], wall_time_s=time.perf_counter() - start)

    def evaluate(self, model: nn.Module, data: Any) -> Any:
        """The evaluator's full result on ``data`` (an EvalResult by default)."""
        from modelzip.train import evaluate

        return (self.evaluator or evaluate)(model, data)

    def error(self, model: nn.Module, data: Any) -> float:
        """The evaluator's score on ``data``, lower is better (error % by default)."""
        result = self.evaluate(model, data)
        return float(getattr(result, "error_pct", result))

    def val_error(self, model: nn.Module) -> float | None:
        """``error`` on ``val_data``; None when there is none."""
        return None if self.val_data is None else self.error(model, self.val_data)
