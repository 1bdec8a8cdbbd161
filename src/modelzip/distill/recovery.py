"""Distillation in any training run: ``Context.train`` calls ``distill_losses`` when the run's
TrainConfig has ``distill`` settings, so every technique that fine-tunes (a ``finetune`` step,
k-means centroids, QAT, pruning retraining) can learn from a teacher with no code of its own::

    kmeans: {bits: 4, finetune: {epochs: 2, distill: {teacher: original, T: 4, alpha: 0.9}}}

The teacher runs in eval mode without gradients; its logits are computed on the fly, batch by
batch, on the very inputs the student sees (so augmented batches are distilled correctly).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelzip.core.context import Context
from modelzip.core.dataset import call_model, first_batch_inputs
from modelzip.distill.loss import check_same_outputs, logits_of, soft_target_kl
from modelzip.errors import ConfigError
from modelzip.train import DistillSettings

__all__ = ["check_teacher", "distill_losses", "resolve_teacher"]


def resolve_teacher(teacher: str | nn.Module, ctx: Context, where: str) -> nn.Module:
    """The teacher module of ``teacher``: a module as given, ``"original"`` (the model as
    ``compress()`` got it: ``ctx.original_model``) or a modelzip checkpoint folder (loaded with
    ``load_checkpoint``; never unpickled). Put in eval mode."""
    if isinstance(teacher, nn.Module):
        return teacher.eval()
    if teacher == "original":
        if ctx.original_model is None:
            raise ConfigError(f"{where}: teacher 'original' is the model as compress() got it, "
                              "and there is none here (outside compress()); give a checkpoint "
                              "folder as teacher, or set the Context's original_model")
        return ctx.original_model.eval()
    from modelzip.checkpoint import load_checkpoint

    path = Path(teacher).expanduser()
    if not path.exists():
        raise ConfigError(f"{where}: teacher {teacher!r} does not exist; give 'original' or a "
                          "modelzip checkpoint folder")
    try:
        return load_checkpoint(path).model.eval()
    except Exception as exc:  # whatever the reason, one line that names the teacher
        raise ConfigError(f"{where}: teacher {teacher!r} does not load as a modelzip "
                          f"checkpoint: {exc}") from None


def _task_loss(config: Any) -> Callable[[Any, Any], torch.Tensor]:
    return nn.CrossEntropyLoss(label_smoothing=getattr(config, "label_smoothing", 0.0))


def check_teacher(student: nn.Module, teacher: nn.Module, data: Any) -> None:
    """Refuse, before any training, a teacher whose outputs differ from the student's on the
    first batch of ``data``."""
    inputs = first_batch_inputs(data, 2)
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            check_same_outputs(logits_of(call_model(student, inputs), "student"),
                               logits_of(call_model(teacher, inputs), "teacher"))
    finally:
        student.train(was_training)


def distill_losses(ctx: Context, model: nn.Module, data: Any, config: Any,
                   task_loss: Callable[[Any, Any], Any] | None,
                   extra_loss: Callable[..., Any] | None, technique: str
                   ) -> tuple[Callable[[Any, Any], Any], Callable[..., Any]]:
    """``(loss_fn, extra_loss)`` for training ``model`` on ``data`` that together make the KD
    loss of ``config.distill``: ``loss_fn`` is ``(1 - alpha) *`` the task loss (default
    cross-entropy), ``extra_loss`` adds ``alpha * T^2 * KL`` on the teacher's logits for the
    same inputs (and any ``extra_loss`` already given). With ``alpha == 1`` the targets are
    never read, so data without labels works."""
    settings: DistillSettings = config.distill
    where = f"{technique}: distill"
    teacher = resolve_teacher(settings.teacher, ctx, where)
    try:
        check_teacher(model, teacher, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    task = task_loss or _task_loss(config)
    T, alpha = float(settings.T), float(settings.alpha)

    def loss_fn(outputs: Any, targets: Any) -> torch.Tensor:
        if alpha == 1:  # no gradient from here: the soft targets are the whole loss
            return logits_of(outputs, "student").new_zeros(())
        if targets is None:
            raise ConfigError(f"{where}: this data has no labels; with alpha < 1 the loss "
                              "needs them; set alpha: 1 to learn from the teacher alone")
        return (1 - alpha) * task(outputs, targets)

    def soft_targets(model: nn.Module, x: Any, outputs: Any, targets: Any) -> torch.Tensor:
        student = logits_of(outputs, "student")
        teacher.eval()  # a teacher shared with a training loop could have been switched
        with torch.no_grad():
            teacher_logits = logits_of(call_model(teacher, x), "teacher")
        check_same_outputs(student, teacher_logits)
        term = alpha * T * T * soft_target_kl(student, teacher_logits, T)
        if extra_loss is not None:
            term = term + extra_loss(model, x, outputs, targets)
        return term

    return loss_fn, soft_targets
