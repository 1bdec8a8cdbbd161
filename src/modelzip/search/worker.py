"""``modelzip search-worker``: one more process on a shared study.

A worker reads everything from the study's user attributes: the space, the budget, the
strategy, and the ``source`` it rebuilds the model and data from: a checkpoint folder and a
dataset name (what ``modelzip compress --target`` records), or a factory ``MODULE:FUNCTION``
returning ``(model, ctx)`` (for a Python user's own model). It runs trials until the study
holds its number of trials; the process that started the study finishes the chosen point.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from modelzip.core.context import Context, logger
from modelzip.errors import ConfigError

__all__ = ["rebuild_source", "search_worker"]


def rebuild_source(source: dict[str, Any] | None, *, progress: bool = True
                   ) -> tuple[nn.Module, Context]:
    """(model, context) from a study's recorded source."""
    if not source:
        raise ConfigError("this study records no source to rebuild its model from; start it "
                          "with modelzip compress CHECKPOINT --target ... or pass "
                          "SearchConfig(source={'factory': 'module:function'})")
    if "factory" in source:
        from modelzip.core.builders import load_target

        made = load_target(source["factory"])()
        if not (isinstance(made, tuple) and len(made) == 2):
            raise ConfigError(f"factory {source['factory']}: must return (model, ctx)")
        return made
    from modelzip.checkpoint import load_checkpoint
    from modelzip.data import load_dataset
    from modelzip.pipeline import finetune_defaults, make_context

    skeleton = None
    if source.get("model"):  # a user's model: its builder, as compress --model named it
        from modelzip.core.builders import build_from_target
        from modelzip.zoo import build_model

        target, kwargs = source["model"], source.get("model_kwargs") or {}
        skeleton = (build_from_target(target, kwargs) if ":" in target
                    else build_model(target, **kwargs))
    ckpt = load_checkpoint(source["checkpoint"], model=skeleton)
    name = source.get("dataset") or (ckpt.meta.get("dataset") or {}).get("name")
    root = source.get("data")
    ctx = make_context(data=load_dataset(name, "train", root),
                       finetune=finetune_defaults(ckpt.meta.get("training") or None),
                       progress=progress)
    return ckpt.model, ctx


def search_worker(study_name: str, storage: str, *, trials: int | None = None,
                  progress: bool = True) -> int:
    """Run trials of an existing study; returns how many this worker ran."""
    from modelzip.search.budget import Budget
    from modelzip.search.core import _val_subset, run_trials
    from modelzip.search.evaluate import TrialEvaluator
    from modelzip.search.space import SearchSpace
    from modelzip.search.strategies import make_strategy
    from modelzip.search.study import open_study

    probe = open_study(study_name, storage, space_hash=None, create=False)
    attrs = probe.user_attrs
    space = SearchSpace.from_dict(attrs["space"])
    budget = Budget(**attrs["budget"])
    # each worker's sampler draws its own points: the study's seed plus the process id
    seed = (int(attrs.get("seed", 0)) + os.getpid()) % 2**31
    strategy = make_strategy(attrs["strategy"], space, budget, seed=seed)
    if not strategy.parallel:
        logger.info("%s proposes its points from the trials so far; workers may try the same "
                    "point twice", strategy.name)
    model, ctx = rebuild_source(attrs.get("source"), progress=progress)
    if space.space_hash(model) != attrs.get("space_hash"):
        raise ConfigError(f"study {study_name!r}: the model this worker built does not match "
                          "the study's search space")
    study = open_study(study_name, storage, space_hash=attrs.get("space_hash"),
                       sampler=strategy.sampler(), create=False)
    ctx = dataclasses.replace(ctx, val_data=_val_subset(ctx.val_data, attrs.get("val_samples"),
                                                        int(attrs.get("seed", 0))))
    if ctx.example_inputs is None:
        from modelzip.pipeline import _zoo_example

        ctx.example_inputs = _zoo_example(model)
    evaluator = TrialEvaluator(model, ctx, space, budget)
    strategy.prepare(evaluator)
    return run_trials(study, strategy, evaluator, int(trials or attrs.get("trials", 1)),
                      progress=progress, first_extreme=False)
