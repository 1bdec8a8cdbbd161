"""``search``: the best point of a search space that meets a budget, then its final
fine-tune and a measured check.

    result = modelzip.search.search(model, parse_budget("size=32KB", max_drop=1), ctx=ctx,
                                    config=SearchConfig(strategy="bo", trials=20))

The steps: open (or resume) the study; measure the most compressed point of the space first
(when even it misses a size, MACs or parameter bound, the budget is impossible: say the
smallest reachable and stop); run the strategy's trials without fine-tuning; choose the
feasible trial with the lowest validation error (with only ``max_drop``: the smallest file
within it); run its recipe with the fixed fine-tuning steps through ``modelzip.compress``
and measure the result again. When no trial met the budget, the closest one is finished and
the result says so.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modelzip.core.context import Context, logger
from modelzip.errors import ConfigError, ModelzipError
from modelzip.search.budget import Budget, format_budget_value
from modelzip.search.evaluate import TrialEvaluator, runner_latency_ms
from modelzip.search.space import Choice, SearchSpace, default_layers
from modelzip.search.strategies import DONE, HistoryPoint, make_strategy
from modelzip.search.study import default_storage, open_study, redact

__all__ = ["SearchConfig", "SearchResult", "run_trials", "search"]


@dataclass(frozen=True)
class SearchConfig:
    """How to search. ``trials``: points evaluated in this study (a resumed study counts the
    ones it holds). ``storage``: an Optuna storage URL (default SQLite beside ``out``);
    ``study``: its name. ``finetune_epochs``: the chosen point's fine-tuning after pruning;
    ``quant_finetune``: the k-means centroid fine-tuning. ``val_samples``: a seeded subset of
    the validation data scores the trials (None: all of it). ``space``: options of the
    ``SearchSpace`` (prune, quantize, bits, format, int8, max_ratio, layers)."""

    strategy: str = "bo"
    trials: int = 20
    storage: str | None = None
    study: str | None = None
    seed: int = 0
    finetune_epochs: int = 1
    quant_finetune: dict[str, Any] | None = field(
        default_factory=lambda: {"epochs": 1, "lr": 0.001})
    val_samples: int | None = None
    space: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    progress: bool = True
    source: dict[str, Any] | None = None  # how a search-worker rebuilds model and data

    def __post_init__(self) -> None:
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials must be an integer >= 1, got {self.trials!r}")


@dataclass
class SearchResult:
    """The chosen point, its finished result (a ``CompressionResult``), every trial and
    whether the measured result met the budget."""

    budget: Budget
    space: SearchSpace
    chosen: Choice
    chosen_trial: dict[str, Any]
    compression: Any
    final_measured: dict[str, float | None]
    budget_met: bool
    drop_points: float | None
    trials: list[dict[str, Any]]
    message: str
    study: str
    storage: str
    strategy: str
    baseline: dict[str, Any]
    search_wall_time_s: float
    final_wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.to_dict(), "space": self.space.to_dict(),
                "chosen": self.chosen.to_dict(), "chosen_trial": self.chosen_trial,
                "final_measured": self.final_measured, "budget_met": self.budget_met,
                "drop_points": self.drop_points, "message": self.message,
                "study": self.study, "storage": redact(self.storage),
                "strategy": self.strategy, "baseline": self.baseline,
                "trials": self.trials, "search_wall_time_s": self.search_wall_time_s,
                "final_wall_time_s": self.final_wall_time_s,
                "compression": self.compression.to_dict() if self.compression else None}


# ---------------------------------------------------------------------------- trials
def _constraints(budget: Budget, measured: dict[str, Any], drop: float | None) -> list[float]:
    """<= 0 each when met: the bounds' relative excess, or with max_drop only the drop."""
    if budget.bounds:
        return [float(v) for v in budget.excess(measured).values()]
    if budget.max_drop is not None and drop is not None:
        return [drop - budget.max_drop]
    return [0.0]


