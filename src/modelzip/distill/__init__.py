"""Knowledge distillation. Importing this package registers the techniques ``kd`` (Hinton et
al. 2015, soft targets at temperature T) and ``hint`` (FitNets, Romero et al. 2015: a hint
from a teacher's intermediate layer through a regressor, then ``kd``).

Distillation is also the recovery step of any fine-tuning: ``finetune: {distill: {teacher:
original, T: 4, alpha: 0.9}}`` in any step (``modelzip.distill.recovery``). The loss maths is
in plain functions (``loss``), the regressor and layer hooks in ``hint``.
"""

import sys
import types
from typing import Any

from modelzip.distill.loss import hint_loss, kd_loss, soft_target_kl
from modelzip.distill.techniques import HintConfig, KDConfig, distill, hint, kd

__all__ = ["HintConfig", "KDConfig", "distill", "hint", "hint_loss", "kd", "kd_loss",
           "soft_target_kl"]


class _CallablePackage(types.ModuleType):
    """``modelzip.distill`` is both this package and the function
    ``modelzip.distill(student, teacher, data, ...)`` (as ``modelzip.prune`` is): importing a
    subpackage sets the parent's attribute to the package, so the package answers the call."""

    def __call__(self, student: Any, teacher: Any, data: Any, **kwargs: Any) -> Any:
        return distill(student, teacher, data, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
