"""Low-rank factorization: the decompositions on tensors (EVBMF finds known ranks, full ranks
reconstruct), the five techniques on small models including one with residual and concat
connections, bad input refused with nothing changed, bit-exact pack/unpack onto a freshly
built skeleton, a recipe step with the runnable ONNX graph, and the CLI command."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import modelzip
from modelzip.codec.model import pack, unpack
from modelzip.core.context import Context
from modelzip.core.dataset import Dataset
from modelzip.errors import ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.lowrank import (
    CPConfig,
    RankSelectConfig,
    SeparableConfig,
    SVDConfig,
    Tucker2Config,
    cp,
    evbmf,
    fit_separable,
    separable_weights,
    svd_factors,
    tucker2,
)
from modelzip.lowrank.decompose import rank_for_energy, relative_error
from modelzip.metrics import profile_model
from modelzip.registry import apply, config_from_dict, list_techniques
from modelzip.zoo import build_model
from tests.test_cli import assert_ok, assert_user_error, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int, shape: tuple[int, ...], seed: int = 0, classes: int = 10) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return Dataset([(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)], name="random")


class SmallNet(nn.Module):
    """Two convs (one strided, one with bias) and a Linear: every layer type the methods
    take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))))
        return self.fc(x.flatten(1))


@pytest.fixture
def small() -> tuple[nn.Module, torch.Tensor, Context]:
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x, Context(example_inputs=x[:2], progress=False)


# ---------------------------------------------------------------------------- maths
@pytest.mark.parametrize(("m", "n", "rank", "noise"), [(60, 80, 5, 0.1), (100, 40, 12, 0.05),
                                                       (30, 300, 3, 0.2)])
def test_evbmf_finds_the_rank_of_a_noisy_low_rank_matrix(m, n, rank, noise) -> None:
    gen = torch.Generator().manual_seed(rank)
    signal = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)
    result = evbmf(signal + noise * torch.randn(m, n, generator=gen))
    assert result.rank == rank
    assert result.sigma2 == pytest.approx(noise ** 2, rel=0.15)  # the noise variance too
    assert evbmf(noise * torch.randn(m, n, generator=gen)).rank == 0  # pure noise: nothing


def test_full_rank_factorizations_reconstruct_the_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(10, 6, 3, 3, generator=gen)
    a, b = svd_factors(w.reshape(10, -1), 10)
    assert torch.allclose(b @ a, w.reshape(10, -1), atol=1e-5)
    assert tucker2(w, (10, 6)).error < 1e-5
    assert relative_error(w, separable_weights(w, 18).reconstruct()) < 1e-5
    low, high = cp(w, 4), cp(w, 40)
    assert high.error < low.error < 1
    assert torch.allclose(relative_error(w, high.reconstruct()) * torch.ones(1),
                          torch.tensor([high.error]), atol=1e-4)
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert [rank_for_energy(s, e) for e in (0.5, 0.9, 1.0)] == [1, 2, 3]


def test_cp_that_does_not_converge_says_so_and_uses_the_fallback() -> None:
    w = torch.randn(8, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    result = cp(w, 30, n_iter_max=2, tol=1e-12)
    assert "did not converge" in result.note and "fallback" in result.note
    assert np.isfinite(result.error)


def test_the_data_fit_lowers_the_output_error_of_separable_filters() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, 3, 3, generator=gen)
    # correlated inputs: the data fit can spend its rank where the activations are
    x = torch.randn(16, 2, 10, 10, generator=gen).repeat(1, 3, 1, 1)
    factors, weight_err, data_err = fit_separable(w, None, 2, x, padding=(1, 1))
    assert data_err < 0.9 * weight_err
    assert factors.vertical.shape == (2, 6, 3, 1) and factors.horizontal.shape == (8, 2, 1, 3)


