"""Search strategies: each proposes points of the space; every point is an Optuna trial.

Common interface (``Strategy``): ``sampler()`` is the Optuna sampler that picks a trial's
point when the strategy proposes none; ``prepare(evaluator)`` measures the signal the strategy
allocates from (once, before the trials); ``propose(history)`` returns the next point to
enqueue, None to let the sampler choose, or ``DONE`` when it has nothing new to try.

- ``random``: Optuna's RandomSampler over the whole space;
- ``bo``: Bayesian optimization with Optuna's TPE sampler (multivariate, the budget as
  constraints); ``bo-gp``: Optuna's Gaussian-process sampler (Cao et al. 2019 use a GP);
- ``uniform``: one ratio for every layer, bisected to the least pruning that meets the budget,
  for each bit width in turn (the default width first);
- ``sensitivity``: per-layer accuracy-vs-ratio curves (``modelzip.prune.sensitivity``) and
  one tolerance for all layers (each layer pruned as far as its curve allows), the tolerance
  bisected to meet the budget;
- ``mlprune``: K-FAC OBS saliency (``modelzip.search.signals``) makes layers comparable; one
  global threshold gives every layer's ratio, bisected to meet the budget;
- ``amc``: a DDPG agent picks each layer's ratio (``modelzip.search.amc``).

The allocating strategies (uniform, sensitivity, mlprune) bisect a knob in [0, 1] (more
compression as it grows): to the least compression that meets the resource bounds, or, with
only ``max_drop``, to the most compression whose validation drop stays within it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelzip.errors import ConfigError
from modelzip.search.budget import Budget
from modelzip.search.space import Choice, SearchSpace

__all__ = ["DONE", "STRATEGIES", "HistoryPoint", "Strategy", "make_strategy"]

DONE = object()  # propose(): nothing new to try


@dataclass(frozen=True)
class HistoryPoint:
    """A finished trial as the strategies see it."""

    params: dict[str, Any]
    ok: bool  # resource bounds met (or, with max_drop only, the drop within it)
    user_attrs: dict[str, Any]


class Strategy:
    """Random search; the base of the others."""

    name = "random"
    parallel = True  # proposes nothing itself: any number of workers may share the study

    def __init__(self, space: SearchSpace, budget: Budget, *, seed: int = 0) -> None:
        self.space, self.budget, self.seed = space, budget, seed

    def sampler(self) -> Any:
        import optuna

        return optuna.samplers.RandomSampler(seed=self.seed)

    def prepare(self, evaluator: Any) -> None:
        return None

    def propose(self, history: list[HistoryPoint]) -> Any:
        return None


class BayesStrategy(Strategy):
    """Optuna's TPE sampler; the budget's excess as its constraints."""

    name = "bo"

    def sampler(self) -> Any:
        import optuna

        # the budget reaches the sampler as each trial's constraints (Trial.set_constraint)
        # constant_liar: workers sharing the study avoid the points others are running
        return optuna.samplers.TPESampler(seed=self.seed, multivariate=True,
                                          n_startup_trials=5, constant_liar=True)


class GPStrategy(Strategy):
    name = "bo-gp"

    def sampler(self) -> Any:
        import optuna

        return optuna.samplers.GPSampler(seed=self.seed, n_startup_trials=5)


class KnobStrategy(Strategy):
    """Bisects one knob in [0, 1] through ``ratios(knob)``, for each bit width in turn."""

    parallel = False

    def ratios(self, knob: float) -> dict[str, float]:
        raise NotImplementedError

    def levels(self) -> list[int | None]:
        if self.space.quantize == "none":
            return [None]
        default = self.space.default_bits
        return [default, *sorted((b for b in self.space.bits if b != default), reverse=True)]

    def point(self, knob: float, bits: int | None) -> Choice:
        bits = self.space.default_bits if bits is None else bits
        choice = Choice(self.ratios(knob), {k: bits for k in self.space.layers},
                        self.space.int8[-1])
        return self.space.choice(self.space.params(choice))

    def propose(self, history: list[HistoryPoint]) -> Any:
        tried = {_key(h.params) for h in history}
        want_high = not self.budget.bounds  # max_drop only: the most compression within it
        for level in self.levels():
            points = [(h.user_attrs["knob"], h.ok) for h in history
                      if h.user_attrs.get("strategy") == self.name
                      and h.user_attrs.get("level") == level]
            if want_high:
                lo = max((k for k, ok in points if ok), default=0.0)
                hi = min((k for k, ok in points if not ok), default=1.0)
            else:
                lo = max((k for k, ok in points if not ok), default=0.0)
                hi = min((k for k, ok in points if ok), default=1.0)
            knob = 0.5 * (lo + hi)
            choice = self.point(knob, level)
            if _key(self.space.params(choice)) not in tried:  # else: this width is done
                return choice, {"strategy": self.name, "level": level, "knob": knob}
        return DONE


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, round(v, 6) if isinstance(v, float) else v)
                        for k, v in params.items()))


class UniformStrategy(KnobStrategy):
    name = "uniform"

    def ratios(self, knob: float) -> dict[str, float]:
        return {k: knob * self.space.max_ratio for k in self.space.layers}


class SensitivityStrategy(KnobStrategy):
    """Per-layer sensitivity curves without fine-tuning, one tolerance for all layers."""

    name = "sensitivity"

    def prepare(self, evaluator: Any) -> None:
        from modelzip.prune import sensitivity

        step = self.space.max_ratio / 6
        levels = tuple(round(step * i, 4) for i in range(1, 7))
        model, data = evaluator.model, evaluator.val_data
        if self.space.prune == "l1-filter":
            curves = sensitivity.channel_sensitivity(model, data, ratios=levels,
                                                     layers=list(self.space.layers),
                                                     example_input=evaluator.ctx.example_inputs)
        else:
            curves = sensitivity.magnitude_sensitivity(model, data, sparsities=levels,
                                                       layers=list(self.space.layers))
        self.levels_measured = curves.levels
        self.drops = {k: [curves.baseline_accuracy_pct - a for a in v]
                      for k, v in curves.accuracy_pct.items()}
        self.max_tolerance = max([1e-6, *(max(v) for v in self.drops.values())])

    def ratios(self, knob: float) -> dict[str, float]:
        from modelzip.prune.sensitivity import allowed_level

        t = knob * self.max_tolerance
        return {k: allowed_level(self.levels_measured, self.drops[k], t, self.space.max_ratio)
                if k in self.drops else 0.0 for k in self.space.layers}


class MLPruneStrategy(KnobStrategy):
    """K-FAC OBS saliency, one global threshold (Zeng & Urtasun 2019)."""

    name = "mlprune"

    def prepare(self, evaluator: Any) -> None:
        from modelzip.search.signals import kfac_saliency

        data = evaluator.ctx.train_data if evaluator.ctx.train_data is not None \
            else evaluator.val_data
        self.saliency = kfac_saliency(evaluator.model, data, list(self.space.layers),
                                      loss_fn=evaluator.ctx.loss_fn)

    def ratios(self, knob: float) -> dict[str, float]:
        from modelzip.search.signals import ratios_at_fraction

        found = ratios_at_fraction(self.saliency, knob * self.space.max_ratio,
                                   channels=self.space.prune == "l1-filter")
        return {k: min(found.get(k, 0.0), self.space.max_ratio) for k in self.space.layers}


# amc builds on Strategy and HistoryPoint above
from modelzip.search.amc import AMCStrategy  # noqa: E402

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (UniformStrategy, Strategy, SensitivityStrategy, BayesStrategy,
                        GPStrategy, MLPruneStrategy, AMCStrategy)}


def make_strategy(name: str, space: SearchSpace, budget: Budget, *, seed: int = 0
                  ) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown search strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, budget, seed=seed)
