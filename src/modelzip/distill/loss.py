"""The losses of knowledge distillation, as plain functions on tensors.

- ``soft_target_kl``: KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes and
  averaged over the rest (the batch);
- ``kd_loss``: Hinton et al. 2015, ``(1 - alpha) * task + alpha * T^2 * KL``; the T^2 keeps
  the soft targets' gradients at the same scale whatever the temperature;
- ``hint_loss``: FitNets (Romero et al. 2015) stage 1, the mean squared distance between the
  regressed student feature and the teacher's hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from modelzip.errors import ConfigError

__all__ = ["check_same_outputs", "hint_loss", "kd_loss", "logits_of", "soft_target_kl"]


def logits_of(outputs: Any, who: str) -> torch.Tensor:
    """The class scores of a model's outputs: a tensor, or an output object's ``logits``."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(f"distillation needs class scores from the {who}: a tensor or an output "
                      f"with .logits, got {type(outputs).__name__}")


def check_same_outputs(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Refuse a teacher and a student whose outputs differ (e.g. in the number of classes)."""
    if student.shape != teacher.shape:
        raise ConfigError(f"the teacher and the student give different outputs: teacher "
                          f"{tuple(teacher.shape)}, student {tuple(student.shape)} for the same "
                          "batch; distillation needs the same classes in the same order")


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   T: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) over the last axis, mean over the
    rest. The teacher's logits carry no gradient."""
    log_p_student = F.log_softmax(student_logits / T, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: Any,
            T: float, alpha: float,
            task_loss: Callable[[Any, Any], torch.Tensor] = F.cross_entropy) -> torch.Tensor:
    """``(1 - alpha) * task_loss(student, targets) + alpha * T^2 * soft_target_kl``. With
    ``alpha == 1`` the targets are not read (unlabeled data)."""
    soft = alpha * T * T * soft_target_kl(student_logits, teacher_logits, T)
    if alpha == 1:
        return soft
    return (1 - alpha) * task_loss(student_logits, targets) + soft


def hint_loss(regressed: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the regressed guided feature and the teacher's hint."""
    return F.mse_loss(regressed, hint.detach())
