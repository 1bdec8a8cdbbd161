"""The technique registry, config validation and YAML recipes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.recipe import Recipe, load_recipe, run_recipe
from modelzip.registry import (
    Context,
    apply_technique,
    config_from_dict,
    get_technique,
    list_techniques,
    register_technique,
)
from modelzip.train import TrainConfig
from modelzip.zoo import build_model


def test_finetune_is_registered() -> None:
    assert "finetune" in list_techniques()
    tech = get_technique("finetune")
    assert tech.config_cls is FinetuneConfig
    assert tech.summary


def test_unknown_technique_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"unknown technique 'nope'.*finetune"):
        get_technique("nope")


def test_config_from_dict_coerces_and_names_unknown_keys() -> None:
    cfg = config_from_dict("finetune", {"epochs": 2, "lr": 1})
    assert cfg == FinetuneConfig(epochs=2, lr=1.0)
    assert isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match=r"unknown option.*epoch;.*allowed.*epochs"):
        config_from_dict("finetune", {"epoch": 2})
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        config_from_dict("finetune", {"epochs": "two"})
    with pytest.raises(ConfigError, match="lr must be a number"):
        config_from_dict("finetune", {"lr": True})


def test_register_requires_dataclass_and_unique_name() -> None:
    with pytest.raises(TypeError):
        register_technique("not-a-dataclass", int, kind="train")

    @dataclass(frozen=True)
    class Cfg:
        x: int = 1

    with pytest.raises(ValueError, match="registered twice"):
        register_technique("finetune", Cfg, kind="train")(lambda m, c, x: m)


def test_apply_technique_needs_data() -> None:
    model = build_model("lenet300")
    with pytest.raises(ConfigError, match="finetune needs train data"):
        apply_technique(model, FinetuneConfig(epochs=1), Context())


def test_finetune_keeps_masks(mnist_train) -> None:
    model = build_model("lenet300")
    mask = torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    ctx = Context(train_data=mnist_train.subset(range(512)), progress=False,
                  finetune=TrainConfig(epochs=1, batch_size=64, lr=0.05),
                  masks={"fc1.weight": mask})
    before = model.fc2.weight.detach().clone()
    tuned = apply_technique(model, FinetuneConfig(epochs=1), ctx)
    assert bool((tuned.fc1.weight[~mask] == 0).all())
    assert not torch.equal(tuned.fc2.weight, before)  # it did train
    assert torch.equal(model.fc2.weight, before)  # on a copy: the caller's model is as it was
    assert ctx.records[-1]["step"] == "finetune"


def test_finetune_keeps_the_zeros_of_a_model_that_comes_pruned(mnist_train) -> None:
    model = build_model("lenet300")
    with torch.no_grad():  # pruned elsewhere (e.g. loaded from a checkpoint): no masks given
        model.fc1.weight[:, ::3] = 0.0
    zeros = model.fc1.weight == 0
    ctx = Context(train_data=mnist_train.subset(range(512)), progress=False,
                  finetune=TrainConfig(epochs=1, batch_size=64, lr=0.05))
    tuned = apply_technique(model, FinetuneConfig(epochs=1), ctx)
    assert bool((tuned.fc1.weight[zeros] == 0).all())
    assert not torch.equal(tuned.fc1.weight, model.fc1.weight)  # the rest trained
    assert torch.equal(ctx.masks["fc1.weight"], ~zeros)
    assert "fc2.weight" not in ctx.masks  # a dense layer gets no mask


RECIPE = """
name: tiny
finetune: {epochs: 1, lr: 0.01, batch_size: 64}
steps:
  - finetune: {epochs: 1}
  - finetune:
"""


def test_recipe_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    rec = load_recipe(path)
    assert rec.name == "tiny"
    assert [name for name, _ in rec.steps] == ["finetune", "finetune"]
    again = Recipe.from_dict(__import__("yaml").safe_load(rec.to_yaml()))
    assert again == rec


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("steps: []", "at least one step"),
        ("steps:\n  - finetune: {}\n    magnitude: {}", "exactly one technique"),
        ("steps:\n  - nope: {}", "step 1: unknown technique 'nope'"),
        ("steps:\n  - finetune: {epoch: 1}", "step 1: finetune: unknown option"),
        ("stepz: []", "stepz"),
        ("finetune: {lr: fast}\nsteps:\n  - finetune: {}", "finetune defaults"),
        ("- a\n- b", "a recipe is a mapping"),
        ("steps: [", "not valid YAML"),
    ],
)
def test_recipe_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_recipe(path)


def test_recipe_pack_settings(tmp_path: Path) -> None:
    # reduce_range None: int8 weight width by the packing CPU; fec None: no parity
    defaults = {"format": "state-dict", "coder": "best", "int8": False, "method": "minmax",
                "reduce_range": None, "fec": None}
    rec = Recipe.from_dict({"steps": [{"finetune": {}}]})
    assert rec.pack == defaults
    rec = Recipe.from_dict({"steps": [{"finetune": {}}], "pack": {"coder": "huffman"}})
    assert rec.pack == {**defaults, "coder": "huffman"}
    assert rec.to_dict()["pack"] == rec.pack
    rec = Recipe.from_dict({"steps": [{"finetune": {}}],
                            "pack": {"format": "onnx", "int8": True}})
    assert rec.pack["format"] == "onnx" and rec.pack["int8"] is True
    with pytest.raises(ConfigError, match="int8 operators need format: onnx"):
        Recipe.from_dict({"steps": [{"finetune": {}}], "pack": {"int8": True}})
    with pytest.raises(ConfigError, match=r"pack\.coder"):
        Recipe.from_dict({"steps": [{"finetune": {}}], "pack": {"coder": "zip"}})
    assert Recipe.from_dict({"steps": [{"finetune": {}}], "pack": {"fec": 0.08}}).pack["fec"] \
        == 0.08
    with pytest.raises(ConfigError, match=r"pack\.fec"):
        Recipe.from_dict({"steps": [{"finetune": {}}], "pack": {"fec": 0.001}})
    with pytest.raises(ConfigError, match=r"pack\.level"):
        Recipe.from_dict({"steps": [{"finetune": {}}], "pack": {"level": 9}})


def test_shipped_recipes_load() -> None:
    root = Path(__file__).resolve().parent.parent / "src" / "modelzip" / "recipes"
    names = {p.stem: load_recipe(p) for p in sorted(root.glob("*.yaml"))}
    dc = names["deep-compression"]
    assert [name for name, _ in dc.steps] == ["iterative-magnitude", "kmeans"]


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "none.yaml")


def test_run_recipe_applies_defaults(mnist_train) -> None:
    rec = Recipe.from_dict({"finetune": {"epochs": 1, "batch_size": 256},
                            "steps": [{"finetune": {}}]})
    ctx = Context(train_data=mnist_train.subset(range(512)), progress=False)
    run_recipe(build_model("lenet300"), rec, ctx)
    assert ctx.finetune.batch_size == 256
    assert ctx.records[-1]["epochs"] == 1
