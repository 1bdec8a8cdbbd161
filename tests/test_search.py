"""modelzip.search: budgets, the space, strategies, study storage and compress(target=)."""

from __future__ import annotations

import optuna
import pytest

from modelzip.errors import ConfigError
from modelzip.search import SearchConfig, SearchSpace, parse_budget, parse_target, search
from modelzip.search import study as study_mod
from modelzip.search.strategies import STRATEGIES
from tests.search_tiny import make


@pytest.fixture(scope="module")
def tiny():
    return make()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """One SQLite file for the module's studies (creating its tables takes a while)."""
    return f"sqlite:///{tmp_path_factory.mktemp('studies')}/s.db"


def _config(tmp_path, **kw) -> SearchConfig:
    values = {"strategy": "random", "trials": 3, "storage": f"sqlite:///{tmp_path}/s.db",
              "study": tmp_path.name, "progress": False, "finetune_epochs": 1,
              "quant_finetune": None}
    values.update(kw)
    return SearchConfig(**values)


# ---------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(("text", "key", "value"), [
    ("size=32KB", "size_bytes", 32000), ("size=32KiB", "size_bytes", 32768),
    ("size=1.5MB", "size_bytes", 1.5e6), ("size=100B", "size_bytes", 100),
    ("latency=0.3ms", "latency_ms", 0.3), ("latency=250us", "latency_ms", 0.25),
    ("latency=1s", "latency_ms", 1000), ("macs=2M", "macs", 2e6),
    ("params=50k", "params", 5e4), ("params=1200", "params", 1200)])
def test_parse_target_units(text, key, value):
    k, v = parse_target(text)
    assert k == key and v == pytest.approx(value)


@pytest.mark.parametrize("text", ["size=32KX", "size=", "latency=3", "speed=3ms", "size=-1KB",
                                  "size32KB"])
def test_malformed_target_is_one_config_error(text):
    with pytest.raises(ConfigError) as err:
        parse_target(text)
    message = str(err.value)
    assert "\n" not in message and text in message
    if text == "size=32KX":
        assert "KB" in message and "KiB" in message and "MB" in message


def test_several_targets_and_max_drop():
    budget = parse_budget(["size=32KB", "latency=0.3ms", "params=50k"], 1.0)
    assert budget.bounds == {"size_bytes": 32000, "latency_ms": 0.3, "params": 50000}
    assert budget.max_drop == 1.0
    assert budget.met({"size_bytes": 31999, "latency_ms": 0.29, "params": 50000})
    assert not budget.met({"size_bytes": 32001, "latency_ms": 0.29, "params": 10})
    with pytest.raises(ConfigError, match="twice"):
        parse_budget(["size=1KB", "size=2KB"])


# ---------------------------------------------------------------------------- space
def test_space_recipe_and_params_round_trip(tiny):
    model, _ = tiny
    space = SearchSpace(layers=("0", "4", "6"), bits=(3, 5))
    choice = space.choice({"ratio:0": 0.5, "ratio:4": 0.9, "ratio:6": 0.0, "bits:0": 3,
                           "bits:4": 5, "bits:6": 5})
    assert space.choice(space.params(choice)) == choice
    recipe = space.recipe(choice)  # a trial: BatchNorm statistics, no fine-tuning
    assert [name for name, _ in recipe.steps] == ["magnitude", "recalibrate-batchnorm",
                                                  "kmeans"]
    assert recipe.steps[0][1].sparsity == {"0": 0.5, "4": 0.9}  # 0.0 left out
    assert recipe.pack["format"] == "state-dict"
    tuned = space.recipe(choice, finetune_epochs=1)
    assert [name for name, _ in tuned.steps] == ["magnitude", "finetune", "kmeans"]
    graph = SearchSpace(layers=("0", "4", "6"), bits=(3, 5), format="onnx", int8=(False, True))
    assert [name for name, _ in graph.recipe(choice, finetune_epochs=1).steps] == [
        "magnitude", "finetune", "fold-batchnorm", "kmeans"]
    assert set(graph.distributions()) == {*space.distributions(), "int8"}
    with pytest.raises(ConfigError, match="not a multiple"):
        SearchSpace(layers=("0",), max_ratio=0.97)
    with pytest.raises(ConfigError, match="int8 packing needs format onnx"):
        SearchSpace(layers=("0",), int8=(False, True))
    assert space.space_hash(model) != SearchSpace(layers=("0", "4", "6")).space_hash(model)


# ---------------------------------------------------------------------------- search
def test_impossible_budget_names_the_smallest_reachable(tiny, tmp_path, db):
    model, ctx = tiny
    with pytest.raises(ConfigError) as err:
        search(model, parse_budget("size=100B"), ctx=ctx, config=_config(tmp_path, storage=db))
    message = str(err.value)
    assert "no configuration can meet size <= 100 B" in message
    assert "smallest reachable" in message and "measures" in message


