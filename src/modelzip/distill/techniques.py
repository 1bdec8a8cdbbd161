"""Techniques ``kd`` (Hinton et al. 2015: soft targets at a temperature) and ``hint``
(FitNets, Romero et al. 2015: a hint from a teacher's intermediate layer, then ``kd``), and
``distill(student, teacher, data)``, the one call that trains a student from Python.

The model a technique gets is the student; the teacher is ``original`` (the model as
``compress()`` got it), a modelzip checkpoint folder, or (from Python) a module.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelzip.core.context import Context
from modelzip.core.dataset import call_model, first_batch_inputs
from modelzip.core.registry import apply, register_technique
from modelzip.distill.hint import capture_output, layer_by_name, make_regressor
from modelzip.distill.loss import hint_loss
from modelzip.distill.recovery import resolve_teacher
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.prune.masks import MaskKeeper, keep_zeros
from modelzip.train import DistillSettings, TrainConfig

__all__ = ["HintConfig", "KDConfig", "distill", "hint", "kd"]


def _settings(config: Any, name: str) -> DistillSettings:
    try:
        settings = DistillSettings(config.teacher, config.T, config.alpha)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    for field in ("finetune", "hint_finetune"):
        tune = getattr(config, field, None)
        if tune is not None and tune.distill is not None:
            raise ConfigError(f"{name}: give the teacher, T and alpha as {name}'s own options, "
                              f"not as {field}: {{distill: ...}}")
    return settings


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation: train the model (the student) on
    ``(1 - alpha) * task + alpha * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))``.

    - ``teacher``: ``original`` (the model as compress() got it), a checkpoint folder, or a
      module (Python);
    - ``T``: the temperature (> 0); ``alpha``: the weight of the soft targets in [0, 1]
      (1: no labels needed);
    - ``finetune``: the training run (epochs, lr, ...); settings left out come from the
      context's fine-tuning (a student trained from scratch wants more epochs and a full lr).
    """

    teacher: str | nn.Module = "original"
    T: float = 4.0
    alpha: float = 0.9
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        _settings(self, "kd")

    def settings(self) -> DistillSettings:
        return DistillSettings(self.teacher, self.T, self.alpha)


@dataclass(frozen=True)
class HintConfig:
    """FitNets: stage 1 trains the student up to ``student_layer`` (the guided layer), through
    a regressor, to give the teacher's ``teacher_layer`` output (the hint); stage 2 trains the
    whole student with ``kd`` (``T``, ``alpha``, ``finetune``).

    - ``student_layer``, ``teacher_layer``: layer names (``named_modules``);
    - ``hint_finetune``: the stage-1 run (default: the context's fine-tuning settings);
    - the regressor: a convolution for feature maps (1x1 when the sizes match, else the size
      difference plus one), a Linear for vectors; dropped after stage 1.
    """

    student_layer: str = ""
    teacher_layer: str = ""
    teacher: str | nn.Module = "original"
    T: float = 4.0
    alpha: float = 0.9
    hint_finetune: FinetuneConfig | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        for key, what in (("student_layer", "the student's guided layer"),
                          ("teacher_layer", "the teacher's hint layer")):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"hint: {key} ({what}) is required: a layer name")
        _settings(self, "hint")

    def settings(self) -> DistillSettings:
        return DistillSettings(self.teacher, self.T, self.alpha)


def _kd_run(model: nn.Module, settings: DistillSettings, cfg: TrainConfig, ctx: Context,
            name: str) -> dict[str, Any]:
    """Train ``model`` in place with the KD loss; the record of the run."""
    ctx.require("train_data", name)
    cfg = dataclasses.replace(cfg, distill=settings)
    start = time.perf_counter()
    with MaskKeeper(model, keep_zeros(model, ctx.masks)) as keeper:
        ctx.train(model, cfg, step_callbacks=[keeper], technique=name)
    return {**settings.to_dict(), "epochs": cfg.epochs, "lr": cfg.lr,
            "wall_time_s": round(time.perf_counter() - start, 2)}


@register_technique("kd", KDConfig, kind="distill")
def kd(model: nn.Module, config: KDConfig, ctx: Context) -> nn.Module:
    """Knowledge distillation (Hinton et al. 2015): train the model against a teacher's
    temperature-softened outputs; pruned weights stay zero.

    The teacher runs in eval mode without gradients; its logits are computed batch by batch on
    the student's inputs."""
    cfg = resolve_finetune(config.finetune, None, ctx.finetune)
    record: dict[str, Any] = {"step": "kd"}
    if cfg is None:
        ctx.log("kd: epochs is 0; nothing to do")
        ctx.records.append({**record, "epochs": 0})
        return model
    record.update(_kd_run(model, config.settings(), cfg, ctx, "kd"))
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    return model


