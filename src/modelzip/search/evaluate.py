"""One trial: a point of the space run through modelzip's techniques without fine-tuning,
packed, read back and measured.

Every figure is of the packed result: ``size_bytes`` is the length of the .mzip bytes,
``latency_ms`` the median batch-1 time of the graph in the on-board runner (the artifact's own
graph when the space packs ONNX, else an fp32 graph exported for the measurement), ``macs`` and
``params`` (non-zero) are counted on the model read back from the bytes, and the validation
error is that of the read-back model (or of the graph, run by the runner).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from modelzip.core.context import Context
from modelzip.search.budget import Budget
from modelzip.search.space import Choice, SearchSpace

__all__ = ["LATENCY_RUNS", "TrialEvaluator", "TrialResult", "runner_latency_ms"]

LATENCY_RUNS = 30  # timed batch-1 runs per measurement (after 5 warm-up runs)


@dataclass
class TrialResult:
    """What one point measured; ``val_error`` in % (the evaluator's score)."""

    choice: Choice
    val_error: float
    measured: dict[str, float | None]
    records: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"choice": self.choice.to_dict(), "val_error": self.val_error,
                "measured": dict(self.measured), "wall_time_s": self.wall_time_s}


def runner_latency_ms(blob: bytes, *, threads: int = 1, runs: int = LATENCY_RUNS) -> float:
    """Median batch-1 latency (ms) of a .mzip graph artifact run by the on-board runner
    (``Runner.logits``: input checks and the session), on a zero input of the graph's
    shape."""
    from modelzip.runtime.runner import Runner

    runner = Runner.from_bytes(blob, threads=threads)
    feeds = {}
    for item in runner.spec.inputs:
        shape = [1 if d is None else d for d in item.shape]
        feeds[item.name] = np.zeros((runner.spec.batch or 1, *shape), dtype=item.dtype)
    inputs = next(iter(feeds.values())) if len(feeds) == 1 else feeds
    for _ in range(5):
        runner.logits(inputs, batch_size=1)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.logits(inputs, batch_size=1)
        times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


class TrialEvaluator:
    """Runs points of ``space`` on ``model`` with ``ctx``'s data; ``val_data`` (default the
    context's) scores the trials. ``model`` is never changed."""

    def __init__(self, model: nn.Module, ctx: Context, space: SearchSpace, budget: Budget, *,
                 val_data: Any = None, skeleton: nn.Module | None = None,
                 measure_latency: bool | None = None) -> None:
        self.model = model.eval()
        self.ctx = ctx
        self.space = space
        self.budget = budget
        self.val_data = val_data if val_data is not None else ctx.val_data
        self.skeleton = skeleton
        self.measure_latency = (budget.latency_ms is not None if measure_latency is None
                                else measure_latency)
        self.base_val_error = (self._error(self.model) if self.val_data is not None
                               else None)

    def _error(self, model: nn.Module) -> float:
        return self.ctx.error(model, self.val_data)

    def trial_context(self) -> Context:
        """A context of the same data with no masks or records of its own, no test data
        (trials never look at it) and no validation data (the techniques would score each
        step on it; the trial is scored once, on the packed result)."""
        return dataclasses.replace(self.ctx, masks={}, records=[], test_data=None,
                                   val_data=None, progress=False,
                                   settings=dict(self.ctx.settings))

    def measure(self, compressed: nn.Module, blob: bytes, kind: str,
                read_back: nn.Module | None) -> dict[str, float | None]:
        from modelzip.metrics import profile_model

        profile = profile_model(read_back if read_back is not None else compressed,
                                example_inputs=self.ctx.example_inputs)
        measured: dict[str, float | None] = {"size_bytes": len(blob),
                                             "macs": profile.total_macs,
                                             "params": profile.nonzero, "latency_ms": None}
        if self.measure_latency:
            graph = blob if kind == "onnx-graph" else self._graph(compressed)
            measured["latency_ms"] = runner_latency_ms(graph, threads=self.budget.threads)
        return measured

    def _graph(self, model: nn.Module) -> bytes:
        from modelzip.runtime.onnx_artifact import pack_model_onnx

        example = self.ctx.example_inputs
        if isinstance(example, torch.Tensor):  # also tells the export the input shape
            return pack_model_onnx(model, int8=False, calibration=example.detach().numpy())
        return pack_model_onnx(model, int8=False, example_inputs=example)

    def run(self, choice: Choice) -> TrialResult:
        """The point without fine-tuning: apply, pack, read back, score and measure."""
        from modelzip.pipeline import _artifact_meta, _pack
        from modelzip.recipe import run_recipe

        start = time.perf_counter()
        ctx = self.trial_context()
        recipe = self.space.recipe(choice)
        compressed = run_recipe(copy.deepcopy(self.model), recipe, ctx)
        meta = _artifact_meta(ctx.train_data if ctx.train_data is not None else ctx.val_data,
                              ctx.example_inputs)
        blob, read_back, kind = _pack(compressed, self.model, recipe, ctx, self.skeleton, meta)
        if read_back is not None:
            error = self._error(read_back)
        elif self.ctx.evaluator is None:  # the graph as the on-board runner runs it
            from modelzip.pipeline import _evaluate_runner

            error = _evaluate_runner(blob, self.val_data).error_pct
        else:  # a user's evaluator scores the torch model the graph was exported from
            error = self._error(compressed)
        measured = self.measure(compressed, blob, kind, read_back)
        return TrialResult(choice, float(error), measured, list(ctx.records),
                           time.perf_counter() - start)
