"""Quantization-aware training (Jacob et al. 2018) as the fallback of static int8 quantization.

When post-training quantization loses more than an allowed accuracy drop, the model is
fine-tuned with fake quantization in its forward pass, so that it learns weights that survive
rounding; then it is exported and statically quantized again (``int8_with_qat_fallback``).

Fake quantization mirrors what onnxruntime's static quantization does at inference
(``modelzip.runtime.int8``): weights symmetric per output channel in [-127, 127] ([-64, 64]
with ``reduce_range``), the input of every Conv/Linear uint8 asymmetric per tensor, its range
an exponential moving average of the batch min/max. Gradients pass through the rounding with
the straight-through estimator (``torch.fake_quantize_*``: identity inside the range, zero
outside). Per-channel weight quantization commutes with BatchNorm folding (folding scales
each output channel, and so its quantization step), so the unfolded weights are fake-quantized.

After training, the fake quantizers are removed: the model is a plain float model with the
same structure and parameter names, whose weights quantize well; the static int8 step then
calibrates the activation ranges again on the real graph.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from modelzip.data import ImageDataset
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.prune.masks import MaskKeeper
from modelzip.registry import Context, register_technique
from modelzip.train import TrainConfig

__all__ = ["FakeQuantizers", "Int8QatConfig", "Int8Result", "fake_quant_activation",
           "fake_quant_weight", "int8_qat", "int8_with_qat_fallback"]


# ============================================================================ quantizer math
def weight_qrange(reduce_range: bool) -> tuple[int, int]:
    """onnxruntime's symmetric int8 weight range (7 bits with ``reduce_range``)."""
    return (-64, 64) if reduce_range else (-127, 127)


def fake_quant_weight(weight: torch.Tensor, reduce_range: bool = False) -> torch.Tensor:
    """Round ``weight`` to its symmetric per-output-channel int8 grid (scale = max |w| of the
    channel / qmax) and back to float; straight-through gradient."""
    qmin, qmax = weight_qrange(reduce_range)
    amax = weight.detach().abs().reshape(weight.shape[0], -1).amax(1)
    scale = (amax / qmax).clamp_min(1e-12).to(torch.float32)
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, qmin, qmax)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 asymmetric scale and zero point of a range, as onnxruntime computes them (the
    range is widened to include 0 so that 0 is exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    return scale, int(np.clip(round(-lo / scale), 0, 255))


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Round ``x`` to the uint8 grid of [lo, hi] and back; straight-through gradient."""
    scale, zero = activation_qparams(lo, hi)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


# ============================================================================ module surgery
class _WeightFakeQuant(nn.Module):
    """A parametrization: the layer computes with its fake-quantized weight."""

    def __init__(self, reduce_range: bool) -> None:
        super().__init__()
        self.reduce_range = reduce_range

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(weight, self.reduce_range)


class _InputObserver:
    """A forward pre-hook: tracks the range of a layer's input (moving average of the batch
    min/max while training) and fake-quantizes the input to uint8."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.lo: float | None = None
        self.hi: float | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
        x = args[0]
        if module.training or self.lo is None:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if self.lo is None or self.hi is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += self.momentum * (lo - self.lo)
                self.hi += self.momentum * (hi - self.hi)
        return (fake_quant_activation(x, self.lo, self.hi), *args[1:])


