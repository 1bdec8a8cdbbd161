"""The ``weightless`` technique (k-means clusters of the kept weights, the position ->
cluster map in a Bloomier filter) and its .mzip coding (``modelzip.codec.bloomier``): false
positives become weights, the packed model unpacks bit for bit, a filter too small says the
smallest size that works, forged fields and flipped bytes are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modelzip.codec import decode_tensor, encode_tensor
from modelzip.codec.bloomier import (
    FilterSizeError,
    bloomier_weights,
    build_bloomier,
    query_bloomier,
)
from modelzip.codec.model import pack, unpack
from modelzip.errors import ArtifactError, ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.quant.grid import grid_hints
from modelzip.quant.weightless import WeightlessConfig
from modelzip.recipe import Recipe, run_recipe
from modelzip.registry import Context, apply_technique
from modelzip.zoo import build_model
from tests.search_tiny import synthetic, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quiet() -> Context:
    ctx = Context(progress=False)
    ctx.log = lambda message: None  # type: ignore[method-assign]
    return ctx


def _same_bits(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), k


def _keys(n: int = 3000, count: int = 40_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(count, n, replace=False)), rng.integers(1, 9, n)


# ============================================================================ the filter
@pytest.mark.parametrize("cell_bits", [6, 10])
def test_kept_positions_query_exactly_false_positives_at_the_expected_rate(
        cell_bits: int) -> None:
    positions, values = _keys()
    table = build_bloomier(positions, values, 3 * 1300, cell_bits, seed=1)
    q = query_bloomier(table, 40_000, 1, cell_bits)
    assert np.array_equal(q[positions], values)
    others = np.setdiff1d(np.arange(40_000), positions)
    rate = float(((q[others] >= 1) & (q[others] <= 8)).mean())
    expected = 8 / 2**cell_bits
    assert expected / 2 < rate < expected * 2


def test_a_filter_too_small_says_the_smallest_size_that_works() -> None:
    positions, values = _keys()
    with pytest.raises(FilterSizeError, match=r"smallest size that works is (\d+) cells") as e:
        build_bloomier(positions, values, 3 * 1000, 8, seed=1)
    smallest = int(str(e.value).split("works is ")[1].split()[0])
    assert 3000 < smallest < 3 * 1400
    build_bloomier(positions, values, smallest, 8, seed=1)  # and it does work
    with pytest.raises(ConfigError, match="multiple of 3"):
        build_bloomier(positions, values, 4000, 8, seed=1)
    with pytest.raises(ConfigError, match=r"values must lie in 1\.\.7"):
        build_bloomier(positions, values, 3 * 1300, 3, seed=1)


# ============================================================================ the coding
def _coded() -> tuple[np.ndarray, dict]:
    positions, values = _keys()
    table = build_bloomier(positions, values, 3 * 1300, 8, seed=2)
    book = np.linspace(-1, 1, 8).astype(np.float32)
    w = bloomier_weights(table, 40_000, 2, 8, book).reshape(200, 200)
    return w, {"kind": "bloomier", "table": table, "cell_bits": 8, "seed": 2,
               "codebook": book}


def test_tensor_round_trip_and_forgeries_are_refused() -> None:
    w, hint = _coded()
    entry, payload = encode_tensor(w, hint=hint, name="fc")
    assert entry["coding"] == "bloomier"
    assert decode_tensor(entry, payload, name="fc").tobytes() == w.tobytes()
    b = entry["bloomier"]
    with pytest.raises(ArtifactError, match="filter does not query back"):
        decode_tensor({**entry, "bloomier": {**b, "seed": 3}}, payload, name="fc")
    for field, bad in [("cells", 3 * 1300 + 1), ("cell_bits", 17), ("clusters", 256),
                       ("seed", -1)]:
        with pytest.raises(ArtifactError, match=field):
            decode_tensor({**entry, "bloomier": {**b, field: bad}}, payload, name="fc")
    for i in range(0, len(payload), max(1, len(payload) // 40)):
        bad = bytearray(payload)
        bad[i] ^= 0x20
        with pytest.raises(ArtifactError):
            decode_tensor(entry, bytes(bad), name="fc")


# ============================================================================ the technique
def test_pack_unpack_bit_exact_with_false_positives_and_retraining() -> None:
    torch.manual_seed(0)
    model = apply_technique(build_model("lenet300"), MagnitudePruneConfig(sparsity=0.95),
                            Context(progress=False))
    ctx = _quiet()
    out = apply_technique(model, WeightlessConfig(bits=3, cell_bits=7,
                                                  layers=["fc1"]), ctx)
    layer = ctx.records[-1]["layers"][0]
    assert layer["false_positives"] > 0 and 0.03 < layer["false_positive_rate"] < 0.1
    fc1 = out.state_dict()["fc1.weight"]
    kept = model.state_dict()["fc1.weight"] != 0
    assert int((fc1 != 0).sum()) == layer["kept"] + layer["false_positives"]
    assert bool((fc1[kept] != 0).all()) and len(torch.unique(fc1[fc1 != 0])) <= 8
    assert torch.equal(ctx.masks["fc1.weight"], fc1 != 0)
    blob = pack(out)
    _same_bits(out, unpack(blob))

    ctx = _quiet()
    ctx.train_data = synthetic(128, 1, "train")
    pruned = apply_technique(tiny_model(), MagnitudePruneConfig(sparsity=0.8),
                             Context(progress=False))
    tuned = apply_technique(pruned, WeightlessConfig(
        bits=2, finetune=FinetuneConfig(epochs=1, lr=0.01, batch_size=64)), ctx)
    assert ctx.records[-1]["finetune_epochs"] == 1
    assert {h["kind"] for h in grid_hints(tuned).values()} == {"bloomier"}
    _same_bits(tuned, unpack(pack(tuned), model=tiny_model()))


def test_config_errors_and_recipe() -> None:
    with pytest.raises(ConfigError, match="cells of at least 5 bits"):
        WeightlessConfig(bits=4, cell_bits=4)
    with pytest.raises(ConfigError, match="cell_bits"):
        WeightlessConfig(cell_bits=17)
    with pytest.raises(ConfigError, match="cells_per_weight"):
        WeightlessConfig(cells_per_weight=0.9)
    torch.manual_seed(0)
    model = apply_technique(build_model("lenet300"), MagnitudePruneConfig(sparsity=0.9),
                            Context(progress=False))
    with pytest.raises(FilterSizeError, match=r"layer fc2.*smallest size that works"):
        apply_technique(model, WeightlessConfig(cells_per_weight=1.0, layers=["fc2"]),
                        _quiet())
    recipe = Recipe.from_dict({"name": "weightless", "steps": [
        {"magnitude": {"sparsity": 0.95}}, {"weightless": {"bits": 3, "layers": ["fc1"]}}]})
    torch.manual_seed(0)
    model = run_recipe(build_model("lenet300"), recipe, _quiet())
    assert list(grid_hints(model)) == ["fc1.weight"]