def _objective_value(budget: Budget, measured: dict[str, Any], val_error: float) -> float:
    return float(val_error) if budget.bounds else float(measured["size_bytes"])


def _trial_constraints(trial: Any) -> list[float]:
    return list(trial.user_attrs.get("constraints", [1.0]))


def _history(study: Any) -> list[HistoryPoint]:
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        ok = all(c <= 0 for c in t.user_attrs.get("constraints", [1.0]))
        out.append(HistoryPoint(dict(t.params), ok, dict(t.user_attrs)))
    return out


def extreme_choice(space: SearchSpace) -> Choice:
    """The most compressed point: every ratio at its maximum, the fewest bits, int8."""
    return space.choice(space.params(Choice({k: space.max_ratio for k in space.layers},
                                            {k: min(space.bits) for k in space.layers},
                                            space.int8[-1])))


def _counted(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING,
              optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=states))


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not enabled, transient=False)


def run_trials(study: Any, strategy: Any, evaluator: TrialEvaluator, n_trials: int, *,
               progress: bool = True, first_extreme: bool = True) -> int:
    """Run trials until the study holds ``n_trials`` (finished, failed or running) or the
    strategy has nothing new; returns how many this call ran. ``first_extreme``: a new
    study's first trial is the most compressed point (workers leave that to the process
    that started the study: two would both enqueue it)."""
    import optuna

    space, budget = evaluator.space, evaluator.budget
    ran = 0

    def objective(trial: Any) -> float:
        bar.update(step, description=f"trial {trial.number}: apply + pack + measure",
                   completed=0)
        result = evaluator.run(space.suggest(trial))
        drop = (None if evaluator.base_val_error is None
                else result.val_error - evaluator.base_val_error)
        trial.set_user_attr("val_error", result.val_error)
        trial.set_user_attr("drop", drop)
        trial.set_user_attr("measured", result.measured)
        trial.set_user_attr("wall_time_s", round(result.wall_time_s, 3))
        constraints = _constraints(budget, result.measured, drop)
        trial.set_user_attr("constraints", constraints)
        for i, value in enumerate(constraints):  # what TPE and GP treat as feasibility
            trial.set_constraint(f"c{i}", value)
        bar.update(step, completed=1)
        return _objective_value(budget, result.measured, result.val_error)

    with _progress(progress) as bar:
        total = bar.add_task("search", total=n_trials, completed=_counted(study))
        step = bar.add_task("trial", total=1)
        while _counted(study) < n_trials:
            if not study.trials and first_extreme:
                study.enqueue_trial(space.params(extreme_choice(space)),
                                    user_attrs={"strategy": "extreme"})
            else:
                proposal = strategy.propose(_history(study))
                if proposal is DONE:
                    logger.info("%s: no new point to try after %d trials", strategy.name,
                                len(study.trials))
                    break
                if proposal is not None:
                    choice, attrs = proposal
                    study.enqueue_trial(space.params(choice), user_attrs=attrs)
            study.optimize(objective, n_trials=1, catch=(ModelzipError,),
                           gc_after_trial=False)
            ran += 1
            best = _best(study, budget)
            text = "search" if best is None else (
                f"search: best {best.user_attrs['val_error']:.2f}% val error, "
                f"{best.user_attrs['measured']['size_bytes']:,} B"
                + ("" if all(c <= 0 for c in _trial_constraints(best)) else " (over budget)"))
            bar.update(total, completed=_counted(study), description=text)
            first = study.trials[0]
            # only the most compressed point proves a bound unreachable: a worker's first
            # trial is the sampler's, not that point
            if len(study.trials) == 1 and first.state == optuna.trial.TrialState.COMPLETE \
                    and first.user_attrs.get("strategy") == "extreme":
                _check_reachable(first, budget, space)
    return ran


