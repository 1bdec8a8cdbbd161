"""Training and evaluation loops, with the plug points compression techniques need.

- ``step_callbacks``: called after every optimizer step (pruning re-applies its masks here);
- ``extra_loss``: a term added to the task loss (distillation, regularisers);
- ``epoch_callbacks``: called after every epoch with its metrics (schedules, logging).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from modelzip.core.dataset import batch_size_of, call_model
from modelzip.data import AUGMENTATIONS, ImageDataset
from modelzip.errors import ConfigError
from modelzip.zoo import check_input_shape

__all__ = ["DistillSettings", "EvalResult", "TrainConfig", "TrainHistory", "evaluate", "fit",
           "predict", "predict_logits"]

StepCallback = Callable[[nn.Module, int], None]
EpochCallback = Callable[[nn.Module, int, dict[str, float]], None]
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DistillSettings:
    """Knowledge distillation during a training run (Hinton et al. 2015): the loss is
    ``(1 - alpha) * task + alpha * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))``.

    ``teacher``: ``"original"`` (the model as ``compress()`` got it), a modelzip checkpoint
    folder, or (from Python) a module. ``alpha: 1`` needs no labels: the teacher labels the
    data. ``Context.train`` turns these settings into the loss (``modelzip.distill``)."""

    teacher: str | nn.Module = "original"
    T: float = 4.0
    alpha: float = 0.9

    def __post_init__(self) -> None:
        teacher = self.teacher
        if not (isinstance(teacher, nn.Module) or (isinstance(teacher, str) and teacher)):
            raise ConfigError(f"teacher must be 'original', a checkpoint folder or a module, "
                              f"got {teacher!r}")
        if isinstance(self.T, bool) or not isinstance(self.T, int | float) or not self.T > 0:
            raise ConfigError(f"T (the temperature) must be > 0, got {self.T!r}")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float)
                or not 0 <= self.alpha <= 1):
            raise ConfigError(f"alpha (the weight of the soft targets) must be in [0, 1], got "
                              f"{self.alpha!r}")

    def to_dict(self) -> dict[str, Any]:
        teacher = self.teacher if isinstance(self.teacher, str) else \
            f"module {type(self.teacher).__name__}"
        return {"teacher": teacher, "T": float(self.T), "alpha": float(self.alpha)}


def as_distill_settings(value: Any) -> DistillSettings | None:
    """None, DistillSettings, or a mapping of its fields (a recorded or YAML value)."""
    if value is None or isinstance(value, DistillSettings):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"teacher", "T", "alpha"})
        if unknown:
            raise ConfigError(f"distill: unknown option(s) {', '.join(unknown)}; allowed: "
                              "T, alpha, teacher")
        return DistillSettings(**value)
    raise ConfigError(f"distill must be a mapping {{teacher, T, alpha}}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Validated on creation. ``distill``: train against a
    teacher's soft targets as well (``DistillSettings``; None: the task loss alone)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" | "cosine" | "constant"
    warmup_epochs: float = 0.0  # linear warm-up, for "cosine" only
    label_smoothing: float = 0.0
    augment: str = "none"  # see modelzip.data.AUGMENTATIONS
    seed: int = 0
    channels_last: bool = True  # faster convolutions on CPU; the layout is restored afterwards
    distill: DistillSettings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "distill", as_distill_settings(self.distill))  # frozen
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in ("sgd", "adamw"),
             f"optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.schedule in ("onecycle", "cosine", "constant"),
             f"schedule must be onecycle, cosine or constant, got {self.schedule!r}"),
            (0 <= self.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.augment in AUGMENTATIONS,
             f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        # field by field: asdict would deep-copy a teacher module given from Python
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["distill"] = self.distill.to_dict() if self.distill is not None else None
        return out


@dataclass(frozen=True)
class EvalResult:
    """Classification metrics on a whole split."""

    error_pct: float
    errors: int
    total: int
    loss: float

    @property
    def accuracy_pct(self) -> float:
        return 100.0 - self.error_pct

    def to_dict(self) -> dict[str, float | int]:
        return {"test_error_pct": self.error_pct, "errors": self.errors, "total": self.total,
                "loss": self.loss, "accuracy_pct": self.accuracy_pct}


@dataclass
class TrainHistory:
    """Per-epoch metrics and the wall time of a ``fit`` call."""

    epochs: list[dict[str, float]]
    wall_time_s: float


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters (1-D tensors).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    # OneCycle needs a few steps per phase (a warm-up of pct_start x total >= 2 steps);
    # a run of fewer steps (a tiny fine-tuning) anneals with the cosine schedule instead
    if cfg.schedule == "onecycle" and total_steps >= 8:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25,
            cycle_momentum=cfg.optimizer == "sgd" and cfg.momentum > 0,
            base_momentum=max(cfg.momentum - 0.05, 0.0), max_momentum=cfg.momentum)
    if cfg.schedule in ("cosine", "onecycle"):
        warmup = int(cfg.warmup_epochs * total_steps / cfg.epochs)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("acc {task.fields[acc]:.2f}%"),
        TextColumn("{task.fields[rate]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


def fit(
    model: nn.Module,
    train_data: ImageDataset,
    config: TrainConfig | None = None,
    *,
    val_data: ImageDataset | None = None,
    step_callbacks: Sequence[StepCallback] = (),
    epoch_callbacks: Sequence[EpochCallback] = (),
    extra_loss: ExtraLoss | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train ``model`` in place on ``train_data`` (the data protocol of
    ``modelzip.core.dataset``: image classification or any other task); returns per-epoch
    metrics. ``loss_fn(outputs, targets)`` defaults to cross-entropy; accuracy is reported
    when the outputs are class scores for integer targets.

    Seeded: the same config, data and initial weights give the same result on one machine.
    """
    cfg = config or TrainConfig()
    if hasattr(train_data, "input_shape"):
        check_input_shape(model, train_data.input_shape)
    torch.manual_seed(cfg.seed)  # dropout
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation
    steps_per_epoch = _steps_per_epoch(train_data, cfg.batch_size)
    opt = _make_optimizer(model, cfg)
    sched = _make_schedule(opt, cfg, cfg.epochs * steps_per_epoch)
    criterion = loss_fn or nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    channels_last = cfg.channels_last and _has_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    history: list[dict[str, float]] = []
    step = 0
    last_lr = cfg.lr
    start = time.perf_counter()
    try:
        with _progress(progress) as bar:
            for epoch in range(cfg.epochs):
                model.train()
                task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                                    loss=0.0, acc=0.0, rate=0.0)
                loss_sum, correct, seen = 0.0, 0, 0
                t0 = time.perf_counter()
                for x, y in train_data.batches(cfg.batch_size, shuffle=True, generator=gen,
                                               augment=cfg.augment):
                    if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    logits = call_model(model, x)
                    loss = criterion(logits, y)
                    if extra_loss is not None:
                        loss = loss + extra_loss(model, x, logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    last_lr = opt.param_groups[0]["lr"]
                    opt.step()
                    if step + 1 < cfg.epochs * steps_per_epoch:  # no step past the schedule
                        sched.step()
                    step += 1
                    for cb in step_callbacks:
                        cb(model, step)
                    n = batch_size_of(x)
                    loss_sum += float(loss.detach()) * n
                    correct += _correct(logits, y)
                    seen += n
                    bar.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen,
                               rate=seen / max(time.perf_counter() - t0, 1e-9))
                metrics = {"epoch": epoch + 1, "train_loss": loss_sum / seen,
                           "train_acc_pct": 100.0 * correct / seen,
                           "lr": last_lr,
                           "epoch_time_s": time.perf_counter() - t0}
                if val_data is not None and _is_classification_data(val_data):
                    val = evaluate(model, val_data)
                    metrics["val_error_pct"] = val.error_pct
                    metrics["val_loss"] = val.loss
                    bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs} "
                                                 f"val err {val.error_pct:.2f}%")
                history.append(metrics)
                for ecb in epoch_callbacks:
                    ecb(model, epoch + 1, metrics)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.eval()
    return TrainHistory(history, time.perf_counter() - start)


