"""Static int8 quantization with onnxruntime, and the quantization-aware training fallback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelzip.checkpoint import load_checkpoint
from modelzip.errors import ConfigError, ExportError, ShapeError
from modelzip.finetune import FinetuneConfig
from modelzip.prune.masks import masks_from_zeros
from modelzip.registry import Context, apply_technique, config_from_dict
from modelzip.runtime.export import evaluate_onnx, export_onnx
from modelzip.runtime.int8 import quantize_onnx_int8, runtime_ops
from modelzip.runtime.ort import make_session
from modelzip.runtime.qat import (
    FakeQuantizers,
    Int8QatConfig,
    activation_qparams,
    fake_quant_activation,
    fake_quant_weight,
    int8_with_qat_fallback,
)
from modelzip.train import TrainConfig
from modelzip.zoo import build_model

CHECKPOINTS = Path(__file__).resolve().parent.parent / "bench" / "checkpoints"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lenet5_fp32() -> bytes:
    return export_onnx(load_checkpoint(CHECKPOINTS / "lenet5").model)


@pytest.fixture(scope="module")
def calibration(mnist_train) -> np.ndarray:
    idx = torch.randperm(len(mnist_train), generator=torch.Generator().manual_seed(0))[:64]
    return mnist_train.normalize(mnist_train.images[idx]).numpy()


@pytest.fixture(scope="module")
def test_subset(mnist_test):
    return mnist_test.subset(torch.arange(500))


# ---------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_int8_lenet5_stays_within_two_points_of_fp32(lenet5_fp32, calibration, test_subset,
                                                     method) -> None:
    int8, report = quantize_onnx_int8(lenet5_fp32, calibration, method=method)
    fp32_err = evaluate_onnx(lenet5_fp32, test_subset).error_pct
    int8_err = evaluate_onnx(int8, test_subset).error_pct
    assert int8_err <= fp32_err + 2.0
    assert report["method"] == method
    assert report["calibration_images"] == 64
    assert report["ops_quantized"]["Conv"] == 2 and report["ops_quantized"]["Gemm"] == 2
    assert report["ops_fp32"] == []
    # onnxruntime really runs int8 kernels, not dequantize -> fp32 conv
    ops = report["runtime_ops"]
    assert ops.get("QLinearConv") == 2 and "Conv" not in ops
    assert report["runtime_int8_kernels"] >= 4
    assert len(int8) < len(lenet5_fp32) / 3  # int8 weights


def test_qoperator_format_and_int8_activations(lenet5_fp32, calibration) -> None:
    int8, report = quantize_onnx_int8(lenet5_fp32, calibration, quant_format="qoperator",
                                      activation_type="int8")
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert report["ops_quantized"]["Conv"] == 2
    assert report["quant_format"] == "QOperator"


def _conv_sin_conv() -> bytes:
    """Conv -> Sin -> Conv: onnxruntime has no int8 Sin."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(2, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Sin", ["a"], ["b"], name="sin"),
             helper.make_node("Conv", ["b", "w2"], ["logits"], name="conv2", pads=[1] * 4)]
    graph = helper.make_graph(
        nodes, "conv_sin_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, 8, 8])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_op_without_int8_kernel_stays_fp32_with_a_note() -> None:
    rng = np.random.default_rng(1)
    float_model = _conv_sin_conv()
    int8, report = quantize_onnx_int8(float_model, rng.normal(size=(64, 1, 8, 8)).astype(
        np.float32))
    assert report["ops_quantized"] == {"Conv": 2}
    [note] = report["ops_fp32"]
    assert note["node"] == "sin" and note["op_type"] == "Sin"
    assert "no int8 kernel" in note["reason"]
    assert report["runtime_ops"]["Sin"] == 1 and report["runtime_ops"]["QLinearConv"] == 2
    x = rng.normal(size=(3, 1, 8, 8)).astype(np.float32)
    got = make_session(int8).run(None, {"input": x})[0]
    ref = make_session(float_model).run(None, {"input": x})[0]
    assert got.shape == (3, 2, 8, 8)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()  # quantized, not broken


def test_excluded_op_type_stays_fp32(lenet5_fp32, calibration) -> None:
    _, report = quantize_onnx_int8(lenet5_fp32, calibration, exclude_op_types=("Gemm",))
    assert "Gemm" not in report["ops_quantized"]
    assert {n["op_type"] for n in report["ops_fp32"]} >= {"Gemm"}
    assert all(n["reason"] == "excluded by the caller" for n in report["ops_fp32"]
               if n["op_type"] == "Gemm")


def test_bad_calibration_and_options_give_clear_errors(lenet5_fp32, calibration) -> None:
    with pytest.raises(ShapeError, match="N x 1 x 28 x 28"):
        quantize_onnx_int8(lenet5_fp32, np.zeros((8, 3, 28, 28), np.float32))
    with pytest.raises(ConfigError, match="float32"):
        quantize_onnx_int8(lenet5_fp32, calibration.astype(np.float64))
    with pytest.raises(ConfigError, match="at least one"):
        quantize_onnx_int8(lenet5_fp32, calibration[:0])
    with pytest.raises(ConfigError, match="minmax, percentile, entropy"):
        quantize_onnx_int8(lenet5_fp32, calibration, method="mse")
    with pytest.raises(ConfigError, match="quant_format"):
        quantize_onnx_int8(lenet5_fp32, calibration, quant_format="int4")
    with pytest.raises(ExportError, match="not a serialized ONNX model"):
        quantize_onnx_int8(b"\x00garbage", calibration)


def test_fp32_graph_runs_fp32_kernels(lenet5_fp32) -> None:
    assert "QLinearConv" not in runtime_ops(lenet5_fp32)


def test_runtime_modules_import_without_torch() -> None:
    code = ("import sys, modelzip.runtime.ort, modelzip.runtime.int8; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# ---------------------------------------------------------------------------- QAT
def test_fake_quant_weight_is_on_a_per_channel_grid_with_straight_through_gradient() -> None:
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    w[1] *= 100  # channels with very different ranges each get their own scale
    w[2, 0, 0, 0] = 0.0
    w.requires_grad_(True)
    q = fake_quant_weight(w)
    for c in range(4):
        scale = w[c].detach().abs().max() / 127
        steps = q[c].detach() / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)
        assert q[c].detach().abs().max() == pytest.approx(float(w[c].detach().abs().max()),
                                                          rel=1e-5)
    assert q[2, 0, 0, 0] == 0  # zeros (pruned weights) stay zero
    assert (q.detach() - w.detach()).abs().max() > 0  # it does round
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through inside the range
    reduced = fake_quant_weight(w.detach(), reduce_range=True)
    assert torch.unique(reduced[0] / (w[0].detach().abs().max() / 64)).round().abs().max() <= 64


def test_fake_quant_activation_matches_uint8_asymmetric_grid() -> None:
    scale, zero = activation_qparams(-1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and zero == round(1 / scale)
    assert activation_qparams(0.5, 2.0)[1] == 0  # the range is widened to include 0
    x = torch.linspace(-2, 4, 101, requires_grad=True)
    q = fake_quant_activation(x, -1.0, 3.0)
    codes = q.detach() / scale + zero
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    # clipped to the range (up to half a step off: the zero point is an integer)
    lo_q, hi_q = float(q.detach().min()), float(q.detach().max())
    assert abs(lo_q + 1.0) <= scale / 2 and abs(hi_q - 3.0) <= scale / 2
    q.sum().backward()
    inside = (x.detach() >= -1.0) & (x.detach() <= 3.0)
    assert torch.equal(x.grad[inside], torch.ones(int(inside.sum())))
    assert torch.equal(x.grad[~inside], torch.zeros(int((~inside).sum())))


def test_fake_quantizers_change_the_forward_and_leave_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        with FakeQuantizers(model) as fq:
            assert "conv1.parametrizations.weight.original" in dict(model.named_parameters())
            out = model(x)
            assert fq.observers["conv1"].lo is not None
        after = model(x)
    assert not torch.equal(out, ref) and (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert torch.equal(after, ref)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_qat_technique_trains_keeps_masks_and_layer_names(mnist_train) -> None:
    model = load_checkpoint(CHECKPOINTS / "pruned" / "magnitude-lenet300-12x").model
    masks = masks_from_zeros(model)
    names = sorted(dict(model.named_parameters()))
    fc1_before = model.fc1.weight.detach().clone()
    ctx = Context(train_data=mnist_train, masks=masks, progress=False,
                  finetune=TrainConfig(epochs=1, batch_size=64, lr=0.01))
    config = config_from_dict("int8-qat", {"finetune_samples": 512, "finetune": {"epochs": 1}})
    assert config == Int8QatConfig(finetune_samples=512, finetune=FinetuneConfig(epochs=1))
    # the defaults: 1 epoch at a tenth of the context's learning rate
    assert config.train_config(ctx.finetune) == Int8QatConfig().train_config(ctx.finetune)
    model = apply_technique(model, config, ctx)
    assert sorted(dict(model.named_parameters())) == names
    assert not torch.equal(model.fc1.weight, fc1_before)  # it trained
    assert torch.equal(model.fc1.weight == 0, ~masks["fc1.weight"])  # pruned stay pruned
    record = ctx.records[-1]
    assert record["step"] == "int8-qat" and record["images"] == 512
    assert record["lr"] == pytest.approx(0.001)
    lo, hi = record["activation_ranges"]["fc2"]
    assert lo == pytest.approx(0.0, abs=1e-6) and hi > 0  # after a ReLU


def test_qat_fallback_runs_only_when_int8_loses_too_much(mnist_train, calibration,
                                                          test_subset) -> None:
    model = load_checkpoint(CHECKPOINTS / "lenet5").model
    kept = int8_with_qat_fallback(model, calibration, test_subset, allowed_drop_points=2.0)
    assert kept.report["qat"] is None and kept.model is model
    with pytest.raises(ConfigError, match="training data"):
        # an impossible bound (int8 would have to beat fp32 by 100 points) forces QAT
        int8_with_qat_fallback(model, calibration, test_subset, allowed_drop_points=-100)
    with pytest.raises(ConfigError, match="per_channel=True"):
        # QAT simulates per-channel weight scales; per-tensor ones it cannot
        int8_with_qat_fallback(model, calibration, test_subset, allowed_drop_points=-100,
                               ctx=Context(train_data=mnist_train), per_channel=False)
    ctx = Context(train_data=mnist_train, progress=False,
                  finetune=TrainConfig(epochs=1, batch_size=64, lr=0.01))
    result = int8_with_qat_fallback(model, calibration, test_subset, allowed_drop_points=-100,
                                    ctx=ctx, qat=Int8QatConfig(finetune_samples=512),
                                    reduce_range=False)
    qat = result.report["qat"]
    assert qat is not None and qat["record"]["step"] == "int8-qat"
    # QAT simulated the deployed 8-bit weight grid, not its own default (7-bit)
    assert qat["config"]["reduce_range"] is False and qat["record"]["reduce_range"] is False
    assert result.report["fp32_val_error_pct"] <= 2.0
    assert qat["int8_val_error_pct"] <= result.report["fp32_val_error_pct"] + 2.0
    assert (result.model is not model) == qat["used"]
    assert evaluate_onnx(result.int8, test_subset).error_pct == pytest.approx(
        qat["int8_val_error_pct"] if qat["used"] else result.report["int8_val_error_pct"])


# ---------------------------------------------------------------------------- CLI
def test_cli_export_int8_writes_a_graph_that_runs_int8_kernels(tmp_path: Path,
                                                               data_root) -> None:
    from tests.test_cli import assert_user_error, run_cli

    out = tmp_path / "lenet5-int8.onnx"
    result = run_cli("export", CHECKPOINTS / "lenet5", "-o", out, "--int8", "--calibration-images",
                     "64", "--method", "percentile", "--evaluate")
    assert result.returncode == 0, result.stderr
    assert "percentile calibration on 64 images" in result.stdout
    assert "test error on mnist (10000 images)" in result.stdout
    assert runtime_ops(out.read_bytes()).get("QLinearConv") == 2
    assert_user_error(run_cli("export", CHECKPOINTS / "lenet5", "-o", out, "--max-drop", "1"),
                      "--int8")
    assert_user_error(run_cli("export", CHECKPOINTS / "lenet5", "-o", out, "--int8",
                              "--method", "mse"), "minmax")
    # pack-onnx takes the same int8 options and writes a .mzip that carries the graph
    from modelzip.codec.artifact import summarize_artifact

    mzip = tmp_path / "lenet5-int8.mzip"
    result = run_cli("pack-onnx", CHECKPOINTS / "lenet5", "-o", mzip, "--int8",
                     "--calibration-images", "32", "--method", "minmax")
    assert result.returncode == 0, result.stderr
    assert summarize_artifact(mzip.read_bytes())["blobs"]
    bad = tmp_path / "never.mzip"
    assert_user_error(run_cli("pack-onnx", CHECKPOINTS / "lenet5", "-o", bad, "--int8",
                              "--calibration-images", "0"), "--calibration-images")
    assert not bad.exists()
