"""The runner's backends: onnxruntime and OpenVINO give the same outputs on the same .mzip
(fp32 and int8), the precision each actually runs is reported (OpenVINO's fp32 is not
silently bf16), ``auto`` measures or follows the recorded choice and falls back to
onnxruntime on a graph OpenVINO cannot compile, ``openvino`` without the package is one line
naming the extra, and the int8 weight width follows the CPU's features."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import read_artifact
from modelzip.runtime import backends as backends_mod
from modelzip.runtime import runner as runner_mod
from modelzip.runtime.backends import (
    BackendError,
    CpuFeatureWarning,
    embed_initializers,
    open_backend,
)
from modelzip.runtime.cpu import CpuFeatures, cpu_features, int8_weight_bits, parse_cpuinfo
from modelzip.runtime.onnx_artifact import load_onnx_package, pack_model_onnx, pack_onnx
from modelzip.runtime.runner import Runner

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parent.parent
LENET5 = ROOT / "bench" / "checkpoints" / "lenet5"

AVX2_ONLY = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
VNNI = AVX2_ONLY.replace("avx2 bmi2", "avx2 bmi2 avx512f avx512bw avx512_vnni")
AMX = VNNI.replace("avx512_vnni", "avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8")
ALDER_LAKE = AVX2_ONLY.replace("avx2 bmi2", "avx2 bmi2 avx_vnni")


def cpu(text: str, machine: str = "x86_64") -> CpuFeatures:
    return parse_cpuinfo(text, machine)


# ---------------------------------------------------------------------------- CPU features
@pytest.mark.parametrize(("text", "kind", "bits", "bf16"), [
    (AVX2_ONLY, "avx2", 7, False), (VNNI, "vnni", 8, False), (ALDER_LAKE, "vnni", 8, False),
    (AMX, "amx", 8, True)])
def test_cpu_flags_are_parsed_and_decide_the_weight_width(text, kind, bits, bf16):
    features = cpu(text)
    assert features.model.startswith("Intel(R) Xeon(R)")
    assert "avx2" in features.flags and "fma" not in features.flags  # only the listed ones
    assert features.int8_kind == kind
    assert int8_weight_bits(features) == bits
    assert features.has_bf16 is bf16
    assert features.to_dict()["cpu_flags"] == sorted(features.flags)


def test_unknown_flags_keep_the_safe_choice_and_other_cpus_use_8_bits():
    assert int8_weight_bits(CpuFeatures(None, "x86_64", None)) == 7
    assert int8_weight_bits(cpu("processor: 0\nFeatures: fp asimd\n", "aarch64")) == 8
    assert cpu("", "aarch64").int8_kind == "not-x86"


# ---------------------------------------------------------------------------- packed models
@pytest.fixture(scope="module")
def lenet5_packed() -> dict[str, bytes]:
    torch.set_num_threads(1)
    model = load_checkpoint(LENET5).model
    calib = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    return {"fp32": pack_model_onnx(model, int8=False, calibration=calib[:8]),
            "int8": pack_model_onnx(model, int8=True, calibration=calib),
            "int8-8bit": pack_model_onnx(model, int8=True, calibration=calib,
                                         reduce_range=False)}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((20, 1, 28, 28)).astype(np.float32)


def test_embedded_graph_holds_the_original_weights(lenet5_packed):
    package = load_onnx_package(read_artifact(lenet5_packed["int8"]))
    model = onnx.load_from_string(embed_initializers(package.graph, package.initializers))
    onnx.checker.check_model(model)
    embedded = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, array in package.initializers.items():
        assert embedded[name].dtype == array.dtype and np.array_equal(embedded[name], array)
    bad = dict(package.initializers)
    name = next(iter(bad))
    bad[name] = bad[name].astype(np.float64)
    with pytest.raises(Exception, match=name):
        embed_initializers(package.graph, bad)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_openvino_and_onnxruntime_agree(variant, lenet5_packed, images):
    ort_runner = Runner.from_bytes(lenet5_packed[variant])
    ov_runner = Runner.from_bytes(lenet5_packed[variant], backend="openvino")
    expected, got = ort_runner.logits(images), ov_runner.logits(images, batch_size=7)
    info = ov_runner.backend_info
    assert info["backend"] == "openvino" and info["version"]
    assert ort_runner.backend_info["precision"] == variant
    # fp32 must be fp32 on every layer, even on a CPU whose default would be bf16
    assert info["precision"] == variant
    assert set(info["compute_layers_by_precision"]) == {variant}
    if variant == "fp32":
        assert np.abs(got - expected).max() <= 1e-4
    else:  # same int8 arithmetic up to rounding of the requantization
        assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95


def test_bf16_is_explicit_and_needs_the_cpu_feature(lenet5_packed, images):
    with pytest.raises(BackendError, match="no bf16"):
        Runner.from_bytes(lenet5_packed["fp32"], backend="onnxruntime", precision="bf16")
    package = load_onnx_package(read_artifact(lenet5_packed["fp32"]))
    with pytest.raises(BackendError, match="avx512_bf16 or amx_bf16"):
        open_backend(package, "openvino", precision="bf16", cpu=cpu(VNNI))
    if not cpu_features().has_bf16:
        return
    runner = Runner.from_bytes(lenet5_packed["fp32"], backend="openvino", precision="bf16")
    assert runner.backend_info["precision"] == "bf16"
    expected = Runner.from_bytes(lenet5_packed["fp32"]).logits(images)
    assert (runner.logits(images).argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_auto_measures_and_reports_why(lenet5_packed):
    runner = Runner.from_bytes(lenet5_packed["int8"], backend="auto")
    info = runner.backend_info
    assert info["backend"] in ("onnxruntime", "openvino")
    assert info["chosen_by"].startswith("measured at load: onnxruntime")


def test_auto_follows_a_choice_recorded_on_the_same_cpu(lenet5_packed):
    art = read_artifact(lenet5_packed["fp32"])
    package = load_onnx_package(art)
    here = cpu_features()
    for backend in ("onnxruntime", "openvino"):
        recorded = type(package)(package.graph, package.initializers, package.spec, {
            **package.meta, "backend_choice": {"backend": backend,
                                               "cpu_flags": sorted(here.flags or ())}})
        chosen = open_backend(recorded, "auto", cpu=here)
        assert (chosen.name, chosen.reason) == (backend, "recorded at pack time")
        elsewhere = open_backend(recorded, "auto", cpu=cpu(AVX2_ONLY))
        assert elsewhere.reason.startswith("measured")


def test_8bit_weights_on_a_cpu_without_vnni_warn_and_run_dequantized(lenet5_packed, images):
    package = load_onnx_package(read_artifact(lenet5_packed["int8-8bit"]))
    assert package.meta["quantization"]["weight_bits"] == 8
    for backend in ("onnxruntime", "openvino", "auto"):
        with pytest.warns(CpuFeatureWarning, match="8 bits"):
            chosen = open_backend(package, backend, cpu=cpu(AVX2_ONLY))
        assert chosen.info()["precision"] == "fp32 (dequantized int8 weights)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where VNNI makes 8 bits exact
        exact = open_backend(package, "onnxruntime", cpu=cpu(VNNI))
    feeds = {package.spec.input_name: images}
    assert np.abs(chosen.run(feeds) - exact.run(feeds)).max() <= 0.05 * np.abs(
        exact.run(feeds)).max()


def test_int8_report_records_the_cpu_and_its_choice(lenet5_packed):
    quant = read_artifact(lenet5_packed["int8"]).meta["quantization"]
    here = cpu_features()
    assert quant["weight_bits"] == int8_weight_bits(here)
    assert quant["reduce_range_chosen_by"].startswith("cpu")
    assert quant["cpu"]["cpu_flags"] == here.to_dict()["cpu_flags"]
    assert quant["signed_inputs"] is here.has_vnni
    caller = read_artifact(lenet5_packed["int8-8bit"]).meta["quantization"]
    assert caller["reduce_range_chosen_by"] == "caller" and caller["weight_bits"] == 8


# ---------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def unconvertible() -> bytes:
    """A graph onnxruntime runs and OpenVINO cannot convert (ai.onnx.ml Scaler)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Scaler", ["h"], ["y"], domain="ai.onnx.ml", scale=[2.0],
                              offset=[0.0])]
    graph = helper.make_graph(nodes, "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return pack_onnx(model.SerializeToString())


def test_graph_openvino_cannot_compile_falls_back_under_auto_only(unconvertible, caplog):
    package = load_onnx_package(read_artifact(unconvertible))
    with pytest.raises(BackendError, match=r"OpenVINO cannot compile.*Scaler"):
        open_backend(package, "openvino")
    chosen = open_backend(package, "auto")
    assert chosen.name == "onnxruntime" and "Scaler" in chosen.reason
    assert any("Scaler" in r.getMessage() for r in caplog.records)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(chosen.run({"x": x}), 2 * x)


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch, capsys, lenet5_packed,
                                                       images, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    package = load_onnx_package(read_artifact(lenet5_packed["fp32"]))
    with pytest.raises(BackendError, match=r"modelzip\[openvino\]"):
        open_backend(package, "openvino")
    assert open_backend(package, "auto").name == "onnxruntime"
    mzip, inputs = tmp_path / "m.mzip", tmp_path / "x.npy"
    mzip.write_bytes(lenet5_packed["fp32"])
    np.save(inputs, images[:2])
    code = runner_mod.main([str(mzip), "--input", str(inputs), "--backend", "openvino"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "modelzip[openvino]" in err[0]


def test_run_command_reports_backend_and_precision(capsys, lenet5_packed, images, tmp_path):
    mzip, inputs, out = tmp_path / "m.mzip", tmp_path / "x.npy", tmp_path / "p.npy"
    mzip.write_bytes(lenet5_packed["int8"])
    np.save(inputs, images[:5])
    code = runner_mod.main([str(mzip), "--input", str(inputs), "--output", str(out),
                            "--backend", "openvino"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ran on openvino" in err and "int8" in err
    expected = Runner.from_bytes(lenet5_packed["int8"]).predict(images[:5])[0]
    assert (np.load(out) == expected).mean() >= 0.8
    assert backends_mod.BACKENDS == ("auto", "onnxruntime", "openvino")


@pytest.mark.parametrize("signed", [True, False])
def test_signed_inputs_quantize_the_image_input_to_symmetric_int8(signed, lenet5_packed, images):
    from modelzip.runtime.int8 import quantize_onnx_int8

    package = load_onnx_package(read_artifact(lenet5_packed["fp32"]))
    fp32 = embed_initializers(package.graph, package.initializers)
    int8, report = quantize_onnx_int8(fp32, images, signed_inputs=signed)
    model = onnx.load_from_string(int8)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quant = next(n for n in model.graph.node
                 if n.op_type == "QuantizeLinear" and n.input[0] == package.spec.input_name)
    zero_point = consts[quant.input[2]]
    assert report["signed_inputs"] is signed
    assert zero_point.dtype == (np.int8 if signed else np.uint8)
    if signed:
        assert int(zero_point) == 0


CLOSURE_PROBE = """
import json, sys
sys.argv = ["modelzip", "run", {mzip!r}, "--input", {images!r}, "--output", {out!r},
            "--backend", "auto"]
import modelzip.entry
try:
    modelzip.entry.main()
except SystemExit as exc:
    code = exc.code
heavy = sorted({{m.split(".")[0] for m in sys.modules
                if m.split(".")[0] in ("torch", "typer", "rich", "nncf")}})
print(json.dumps({{"code": code, "heavy": heavy, "openvino": "openvino" in sys.modules}}))
"""


def test_openvino_backend_keeps_the_runner_torch_free(lenet5_packed, images, tmp_path):
    import json
    import os
    import subprocess

    mzip, inputs, out = tmp_path / "m.mzip", tmp_path / "x.npy", tmp_path / "p.npy"
    mzip.write_bytes(lenet5_packed["int8"])
    np.save(inputs, images[:4])
    code = CLOSURE_PROBE.format(mzip=str(mzip), images=str(inputs), out=str(out))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"code": 0, "heavy": [], "openvino": True}, result.stderr
    assert "measured at load" in result.stderr
    assert np.load(out).shape == (4,)
