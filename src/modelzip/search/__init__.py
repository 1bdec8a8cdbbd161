"""Budget-driven search: the per-layer mix of pruning and quantization that best meets a
budget in bytes, milliseconds, MACs or parameters (and at most ``max_drop`` points lost).

    from modelzip.search import SearchConfig, parse_budget, search
    result = search(model, parse_budget(["size=32KB"], max_drop=1.0), ctx=ctx,
                    config=SearchConfig(strategy="bo", trials=20), out="m.mzip")

``modelzip.compress(model, target="size=32KB", max_drop=1, data=...)`` and
``modelzip compress CHECKPOINT --target size=32KB`` call it.
"""

from modelzip.search.budget import Budget, parse_budget, parse_target
from modelzip.search.core import SearchConfig, SearchResult, run_trials, search
from modelzip.search.space import Choice, SearchSpace
from modelzip.search.strategies import STRATEGIES, make_strategy

__all__ = ["STRATEGIES", "Budget", "Choice", "SearchConfig", "SearchResult", "SearchSpace",
           "make_strategy", "parse_budget", "parse_target", "run_trials", "search"]