class FakeQuantizers:
    """Fake quantization of every Conv2d/Linear weight (per channel) and input (per tensor)
    of ``model``, in place, until ``remove()`` (or the end of a ``with`` block), which
    leaves the trained float weights under their usual names."""

    def __init__(self, model: nn.Module, *, reduce_range: bool = False,
                 momentum: float = 0.01) -> None:
        self.model = model
        self.layers = [(name, m) for name, m in model.named_modules()
                       if isinstance(m, nn.Conv2d | nn.Linear)]
        if not self.layers:
            raise ConfigError("int8 quantization-aware training needs Conv2d or Linear layers; "
                              "this model has none")
        self.observers: dict[str, _InputObserver] = {}
        self._handles = []
        for name, module in self.layers:
            parametrize.register_parametrization(module, "weight", _WeightFakeQuant(reduce_range))
            obs = _InputObserver(momentum)
            self.observers[name] = obs
            self._handles.append(module.register_forward_pre_hook(obs))

    @staticmethod
    def parameter_name(weight_name: str) -> str:
        """Where a weight lives while parametrized: "fc1.weight" ->
        "fc1.parametrizations.weight.original" (for pruning masks)."""
        module, _, attr = weight_name.rpartition(".")
        prefix = f"{module}." if module else ""
        return f"{prefix}parametrizations.{attr}.original"

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for _, module in self.layers:
            if parametrize.is_parametrized(module, "weight"):
                # keep the float weights that were trained; int8 quantization rounds them
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

    def __enter__(self) -> FakeQuantizers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass(frozen=True)
