"""Technique ``sparse-vd``: Sparse Variational Dropout (Molchanov, Ashukha & Vetrov 2017),
training that makes most weights free to code (exactly zero).

Each chosen weight ``theta`` gets a learned variance through the additive reparameterization
``w = theta + sigma * eps``, ``alpha = sigma^2 / theta^2``. Training minimises the task loss
plus ``beta * KL / N`` (the ELBO per training sample; ``beta`` is the KL weight, ramped up
from 0) with the local reparameterization trick: a layer samples its pre-activations
``N(x theta^T, x^2 sigma^2^T)`` instead of its weights. The KL term of the log-uniform prior
is the paper's approximation ``-KL ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) -
k1``; it pushes alpha up, and a weight whose ``log alpha`` passes the threshold (3: alpha =
20, noise far above signal) is pruned. At the end each layer is a plain ``nn.Linear`` /
``nn.Conv2d`` again whose weight is ``theta`` where kept and exactly 0.0 where pruned; the
masks go into ``ctx.masks`` (as the pruning techniques leave them) so that k-means weight
sharing, fine-tuning and packing that follow keep the zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelzip.core.dataset import first_batch_inputs
from modelzip.core.selection import LayerSelector, as_selector, select
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.prune.masks import MaskKeeper, apply_masks, layer_of
from modelzip.rate.dead_units import zero_dead_biases
from modelzip.registry import Context, register_technique

__all__ = ["SparseVDConfig", "kl_approx", "log_alpha", "sparse_vd"]

# The paper's fit of -KL(q || log-uniform prior) as a function of log alpha (eq. 14).
K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLAMP = 8.0  # |log alpha| beyond this changes neither the KL nor the mask
EPS = 1e-8
# Training defaults of the technique (the context's fine-tuning fills in the rest): Adam, as
# in the paper; variances start tiny (log sigma^2 = -10) so a trained model starts as it is.
DEFAULT_TRAIN = FinetuneConfig(epochs=10, lr=1e-3, optimizer="adamw", weight_decay=0.0,
                               schedule="cosine")


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """log(sigma^2 / theta^2), clamped to +-8."""
    la = log_sigma2 - torch.log(theta * theta + EPS)
    return la.clamp(-LOG_ALPHA_CLAMP, LOG_ALPHA_CLAMP)


def kl_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """The summed KL divergence of the weights from the log-uniform prior (Molchanov et al.
    2017, eq. 14; exact up to an additive constant, which is chosen so that KL -> 0 as
    alpha -> infinity)."""
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -neg_kl.sum()


@dataclass(frozen=True)
class SparseVDConfig:
    """Sparse variational dropout from the given (trained) weights.

    - ``finetune``: the training run (default 10 epochs of AdamW without weight decay at lr
      0.001, cosine schedule; settings left out come from the context's fine-tuning); it
      cannot be 0 epochs;
    - ``kl_weight``: the final weight beta of the KL term per training sample (1 is the
      ELBO; more prunes harder), reached by a linear ramp from ``kl_weight_start`` over the
      first ``kl_warmup_epochs`` epochs (fractional epochs allowed);
    - ``threshold``: log alpha above which a weight is pruned (the paper's 3);
    - ``init_log_sigma2``: the starting log variance of every weight;
    - ``train_size``: the N of KL / N; default the training data's length;
    - ``zero_dead_biases``: afterwards set to 0.0 the biases of units that no kept weight
      reads any more (``modelzip.rate.dead_units``; checked to leave the outputs unchanged);
    - ``layers``: which Linear and Conv2d layers (a ``LayerSelector``; default all)."""

    finetune: FinetuneConfig | None = None
    kl_weight: float = 1.0
    kl_weight_start: float = 0.0
    kl_warmup_epochs: float = 1.0
    threshold: float = 3.0
    init_log_sigma2: float = -10.0
    train_size: int | None = None
    zero_dead_biases: bool = True
    layers: LayerSelector | None = None

    def __post_init__(self) -> None:
        name = "sparse-vd"
        for key in ("kl_weight", "kl_weight_start", "kl_warmup_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}: {key} must be a number >= 0, got {value!r}")
        for key in ("threshold", "init_log_sigma2"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise ConfigError(f"{name}: {key} must be a finite number, got {value!r}")
        if not -LOG_ALPHA_CLAMP < self.threshold < LOG_ALPHA_CLAMP:
            raise ConfigError(f"{name}: threshold must lie between {-LOG_ALPHA_CLAMP} and "
                              f"{LOG_ALPHA_CLAMP} (log alpha is clamped there), got "
                              f"{self.threshold!r}")
        size = self.train_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < 1):
            raise ConfigError(f"{name}: train_size must be an integer >= 1, got {size!r}")
        if self.finetune is not None and self.finetune.skips:
            raise ConfigError(f"{name}: finetune epochs must be >= 1 (sparse-vd is a training "
                              "run)")
        layers = self.layers
        if isinstance(layers, list | tuple) and not layers:
            raise ConfigError(f"{name}: layers is empty; leave it out to train every Linear "
                              "and Conv2d layer")
        object.__setattr__(self, "layers", as_selector(layers, f"{name}: layers"))


class _VariationalLayer(nn.Module):
    """A Linear or Conv2d layer during sparse VD training: the layer's own weight is theta,
    ``log_sigma2`` its log variance. Training: local reparameterization (pre-activations
    sampled); evaluation: theta with the weights past the threshold at 0."""

    def __init__(self, layer: nn.Linear | nn.Conv2d, init_log_sigma2: float,
                 threshold: float, keep: torch.Tensor | None) -> None:
        super().__init__()
        self.layer = layer
        self.log_sigma2 = nn.Parameter(torch.full_like(layer.weight.detach(),
                                                       init_log_sigma2))
        self.threshold = threshold
        self.register_buffer("keep", keep if keep is not None else
                             torch.ones_like(layer.weight, dtype=torch.bool))

    def log_alpha(self) -> torch.Tensor:
        return log_alpha(self.layer.weight, self.log_sigma2)

    def sparse_weight(self) -> torch.Tensor:
        """theta where kept, exactly 0.0 where pruned (or pruned before)."""
        kept = self.keep & (self.log_alpha() < self.threshold)
        return torch.where(kept, self.layer.weight, 0.0)

    def _layer_op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
               ) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation,
                        layer.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._layer_op(x, self.sparse_weight(), self.layer.bias)
        theta = torch.where(self.keep, self.layer.weight, 0.0)
        mean = self._layer_op(x, theta, self.layer.bias)
        sigma2 = torch.where(self.keep, self.log_sigma2.exp(), 0.0)
        var = self._layer_op(x * x, sigma2, None)
        return mean + (var + EPS).sqrt() * torch.randn_like(mean)


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if type(m) in (nn.Linear, nn.Conv2d) and n}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class _KLTerm:
    """``beta(step) * KL / N``, the extra loss of a training step; ``beta`` ramps up
    linearly over the warm-up steps (a step callback counts them)."""

    def __init__(self, layers: list[_VariationalLayer], config: SparseVDConfig, n: int,
                 steps_per_epoch: int) -> None:
        self.layers, self.n, self.step = layers, n, 0
        self.start, self.end = config.kl_weight_start, config.kl_weight
        self.warmup = max(1, round(config.kl_warmup_epochs * steps_per_epoch)) \
            if config.kl_warmup_epochs > 0 else 0

    def beta(self) -> float:
        if self.step >= self.warmup:
            return self.end
        return self.start + (self.end - self.start) * self.step / self.warmup

    def __call__(self, model: nn.Module, x: Any, logits: Any, y: Any) -> torch.Tensor:
        kl = sum(kl_approx(layer.log_alpha()) for layer in self.layers)
        return self.beta() * kl / self.n

    def count(self, model: nn.Module, step: int) -> None:
        self.step = step


class _KeepPruned:
    """Holds theta (and its gradient) at 0 where an earlier step pruned it."""

    def __init__(self, layers: list[_VariationalLayer]) -> None:
        self.keepers = [(layer.layer, MaskKeeper(layer.layer, {"weight": layer.keep}))
                        for layer in layers if not bool(layer.keep.all())]

    def __call__(self, model: nn.Module, step: int) -> None:
        for layer, keeper in self.keepers:
            keeper(layer, step)

    def remove(self) -> None:
        for _, keeper in self.keepers:
            keeper.remove()


def _train_size(config: SparseVDConfig, data: Any) -> int:
    if config.train_size is not None:
        return config.train_size
    try:
        return len(data)
    except TypeError:
        raise ConfigError("sparse-vd: the training data has no length; give train_size (the "
                          "number of training samples, the N of KL / N)") from None


@register_technique("sparse-vd", SparseVDConfig, kind="prune")
def sparse_vd(model: nn.Module, config: SparseVDConfig, ctx: Context) -> nn.Module:
    """Sparse variational dropout (Molchanov et al. 2017): train per-weight dropout rates
    with a log-uniform prior and prune the weights whose log alpha passes the threshold.

    The layers end as plain Linear/Conv2d with pruned weights exactly 0 and their masks in
    the context, ready for k-means weight sharing and packing."""
    name = "sparse-vd"
    train = ctx.require("train_data", name)
    tune = resolve_finetune(config.finetune, DEFAULT_TRAIN, ctx.finetune)
    assert tune is not None  # the config refuses 0 epochs
    candidates = _candidates(model)
    chosen = select(config.layers, candidates, technique=name, model=model,
                    kind="Linear and Conv2d layers", takes="nn.Linear and nn.Conv2d layers")
    n = _train_size(config, train)
    variational: dict[str, _VariationalLayer] = {}
    for layer_name in chosen:
        layer = candidates[layer_name]
        param = f"{layer_name}.weight"
        before = ctx.masks.get(param)
        keep = before.to(torch.bool).clone() if before is not None else \
            (layer.weight.detach() != 0) if bool((layer.weight == 0).any()) else None
        variational[layer_name] = _VariationalLayer(layer, config.init_log_sigma2,
                                                    config.threshold, keep)
    try:
        for layer_name, wrapper in variational.items():
            _set_module(model, layer_name, wrapper)
        steps_per_epoch = _steps_per_epoch(train, tune.batch_size)
        kl = _KLTerm(list(variational.values()), config, n, steps_per_epoch)
        keep_pruned = _KeepPruned(list(variational.values()))
        others = {p: m for p, m in ctx.masks.items() if layer_of(p) not in variational}
        try:
            with MaskKeeper(model, others) as keeper:
                hist = ctx.train(model, tune, data=train, extra_loss=kl,
                                 step_callbacks=[keeper, keep_pruned, kl.count],
                                 technique=name)
        finally:
            keep_pruned.remove()
        with torch.no_grad():
            final = {ln: (w.sparse_weight() != 0) & w.keep for ln, w in variational.items()}
            alphas = {ln: w.log_alpha() for ln, w in variational.items()}
    finally:
        for layer_name, wrapper in variational.items():
            _set_module(model, layer_name, wrapper.layer)
    layers = []
    for layer_name, keep in final.items():
        param = f"{layer_name}.weight"
        ctx.masks[param] = keep
        layers.append({"layer": layer_name, "param": param, "params": keep.numel(),
                       "kept": int(keep.sum()),
                       "median_log_alpha": round(float(alphas[layer_name].median()), 3)})
    apply_masks(model, {f"{ln}.weight": k for ln, k in final.items()})
    dead = zero_dead_biases(model, first_batch_inputs(train, 64), list(final)) \
        if config.zero_dead_biases else {}
    total = sum(r["params"] for r in layers)
    kept = sum(r["kept"] for r in layers)
    record: dict[str, Any] = {"step": name, "epochs": tune.epochs, "lr": tune.lr,
                              "optimizer": tune.optimizer, "kl_weight": config.kl_weight,
                              "kl_weight_start": config.kl_weight_start,
                              "kl_warmup_epochs": config.kl_warmup_epochs,
                              "threshold": config.threshold, "train_size": n,
                              "kept": kept, "params": total,
                              "compression_x": round(total / max(kept, 1), 2),
                              "dead_biases_zeroed": dead,
                              "wall_time_s": round(hist.wall_time_s, 2), "layers": layers}
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        per = ", ".join(f"{r['layer']} {100.0 * r['kept'] / r['params']:.2f}%" for r in layers)
        ctx.log(f"{name}: kept {kept:,} of {total:,} weights ({total / max(kept, 1):.0f}x): "
                f"{per}")
    return model


def _steps_per_epoch(data: Any, batch_size: int) -> int:
    try:
        return max(1, math.ceil(len(data) / batch_size))
    except TypeError:
        return 1
