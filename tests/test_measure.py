"""Measurements: MACs against hand formulas, non-zero counts, latency and memory sanity,
and the rendered table. Timing values are never asserted on, only their consistency."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn

from modelzip.data import ImageDataset
from modelzip.errors import ConfigError, ShapeError
from modelzip.metrics import (
    Measurement,
    count_macs,
    measure,
    measure_latency,
    measure_peak_memory,
    profile_model,
    render_profile,
)
from modelzip.train import evaluate
from modelzip.zoo import build_model


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@pytest.mark.parametrize(("fin", "fout", "bias"), [(7, 5, True), (1, 1, False), (64, 3, True)])
def test_linear_macs(fin: int, fout: int, bias: bool) -> None:
    model = nn.Sequential(nn.Linear(fin, fout, bias=bias))
    per_module, total = count_macs(model, (fin,))
    assert total == fin * fout
    assert per_module["0"] == fin * fout
    prof = profile_model(model, (fin,))
    assert prof.input_shape == (fin,)
    assert prof.total_macs == fin * fout
    assert prof.total_flops == 2 * fin * fout
    [layer] = prof.layers
    assert (layer.name, layer.type, layer.macs) == ("0", "Linear", fin * fout)
    assert layer.weight_shape == (fout, fin)
    assert layer.params == fin * fout + (fout if bias else 0)


CONV_CASES = [
    # cin, cout, kernel, stride, padding, groups, H, W
    (3, 8, (3, 3), (1, 1), (0, 0), 1, 10, 10),
    (3, 8, (3, 3), (2, 2), (1, 1), 1, 11, 9),
    (4, 8, (3, 3), (1, 1), (1, 1), 2, 9, 9),
    (6, 6, (3, 3), (1, 1), (1, 1), 6, 8, 8),
    (2, 4, (3, 5), (2, 1), (1, 2), 1, 7, 8),
    (8, 4, (1, 1), (3, 3), (0, 0), 4, 10, 10),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv_macs(case: tuple) -> None:
    cin, cout, k, s, p, g, h, w = case
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g))
    hout, wout = _conv_out(h, k[0], s[0], p[0]), _conv_out(w, k[1], s[1], p[1])
    with torch.no_grad():
        assert model(torch.zeros(1, cin, h, w)).shape == (1, cout, hout, wout)
    expected = cout * (cin // g) * k[0] * k[1] * hout * wout
    per_module, total = count_macs(model, (cin, h, w))
    assert total == expected
    assert per_module["0"] == expected
    prof = profile_model(model, (cin, h, w))
    assert prof.layers[0].macs == expected
    assert prof.layers[0].weight_shape == (cout, cin // g, *k)


def test_macs_sum_over_layers_and_root_module() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 6))
    per_module, total = count_macs(model, (1, 8, 8))
    conv = 4 * 1 * 9 * 6 * 6
    lin = 36 * 6
    assert (per_module["0"], per_module["4"], total) == (conv, lin, conv + lin)
    prof = profile_model(model, (1, 8, 8))
    assert [(layer.name, layer.macs) for layer in prof.layers] == [("0", conv), ("4", lin)]
    # a bare layer as the model: its own parameters are reported as "(root)"
    prof = profile_model(nn.Linear(3, 2), (3,))
    assert [(layer.name, layer.macs) for layer in prof.layers] == [("(root)", 6)]


def test_lenet5_macs() -> None:
    model = build_model("lenet5")
    prof = profile_model(model)  # input shape from the zoo spec
    assert prof.input_shape == (1, 28, 28)
    assert prof.total_macs == 2_293_000
    assert {layer.name: layer.macs for layer in prof.layers} == {
        "conv1": 20 * 25 * 24 * 24, "conv2": 50 * 20 * 25 * 8 * 8,
        "fc1": 800 * 500, "fc2": 500 * 10}
    assert prof.params == 431080
    assert prof.nonzero == 431080
    assert prof.dense_bytes == 4 * 431080


def test_profile_batchnorm_model_counts_bn_params() -> None:
    model = build_model("eurosat_cnn", width=8)
    prof = profile_model(model)
    assert prof.params == sum(p.numel() for p in model.parameters())
    types = {layer.type for layer in prof.layers}
    assert types == {"Conv2d", "BatchNorm2d", "Linear"}
    assert sum(layer.macs for layer in prof.layers) == prof.total_macs


def test_nonzero_after_zeroing() -> None:
    model = build_model("lenet300")
    with torch.no_grad():
        model.fc1.weight[:, :100] = 0  # 300 * 100 weights
        model.fc3.bias.zero_()  # 10 biases
    prof = profile_model(model)
    by_name = {layer.name: layer for layer in prof.layers}
    assert by_name["fc1"].nonzero == 784 * 300 + 300 - 30000
    assert by_name["fc1"].params == 784 * 300 + 300
    assert by_name["fc1"].kept_pct == pytest.approx(100 * (235500 - 30000) / 235500)
    assert by_name["fc3"].nonzero == 1000
    assert by_name["fc2"].nonzero == by_name["fc2"].params
    assert prof.nonzero == 266610 - 30010
    assert prof.params == 266610
    assert prof.total_macs == 784 * 300 + 300 * 100 + 100 * 10  # dense count


def test_profile_to_dict_is_json() -> None:
    d = profile_model(build_model("lenet5")).to_dict()
    d = json.loads(json.dumps(d))
    assert d["macs"] == 2_293_000
    assert d["flops"] == 4_586_000
    assert d["params"] == 431080
    assert d["input_shape"] == [1, 28, 28]
    assert d["layers"][0]["weight_shape"] == [20, 1, 5, 5]
    assert d["layers"][0]["flops"] == 2 * d["layers"][0]["macs"]


def test_input_shape_errors() -> None:
    with pytest.raises(ConfigError, match="cannot tell what a Linear takes as input; pass "
                                          "example_inputs"):
        profile_model(nn.Linear(3, 2))
    with pytest.raises(ShapeError, match="1x28x28"):
        profile_model(build_model("lenet5"), (3, 32, 32))


def test_any_model_is_profiled_on_its_example_inputs() -> None:
    """A text encoder takes a dict of int64 tensors; MACs are those of one sample."""
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.proj = nn.Linear(8, 4)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> torch.Tensor:
            return self.proj(self.embed(input_ids) * attention_mask[..., None])

    inputs = {"input_ids": torch.randint(0, 50, (3, 6)),
              "attention_mask": torch.ones(3, 6, dtype=torch.int64)}
    prof = profile_model(Encoder(), example_inputs=inputs)
    assert {layer.name for layer in prof.layers} == {"embed", "proj"}
    assert prof.total_macs == 6 * 8 * 4  # the projection of 6 tokens, batch 1
    assert prof.params == 50 * 8 + 8 * 4 + 4


def test_count_macs_restores_training_mode() -> None:
    model = build_model("lenet5").train()
    count_macs(model)
    assert model.training
    model.eval()
    count_macs(model)
    assert not model.training


# ---------------------------------------------------------------------------- latency, memory
def test_measure_latency_stats() -> None:
    model = build_model("lenet300").train()
    previous = torch.get_num_threads()
    other = 2 if previous != 2 else 1
    torch.set_num_threads(other)
    try:
        stats = measure_latency(model, batch_size=4, threads=1, warmup=1, runs=7)
        assert torch.get_num_threads() == other  # restored
    finally:
        torch.set_num_threads(previous)
    assert stats.runs == 7
    assert stats.warmup == 1
    assert stats.batch_size == 4
    assert stats.threads == 1
    assert 0 <= stats.min_ms <= stats.q1_ms <= stats.median_ms <= stats.q3_ms <= stats.max_ms
    assert stats.iqr_ms == pytest.approx(stats.q3_ms - stats.q1_ms)
    assert set(stats.to_dict()) >= {"median_ms", "q1_ms", "q3_ms", "iqr_ms", "runs"}
    assert model.training  # mode restored


def test_measure_latency_rejects_bad_settings() -> None:
    model = build_model("lenet300")
    with pytest.raises(ConfigError, match="runs must be >= 5"):
        measure_latency(model, runs=4)
    with pytest.raises(ConfigError, match="threads and batch_size"):
        measure_latency(model, threads=0, runs=5)
    with pytest.raises(ConfigError, match="threads and batch_size"):
        measure_latency(model, batch_size=0, runs=5)


def test_measure_peak_memory() -> None:
    model = build_model("lenet5").train()
    mem = measure_peak_memory(model, batch_size=8, repeats=2)
    assert mem is None or (isinstance(mem, int) and mem >= 0)
    assert model.training


# ---------------------------------------------------------------------------- rendering
def _render(table) -> str:
    console = Console(record=True, width=150)
    console.print(table)
    return console.export_text()


def test_render_profile_lists_layers() -> None:
    text = _render(render_profile(profile_model(build_model("lenet5")), "my lenet"))
    assert "my lenet" in text
    for name in ("conv1", "conv2", "fc1", "fc2", "total"):
        assert name in text
    assert "2,293,000" in text
    assert "431,080" in text
    assert "20x1x5x5" in text
    assert "input 1x28x28" in text


def test_measure_and_render_with_accuracy(mnist_test: ImageDataset) -> None:
    model = build_model("lenet300")
    data = mnist_test.subset(range(200))
    m = measure(model, data=data, batch_sizes=(2,), threads=(1,), runs=5)
    assert isinstance(m, Measurement)
    assert [(s.batch_size, s.threads, s.runs) for s in m.latency] == [(2, 1, 5)]
    assert set(m.peak_memory_bytes) == {2}
    assert m.accuracy == evaluate(model, data).to_dict()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["macs"] == 266200
    assert d["accuracy"]["total"] == 200
    text = _render(render_profile(m))
    for name in ("fc1", "fc2", "fc3"):
        assert name in text
    assert "latency batch 2, 1 thread(s)" in text
    assert f"({m.accuracy['errors']} of 200)" in text
    no_latency = measure(model, latency=False)
    assert no_latency.latency == []
    assert no_latency.accuracy is None