def test_a_workers_first_trial_does_not_prove_a_budget_unreachable(tiny, tmp_path):
    """A worker joins a study without the extreme point: its first trial is the sampler's,
    which may miss the budget while more compressed points meet it."""
    from modelzip.search.core import build_space, run_trials
    from modelzip.search.evaluate import TrialEvaluator
    from modelzip.search.strategies import make_strategy
    from modelzip.search.study import open_study

    model, ctx = tiny
    config, budget = _config(tmp_path), parse_budget("size=100B")
    space = build_space(model, config, ctx)
    strategy = make_strategy("random", space, budget, seed=0)
    study = open_study("worker", f"sqlite:///{tmp_path}/w.db",
                       space_hash=space.space_hash(model), sampler=strategy.sampler(),
                       attrs={"space": space.to_dict(), "budget": budget.to_dict()})
    evaluator = TrialEvaluator(model, ctx, space, budget)
    assert run_trials(study, strategy, evaluator, 2, progress=False, first_extreme=False) == 2
    assert all(t.user_attrs["measured"]["size_bytes"] > 100 for t in study.trials)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategies_meet_a_size_budget(tiny, tmp_path, db, strategy):
    model, ctx = tiny
    result = search(model, parse_budget("size=2.4KB", max_drop=5), ctx=ctx,
                    config=_config(tmp_path, strategy=strategy, trials=4, storage=db))
    assert 1 <= len(result.trials) <= 4
    assert result.trials[0]["strategy"] == "extreme"
    # the final figures are measured on the packed result
    assert result.final_measured["size_bytes"] == result.compression.artifact_bytes
    assert result.budget_met == (result.final_measured["size_bytes"] <= 2400
                                 and result.drop_points <= 5)
    assert result.budget_met, result.message
    assert result.compression.val_error_after <= result.compression.val_error_before + 5


def test_study_resumes_and_refuses_another_space(tiny, tmp_path, db):
    model, ctx = tiny
    budget = parse_budget("size=2KB")
    first = search(model, budget, ctx=ctx, config=_config(tmp_path, trials=2, storage=db))
    again = search(model, budget, ctx=ctx, config=_config(tmp_path, trials=4, storage=db))
    assert [t["number"] for t in first.trials] == [0, 1]
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3]
    assert again.trials[:2] == first.trials  # the finished ones are kept, not re-run
    with pytest.raises(ConfigError, match="another search space"):
        search(model, budget, ctx=ctx, config=_config(tmp_path, trials=5, storage=db,
                                                      space={"bits": [2, 4]}))


def test_unreachable_storage_is_one_line(tiny, tmp_path):
    model, ctx = tiny
    url = "postgresql://nobody@127.0.0.1:1/none"
    with pytest.raises(ConfigError) as err:
        search(model, parse_budget("size=2KB"), ctx=ctx, config=_config(tmp_path, storage=url))
    assert str(err.value).startswith("cannot reach study storage postgresql")
    assert "127.0.0.1:1" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_running_trial_is_marked_failed(tiny, tmp_path, monkeypatch):
    model, ctx = tiny
    monkeypatch.setattr(study_mod, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_mod, "GRACE_S", 1)
    config = _config(tmp_path, trials=3)
    first = search(model, parse_budget("size=2KB"), ctx=ctx, config=_config(tmp_path, trials=1))
    # a worker that died: its trial is RUNNING and its heartbeat stops
    study = optuna.load_study(study_name=config.study,
                              storage=study_mod._storage(config.storage, True))
    dead = study.ask()
    study._storage.record_heartbeat(dead._trial_id)
    import time

    time.sleep(2.5)
    result = search(model, parse_budget("size=2KB"), ctx=ctx, config=config)
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[dead.number] == "FAIL"
    assert len(first.trials) == 1 and len(result.trials) == 3


def test_compress_with_a_target(tiny, tmp_path):
    from modelzip import pipeline

    model, ctx = tiny
    out = tmp_path / "m.mzip"
    result = pipeline.compress(model, target="size=2.4KB", max_drop=5, ctx=ctx, out=out,
                               search={"strategy": "uniform", "trials": 4, "progress": False,
                                       "storage": f"sqlite:///{tmp_path}/s.db",
                                       "report": str(tmp_path / "r.html")})
    assert out.read_bytes() == result.artifact and len(result.artifact) <= 2400
    assert result.settings["search"]["budget_met"] is True
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ConfigError, match="either a recipe or a target"):
        pipeline.compress(model, "deep-compression", target="size=2.4KB", ctx=ctx)


def test_latency_and_params_budgets_are_measured_on_the_graph(tiny, tmp_path, db):
    model, ctx = tiny
    # (an fp32 graph of a user's model with plain tensor inputs is not packed by compress()
    # yet: the int8 graph's calibration images tell the export the input shape)
    result = search(model, parse_budget(["latency=1s", "params=2k"]), ctx=ctx,
                    config=_config(tmp_path, storage=db, trials=2,
                                   space={"format": "onnx", "int8": [True]}))
    assert result.compression.artifact_kind == "onnx-graph"
    for row in result.trials:
        assert row["measured"]["latency_ms"] > 0 and row["measured"]["params"] <= 2400
    assert 0 < result.final_measured["latency_ms"] < 1000
    assert result.final_measured["params"] == result.compression.after.nonzero
    assert result.budget_met == (result.final_measured["params"] <= 2000)
    state_dict = search(model, parse_budget(["latency=1s"]), ctx=ctx,
                        config=_config(tmp_path, storage=db, trials=1, study="sd"))
    assert state_dict.trials[0]["measured"]["latency_ms"] > 0  # an fp32 graph, timed


def test_max_drop_alone_looks_for_the_smallest_file(tiny, tmp_path, db):
    model, ctx = tiny
    result = search(model, parse_budget([], max_drop=1.0), ctx=ctx,
                    config=_config(tmp_path, storage=db, strategy="uniform", trials=4))
    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    within = [t for t in done if t["drop"] <= 1.0]
    assert result.chosen_trial["measured"]["size_bytes"] == min(
        t["measured"]["size_bytes"] for t in within)
    with pytest.raises(ConfigError, match="needs a budget"):
        search(model, parse_budget([]), ctx=ctx, config=_config(tmp_path, storage=db))