class _GuidedStudent(nn.Module):
    """The student and the stage-1 regressor as one module, so that one optimizer trains
    both; it runs as the student does."""

    def __init__(self, student: nn.Module, regressor: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.regressor = regressor

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.student(*args, **kwargs)


def _probe_shapes(student: nn.Module, guided: nn.Module, teacher: nn.Module, hinted: nn.Module,
                  inputs: Any, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    was_training = student.training
    student.eval()
    try:
        with (capture_output(guided, f"student layer of {what}") as s_box,
              capture_output(hinted, f"teacher layer of {what}") as t_box, torch.no_grad()):
            call_model(student, inputs)
            call_model(teacher, inputs)
    finally:
        student.train(was_training)
    return tuple(s_box["out"].shape), tuple(t_box["out"].shape)


@register_technique("hint", HintConfig, kind="distill")
def hint(model: nn.Module, config: HintConfig, ctx: Context) -> nn.Module:
    """FitNets (Romero et al. 2015): regress the teacher's hint layer from the student's
    guided layer through a small regressor, then train the whole student with kd.

    Layers are chosen by name; the regressor is a 1x1 (or small) convolution for feature maps
    and a Linear for vectors, and is dropped after the hint stage."""
    name = "hint"
    train = ctx.require("train_data", name)
    teacher = resolve_teacher(config.teacher, ctx, name)
    guided = layer_by_name(model, config.student_layer, "student", name)
    hinted = layer_by_name(teacher, config.teacher_layer, "teacher", name)
    what = f"student layer {config.student_layer!r} to teacher layer {config.teacher_layer!r}"
    inputs = ctx.example_inputs if ctx.example_inputs is not None else \
        first_batch_inputs(train, 2)
    s_shape, t_shape = _probe_shapes(model, guided, teacher, hinted, inputs, what)
    regressor = make_regressor(s_shape, t_shape, what)
    record: dict[str, Any] = {"step": name, "student_layer": config.student_layer,
                              "teacher_layer": config.teacher_layer,
                              "student_shape": list(s_shape[1:]),
                              "teacher_shape": list(t_shape[1:]),
                              "regressor": repr(regressor)}
    stage1 = resolve_finetune(config.hint_finetune, None, ctx.finetune)
    if stage1 is not None:
        stage1 = dataclasses.replace(stage1, distill=None)  # the hint is stage 1's only loss
        wrapper = _GuidedStudent(model, regressor)
        start = time.perf_counter()
        with (capture_output(guided, f"student layer of {what}") as s_box,
              capture_output(hinted, f"teacher layer of {what}") as t_box,
              MaskKeeper(model, keep_zeros(model, ctx.masks)) as keeper):

            def hint_term(_wrapper: nn.Module, x: Any, _outputs: Any, _targets: Any
                          ) -> torch.Tensor:
                teacher.eval()
                with torch.no_grad():
                    call_model(teacher, x)
                return hint_loss(regressor(s_box["out"]), t_box["out"])

            def no_task_loss(outputs: Any, _targets: Any) -> torch.Tensor:
                # a constant: layers past the guided one get no gradient (and no decay)
                return torch.zeros(())

            ctx.train(wrapper, stage1, step_callbacks=[lambda _m, step: keeper(model, step)],
                      extra_loss=hint_term, loss_fn=no_task_loss,
                      technique="hint (stage 1)", validate=False)
        record["hint_stage"] = {"epochs": stage1.epochs, "lr": stage1.lr,
                                "wall_time_s": round(time.perf_counter() - start, 2)}
    stage2 = resolve_finetune(config.finetune, None, ctx.finetune)
    if stage2 is not None:
        record["kd_stage"] = _kd_run(model, config.settings(), stage2, ctx, name)
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    return model


def distill(student: nn.Module, teacher: nn.Module | str, data: Any, *, T: float = 4.0,
            alpha: float = 0.9, epochs: int = 10, lr: float | None = None,
            hint_layers: tuple[str, str] | None = None, hint_epochs: int | None = None,
            val_data: Any = None, base: TrainConfig | None = None, progress: bool = False,
            ctx: Context | None = None, **train_settings: Any) -> nn.Module:
    """Train ``student`` (any module with the teacher's outputs) against ``teacher`` (a module
    or a checkpoint folder) on ``data`` (the data protocol; with ``alpha=1`` its targets are
    not read); returns the trained student, a copy.

    ``hint_layers=(student_layer, teacher_layer)`` runs FitNets' hint stage first
    (``hint_epochs``, default ``epochs``). ``lr``, ``train_settings`` (batch_size, optimizer,
    augment, seed, ...) override ``base`` (default ``TrainConfig()``)."""
    if ctx is None:
        ctx = Context(train_data=data, val_data=val_data, finetune=base, progress=progress)
    tune = FinetuneConfig(epochs=epochs, lr=lr, **train_settings)
    if hint_layers is None:
        config: Any = KDConfig(teacher=teacher, T=T, alpha=alpha, finetune=tune)
    else:
        student_layer, teacher_layer = hint_layers
        config = HintConfig(student_layer=student_layer, teacher_layer=teacher_layer,
                            teacher=teacher, T=T, alpha=alpha, finetune=tune,
                            hint_finetune=dataclasses.replace(
                                tune, epochs=epochs if hint_epochs is None else hint_epochs))
    return apply(student, config, ctx)