# ---------------------------------------------------------------------------- techniques
def test_every_method_at_full_rank_keeps_the_outputs(small) -> None:
    model, x, ctx = small
    expected = model(x)
    configs = [
        SVDConfig(rank={"conv1": 8, "conv2": 12, "fc": 10}),
        Tucker2Config(ranks={"conv1": [8, 3], "conv2": [12, 8]}),
        SeparableConfig(rank={"conv1": 9, "conv2": 24}, fit="weights"),
    ]
    for config in configs:
        out = apply(model, config, ctx)
        assert torch.allclose(out(x), expected, atol=1e-4), config
        assert not isinstance(out.conv2, nn.Conv2d)  # replaced by a Sequential
    high = apply(model, CPConfig(rank={"conv1": 27, "conv2": 72}), ctx)
    rel = float((high(x) - expected).detach().norm() / expected.detach().norm())
    assert rel < 0.1
    assert isinstance(model.conv2, nn.Conv2d)  # the input model is never changed


def test_records_and_cost_counts_match_the_measured_model(small) -> None:
    model, _, ctx = small
    for config in (SVDConfig(budget=0.5, layers={"types": ["Conv2d", "Linear"]}),
                   Tucker2Config(budget=0.5), CPConfig(budget=0.5),
                   SeparableConfig(budget=0.5, fit="weights")):
        out = apply(model, config, ctx)
        record = ctx.records[-1]
        prof = profile_model(out, example_inputs=ctx.example_inputs)
        assert record["macs_after"] == prof.total_macs
        assert record["params_after"] == prof.params
        # the per-layer counts (worked out from shapes) agree with what was measured
        planned = record["macs_before"] - sum(r["macs_before"] - r["macs_after"]
                                              for r in record["layers"])
        assert planned == prof.total_macs, config
        for layer in record["layers"]:
            assert layer["macs_after"] <= 0.5 * layer["macs_before"]
            assert 0 <= layer["rel_error"] < 1 and layer["rank"]


def test_tucker2_takes_vbmf_ranks_by_default() -> None:
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
    with torch.no_grad():  # a kernel of known multilinear rank (6 out, 4 in) plus noise
        core = torch.randn(6, 4, 3, 3, generator=gen)
        u, v = torch.randn(24, 6, generator=gen), torch.randn(16, 4, generator=gen)
        conv.weight.copy_(torch.einsum("abhw,na,cb->nchw", core, u, v)
                          + 0.01 * torch.randn(24, 16, 3, 3, generator=gen))
    model = nn.Sequential(conv).eval()
    ctx = Context(example_inputs=torch.randn(1, 16, 6, 6), progress=False)
    apply(model, Tucker2Config(), ctx)
    layer = ctx.records[-1]["layers"][0]
    assert layer["rank"] == [6, 4] and layer["rank_source"] == "vbmf"
    assert layer["rel_error"] < 0.05


@pytest.fixture(scope="module")
def resconcat() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resconcat").eval()
    return model, torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("config", [
    SVDConfig(energy=0.9, layers={"types": ["Conv2d", "Linear"]}),
    Tucker2Config(budget=0.5),
    CPConfig(budget=0.5),
    SeparableConfig(budget=0.5),
    RankSelectConfig(ratio=0.5, proxy="metric"),
], ids=["svd", "tucker2", "cp", "separable", "rank-select"])
def test_residual_model_factorizes_and_reads_back_bit_exactly(resconcat, config) -> None:
    model, x = resconcat
    ctx = Context(example_inputs=x[:2], calibration_data=_images(32, (1, 28, 28)),
                  progress=False)
    out = apply(model, config, ctx).eval()
    record = ctx.records[-1]
    assert record["macs_after"] < record["macs_before"]
    assert torch.isfinite(out(x)).all()
    back = unpack(pack(out), model=build_model("resconcat")).eval()
    assert torch.equal(back(x), out(x))
    assert [n for n, _ in back.state_dict().items()] == list(out.state_dict())


@pytest.mark.parametrize("strategy", ["joint", "greedy"])
def test_rank_select_meets_the_whole_network_target(resconcat, strategy) -> None:
    model, x = resconcat
    ctx = Context(example_inputs=x[:2], val_data=_images(48, (1, 28, 28), seed=3),
                  progress=False)
    out = apply(model, RankSelectConfig(ratio=0.4, strategy=strategy, candidates=3), ctx)
    record = ctx.records[-1]
    assert record["macs_after"] <= 0.4 * record["macs_before"]
    assert record["selection"]["strategy"] == strategy
    if strategy == "joint":  # the rank set with the lowest validation error, unfine-tuned
        errors = [c["val_error_pct"] for c in record["selection"]["candidates"]]
        assert min(errors) == pytest.approx(ctx.error(out, ctx.val_data))
    params = apply(model, RankSelectConfig(target="params", ratio=0.5, proxy="metric"),
                   Context(example_inputs=x[:2], progress=False))
    assert sum(p.numel() for p in params.parameters()) <= 0.5 * sum(
        p.numel() for p in model.parameters())


