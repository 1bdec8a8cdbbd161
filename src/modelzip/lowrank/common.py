"""What the factorization techniques share: which layers a method takes, their geometry on
the context's example inputs, per-layer rank options, and the end of every step (drop stale
pruning masks, optional fine-tuning, the step's record)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from modelzip.core.dataset import call_model
from modelzip.core.selection import LayerSelector, select, select_values
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.lowrank.surgery import SUPPORTED, ConvGeometry, conv_geometry, supports
from modelzip.registry import Context

__all__ = ["check_energy", "check_rank_option", "finish", "geometries",
           "pick_layers", "rank_of"]


def check_rank_option(value: Any, technique: str, key: str = "rank") -> None:
    """A rank option (an int, or a mapping layer -> int/pair) has no value below 1."""
    values = value.items() if isinstance(value, Mapping) else [(None, value)]
    for layer, v in values:
        where = f"{technique}: {key}" + (f" of layer {layer!r}" if layer else "")
        for r in (v if isinstance(v, tuple | list) else (v,)):
            if isinstance(r, bool) or not isinstance(r, int):
                raise ConfigError(f"{where} must be an integer, got {r!r}")
            if r < 1:
                raise ConfigError(f"{where} must be >= 1 (a rank of 0 would remove the "
                                  f"layer), got {r}")


def check_energy(value: float | None, technique: str, key: str = "energy") -> None:
    if value is not None and not 0 < value <= 1:
        raise ConfigError(f"{technique}: {key} must be in (0, 1], got {value}")


def pick_layers(model: nn.Module, method: str, selector: LayerSelector | None,
                technique: str, per_layer: Any = None) -> tuple[list[str], dict[str, Any]]:
    """The layers ``method`` factorizes, and ``per_layer`` resolved to them when it is a
    mapping (layer name or pattern -> value). Layers the selector (or the mapping) names
    explicitly must be supported; without names, unsupported ones (grouped convs, 1x1 convs
    for tucker2/cp) are left out."""
    kinds = SUPPORTED[method]
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
    takes = " and ".join(k.__name__ for k in kinds) + " layers"
    values: dict[str, Any] = {}
    if isinstance(per_layer, Mapping):
        values = select_values(per_layer, candidates, technique=technique, selector=selector,
                               model=model, takes=takes)
        chosen = list(values)
        explicit = True
    else:
        chosen = select(selector, candidates, technique=technique, model=model, takes=takes)
        explicit = selector is not None and bool(selector.names)
    modules = dict(model.named_modules())
    kept = []
    for name in chosen:
        why = supports(method, modules[name])
        if why is None:
            kept.append(name)
        elif explicit:
            raise ConfigError(f"{technique}: layer {name!r} is {why}")
    if not kept:
        raise ConfigError(f"{technique}: none of the chosen layers can be factorized by "
                          f"{method} (it takes {takes}"
                          + (", groups=1, with a spatial kernel)" if method != "svd" else ")"))
    return kept, {n: values[n] for n in kept if n in values}


@torch.no_grad()
def geometries(model: nn.Module, names: list[str], ctx: Context) -> dict[str, ConvGeometry]:
    """Each named layer's geometry on one sample of the context's example inputs."""
    from modelzip.metrics import _example_input

    modules = dict(model.named_modules())
    found: dict[str, ConvGeometry] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name not in found:
                found[name] = conv_geometry(module, args[0], output)
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        call_model(model, _example_input(model, None, 1, ctx.example_inputs))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"layers {', '.join(missing)} are not called by the model's forward "
                          "on the example inputs; leave them out (layers: {ignore: [...]})")
    return found


def rank_of(value: Any, resolved: dict[str, Any], name: str) -> Any:
    """A layer's rank option: from the per-layer mapping resolved by ``pick_layers``, else the
    one value."""
    return resolved[name] if isinstance(value, Mapping) else value


def finish(model: nn.Module, ctx: Context, technique: str, layers: list[dict[str, Any]],
           finetune: FinetuneConfig | None, before: Any, extra: dict[str, Any] | None = None,
           lr_scale: float = 1.0) -> nn.Module:
    """Drop the pruning masks of replaced layers, fine-tune when asked (masks of the other
    layers kept), and append the step's record: per layer and totals before/after.
    ``lr_scale``: the fine-tuning lr is the context's times this unless the step gives one."""
    from modelzip.metrics import profile_model
    from modelzip.prune.masks import MaskKeeper

    replaced = [r["layer"] for r in layers]
    for key in list(ctx.masks):
        if any(key == f"{n}.weight" or key.startswith(f"{n}.") for n in replaced):
            del ctx.masks[key]
    record: dict[str, Any] = {"step": technique, **(extra or {}), "layers": layers}
    cfg = resolve_finetune(finetune, FinetuneConfig(epochs=0), ctx.finetune)
    if cfg is not None and lr_scale != 1.0 and (finetune is None or finetune.lr is None):
        cfg = dataclasses.replace(cfg, lr=cfg.lr * lr_scale)
    if cfg is not None:
        if ctx.val_data is not None:
            record["val_error_pct_before_finetune"] = ctx.val_error(model)
        start = time.perf_counter()
        with MaskKeeper(model, ctx.masks) as keeper:
            ctx.train(model, cfg, step_callbacks=[keeper], technique=technique)
        record["finetune"] = cfg.to_dict()
        record["finetune_wall_time_s"] = round(time.perf_counter() - start, 2)
    if before is not None:  # the same inputs counted the model before
        after = profile_model(model, example_inputs=ctx.example_inputs)
        record.update({"params_before": before.params, "params_after": after.params,
                       "macs_before": before.total_macs, "macs_after": after.total_macs,
                       "macs_ratio": before.total_macs / max(after.total_macs, 1),
                       "params_ratio": before.params / max(after.params, 1)})
    if ctx.val_data is not None:
        record["val_error_pct"] = ctx.val_error(model)
    ctx.records.append(record)
    if ctx.progress:
        per = ", ".join(f"{r['layer']} rank {r['rank']} (err {r['rel_error']:.3f})"
                        for r in layers)
        macs = (f"; MACs {record['macs_ratio']:.2f}x fewer" if "macs_ratio" in record else "")
        ctx.log(f"{technique}: {per}{macs}")
    return model


def profile_before(model: nn.Module, ctx: Context) -> Any:
    from modelzip.metrics import profile_model

    if ctx.example_inputs is None and getattr(model, "modelzip_spec", None) is None:
        return None
    return profile_model(model, example_inputs=ctx.example_inputs)