class Int8QatConfig:
    """Quantization-aware fine-tuning of every Conv2d/Linear layer (int8 quantizes them all,
    so there is no layer choice). ``finetune``: the training run; settings left out come
    from the technique's defaults (1 epoch; the learning rate a tenth of the context's: the
    model is already trained), then from the context's fine-tuning settings.
    ``finetune_samples`` trains on a seeded subset of that many training samples (all when
    None). ``momentum``: of the moving-average activation ranges (not the optimizer's)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "epochs": "finetune: {epochs: N}",
        "lr": "finetune: {lr: X}",
        "batch_size": "finetune: {batch_size: N}",
        "images": "finetune_samples",
    }
    DEFAULT_EPOCHS: ClassVar[int] = 1
    LR_FACTOR: ClassVar[float] = 0.1  # of the context's learning rate, when none is given

    finetune: FinetuneConfig | None = None
    finetune_samples: int | None = None
    reduce_range: bool = True  # as in modelzip.runtime.int8.quantize_onnx_int8
    momentum: float = 0.01  # of the moving-average activation ranges

    def __post_init__(self) -> None:
        if self.finetune is not None and self.finetune.epochs is not None \
                and self.finetune.epochs < 1:
            raise ConfigError(f"int8-qat: finetune: epochs must be >= 1 (the technique is the "
                              f"fine-tuning), got {self.finetune.epochs}")
        if self.finetune_samples is not None and self.finetune_samples < 1:
            raise ConfigError(f"int8-qat: finetune_samples must be >= 1, got "
                              f"{self.finetune_samples}")
        if not 0 < self.momentum <= 1:
            raise ConfigError(f"int8-qat: momentum must be in (0, 1], got {self.momentum}")

    def train_config(self, base: TrainConfig | None) -> TrainConfig:
        """The QAT run: ``finetune`` over the defaults (1 epoch, a tenth of ``base``'s lr)
        over ``base`` (the context's fine-tuning settings)."""
        base = base or TrainConfig()
        default = FinetuneConfig(epochs=self.DEFAULT_EPOCHS, lr=base.lr * self.LR_FACTOR)
        return (self.finetune or FinetuneConfig()).over(default).merged(base)


@register_technique("int8-qat", Int8QatConfig, kind="export")
def int8_qat(model: nn.Module, config: Int8QatConfig, ctx: Context) -> nn.Module:
    """Fine-tune with fake int8 quantization (straight-through) so that static int8 loses
    less; the model stays a float model with the same layers. Pruned weights stay zero."""
    train = ctx.require("train_data", "int8-qat")
    if config.finetune_samples is not None and config.finetune_samples < len(train):
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        train = train.subset(idx[:config.finetune_samples].sort().values)
    cfg = config.train_config(ctx.finetune)
    with FakeQuantizers(model, reduce_range=config.reduce_range,
                        momentum=config.momentum) as fq:
        masks = {fq.parameter_name(name): mask for name, mask in ctx.masks.items()}
        with MaskKeeper(model, masks) as keeper:
            hist = ctx.train(model, cfg, data=train, step_callbacks=[keeper],
                             technique="int8-qat", validate=False)
        ranges = {name: [obs.lo, obs.hi] for name, obs in fq.observers.items()}
    ctx.records.append({"step": "int8-qat", "epochs": cfg.epochs, "lr": cfg.lr,
                        "images": len(train), "reduce_range": config.reduce_range,
                        "wall_time_s": round(hist.wall_time_s, 2),
                        "activation_ranges": ranges})
    return model


# ============================================================================ the fallback
@dataclass
class Int8Result:
    """The outcome of ``int8_with_qat_fallback``: the int8 and fp32 ONNX models, the model
    they came from (the QAT-trained copy when QAT ran) and the report."""

    int8: bytes
    fp32: bytes
    model: nn.Module
    report: dict[str, Any]


def int8_with_qat_fallback(model: nn.Module, calibration: np.ndarray, val_data: ImageDataset,
                           *, allowed_drop_points: float = 0.5, ctx: Context | None = None,
                           qat: Int8QatConfig | None = None,
                           **quantize_options: Any) -> Int8Result:
    """Export ``model``, quantize it statically (``quantize_onnx_int8`` with
    ``quantize_options``) and measure the error on ``val_data`` (held out: the choice is made
    on it, the test split stays for reporting). When int8 loses more than
    ``allowed_drop_points`` points, fine-tune a copy with QAT on ``ctx.train_data`` and
    quantize again; the better of the two int8 models is returned."""
    from modelzip.runtime.export import evaluate_onnx, export_onnx
    from modelzip.runtime.int8 import quantize_onnx_int8

    check = torch.from_numpy(np.ascontiguousarray(calibration[:64]))
    fp32 = export_onnx(model, check_inputs=check)
    fp32_eval = evaluate_onnx(fp32, val_data)
    int8, report = quantize_onnx_int8(fp32, calibration, **quantize_options)
    int8_eval = evaluate_onnx(int8, val_data)
    drop = int8_eval.error_pct - fp32_eval.error_pct
    report.update({"val_images": len(val_data), "fp32_val_error_pct": fp32_eval.error_pct,
                   "int8_val_error_pct": int8_eval.error_pct, "drop_points": drop,
                   "allowed_drop_points": allowed_drop_points, "qat": None})
    if drop <= allowed_drop_points:
        return Int8Result(int8, fp32, model, report)
    if not quantize_options.get("per_channel", True):
        # Per-tensor scales of BatchNorm-folded weights cannot be simulated on the unfolded
        # weights (folding rescales each channel differently); per-channel ones can.
        raise ConfigError(f"int8 loses {drop:.2f} points (> {allowed_drop_points}); "
                          "quantization-aware training simulates per-channel weight scales "
                          "only: quantize with per_channel=True")
    if ctx is None or ctx.train_data is None:
        raise ConfigError(f"int8 loses {drop:.2f} points (> {allowed_drop_points}); "
                          "quantization-aware training needs training data: pass "
                          "ctx=Context(train_data=...)")
    # QAT must simulate the weight grid that is deployed: take it from the quantize options.
    qat_cfg = dataclasses.replace(qat or Int8QatConfig(),
                                  reduce_range=quantize_options.get("reduce_range", True))
    trained = int8_qat(copy.deepcopy(model), qat_cfg, ctx)
    qat_fp32 = export_onnx(trained, check_inputs=check)
    qat_int8, qat_report = quantize_onnx_int8(qat_fp32, calibration, **quantize_options)
    qat_eval = evaluate_onnx(qat_int8, val_data)
    qat_drop = qat_eval.error_pct - fp32_eval.error_pct
    report["qat"] = {"config": dataclasses.asdict(qat_cfg), "int8_val_error_pct":
                     qat_eval.error_pct, "drop_points": qat_drop,
                     "used": qat_drop < drop, "record": ctx.records[-1]}
    if qat_drop < drop:
        report.update({k: v for k, v in qat_report.items() if k.startswith(("ops_", "runtime"))})
        return Int8Result(qat_int8, qat_fp32, trained, report)
    return Int8Result(int8, fp32, model, report)