def test_factorize_then_finetune_through_the_context(small) -> None:
    model, x, _ = small
    data = _images(32, (3, 8, 8))
    ctx = Context(example_inputs=x[:2], train_data=data, val_data=data, progress=False)
    apply(model, Tucker2Config(ranks=[2, 2], finetune=FinetuneConfig(epochs=1, lr=0.01)), ctx)
    record = ctx.records[-1]
    assert record["finetune"]["epochs"] == 1
    assert "val_error_pct_before_finetune" in record and "val_error_pct" in record


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("name", "values", "needle"), [
    ("svd", {"rank": 0}, "must be >= 1"),
    ("svd", {"energy": 1.5}, "energy must be in (0, 1]"),
    ("svd", {"energy": 0.0}, "energy must be in (0, 1]"),
    ("svd", {}, "exactly one of rank, energy, budget"),
    ("tucker2", {"ranks": [1, 2, 3]}, "two numbers"),
    ("cp", {"rank": -1}, "must be >= 1"),
    ("separable", {"rank": 2, "fit": "magic"}, "fit must be one of data, weights"),
    ("rank-select", {"ratio": 1.5}, "ratio"),
    ("rank-select", {"strategy": "best"}, "joint, greedy"),
    ("rank-select", {"target": "latency", "threads": 0}, "threads"),
    ("rank-select", {"target": "seconds"}, "macs, params, bytes, latency"),
])
def test_bad_options_are_refused_when_the_config_is_built(name, values, needle) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        config_from_dict(name, values)
    assert needle in str(info.value)


@pytest.mark.parametrize(("config", "needles"), [
    (SVDConfig(rank=99, layers=["fc"]), ("rank 99 is larger than the layer allows",
                                        "at most 10")),
    (Tucker2Config(ranks=[4, 4]), ("conv1", "at most 3")),
    (Tucker2Config(ranks=2, layers=["fc"]), ("'fc' is a Linear", "Conv2d")),
    (SVDConfig(rank=2, layers=["bn"]), ("'bn' is a BatchNorm2d", "Linear and Conv2d")),
    (CPConfig(budget=0.001), ("cannot be met", "smallest reachable budget is")),
    (RankSelectConfig(ratio=0.001, proxy="metric"), ("cannot be met",
                                                     "smallest reachable is")),
])
def test_bad_ranks_and_layers_change_nothing(small, config, needles) -> None:
    model, _, ctx = small
    state = copy.deepcopy(model.state_dict())
    ctx.records.append({"step": "earlier"})
    with pytest.raises(ConfigError) as info:
        apply(model, config, ctx)
    for needle in needles:
        assert needle in str(info.value)
    assert ctx.records == [{"step": "earlier"}]
    assert isinstance(model.conv1, nn.Conv2d)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_grouped_convolutions_are_left_out_unless_named(resconcat) -> None:
    model, x = resconcat
    ctx = Context(example_inputs=x[:2], progress=False)
    out = apply(model, Tucker2Config(budget=0.5), ctx)
    assert isinstance(out.depthwise[0], nn.Conv2d)  # groups=32: not taken
    with pytest.raises(ConfigError, match="grouped Conv2d"):
        apply(model, Tucker2Config(budget=0.5, layers=["depthwise.0"]), ctx)


# ---------------------------------------------------------------------------- pipeline, CLI
def test_techniques_are_registered_as_factorize() -> None:
    assert set(list_techniques("factorize")) >= {"svd", "tucker2", "cp", "separable",
                                                 "rank-select"}


