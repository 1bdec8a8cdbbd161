"""Technique ``rank-select``: choose the rank of every layer for a whole-network target
(MACs, parameters or bytes) and factorize (k x k convs by Tucker-2 or SVD, Linear and 1x1
convs by SVD).

Each layer gets a ladder of ``steps`` rank options (ranks k/steps of the largest, for
Tucker-2 proportional to the output and input channels) with their cost and relative squared
reconstruction error e. Strategies:

- ``joint`` (Kim et al. 2019's idea: rank all layers at once for the network's target):
  minimise sum_l w_l e_l subject to the total cost, by a Lagrangian sweep over the layers'
  ladders (each layer takes the option minimising w_l e + lambda cost; lambda bisected to the
  target; left-over budget then spent on the cheapest error reductions). ``proxy: metric``
  takes w_l = 1 (an accuracy/complexity metric from the weights alone); ``proxy: val``
  (default) builds ``candidates`` rank sets with layer weights w_l = s_l^gamma from each
  layer's measured sensitivity s_l (validation error when only that layer is factorized),
  gamma from 0 to 1.5, and keeps the set with the lowest validation error without
  fine-tuning;
- ``greedy``: layer by layer, no trade-off between layers: every layer keeps the same
  fraction of its own cost (the largest rank within it), the fraction lowered until the
  network meets the target.

A target no rank choice meets is refused, naming the smallest reachable. ``bytes`` is the
dense fp32 bytes of all parameters (what the ``.mzip`` holds before coding).

``latency`` (as NetAdapt and AMC do): a per-layer table of measured latencies, onnxruntime
at batch 1 with ``threads`` threads, each candidate rank's factorized layer timed alone on
that layer's input; the rest of the network costs the whole model's measured latency less
its layers' own. The ladders' costs are the table's; options slower than the layer as it is
are dropped. The factorized model's latency is then measured, and the record gives the
table, the planned and the measured fraction (the sum of lone layers is an estimate: fused
operators and the session's fixed cost make the two differ a little).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelzip.core.registry import normalise_layers
from modelzip.core.selection import LayerSelector
from modelzip.errors import ConfigError, check_choice
from modelzip.finetune import FinetuneConfig
from modelzip.lowrank.common import finish, geometries, pick_layers, profile_before
from modelzip.lowrank.decompose import singular_values, svd_factors, tucker2
from modelzip.lowrank.surgery import (
    ConvGeometry,
    conv_svd_module,
    linear_svd_module,
    original_cost,
    replace_module,
    svd_cost,
    tucker2_cost,
    tucker2_module,
)
from modelzip.lowrank.techniques import proportional_ranks
from modelzip.registry import Context, register_technique

__all__ = ["RankSelectConfig", "rank_select"]

TARGETS = ("macs", "params", "bytes", "latency")
STRATEGIES = ("joint", "greedy")
PROXIES = ("val", "metric")
CONV_METHODS = ("tucker2", "svd")


@dataclass(frozen=True)
class RankSelectConfig:
    """Whole-network rank selection (see the module docstring).

    - ``target``: macs | params | bytes | latency; ``ratio``: the fraction (0, 1) of the
      model's target to keep (0.5: 2x fewer; latency 0.66: 1.5x faster);
    - ``threads``, ``latency_runs`` (latency): onnxruntime threads, timed runs per entry of
      the latency table (median);
    - ``strategy``: joint | greedy; ``proxy`` (joint): val | metric; ``candidates``: rank
      sets scored on ``val_samples`` validation samples (proxy val);
    - ``conv``: tucker2 | svd, how k x k convolutions are factorized; ``steps``: rungs of
      each layer's rank ladder;
    - ``layers``: default every Linear and Conv2d (groups=1); ``finetune``: after it."""

    target: str = "macs"
    ratio: float = 0.5
    strategy: str = "joint"
    proxy: str = "val"
    candidates: int = 6
    val_samples: int = 1000
    conv: str = "tucker2"
    steps: int = 16
    threads: int = 1
    latency_runs: int = 30
    layers: LayerSelector | None = None
    finetune: FinetuneConfig | None = None

    def __post_init__(self) -> None:
        name = "rank-select"
        if self.threads < 1 or self.latency_runs < 1:
            raise ConfigError(f"{name}: threads and latency_runs must be >= 1")
        check_choice(self.target, TARGETS, name, "target")
        check_choice(self.strategy, STRATEGIES, name, "strategy")
        check_choice(self.proxy, PROXIES, name, "proxy")
        check_choice(self.conv, CONV_METHODS, name, "conv")
        if not 0 < self.ratio < 1:
            raise ConfigError(f"{name}: ratio (the fraction of the model's {self.target} to "
                              f"keep) must be in (0, 1), got {self.ratio}")
        if self.candidates < 1 or self.val_samples < 1 or self.steps < 2:
            raise ConfigError(f"{name}: candidates and val_samples must be >= 1, steps >= 2")
        normalise_layers(self, name, verb="factorize")


@dataclass
class _Option:
    rank: Any  # None: the layer as it is
    cost: float  # in the target's unit
    error: float  # relative squared reconstruction error


@dataclass
class _Layer:
    name: str
    method: str  # "svd" or "tucker2"
    geometry: ConvGeometry
    options: list[_Option] = field(default_factory=list)  # options[0]: as it is


def _cost(g: ConvGeometry, method: str, rank: Any, target: str) -> float:
    params, macs = (original_cost(g) if rank is None else
                    svd_cost(g, rank) if method == "svd" else tucker2_cost(g, rank))
    return float(macs if target == "macs" else params * (4 if target == "bytes" else 1))


def _ladder(module: nn.Module, layer: _Layer, steps: int, target: str) -> None:
    g = layer.geometry
    keep = _cost(g, layer.method, None, target)
    layer.options.append(_Option(None, keep, 0.0))
    seen = set()
    if layer.method == "svd":
        s2 = singular_values(module.weight.detach().reshape(g.out_features, -1)) ** 2
        total = float(s2.sum()) or 1.0
        top = len(s2)
        for k in range(1, steps + 1):
            r = max(1, math.ceil(k * top / steps))
            cost = _cost(g, "svd", r, target)
            if r in seen or cost >= keep:
                continue
            seen.add(r)
            layer.options.append(_Option(r, cost, float(s2[r:].sum()) / total))
    else:
        top = max(g.out_features, g.in_features)
        for k in range(1, steps + 1):
            pair = proportional_ranks(g, max(1, math.ceil(k * top / steps)))
            cost = _cost(g, "tucker2", pair, target)
            if pair in seen or cost >= keep:
                continue
            seen.add(pair)
            error = tucker2(module.weight.detach(), pair, n_iter_max=10).error
            layer.options.append(_Option(pair, cost, error ** 2))


def _total_cost(layers: list[_Layer], choice: list[int]) -> float:
    """The total cost of the chosen option (an index per layer) of every layer."""
    return sum(layer.options[i].cost for layer, i in zip(layers, choice, strict=True))


def _allocate(layers: list[_Layer], weights: list[float], budget: float) -> list[int]:
    """Option index per layer minimising sum w e within ``budget`` (the factorized layers'
    total cost): a Lagrangian bisection, then the slack spent greedily."""
    def pick(lam: float) -> list[int]:
        return [min(range(len(layer.options)),
                    key=lambda i, layer=layer, w=w: (w * layer.options[i].error
                                                     + lam * layer.options[i].cost,
                                                     layer.options[i].cost))
                for layer, w in zip(layers, weights, strict=True)]

    lo, hi = 0.0, max(max(weights), 1e-12)
    for _ in range(200):  # a large enough lambda takes every layer's cheapest option
        if _total_cost(layers, pick(hi)) <= budget:
            break
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        if _total_cost(layers, pick(mid)) > budget:
            lo = mid
        else:
            hi = mid
    choice = pick(hi)
    # spend what is left: the upgrade with the largest error reduction per unit of cost
    while True:
        spare = budget - _total_cost(layers, choice)
        best, best_gain = None, 0.0
        for li, (layer, w) in enumerate(zip(layers, weights, strict=True)):
            now = layer.options[choice[li]]
            for oi, opt in enumerate(layer.options):
                extra = opt.cost - now.cost
                gain = w * (now.error - opt.error)
                if 0 < extra <= spare and gain > 0 and gain / extra > best_gain:
                    best, best_gain = (li, oi), gain / extra
        if best is None:
            return choice
        choice[best[0]] = best[1]


def _uniform(layers: list[_Layer], budget: float) -> list[int]:
    """Every layer keeps the same fraction f of its own cost; f bisected to the budget."""
    def pick(f: float) -> list[int]:
        out = []
        for layer in layers:
            limit = f * layer.options[0].cost
            fits = [i for i, o in enumerate(layer.options) if o.cost <= limit]
            out.append(min(fits, key=lambda i, layer=layer: layer.options[i].error) if fits
                       else min(range(len(layer.options)),
                                key=lambda i, layer=layer: layer.options[i].cost))
        return out

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _total_cost(layers, pick(mid)) > budget:
            hi = mid
        else:
            lo = mid
    return pick(lo)


def _factorize(model: nn.Module, layer: _Layer, option: _Option) -> dict[str, Any]:
    module = model.get_submodule(layer.name)
    g = layer.geometry
    if layer.method == "svd":
        w = module.weight.detach().reshape(g.out_features, -1)
        a, b = svd_factors(w, option.rank)
        new = linear_svd_module(module, a, b) if isinstance(module, nn.Linear) else \
            conv_svd_module(module, a, b)
        cost, error = svd_cost(g, option.rank), math.sqrt(option.error)
    else:
        result = tucker2(module.weight.detach(), option.rank)
        new = tucker2_module(module, result)
        cost, error = tucker2_cost(g, option.rank), result.error
    replace_module(model, layer.name, new)
    params, macs = original_cost(g)
    rank = list(option.rank) if isinstance(option.rank, tuple) else option.rank
    return {"layer": layer.name, "type": type(module).__name__, "method": layer.method,
            "rank": rank, "params_before": params, "params_after": cost[0],
            "macs_before": macs, "macs_after": cost[1], "rel_error": error}


def _built(model: nn.Module, layers: list[_Layer], choice: list[int]) -> nn.Module:
    work = copy.deepcopy(model)
    for layer, i in zip(layers, choice, strict=True):
        if layer.options[i].rank is not None:
            _factorize(work, layer, layer.options[i])
    return work.eval()


def measure_latency_ms(module: nn.Module, example: Any, threads: int = 1, runs: int = 30
                       ) -> float:
    """Median milliseconds of ``module`` on ``example`` (one sample) in onnxruntime with
    ``threads`` threads, after a few warm-up runs."""
    import warnings

    from modelzip.runtime.export import export_onnx
    from modelzip.runtime.ort import make_session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings of the export
        graph = export_onnx(copy.deepcopy(module).eval(), example_inputs=example,
                            dynamic_batch=False)
    session = make_session(graph, threads=threads)
    feeds = {session.get_inputs()[0].name: example.detach().numpy()}
    for _ in range(max(3, runs // 5)):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _option_module(module: nn.Module, layer: _Layer, option: _Option) -> nn.Module:
    """The layer as ``option`` makes it (weights do not matter for timing: one HOOI step)."""
    if option.rank is None:
        return module
    g = layer.geometry
    if layer.method == "svd":
        a, b = svd_factors(module.weight.detach().reshape(g.out_features, -1), option.rank)
        return linear_svd_module(module, a, b) if isinstance(module, nn.Linear) else \
            conv_svd_module(module, a, b)
    return tucker2_module(module, tucker2(module.weight.detach(), option.rank, n_iter_max=1))


@torch.no_grad()
def _layer_inputs(model: nn.Module, names: list[str], example: Any) -> dict[str, torch.Tensor]:
    from modelzip.core.dataset import call_model

    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            seen.setdefault(name, args[0].detach())  # a hook returning a value replaces output
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        call_model(model.eval(), example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _latency_costs(model: nn.Module, layers: list[_Layer], example: Any,
                   config: RankSelectConfig) -> tuple[float, dict[str, dict[str, float]]]:
    """Put each option's measured latency (ms, less a session's fixed cost) in its cost,
    dropping options slower than the layer as it is; returns the whole model's latency and
    the table (with the fixed cost under "session overhead")."""
    inputs = _layer_inputs(model, [layer.name for layer in layers], example)
    # what a session run costs with next to no work: taken off every lone layer's time (the
    # whole model pays it once)
    overhead = measure_latency_ms(nn.ReLU(), torch.zeros(1, 1), config.threads,
                                  config.latency_runs)
    table: dict[str, dict[str, float]] = {"session overhead": {"as is": round(overhead, 5)}}
    for layer in layers:
        module = model.get_submodule(layer.name)
        row = {}
        for option in layer.options:
            option.cost = max(measure_latency_ms(_option_module(module, layer, option),
                                                 inputs[layer.name], config.threads,
                                                 config.latency_runs) - overhead, 1e-6)
            rank = list(option.rank) if isinstance(option.rank, tuple) else option.rank
            row["as is" if rank is None else str(rank)] = round(option.cost, 5)
        keep = layer.options[0].cost
        layer.options[1:] = [o for o in layer.options[1:] if o.cost < keep]
        table[layer.name] = row
    whole = measure_latency_ms(model, example, config.threads, config.latency_runs)
    return whole, table


def _val_subset(data: Any, n: int) -> Any:
    if not hasattr(data, "subset") or len(data) <= n:
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    return data.subset(idx.sort().values)


def _model_total(profile: Any, target: str) -> float:
    return float(profile.total_macs if target == "macs" else
                 profile.params * (4 if target == "bytes" else 1))


@register_technique("rank-select", RankSelectConfig, kind="factorize")
def rank_select(model: nn.Module, config: RankSelectConfig, ctx: Context) -> nn.Module:
    """Whole-network rank selection for a MAC, parameter or byte target: joint (by
    validation error without fine-tuning, or a weight-error metric) or layer by layer."""
    name = "rank-select"
    names, _ = pick_layers(model, "svd", config.layers, name)
    geo = geometries(model, names, ctx)
    before = profile_before(model, ctx)
    if before is None:
        raise ConfigError(f"{name} needs example inputs to count the model's cost")
    modules = dict(model.named_modules())
    latency = config.target == "latency"
    layers = []
    for n in names:
        conv_kxk = isinstance(modules[n], nn.Conv2d) and modules[n].kernel_size != (1, 1)
        layer = _Layer(n, config.conv if conv_kxk else "svd", geo[n])
        _ladder(modules[n], layer, config.steps, "macs" if latency else config.target)
        layers.append(layer)
    selection: dict[str, Any] = {"target": config.target, "ratio": config.ratio,
                                 "strategy": config.strategy, "conv": config.conv}
    if latency:
        from modelzip.metrics import _example_input

        example = _example_input(model, None, 1, ctx.example_inputs)
        if not isinstance(example, torch.Tensor):
            raise ConfigError(f"{name}: target latency times models of one tensor input; "
                              "this one takes several (use target macs)")
        measured_before, table = _latency_costs(model, layers, example, config)
        # the rest of the network: what the lone layers leave of the whole (not below 0)
        fixed = max(measured_before - sum(layer.options[0].cost for layer in layers), 0.0)
        whole = fixed + sum(layer.options[0].cost for layer in layers)
        selection.update({"threads": config.threads, "latency_ms_before": measured_before,
                          "latency_ms_rest": fixed, "latency_table_ms": table})
    else:
        whole = _model_total(before, config.target)
        fixed = whole - sum(layer.options[0].cost for layer in layers)  # not factorized
    budget = config.ratio * whole - fixed
    smallest = fixed + sum(min(o.cost for o in layer.options) for layer in layers)
    if budget < sum(min(o.cost for o in layer.options) for layer in layers):
        raise ConfigError(f"{name}: keeping {config.ratio:g} of the model's {config.target} "
                          f"cannot be met: the smallest reachable is {smallest / whole:.4f} "
                          "(every chosen layer at its cheapest rank); raise ratio or add "
                          "layers")
    if config.strategy == "greedy":
        choice = _uniform(layers, budget)
    elif config.proxy == "metric":
        choice = _allocate(layers, [1.0] * len(layers), budget)
        selection["proxy"] = "metric"
    else:
        val = _val_subset(ctx.require("val_data", f"{name} (proxy: val; or proxy: metric)"),
                          config.val_samples)
        base_choice = _allocate(layers, [1.0] * len(layers), budget)
        base_err = ctx.error(model, val)
        sens = []
        for li in range(len(layers)):  # each layer alone at the metric's choice
            alone = [0] * len(layers)
            alone[li] = base_choice[li]
            sens.append(max(ctx.error(_built(model, layers, alone), val) - base_err, 0.0)
                        if base_choice[li] else 0.0)
        mean = sum(sens) / len(sens) if any(sens) else 1.0
        floor = 0.05 * mean if mean > 0 else 1.0
        scored = []
        gammas = [1.5 * i / max(config.candidates - 1, 1) for i in range(config.candidates)]
        for gamma in gammas:
            weights = [((s + floor) / (mean + floor)) ** gamma for s in sens]
            cand = _allocate(layers, weights, budget)
            if any(c == cand for _, c, _ in scored):
                continue
            err = ctx.error(_built(model, layers, cand), val)
            scored.append((gamma, cand, err))
        gamma, choice, _ = min(scored, key=lambda t: t[2])
        selection.update({"proxy": "val", "val_samples": len(val),
                          "val_error_pct_unfactorized": base_err,
                          "sensitivity_points": dict(zip(names, sens, strict=True)),
                          "candidates": [{"gamma": g, "val_error_pct": e,
                                          "ranks": {layer.name: layer.options[i].rank
                                                    for layer, i in zip(layers, c,
                                                                        strict=True)}}
                                         for g, c, e in scored],
                          "chosen_gamma": gamma})
    records = [_factorize(model, layer, layer.options[i])
               for layer, i in zip(layers, choice, strict=True)
               if layer.options[i].rank is not None]
    kept = [layer.name for layer, i in zip(layers, choice, strict=True)
            if layer.options[i].rank is None]
    planned = fixed + sum(layer.options[i].cost for layer, i in zip(layers, choice,
                                                                      strict=True))
    selection["planned_fraction"] = planned / whole
    if latency:  # the factorized model's latency, measured
        measured = measure_latency_ms(model, example, config.threads, config.latency_runs)
        selection.update({"latency_ms_after": measured,
                          "measured_fraction": measured / selection["latency_ms_before"],
                          "latency_target_met": measured <= config.ratio
                          * selection["latency_ms_before"]})
        if not selection["latency_target_met"]:
            ctx.log(f"{name}: measured latency {measured:.3f} ms is "
                    f"{measured / selection['latency_ms_before']:.3f} of the model's, above "
                    f"the target {config.ratio:g} (planned {planned / whole:.3f})")
    if kept:
        selection["kept_unfactorized"] = kept
    for r in records:
        if isinstance(r["rank"], tuple):
            r["rank"] = list(r["rank"])
    if "candidates" in selection:
        for cand in selection["candidates"]:
            cand["ranks"] = {k: list(v) if isinstance(v, tuple) else v
                             for k, v in cand["ranks"].items()}
    return finish(model, ctx, name, records, config.finetune, before,
                  {"selection": selection})
