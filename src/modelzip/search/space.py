"""The search space: per layer a pruning ratio and a bit width, and int8 or fp32 packing.

A point of the space (a ``Choice``) becomes a ``Recipe`` of modelzip's own techniques:

    magnitude {sparsity: {layer: ratio}}   or   l1-filter {ratio: {layer: ratio}}
    [finetune]                                   (the chosen point only)
    kmeans {bits: {layer: bits}}           or   uniform {bits: {layer: bits}}
    pack {format, int8, coder: best}

Trials run it without fine-tuning; the chosen point runs it with the fixed fine-tuning steps.
Every dimension is an Optuna distribution (``distributions``), named ``ratio:LAYER``,
``bits:LAYER`` and ``int8``, so that every strategy's points are Optuna trials of one study;
``space_hash`` fingerprints the space (and the model's layers) so that a study is never
continued with another one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from modelzip.errors import ConfigError, check_choice

__all__ = ["PRUNE_METHODS", "QUANT_METHODS", "Choice", "SearchSpace", "default_layers"]

PRUNE_METHODS = ("magnitude", "l1-filter", "none")
QUANT_METHODS = ("kmeans", "uniform", "none")
FORMATS = ("state-dict", "onnx")


@dataclass(frozen=True)
class Choice:
    """One point: per layer the pruning ratio and the bit width (0: not quantized), and
    whether the graph is packed with int8 operators."""

    ratio: dict[str, float]
    bits: dict[str, int]
    int8: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_layers(model: nn.Module, prune: str = "magnitude",
                   example_inputs: Any = None) -> tuple[str, ...]:
    """The layers a space covers: every Linear/Conv weight (magnitude), or every layer whose
    output channels can be removed (l1-filter)."""
    if prune == "l1-filter":
        from modelzip.prune.structured import example_input_for, prunable_channel_layers

        example = example_inputs if example_inputs is not None else example_input_for(model)
        return tuple(prunable_channel_layers(model, example))
    from modelzip.prune.masks import layer_of, prunable_weights

    return tuple(layer_of(p) for p in prunable_weights(model))


@dataclass(frozen=True)
class SearchSpace:
    """What the search chooses, per layer of ``layers``.

    - ``prune``: magnitude (unstructured, exact per-layer sparsity) | l1-filter (output
      channels removed) | none; ratios from 0 to ``max_ratio`` in steps of ``ratio_step``;
    - ``quantize``: kmeans (weight sharing) | uniform (affine grid) | none; ``bits`` the
      widths to choose from;
    - ``format``: state-dict (.mzip of the weights) | onnx (the runnable graph, for
      ``modelzip run`` and latency budgets); ``int8``: the packing choices (onnx only);
    - ``fold_batchnorm``: fold BatchNorm into the convolutions after pruning (and its
      fine-tuning), before clustering (default: with format onnx, whose export would fold
      them after the clustering, undoing the sharing);
    - ``recalibrate``: trials re-estimate BatchNorm statistics on a few training batches
      after pruning (no weight changes; ``recalibrate-batchnorm``)."""

    layers: tuple[str, ...]
    prune: str = "magnitude"
    max_ratio: float = 0.95
    ratio_step: float = 0.05
    quantize: str = "kmeans"
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    format: str = "state-dict"
    int8: tuple[bool, ...] = (False,)
    default_bits: int = 5  # the strategies that allocate ratios only keep this width
    fold_batchnorm: bool | None = None  # fold BN before clustering; None: when format is onnx
    recalibrate: bool = True  # trials re-estimate BatchNorm statistics after pruning

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("the search space has no layers to compress")
        check_choice(self.prune, PRUNE_METHODS, "search space", "prune")
        check_choice(self.quantize, QUANT_METHODS, "search space", "quantize")
        check_choice(self.format, FORMATS, "search space", "format")
        top = 0.9 if self.prune == "l1-filter" else 0.99
        if not 0 < self.max_ratio <= top or not 0 < self.ratio_step <= self.max_ratio:
            raise ConfigError(f"search space: need 0 < ratio_step <= max_ratio <= {top}, got "
                              f"{self.ratio_step} and {self.max_ratio}")
        steps = self.max_ratio / self.ratio_step
        if abs(steps - round(steps)) > 1e-6:
            raise ConfigError(f"search space: max_ratio {self.max_ratio} is not a multiple of "
                              f"ratio_step {self.ratio_step}")
        lo, hi = (2, 8)
        if self.quantize != "none" and (not self.bits or any(
                isinstance(b, bool) or not isinstance(b, int) or not lo <= b <= hi
                for b in self.bits)):
            raise ConfigError(f"search space: bits must be integers from {lo} to {hi}, got "
                              f"{list(self.bits)}")
        if self.quantize != "none" and self.default_bits not in self.bits:
            object.__setattr__(self, "default_bits", max(self.bits))
        if any(self.int8) and self.format != "onnx":
            raise ConfigError("search space: int8 packing needs format onnx")
        if not self.int8:
            raise ConfigError("search space: int8 needs at least one choice (false, true)")
        if self.fold_batchnorm is None:
            object.__setattr__(self, "fold_batchnorm", self.format == "onnx")
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "bits", tuple(sorted(set(self.bits))))
        object.__setattr__(self, "int8", tuple(dict.fromkeys(self.int8)))

    # ------------------------------------------------------------------ Optuna view
    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        out: dict[str, Any] = {}
        for layer in self.layers:
            if self.prune != "none":
                out[f"ratio:{layer}"] = FloatDistribution(0.0, self.max_ratio,
                                                          step=self.ratio_step)
            if self.quantize != "none":
                out[f"bits:{layer}"] = CategoricalDistribution(self.bits)
        if len(self.int8) > 1:
            out["int8"] = CategoricalDistribution(self.int8)
        return out

    def suggest(self, trial: Any) -> Choice:
        """The trial's point (the sampler's, or an enqueued one)."""
        from optuna.distributions import FloatDistribution

        params = {}
        for name, dist in self.distributions().items():
            if isinstance(dist, FloatDistribution):
                params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
            else:
                params[name] = trial.suggest_categorical(name, dist.choices)
        return self.choice(params)

    def choice(self, params: Mapping[str, Any]) -> Choice:
        ratio = {layer: round(float(params.get(f"ratio:{layer}", 0.0)), 6)
                 for layer in self.layers} if self.prune != "none" else {}
        bits = {layer: int(params.get(f"bits:{layer}", self.default_bits))
                for layer in self.layers} if self.quantize != "none" else {}
        return Choice(ratio, bits, bool(params.get("int8", self.int8[0])))

    def params(self, choice: Choice) -> dict[str, Any]:
        """The Optuna parameters of ``choice`` (snapped onto the grid), for enqueueing."""
        out: dict[str, Any] = {}
        for layer in self.layers:
            if self.prune != "none":
                r = min(max(choice.ratio.get(layer, 0.0), 0.0), self.max_ratio)
                out[f"ratio:{layer}"] = round(round(r / self.ratio_step) * self.ratio_step, 6)
            if self.quantize != "none":
                b = choice.bits.get(layer, self.default_bits)
                out[f"bits:{layer}"] = min(self.bits, key=lambda x: (abs(x - b), -x))
        if len(self.int8) > 1:
            out["int8"] = choice.int8
        return out

    def uniform(self, ratio: float, bits: int | None = None, int8: bool | None = None
                ) -> Choice:
        b = self.default_bits if bits is None else bits
        return self.choice(self.params(Choice({k: ratio for k in self.layers},
                                              {k: b for k in self.layers},
                                              self.int8[-1] if int8 is None else int8)))

    # ------------------------------------------------------------------ recipe
    def recipe(self, choice: Choice, *, finetune_epochs: int = 0,
               quant_finetune: Mapping[str, Any] | None = None,
               finetune_defaults: Mapping[str, Any] | None = None, name: str = "search"
               ) -> Any:
        """The Recipe of modelzip's techniques for ``choice``; fine-tuning only when
        ``finetune_epochs`` > 0 (the chosen point)."""
        from modelzip.recipe import Recipe
        from modelzip.registry import config_from_dict

        steps: list[tuple[str, Any]] = []
        ratios = {k: v for k, v in choice.ratio.items() if v > 0}
        if self.prune == "magnitude" and ratios:
            steps.append(("magnitude", config_from_dict("magnitude", {"sparsity": ratios})))
        elif self.prune == "l1-filter" and ratios:
            steps.append(("l1-filter", config_from_dict("l1-filter", {"ratio": ratios})))
        if finetune_epochs > 0 and steps:
            steps.append(("finetune", config_from_dict("finetune",
                                                       {"epochs": finetune_epochs})))
        elif steps and self.recalibrate:  # a trial: BatchNorm statistics, no weight change
            steps.append(("recalibrate-batchnorm",
                          config_from_dict("recalibrate-batchnorm", {})))
        if self.fold_batchnorm:  # see modelzip.search.fold: the graph holds folded weights
            steps.append(("fold-batchnorm", config_from_dict("fold-batchnorm", {})))
        if self.quantize != "none" and choice.bits:
            options: dict[str, Any] = {"bits": dict(choice.bits)}
            # Centroid fine-tuning of a network whose BatchNorm is folded diverges at the
            # learning rates that suit it with BatchNorm (eurosat_cnn: 70% -> 83% validation
            # error, against 70% -> 43% unfolded): the folded clustering is not fine-tuned.
            if finetune_epochs > 0 and quant_finetune and self.quantize == "kmeans" \
                    and not self.fold_batchnorm:
                options["finetune"] = dict(quant_finetune)
            if self.quantize == "uniform":
                options["per_channel"] = True
            steps.append((self.quantize, config_from_dict(self.quantize, options)))
        pack: dict[str, Any] = {"format": self.format, "coder": "best"}
        if self.format == "onnx":
            pack["int8"] = bool(choice.int8)
        return Recipe(name, tuple(steps), dict(finetune_defaults or {}),
                      description="found by modelzip.search", pack=pack)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers), "bits": list(self.bits),
                "int8": list(self.int8)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        values = dict(data)
        for key in ("layers", "bits", "int8"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def space_hash(self, model: nn.Module | None = None) -> str:
        """A fingerprint of the space and of the model's parameter shapes."""
        data: dict[str, Any] = self.to_dict()
        if model is not None:
            data["model"] = {k: list(v.shape) for k, v in model.state_dict().items()}
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