def test_recipe_step_packs_the_runnable_graph(tmp_path: Path) -> None:
    from modelzip.runtime.runner import Runner

    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    data = _images(64, (1, 28, 28))
    recipe = {"steps": [{"tucker2": {"ranks": {"conv2": [8, 6]}}},
                        {"svd": {"rank": {"fc1": 16}}}],
              "pack": {"format": "onnx"}}
    result = modelzip.compress(model, recipe, data=data, progress=False,
                               out=tmp_path / "g.mzip")
    assert result.artifact_kind == "onnx-graph"
    assert result.after.params < result.before.params
    x = torch.randn(3, 1, 28, 28)
    logits = np.asarray(Runner.from_file(tmp_path / "g.mzip").logits(x.numpy()))
    assert np.allclose(logits, result.model(x).detach().numpy(), atol=1e-4)
    # the weights path reads back onto a freshly built zoo model, bit-exactly
    weights = modelzip.compress(model, {"steps": recipe["steps"]}, data=data, progress=False)
    assert torch.equal(weights.model(x), unpack(weights.artifact)(x))


def test_builtin_recipe_loads() -> None:
    from modelzip.recipe import builtin_recipe

    recipe = builtin_recipe("lowrank-tucker2")
    assert [name for name, _ in recipe.steps] == ["tucker2", "svd", "finetune"]
    assert recipe.pack["format"] == "onnx"


@pytest.fixture(scope="module")
def lenet5_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelzip.checkpoint import save_checkpoint

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lowrank") / "lenet5"
    save_checkpoint(build_model("lenet5").eval(), out, dataset={"name": "mnist-sample"},
                    training={"lr": 0.01, "batch_size": 64})
    return out


