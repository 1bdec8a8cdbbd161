"""The layer selector every technique config shares: names, glob patterns, types, ignore,
the errors that name what matched nothing, and coercion from YAML values."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from modelzip.core.selection import (
    LayerSelector,
    as_selector,
    matches,
    select,
    select_values,
)
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig, resolve_finetune
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.prune.structured import StructuredPruneConfig
from modelzip.quant.uniform_technique import UniformQuantConfig
from modelzip.quant.weight_sharing import WeightSharingConfig
from modelzip.recipe import Recipe
from modelzip.registry import Context, apply_technique, config_from_dict, list_techniques
from modelzip.train import TrainConfig


# ---------------------------------------------------------------------------- a small BERT
class _SelfAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _Output(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out)


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.self = _SelfAttention(d)
        self.output = _Output(d, d)


class _Intermediate(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d, 2 * d)


class _Layer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attention = _Attention(d)
        self.intermediate = _Intermediate(d)
        self.output = _Output(2 * d, d)


class _Encoder(nn.Module):
    def __init__(self, d: int, n: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(d) for _ in range(n))


class _Embeddings(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(50, d)


class TinyBert(nn.Module):
    """The module names of a Hugging Face BERT, "encoder.layer.0.attention.self.query" and
    so on, at a toy size (no forward needed: selection only looks at the module tree)."""

    def __init__(self, d: int = 8, n: int = 2) -> None:
        super().__init__()
        self.embeddings = _Embeddings(d)
        self.encoder = _Encoder(d, n)
        self.classifier = nn.Linear(d, 3)


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _bert_select(value: object, **kwargs) -> list[str]:
    model = TinyBert()
    return select(as_selector(value), _linears(model), technique="test", model=model, **kwargs)


# ---------------------------------------------------------------------------- matching
@pytest.mark.parametrize(("entry", "name", "hit"), [
    ("fc1", "fc1", True),
    ("fc1", "fc10", False),  # a name is not a prefix
    ("features", "features.0.conv", True),  # a module takes everything inside it
    ("fc1.weight", "fc1", True),  # a weight names its layer
    ("fc1.bias", "fc1", False),
    ("fc*", "fc12", True),
    ("fc?", "fc12", False),
    ("features.*", "features.3", True),
    ("features.*", "features.3.0", True),  # through its parent features.3
    ("*.dense", "encoder.dense", True),
    ("*.dense", "encoder.layer.0.output.dense", False),  # * stays within one level
    ("**.dense", "encoder.layer.0.output.dense", True),
    ("encoder.layer.[01].output.dense", "encoder.layer.1.output.dense", True),
    ("encoder.layer.[!01].output.dense", "encoder.layer.1.output.dense", False),
    ("encoder.layer.*.output.dense", "encoder.layer.0.attention.output.dense", False),
])
def test_matching_rules(entry: str, name: str, hit: bool) -> None:
    assert matches(entry, name) is hit


def test_selector_on_a_transformer_like_model() -> None:
    # every feed-forward output projection, not the attention output projections
    assert _bert_select("encoder.layer.*.output.dense") == [
        "encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    # the attention block of every layer, minus its output projection
    assert _bert_select({"names": "encoder.layer.*.attention",
                         "ignore": ["**.attention.output.dense"]}) == [
        f"encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "key",
                                                                           "value")]
    # a whole container by its name, in module order
    assert _bert_select(["encoder.layer.1.intermediate", "encoder.layer.0.attention.self"]) \
        == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
            "encoder.layer.0.attention.self.value", "encoder.layer.1.intermediate.dense"]
    # everything but the classifier and the first layer
    chosen = _bert_select({"ignore": ["classifier", "encoder.layer.0"]})
    assert chosen[0] == "encoder.layer.1.attention.self.query" and len(chosen) == 6


def test_types_pick_by_class_name() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv1d(2, 2, 1), nn.Linear(2, 2),
                          nn.Embedding(4, 2))
    candidates = dict(list(model.named_modules())[1:])
    assert select(LayerSelector(types=("Conv",)), candidates, technique="t") == ["0", "1"]
    assert select(LayerSelector(types=("Linear", "Embedding")), candidates,
                  technique="t") == ["2", "3"]
    assert select(LayerSelector(names=("*",), types=("Conv2d",)), candidates,
                  technique="t") == ["0"]

    class MyLinear(nn.Linear):  # a subclass counts as its base
        pass

    assert select(LayerSelector(types=("Linear",)), {"a": MyLinear(2, 2)}, technique="t") \
        == ["a"]


def test_no_selector_takes_every_candidate_in_module_order() -> None:
    model = TinyBert()
    assert select(None, _linears(model), technique="t") == list(_linears(model))
    assert select(LayerSelector(), _linears(model), technique="t") == list(_linears(model))


# ---------------------------------------------------------------------------- errors
def test_errors_name_each_entry_and_list_the_candidates() -> None:
    with pytest.raises(ConfigError) as info:
        _bert_select(["classifier", "classifer", "encoder.layer.9.*",
                      "embeddings.word_embeddings"], kind="prunable layers",
                     takes="Linear layers")
    message = str(info.value)
    assert message.startswith("test: no layer named 'classifer' in this model; ")
    assert "no layer matches 'encoder.layer.9.*'" in message
    assert "'embeddings.word_embeddings' is an Embedding (test takes only Linear layers)" \
        in message
    assert message.endswith("prunable layers: encoder.layer.0.attention.self.query, "
                            "encoder.layer.0.attention.self.key, encoder.layer.0.attention."
                            "self.value, encoder.layer.0.attention.output.dense, encoder."
                            "layer.0.intermediate.dense, encoder.layer.0.output.dense, "
                            "encoder.layer.1.attention.self.query, encoder.layer.1.attention"
                            ".self.key, encoder.layer.1.attention.self.value, encoder.layer.1"
                            ".attention.output.dense, encoder.layer.1.intermediate.dense, "
                            "encoder.layer.1.output.dense, classifier")
    assert "\n" not in message


@pytest.mark.parametrize(("value", "needle"), [
    ({"types": ["Conv"]}, "types: no Conv layer among the layers (their types: Linear"),
    ({"types": ["Embedding"]}, "types: Embedding layers are not among the layers"),
    ({"ignore": ["encoder.layr"]}, "no layer named 'encoder.layr'"),
    ({"names": ["classifier"], "ignore": ["classifier"]},
     "'classifier' takes only layers that types/ignore leave out (classifier: ignored)"),
    ({"names": ["embeddings"]}, "'embeddings' is a _Embeddings"),
    ({"names": ["embeddings.*"]}, "'embeddings.*' matches only Embedding modules"),
    ({"names": ["encoder.layer.0.output.LayerNorm.weight"]}, "is a parameter, not a layer"),
    ({"ignore": ["**"]}, "types/ignore leave none of the layers"),
])
def test_selector_errors(value: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("*", r"\*")):
        _bert_select(value, kind="layers")


def test_a_model_without_candidates() -> None:
    with pytest.raises(ConfigError, match="drop-bound: this model has none of the prunable "
                                          "conv layers"):
        select(None, {}, technique="drop-bound", kind="prunable conv layers")


def test_ignoring_a_module_that_is_no_candidate_is_fine() -> None:
    # ignore names any module of the model: leaving out what would not be taken is harmless
    assert len(_bert_select({"ignore": ["embeddings"]})) == 13


def test_per_layer_values_with_patterns() -> None:
    model = TinyBert()
    values = select_values({"encoder.layer.*.output.dense": 4, "**.dense": 6,
                            "encoder.layer.1.output.dense": 2}, _linears(model),
                           technique="t", model=model)
    assert values == {"encoder.layer.0.attention.output.dense": 6,
                      "encoder.layer.0.intermediate.dense": 6,
                      "encoder.layer.0.output.dense": 4,  # the first pattern that matches
                      "encoder.layer.1.attention.output.dense": 6,
                      "encoder.layer.1.intermediate.dense": 6,
                      "encoder.layer.1.output.dense": 2}  # an exact name beats patterns
    ignored = select_values({"**.dense": 6}, _linears(model), technique="t",
                            selector=LayerSelector(ignore=("encoder.layer.1",)))
    assert list(ignored) == ["encoder.layer.0.attention.output.dense",
                             "encoder.layer.0.intermediate.dense",
                             "encoder.layer.0.output.dense"]
    with pytest.raises(ConfigError, match=r"no layer matches 'decoder\.\*'"):
        select_values({"decoder.*": 1}, _linears(model), technique="t")
    with pytest.raises(ConfigError, match="not both"):
        select_values({"classifier": 1}, _linears(model), technique="t",
                      selector=LayerSelector(names=("classifier",)))


# ---------------------------------------------------------------------------- YAML values
@pytest.mark.parametrize(("value", "expected"), [
    ("fc1", LayerSelector(names=("fc1",))),
    (["fc1", "conv*"], LayerSelector(names=("fc1", "conv*"))),
    ({"types": "Linear"}, LayerSelector(types=("Linear",))),
    ({"names": ["a"], "types": ["Conv"], "ignore": ["b"]},
     LayerSelector(names=("a",), types=("Conv",), ignore=("b",))),
    ({}, LayerSelector()),
    (None, None),
])
def test_yaml_values_become_selectors(value: object, expected: LayerSelector | None) -> None:
    assert as_selector(value) == expected
    config = config_from_dict("magnitude", {"sparsity": 0.5, "layers": value})
    assert config.layers == expected
    assert MagnitudePruneConfig(sparsity=0.5, layers=value).layers == expected  # Python too


@pytest.mark.parametrize(("value", "needle"), [
    ([], "magnitude: layers is empty"),
    ({"name": ["fc1"]}, "magnitude: layers: unknown key\\(s\\) name; a layer selector takes"),
    ([1, 2], "magnitude: layers must hold layer names or patterns, got 1"),
    (3, "magnitude: layers must be a name or a list of names"),
    ({"ignore": [""]}, "magnitude: layers: ignore must hold layer names"),
])
def test_bad_yaml_selectors(value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        config_from_dict("magnitude", {"sparsity": 0.5, "layers": value})
    assert "\n" not in str(info.value)


def test_a_recipe_with_selectors_and_finetune_round_trips() -> None:
    recipe = Recipe.from_dict({"steps": [
        {"magnitude": {"sparsity": {"fc*": 0.5}, "layers": {"types": "Linear",
                                                            "ignore": ["fc3"]}}},
        {"kmeans": {"bits": 5, "layers": "fc1", "finetune": {"epochs": 2, "lr": 0.001}}}]})
    (_, magnitude), (_, kmeans) = recipe.steps
    assert magnitude.layers == LayerSelector(types=("Linear",), ignore=("fc3",))
    assert kmeans.layers == LayerSelector(names=("fc1",))
    assert kmeans.finetune == FinetuneConfig(epochs=2, lr=0.001)
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


def test_every_layer_choosing_technique_takes_a_selector() -> None:
    for name in ("magnitude", "iterative-magnitude", "agp", "l1-filter", "auto-structured",
                 "drop-bound", "kmeans", "uniform"):
        target = {"sparsity": 0.5} if name in ("magnitude", "iterative-magnitude", "agp") \
            else {"flops_kept": 0.5} if name == "auto-structured" else {}
        config = config_from_dict(name, {**target, "layers": {"names": ["a*"],
                                                              "ignore": ["b"]}})
        assert config.layers == LayerSelector(names=("a*",), ignore=("b",)), name
    # no technique keeps a separate ignore option
    for name in list_techniques():
        with pytest.raises(ConfigError):
            config_from_dict(name, {"ignore": ["x"]})
        with pytest.raises(ConfigError):
            config_from_dict(name, {"ignored": ["x"]})


def test_mapping_and_layer_names_are_refused_together() -> None:
    with pytest.raises(ConfigError, match="not both"):
        WeightSharingConfig(bits={"fc1": 4}, layers=["fc2"])
    # types and ignore may go with a mapping
    config = UniformQuantConfig(bits={"fc*": 4}, layers={"ignore": ["fc3"]})
    assert config.bits == {"fc*": 4} and config.layers == LayerSelector(ignore=("fc3",))


def test_techniques_apply_patterns_and_types() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 4, 3))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc1", nn.Linear(4 * 6 * 6, 16))
    model.add_module("fc2", nn.Linear(16, 3))
    ctx = Context(progress=False, example_inputs=torch.randn(2, 1, 8, 8))
    out = apply_technique(model, UniformQuantConfig(bits=4, layers={"types": ["Linear"],
                                                                    "ignore": ["fc2"]}), ctx)
    assert [r["layer"] for r in ctx.records[-1]["layers"]] == ["fc1"]
    assert torch.equal(out.conv.weight, model.conv.weight)
    assert len(torch.unique(out.fc1.weight)) <= 16
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5, layers=["conv"]), ctx)
    assert pruned.conv.out_channels == 2 and pruned.fc1.out_features == 16
    pruned = apply_technique(model, StructuredPruneConfig(ratio={"fc*": 0.5}), ctx)
    assert pruned.conv.out_channels == 4 and pruned.fc1.out_features == 8
    with pytest.raises(ConfigError, match=r"no layer named 'fc3'.*Conv/Linear layers: conv, "
                                          r"fc1, fc2"):
        apply_technique(model, StructuredPruneConfig(layers={"ignore": ["fc3"]}), ctx)


# ---------------------------------------------------------------------------- fine-tuning
def test_finetune_settings_resolve_step_then_technique_then_context() -> None:
    base = TrainConfig(epochs=9, lr=0.1, batch_size=32)
    default = FinetuneConfig(epochs=2)
    assert resolve_finetune(None, default, base) == TrainConfig(epochs=2, lr=0.1,
                                                                batch_size=32)
    given = FinetuneConfig(lr=0.01)
    assert resolve_finetune(given, default, base) == TrainConfig(epochs=2, lr=0.01,
                                                                 batch_size=32)
    assert resolve_finetune(given, None, base) == TrainConfig(epochs=9, lr=0.01, batch_size=32)
    assert resolve_finetune(FinetuneConfig(epochs=0), default, base) is None  # no fine-tuning
    with pytest.raises(ConfigError, match="epochs must be an integer >= 0"):
        FinetuneConfig(epochs=-1)
    with pytest.raises(ConfigError, match="optimizer must be sgd or adamw"):
        FinetuneConfig(optimizer="adam")


@pytest.mark.parametrize(("technique", "values", "now"), [
    ("kmeans", {"finetune_epochs": 2}, "finetune: {epochs: N}"),
    ("kmeans", {"lr": 0.001}, "finetune: {lr: X}"),
    ("uniform", {"qat_epochs": 1}, "finetune: {epochs: N}"),
    ("uniform", {"lr": 0.001}, "finetune: {lr: X}"),
    ("drop-bound", {"finetune_epochs": 0}, "finetune: {epochs: N}"),
    ("drop-bound", {"finetune_lr": 0.1}, "finetune: {lr: X}"),
    ("drop-bound", {"finetune_images": 100}, "finetune_samples"),
    ("int8-qat", {"epochs": 2}, "finetune: {epochs: N}"),
    ("int8-qat", {"images": 512}, "finetune_samples"),
    ("l1-filter", {"ignored": ["fc"]}, "layers: {ignore: [...]}"),
    ("auto-structured", {"ignored": ["fc"]}, "layers: {ignore: [...]}"),
])
def test_old_option_names_say_the_new_ones(technique: str, values: dict, now: str) -> None:
    (key,) = values
    with pytest.raises(ConfigError) as info:
        config_from_dict(technique, values)
    assert str(info.value).startswith(f"{technique}: {key} is now {now}")
    assert "\n" not in str(info.value)


def test_finetune_sub_config_from_yaml() -> None:
    config = config_from_dict("kmeans", {"bits": 5, "finetune": {"epochs": 2, "lr": 0.001}})
    assert config.finetune == FinetuneConfig(epochs=2, lr=0.001)
    assert config_from_dict("uniform", {"finetune": None}).finetune is None
    with pytest.raises(ConfigError, match="kmeans: finetune: unknown option\\(s\\) epoch"):
        config_from_dict("kmeans", {"finetune": {"epoch": 2}})
    with pytest.raises(ConfigError, match="uniform: finetune: lr must be > 0"):
        config_from_dict("uniform", {"finetune": {"lr": 0}})
    with pytest.raises(ConfigError, match="int8-qat: finetune: epochs must be >= 1"):
        config_from_dict("int8-qat", {"finetune": {"epochs": 0}})
