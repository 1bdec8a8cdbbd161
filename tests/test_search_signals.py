"""Layer signals: the adaptive-binning mutual-information estimators on cases with a known
answer, and the per-layer signal captured from a model by hooks."""

from __future__ import annotations

import math

import pytest
import torch

from modelzip.errors import ConfigError
from modelzip.search.mutual_info import (
    adaptive_bin_edges,
    binned_codes,
    entropy_bits,
    layer_information,
    mutual_information_bits,
    unit_information,
)
from modelzip.search.signals import capture_activations, information_signal
from tests.search_tiny import make


def _balanced_labels(n: int, classes: int, seed: int = 0) -> torch.Tensor:
    y = torch.arange(n) % classes
    return y[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def test_entropy_of_equally_likely_patterns_is_their_log2_count():
    codes = torch.arange(64) % 8  # 8 symbols, 8 times each
    assert entropy_bits(codes) == pytest.approx(3.0)
    pairs = torch.stack([torch.arange(64) % 2, torch.arange(64) // 32], dim=1)  # 4 patterns
    assert entropy_bits(pairs) == pytest.approx(2.0)
    assert entropy_bits(torch.zeros(10, dtype=torch.long)) == 0.0


def test_mutual_information_of_a_copy_is_its_entropy_and_of_independent_codes_zero():
    a = torch.arange(400) % 4
    assert mutual_information_bits(a, a) == pytest.approx(2.0)
    b = (torch.arange(400) // 4) % 2  # each value of a meets each value of b equally often
    assert mutual_information_bits(a, b) == pytest.approx(0.0, abs=1e-9)


def test_adaptive_bins_hold_equal_numbers_of_levels_for_unbounded_values():
    values = torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 5 + 2
    counts = torch.bincount(binned_codes(values, 10).reshape(-1))
    assert len(counts) == 10 and counts.min() == counts.max() == 300
    # a fixed grid over the same range would not: most values sit in the middle bins
    fixed = torch.histc(values, bins=10)
    assert fixed.max() > 2 * fixed.min() + 300


def test_relu_zeros_get_a_bin_of_their_own():
    g = torch.Generator().manual_seed(1)
    values = torch.relu(torch.randn(2000, generator=g))
    edges = adaptive_bin_edges(values, 5)
    assert edges[0] == values[values > 0].min()
    codes = binned_codes(values, 5).reshape(-1)
    assert (codes[values == 0] == 0).all() and (codes[values > 0] > 0).all()
    positive = torch.bincount(codes[values > 0])[1:]
    assert len(positive) == 5 and positive.max() - positive.min() <= 1
    # told it is unbounded, zero shares the lowest bin with small positive values
    codes = binned_codes(values, 5, relu=False).reshape(-1)
    assert (codes == 0).sum() > (values == 0).sum()


def test_t_equal_to_x_holds_all_of_h_x_and_a_label_copy_all_of_h_y():
    n = 4000
    y = _balanced_labels(n, 4)
    x_ids = torch.arange(n) % 16  # 16 distinct inputs, equally often
    t = x_ids.double()[:, None]  # T = X
    info = layer_information(t, y, x=x_ids, bins=16)
    assert info.i_xt == pytest.approx(entropy_bits(x_ids)) == pytest.approx(4.0)
    # distinct inputs (the default): I(X;T) = H(T), at most log2(N)
    distinct = layer_information(torch.randn(n, 1), y, bins=8)
    assert distinct.i_xt == pytest.approx(3.0) and distinct.max_bits == pytest.approx(
        math.log2(n))
    # T a noisy copy of a balanced label: every bit of H(Y) survives in 4 adaptive bins
    noisy = y.double()[:, None] + 0.1 * torch.rand(n, 1, generator=torch.Generator(
        ).manual_seed(2))
    label_copy = layer_information(noisy, y, bins=4)
    assert label_copy.i_ty == pytest.approx(label_copy.h_y, abs=1e-9)
    assert label_copy.h_y == pytest.approx(2.0)


def test_t_independent_of_y_carries_almost_no_label_information():
    n = 6000
    g = torch.Generator().manual_seed(3)
    y = _balanced_labels(n, 3)
    info = layer_information(torch.randn(n, 1, generator=g), y, bins=6)
    # plug-in bias ~ (bins - 1)(classes - 1) / (2 N ln 2) = 0.0012 bits
    assert info.i_ty < 0.01 and info.i_xt > 2.5
    relu = layer_information(torch.relu(torch.randn(n, 1, generator=g)), y, bins=6)
    assert relu.relu and relu.i_ty < 0.01


def test_wide_layers_saturate_and_the_unit_average_does_not():
    n = 500
    g = torch.Generator().manual_seed(4)
    y = _balanced_labels(n, 2)
    wide = torch.randn(n, 40, generator=g)
    wide[:, 0] += 4.0 * y  # one unit carries the label
    info = layer_information(wide, y, bins=10)
    assert info.saturated and info.i_xt == pytest.approx(math.log2(n))
    units = unit_information(wide, y, bins=10)
    assert units["units"] == 40 and units["i_ty"] < info.i_ty
    only_label_unit = unit_information(wide[:, :1], y, bins=10)
    assert only_label_unit["i_ty"] > 0.8 > units["i_ty"]


def test_bad_input_is_refused_with_one_clear_error():
    with pytest.raises(ConfigError, match="bins must be an integer >= 2"):
        adaptive_bin_edges(torch.randn(10), 1)
    with pytest.raises(ConfigError, match="finite"):
        adaptive_bin_edges(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ConfigError, match="one label per sample"):
        layer_information(torch.randn(10, 2), torch.zeros(9))
    with pytest.raises(ConfigError, match="discrete codes"):
        entropy_bits(torch.randn(5))
    with pytest.raises(ConfigError, match="scope must be one of"):
        binned_codes(torch.randn(10, 2), 4, scope="neuron")


def test_information_signal_of_a_trained_model_per_layer():
    model, ctx = make()
    layers = ["0", "4", "6"]  # conv, hidden linear, logits
    acts, labels = capture_activations(model, ctx.val_data, {"0": "0", "relu": "5"},
                                       samples=50)
    assert acts["0"].shape == (50, 8) and acts["relu"].shape == (50, 32)  # conv map pooled
    assert len(labels) == 50 and (acts["relu"] >= 0).all()
    signal = information_signal(model, ctx.val_data, layers, modules={"4": "5"}, samples=60,
                                bins=8)
    assert list(signal) == layers and signal["4"]["module"] == "5" and signal["4"]["relu"]
    for row in signal.values():
        # the data-processing bounds: I(T;Y) <= min(I(X;T), H(Y)), I(X;T) <= log2(N)
        assert 0 <= row["i_ty"] <= min(row["i_xt"], row["h_y"]) + 1e-9
        assert row["i_xt"] <= row["max_bits"] + 1e-9
        assert 0 <= row["unit_i_ty"] <= row["h_y"] + 1e-9
    # a trained classifier's logits carry label information
    assert signal["6"]["unit_i_ty"] > 0.3
    with pytest.raises(ConfigError, match="no module named nope"):
        capture_activations(model, ctx.val_data, {"x": "nope"})
    with pytest.raises(ConfigError, match="samples must be an integer >= 2"):
        capture_activations(model, ctx.val_data, {"0": "0"}, samples=0)


def test_kfac_saliency_makes_one_global_threshold_remove_the_asked_fraction():
    from modelzip.search.signals import kfac_saliency, ratios_at_fraction

    model, ctx = make()
    layers = ["0", "4", "6"]
    saliency = kfac_saliency(model, ctx.train_data, layers, batches=2, batch_size=64)
    modules = dict(model.named_modules())
    assert all(saliency[k].shape == modules[k].weight.shape and (saliency[k] >= 0).all()
               for k in layers)
    ratios = ratios_at_fraction(saliency, 0.5)
    sizes = {k: saliency[k].numel() for k in layers}
    removed = sum(ratios[k] * sizes[k] for k in layers) / sum(sizes.values())
    assert removed == pytest.approx(0.5, abs=0.01)
    assert len(set(ratios.values())) > 1  # the layers are not pruned alike