def test_cli_factorize_then_run_the_packed_graph(lenet5_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "f"
    result = run_cli("factorize", lenet5_ckpt, "--method", "tucker2", "--set",
                     "ranks={conv2: [8, 6]}", "--no-progress", "-o", out)
    assert_ok(result)
    assert "factorize --method tucker2" in result.stdout and (out / "model.mzip").is_file()
    graph = tmp_path / "g.mzip"
    assert_ok(run_cli("pack-onnx", out, "-o", graph))  # the factorized checkpoint reloads
    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(0).standard_normal((2, 1, 28, 28), np.float32))
    run = subprocess.run([sys.executable, "-m", "modelzip.entry", "run", str(graph),
                          "--input", str(images)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2
    assert_user_error(run_cli("factorize", lenet5_ckpt, "--method", "svd", "--set",
                              "energy=2", "-o", tmp_path / "g"), "energy must be in (0, 1]")
    assert not (tmp_path / "g").exists()


def test_cp_factors_share_each_component_norm_equally() -> None:
    from modelzip.lowrank.decompose import balance_factors

    gen = torch.Generator().manual_seed(0)
    factors = [torch.randn(6, 3, generator=gen) * s for s in (100.0, 1.0, 0.1, 0.01)]
    factors[2][:, 1] = 0.0  # a dead component stays dead
    balanced = balance_factors(factors)
    before = torch.einsum("nr,cr,yr,xr->ncyx", *factors)
    after = torch.einsum("nr,cr,yr,xr->ncyx", *balanced)
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-6)
    norms = torch.stack([f.norm(dim=0) for f in balanced])
    assert torch.allclose(norms[:, [0, 2]], norms[0, [0, 2]].expand(4, 2), rtol=1e-5)
    assert torch.count_nonzero(norms[:, 1]) == 0
    result = cp(torch.randn(8, 4, 3, 3, generator=gen) * 50, 4)
    parts = [result.out_factor, result.in_factor, result.vertical, result.horizontal]
    col = torch.stack([p.norm(dim=0) for p in parts])
    assert torch.allclose(col, col[0].expand_as(col), rtol=1e-4)


def test_the_cp_ridge_bounds_degenerate_components_at_a_similar_error() -> None:
    # a kernel of rank well above R: plain ALS finds components that cancel each other
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    plain, ridged = cp(w, 24), cp(w, 24, ridge=0.01)
    assert ridged.degeneracy < 0.5 * plain.degeneracy
    assert ridged.error < plain.error + 0.05
    assert plain.degeneracy > 24 ** 0.5  # above what 24 orthogonal components reach
    with pytest.raises(ConfigError, match="ridge"):
        cp(w, 4, ridge=-1.0)


def test_cp_finetunes_at_its_own_lr_scale_unless_the_step_gives_an_lr(small) -> None:
    model, x, _ = small
    seen: list[float] = []

    def trainer(model: nn.Module, data: object, config: object, **kwargs: object) -> None:
        seen.append(config.lr)  # type: ignore[attr-defined]

    base = modelzip.train.TrainConfig(lr=0.05)
    for finetune, expected in ((FinetuneConfig(epochs=1), 0.05 * 0.1),
                               (FinetuneConfig(epochs=1, lr=0.02), 0.02)):
        ctx = Context(example_inputs=x[:2], train_data=_images(16, (3, 8, 8)), finetune=base,
                      trainer=trainer, progress=False)
        apply(model, CPConfig(rank=2, finetune=finetune), ctx)
        assert seen[-1] == pytest.approx(expected)
        record = ctx.records[-1]
        assert record["finetune"]["lr"] == pytest.approx(expected)
        assert record["finetune_lr_scale"] == 0.1 and record["ridge"] == 0.01
        assert all(layer["degeneracy"] > 0 for layer in record["layers"])
    for bad, needle in (({"rank": 2, "ridge": -0.1}, "ridge"),
                        ({"rank": 2, "finetune_lr_scale": 0}, "finetune_lr_scale")):
        with pytest.raises(ConfigError, match=needle):
            config_from_dict("cp", bad)


def _fake_latency(calls: list[tuple[str, int]]) -> Any:
    """Milliseconds = thousands of parameters, except that the factorized conv2 (a Sequential
    ending in 12 channels) is slower than conv2 itself."""
    def measure(module: nn.Module, example: torch.Tensor, threads: int = 1,
                runs: int = 30) -> float:
        calls.append((type(module).__name__, threads))
        if isinstance(module, nn.Sequential) and getattr(module[-1], "out_channels", 0) == 12:
            return 1e3
        return sum(p.numel() for p in module.parameters()) / 1e3
    return measure


def test_rank_select_for_latency_uses_the_measured_table(small, monkeypatch) -> None:
    import importlib

    module = importlib.import_module("modelzip.lowrank.rank_select")  # not the function
    model, _, ctx = small
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(module, "measure_latency_ms", _fake_latency(calls))
    out = apply(model, RankSelectConfig(target="latency", ratio=0.6, proxy="metric",
                                        threads=2), ctx)
    sel = ctx.records[-1]["selection"]
    table = sel["latency_table_ms"]
    assert table.pop("session overhead") == {"as is": 0.0}  # a ReLU: no parameters
    assert set(table) == {"conv1", "conv2", "fc"} and all("as is" in t for t in table.values())
    assert {threads for _, threads in calls} == {2}
    # conv2 factorized is slower than conv2 in the table: never chosen
    assert isinstance(out.conv2, nn.Conv2d) and "conv2" in sel["kept_unfactorized"]
    chosen = {r["layer"]: str(r["rank"]) for r in ctx.records[-1]["layers"]}
    assert chosen  # something was factorized
    planned = sel["latency_ms_rest"] + sum(t[chosen.get(n, "as is")] for n, t in table.items())
    whole = sel["latency_ms_rest"] + sum(t["as is"] for t in table.values())
    assert planned <= 0.6 * whole + 1e-9
    assert planned / whole == pytest.approx(sel["planned_fraction"])
    # the factorized model itself is measured at the end
    assert sel["latency_ms_after"] == pytest.approx(sum(p.numel() for p in out.parameters())
                                                    / 1e3)
    assert sel["measured_fraction"] == pytest.approx(sel["latency_ms_after"]
                                                     / sel["latency_ms_before"])
    with pytest.raises(ConfigError, match="smallest reachable is"):
        apply(model, RankSelectConfig(target="latency", ratio=0.1, proxy="metric"), ctx)


def test_measured_latency_is_a_positive_time(small) -> None:
    from modelzip.lowrank.rank_select import measure_latency_ms

    model, x, _ = small
    assert measure_latency_ms(model, x[:1], threads=1, runs=3) > 0