def _steps_per_epoch(data: Any, batch_size: int) -> int:
    if isinstance(data, ImageDataset):
        return math.ceil(len(data) / batch_size)
    return sum(1 for _ in data.batches(batch_size))  # a user's loader: its own batching


def _correct(outputs: Any, targets: Any) -> int:
    if (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)
            and outputs.ndim == 2 and targets.ndim == 1 and not targets.is_floating_point()):
        return int((outputs.detach().argmax(1) == targets).sum())
    return 0


def _is_classification_data(data: Any) -> bool:
    return isinstance(data, ImageDataset) or hasattr(data, "labels")


@torch.no_grad()
def predict(model: nn.Module, data: Any, batch_size: int = 1000) -> tuple[Any, Any]:
    """Outputs and targets for every batch of ``data``, in order, in eval mode (tensors are
    concatenated along the batch axis)."""
    if hasattr(data, "input_shape"):
        check_input_shape(model, data.input_shape)
    was_training = model.training
    model.eval()
    try:
        pairs = [(call_model(model, x), y) for x, y in data.batches(batch_size)]
    finally:
        model.train(was_training)
    outputs = [o for o, _ in pairs]
    targets = [t for _, t in pairs]
    if outputs and all(isinstance(o, torch.Tensor) for o in outputs):
        outputs = torch.cat(outputs)
    if targets and all(isinstance(t, torch.Tensor) for t in targets):
        targets = torch.cat(targets)
    return outputs, targets


def predict_logits(model: nn.Module, data: Any, batch_size: int = 1000) -> torch.Tensor:
    """Logits for every sample of ``data``, in order, in eval mode."""
    return predict(model, data, batch_size)[0]


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 1000) -> EvalResult:
    """Classification: error % (and count) and mean cross-entropy on the whole of ``data``.
    For other tasks give the Context an ``evaluator`` of your own."""
    logits, labels = predict(model, data, batch_size)
    if not (isinstance(logits, torch.Tensor) and logits.ndim == 2
            and isinstance(labels, torch.Tensor) and labels.ndim == 1
            and not labels.is_floating_point()):
        raise ConfigError("the default evaluator scores classifiers (class scores and integer "
                          "labels); pass evaluator= (CLI: a recipe for this task) for other "
                          "models")
    errors = int((logits.argmax(1) != labels).sum())
    loss = float(nn.functional.cross_entropy(logits, labels))
    n = int(labels.shape[0])
    return EvalResult(error_pct=100.0 * errors / max(n, 1), errors=errors, total=n, loss=loss)