def _check_reachable(trial: Any, budget: Budget, space: SearchSpace) -> None:
    """The most compressed point misses a static bound: no point of the space meets it."""
    measured = trial.user_attrs["measured"]
    for key in ("size_bytes", "params", "macs"):
        limit = budget.bounds.get(key)
        if limit is not None and measured[key] > limit:
            raise ConfigError(
                f"no configuration can meet {key.split('_')[0]} <= "
                f"{format_budget_value(key, limit)}: the smallest reachable in this search "
                f"space (every layer pruned {space.max_ratio:g}"
                + (f", {min(space.bits)} bits" if space.quantize != "none" else "")
                + f") measures {format_budget_value(key, measured[key])}")


def _best(study: Any, budget: Budget) -> Any:
    """The feasible trial with the lowest objective; else the one closest to the budget."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return None
    feasible = [t for t in done if all(c <= 0 for c in _trial_constraints(t))]
    if feasible:
        return min(feasible, key=lambda t: (t.value, t.user_attrs["measured"]["size_bytes"]))
    return min(done, key=lambda t: (sum(max(c, 0) for c in _trial_constraints(t)), t.value))


def trial_rows(study: Any) -> list[dict[str, Any]]:
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                     "value": t.value, "strategy": t.user_attrs.get("strategy"),
                     "val_error": t.user_attrs.get("val_error"),
                     "drop": t.user_attrs.get("drop"),
                     "measured": t.user_attrs.get("measured"),
                     "feasible": (t.state == optuna.trial.TrialState.COMPLETE and all(
                         c <= 0 for c in _trial_constraints(t))),
                     "wall_time_s": t.user_attrs.get("wall_time_s")})
    return rows


# ---------------------------------------------------------------------------- search
def _val_subset(data: Any, n: int | None, seed: int) -> Any:
    from modelzip.pipeline import seeded_subset

    return data if n is None or data is None else seeded_subset(data, n, seed)


def build_space(model: nn.Module, config: SearchConfig, ctx: Context) -> SearchSpace:
    options = dict(config.space)
    prune = options.get("prune", "magnitude")
    layers = options.pop("layers", None) or default_layers(model, prune, ctx.example_inputs)
    return SearchSpace(layers=tuple(layers), **options)


def _model_name(model: nn.Module) -> str:
    from modelzip.core.builders import source_of

    source = source_of(model) or {}
    return str(source.get("zoo") or source.get("builder") or type(model).__name__)


def search(model: nn.Module, budget: Budget, *, ctx: Context,
           config: SearchConfig | None = None, out: str | Path | None = None,
           skeleton: nn.Module | None = None, force: bool = False) -> SearchResult:
    """Search ``config.space`` for the point of ``model`` that best meets ``budget``, finish
    it and measure it; see the module docstring."""
    config = config or SearchConfig()
    if not budget.bounds and budget.max_drop is None:
        raise ConfigError("a search needs a budget: a target (size=, latency=, macs=, "
                          "params=) or max_drop")
    if ctx.val_data is None:
        raise ConfigError("a search scores its trials on validation data; pass data= (a "
                          "seeded part is held out) or val_data=")
    start = time.perf_counter()
    if ctx.example_inputs is None:
        from modelzip.pipeline import _zoo_example

        ctx.example_inputs = _zoo_example(model)
    space = build_space(model, config, ctx)
    if budget.latency_ms is not None and space.format != "onnx":
        logger.info("latency budget: the trials' latency is measured on an fp32 graph; use "
                    "space format onnx to pack the graph that was measured")
    storage = config.storage or default_storage(out)
    name = config.study or f"{_model_name(model)}-{config.strategy}"
    space_hash = space.space_hash(model)
    attrs = {"space": space.to_dict(), "budget": budget.to_dict(),
             "strategy": config.strategy, "seed": config.seed, "trials": config.trials,
             "val_samples": config.val_samples, "source": config.source}
    strategy = make_strategy(config.strategy, space, budget, seed=config.seed)
    study = open_study(name, storage, space_hash=space_hash, sampler=strategy.sampler(),
                       attrs=attrs)
    trial_ctx = dataclasses.replace(ctx, val_data=_val_subset(ctx.val_data,
                                                              config.val_samples, config.seed))
    evaluator = TrialEvaluator(model, trial_ctx, space, budget, skeleton=skeleton)
    strategy.prepare(evaluator)
    run_trials(study, strategy, evaluator, config.trials, progress=config.progress)
    best = _best(study, budget)
    if best is None:
        raise ConfigError(f"study {name!r}: no trial finished; see the log for why")
    search_time = time.perf_counter() - start
    chosen = space.choice(best.params)
    feasible = all(c <= 0 for c in _trial_constraints(best))
    result = _finish(model, chosen, space, budget, ctx, config, out, skeleton, force)
    final_measured = result_measured(result, budget, ctx, space, evaluator)
    drop = (None if result.val_error_after is None or result.val_error_before is None
            else result.val_error_after - result.val_error_before)
    met = budget.met(final_measured) and (
        budget.max_drop is None or drop is None or drop <= budget.max_drop)
    message = _message(budget, feasible, met, final_measured, drop)
    logger.info(message)
    out_result = SearchResult(
        budget=budget, space=space, chosen=chosen,
        chosen_trial={"number": best.number, "val_error": best.user_attrs["val_error"],
                      "measured": best.user_attrs["measured"], "feasible": feasible},
        compression=result, final_measured=final_measured, budget_met=met, drop_points=drop,
        trials=trial_rows(study), message=message, study=name, storage=storage,
        strategy=config.strategy,
        baseline={"val_error": evaluator.base_val_error,
                  "val_error_full": result.val_error_before},
        search_wall_time_s=search_time,
        final_wall_time_s=time.perf_counter() - start - search_time)
    result.settings["search"] = {k: v for k, v in out_result.to_dict().items()
                                 if k not in ("compression", "trials")}
    result.settings["search"]["trials_run"] = len(out_result.trials)
    if config.report:
        from modelzip.report.html import write_report

        write_report(out_result, config.report)
    return out_result


def _finish(model: nn.Module, chosen: Choice, space: SearchSpace, budget: Budget,
            ctx: Context, config: SearchConfig, out: Any, skeleton: Any, force: bool) -> Any:
    from modelzip.pipeline import compress

    recipe = space.recipe(chosen, finetune_epochs=config.finetune_epochs,
                          quant_finetune=config.quant_finetune, name="search-result")
    final_ctx = dataclasses.replace(ctx, masks={}, records=[], settings=dict(ctx.settings))
    return compress(model, recipe, ctx=final_ctx, out=out, skeleton=skeleton, force=force)


def result_measured(result: Any, budget: Budget, ctx: Context, space: SearchSpace,
                    evaluator: TrialEvaluator) -> dict[str, float | None]:
    """The finished result measured as the trials were: file bytes, runner latency, MACs
    and non-zero parameters of the model read back."""
    measured: dict[str, float | None] = {"size_bytes": result.artifact_bytes,
                                         "macs": result.after.total_macs,
                                         "params": result.after.nonzero, "latency_ms": None}
    if evaluator.measure_latency or budget.latency_ms is not None:
        graph = result.artifact if result.artifact_kind == "onnx-graph" \
            else evaluator._graph(result.model)
        measured["latency_ms"] = runner_latency_ms(graph, threads=budget.threads)
    return measured


def _message(budget: Budget, feasible: bool, met: bool, measured: dict[str, Any],
             drop: float | None) -> str:
    figures = ", ".join(f"{k.split('_')[0]} {format_budget_value(k, measured[k])}"
                        for k in ("size_bytes", "latency_ms") if measured.get(k) is not None)
    if drop is not None:
        figures += f", validation drop {drop:+.2f} points"
    if met:
        return f"budget met ({budget.describe()}): {figures}"
    if not feasible:
        return (f"no configuration met the budget ({budget.describe()}); the closest, "
                f"fine-tuned: {figures}")
    return f"the chosen configuration missed the budget ({budget.describe()}) once fine-tuned " \
           f"and measured: {figures}"
