"""The ONNX-carrying .mzip and the torch-free runner: the rebuilt graph is bit-identical to the
original ONNX; ``run`` agrees with PyTorch (fp32 within 1e-4, int8 by argmax); the runner's
import closure holds no torch, onnx, typer or rich; bad input gives one ``error:`` line and
exit code 2, with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from modelzip.checkpoint import load_checkpoint
from modelzip.codec.artifact import read_artifact, write_artifact
from modelzip.data import ImageDataset
from modelzip.errors import ConfigError, ModelzipError, ShapeError
from modelzip.runtime import backends as backends_mod
from modelzip.runtime import runner as runner_mod
from modelzip.runtime.export import export_onnx
from modelzip.runtime.int8 import quantize_onnx_int8
from modelzip.runtime.onnx_artifact import (
    MIN_STORED_ELEMENTS,
    OnnxGraphSpec,
    OnnxPackage,
    load_onnx_package,
    pack_model_onnx,
    pack_onnx,
    split_initializers,
)
from modelzip.runtime.ort import make_session
from modelzip.runtime.runner import Runner, normalize_uint8, prepare_input

ROOT = Path(__file__).resolve().parent.parent
LENET5 = ROOT / "bench" / "checkpoints" / "lenet5"
N_IMAGES = 200  # MNIST test images compared with PyTorch


@dataclass(frozen=True)
class Packed:
    onnx_bytes: bytes  # the graph that was measured (exported, or exported and quantized)
    mzip: Path


@pytest.fixture(scope="module")
def lenet5() -> torch.nn.Module:
    torch.set_num_threads(1)
    return load_checkpoint(LENET5).model


@pytest.fixture(scope="module")
def dataset_meta() -> dict:
    meta = load_checkpoint(LENET5).meta["dataset"]
    return {"mean": meta["mean"], "std": meta["std"], "classes": meta["classes"],
            "dataset": meta["name"]}


@pytest.fixture(scope="module")
def calibration(mnist_train: ImageDataset) -> np.ndarray:
    idx = torch.randperm(len(mnist_train), generator=torch.Generator().manual_seed(0))[:256]
    return mnist_train.normalize(mnist_train.images[idx]).numpy()


@pytest.fixture(scope="module")
def fp32(lenet5, dataset_meta, tmp_path_factory) -> Packed:
    onnx_bytes = export_onnx(lenet5)
    path = tmp_path_factory.mktemp("runner") / "lenet5-fp32.mzip"
    path.write_bytes(pack_onnx(onnx_bytes, meta=dataset_meta))
    return Packed(onnx_bytes, path)


@pytest.fixture(scope="module")
def int8(lenet5, dataset_meta, calibration, tmp_path_factory) -> Packed:
    onnx_bytes, _report = quantize_onnx_int8(export_onnx(lenet5), calibration)
    path = tmp_path_factory.mktemp("runner") / "lenet5-int8.mzip"
    path.write_bytes(pack_onnx(onnx_bytes, meta=dataset_meta))
    return Packed(onnx_bytes, path)


@pytest.fixture(scope="module")
def test_images(mnist_test: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """The first N_IMAGES MNIST test images (uint8, N x 1 x 28 x 28) and their labels."""
    return mnist_test.images[:N_IMAGES].numpy(), mnist_test.labels[:N_IMAGES].numpy()


def torch_logits(model: torch.nn.Module, images: np.ndarray, ds: ImageDataset) -> np.ndarray:
    with torch.no_grad():
        return model(ds.normalize(torch.from_numpy(images))).numpy()


# ---------------------------------------------------------------------------- the artifact
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_rebuilt_graph_is_bit_identical_to_the_measured_one(variant, request, test_images,
                                                            mnist_test):
    packed: Packed = request.getfixturevalue(variant)
    x = mnist_test.normalize(torch.from_numpy(test_images[0])).numpy()
    original = make_session(packed.onnx_bytes, threads=1)
    expected = original.run(None, {original.get_inputs()[0].name: x})[0]
    got = Runner.from_file(packed.mzip, threads=1).logits(x, batch_size=N_IMAGES)
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)


def test_weights_are_stored_with_their_exact_dtypes_and_the_rest_stays_in_the_graph(int8):
    original = onnx.load_model_from_string(int8.onnx_bytes)
    expected = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    art = read_artifact(int8.mzip.read_bytes())
    # the rule: float and quantized (int8/uint8/int32...) tensors of >= 16 elements
    weights = {n for n, a in expected.items()
               if a.dtype != np.int64 and a.size >= MIN_STORED_ELEMENTS}
    assert set(art.tensors) == weights
    assert art.model["initializers"] == sorted(weights)
    for name in weights:
        assert art.tensors[name].dtype == expected[name].dtype, name
        assert art.tensors[name].shape == expected[name].shape, name
        assert np.array_equal(art.tensors[name], expected[name]), name
    # a static int8 graph: int8 weights and int32 biases stored; per-tensor float scales and
    # uint8 activation zero points (scalars) kept in the graph with their values
    assert {np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.float32)} <= {
        art.tensors[n].dtype for n in weights}
    kept = {t.name: t for t in onnx.load_model_from_string(
        art.blobs["onnx_graph"]).graph.initializer if t.name not in weights}
    assert set(kept) == set(expected) - weights
    assert {np.dtype(np.uint8), np.dtype(np.float32)} <= {expected[n].dtype for n in kept}
    for name, tensor in kept.items():
        assert tensor.data_location != onnx.TensorProto.EXTERNAL, name
        assert np.array_equal(numpy_helper.to_array(tensor), expected[name]), name


def test_stripped_graph_holds_no_weight_data(int8):
    graph_bytes, arrays, spec = split_initializers(int8.onnx_bytes)
    stripped = onnx.load_model_from_string(graph_bytes)
    placeholders = [t for t in stripped.graph.initializer if t.name in arrays]
    assert len(placeholders) == len(arrays) > 0
    for t in placeholders:
        assert t.data_location == onnx.TensorProto.EXTERNAL
        assert not t.raw_data and not t.float_data and not t.int32_data
    weights = sum(a.nbytes for a in arrays.values())
    assert len(graph_bytes) < len(int8.onnx_bytes) - weights + 64 * len(arrays)
    assert spec == OnnxGraphSpec(input_name="input", input_shape=(1, 28, 28),
                                 input_dtype="float32", batch=None, output_name="logits",
                                 num_outputs=10, precision="int8")


def test_manifest_records_what_the_runner_needs(fp32, int8, dataset_meta):
    for packed, precision in ((fp32, "fp32"), (int8, "int8")):
        art = read_artifact(packed.mzip.read_bytes())
        assert art.model["format"] == "onnx"
        assert art.model["kind"] == "onnx-graph"
        assert art.model["precision"] == precision
        assert art.model["input_shape"] == [1, 28, 28]
        assert art.model["input_dtype"] == "float32"
        assert art.meta["classes"] == dataset_meta["classes"]
        assert art.meta["mean"] == pytest.approx(dataset_meta["mean"])
        assert art.meta["std"] == pytest.approx(dataset_meta["std"])


def test_packing_is_deterministic(fp32, dataset_meta):
    assert pack_onnx(fp32.onnx_bytes, meta=dataset_meta) == fp32.mzip.read_bytes()


def test_pack_refuses_meta_that_contradicts_the_graph(fp32):
    with pytest.raises(ConfigError, match="channels"):
        pack_onnx(fp32.onnx_bytes, meta={"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    with pytest.raises(ConfigError, match="both"):
        pack_onnx(fp32.onnx_bytes, meta={"mean": [0.1]})
    with pytest.raises(ConfigError, match="classes"):
        pack_onnx(fp32.onnx_bytes, meta={"classes": ["a", "b"]})
    with pytest.raises(ConfigError, match="input_shape"):
        pack_onnx(fp32.onnx_bytes, meta={"input_shape": [3, 28, 28]})
    with pytest.raises(ConfigError, match="not a valid ONNX"):
        pack_onnx(b"not an onnx model", meta={})


def test_pack_model_onnx_needs_calibration_for_int8(lenet5):
    with pytest.raises(ConfigError, match="calibration"):
        pack_model_onnx(lenet5, int8=True)


def test_pack_model_onnx_round_trips(lenet5, dataset_meta, test_images, mnist_test):
    data = pack_model_onnx(lenet5, int8=False, meta=dataset_meta)
    logits = Runner.from_bytes(data).logits(test_images[0][:16])
    expected = torch_logits(lenet5, test_images[0][:16], mnist_test)
    assert np.abs(logits - expected).max() <= 1e-4


def test_fixed_batch_graph_pads_the_last_batch(lenet5, dataset_meta, test_images, mnist_test):
    onnx_bytes = export_onnx(lenet5, dynamic_batch=False)
    runner = Runner.from_bytes(pack_onnx(onnx_bytes, meta=dataset_meta))
    assert runner.spec.batch is not None
    images = test_images[0][: runner.spec.batch * 2 + 1]  # a partial last batch
    logits = runner.logits(images, batch_size=1000)
    assert logits.shape == (len(images), 10)
    assert np.abs(logits - torch_logits(lenet5, images, mnist_test)).max() <= 1e-4


# ---------------------------------------------------------------------------- agreement
def test_run_matches_pytorch_fp32(fp32, lenet5, test_images, mnist_test):
    images, _ = test_images
    preds, logits = Runner.from_file(fp32.mzip).predict(images)
    expected = torch_logits(lenet5, images, mnist_test)
    assert np.abs(logits - expected).max() <= 1e-4
    assert np.array_equal(preds, expected.argmax(1))


def test_run_matches_pytorch_int8(int8, lenet5, test_images, mnist_test):
    images, labels = test_images
    preds, logits = Runner.from_file(int8.mzip).predict(images)
    expected = torch_logits(lenet5, images, mnist_test)
    agreement = (preds == expected.argmax(1)).mean()
    assert agreement >= 0.97
    # int8 rounding moves logits by some quantization steps, not by their scale (measured on
    # lenet5: max 1.9, mean 0.06, for logits up to 25)
    scale = np.abs(expected).max()
    diff = np.abs(logits - expected)
    assert diff.max() <= 0.15 * scale
    assert diff.mean() <= 0.01 * scale
    assert (preds == labels).mean() >= 0.97


# ---------------------------------------------------------------------------- inputs
def _package(channels: int, *, mean: bool = True) -> OnnxPackage:
    spec = OnnxGraphSpec("input", (channels, 4, 5), "float32", None, "logits", 3, "fp32")
    meta = {"mean": [0.5] * channels, "std": [0.25] * channels} if mean else {}
    return OnnxPackage(graph=b"", initializers={}, spec=spec, meta=meta)


def test_normalize_uint8_equals_the_dataset_normalization(mnist_test):
    images = mnist_test.images[:32]
    expected = mnist_test.normalize(images).numpy()
    got = normalize_uint8(images.numpy(), mnist_test.mean, mnist_test.std)
    assert got.dtype == np.float32
    assert np.array_equal(got, expected)


def test_prepare_input_accepts_the_documented_layouts():
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    rgb = _package(3)
    expected = normalize_uint8(nchw, (0.5,) * 3, (0.25,) * 3)
    assert np.array_equal(prepare_input(nchw, rgb), expected)
    assert np.array_equal(prepare_input(nchw.transpose(0, 2, 3, 1), rgb), expected)
    grey = nchw[:, :1]
    assert np.array_equal(prepare_input(grey[:, 0], _package(1)), prepare_input(grey,
                                                                                _package(1)))
    floats = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert np.array_equal(prepare_input(floats, rgb), floats)


@pytest.mark.parametrize(("array", "needle"), [
    (np.zeros((2, 4, 5), np.float32), "(2, 4, 5)"),  # float32 without the channel axis
    (np.zeros((2, 3, 4, 5), np.float64), "float64"),
    (np.zeros((2, 3, 5, 4), np.uint8), "(N, 3, 4, 5) float32"),
    (np.zeros((0, 3, 4, 5), np.float32), "no images"),
    (np.zeros((2, 3, 4, 5), np.int64), "int64"),
])
def test_prepare_input_names_the_expected_shape(array, needle):
    with pytest.raises(ShapeError) as info:
        prepare_input(array, _package(3))
    message = str(info.value)
    assert needle in message
    assert "this model expects (N, 3, 4, 5) float32" in message
    assert "\n" not in message


def test_uint8_without_stored_normalization_is_refused():
    with pytest.raises(ShapeError, match="no mean/std"):
        prepare_input(np.zeros((1, 1, 4, 5), np.uint8), _package(1, mean=False))


# ---------------------------------------------------------------------------- the command
def run_main(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = runner_mod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def test_run_writes_predictions_and_logits(capsys, fp32, test_images, tmp_path):
    images, _ = test_images
    np.save(tmp_path / "images.npy", images)
    preds_path, logits_path = tmp_path / "out" / "preds.npy", tmp_path / "logits.npy"
    code, out, _ = run_main(capsys, fp32.mzip, "--input", tmp_path / "images.npy",
                            "--output", preds_path, "--batch-size", "7")
    assert code == 0
    assert "200 images" in out
    code, _, _ = run_main(capsys, fp32.mzip, "--input", tmp_path / "images.npy",
                          "--output", logits_path, "--logits", "--threads", "2")
    assert code == 0
    expected_preds, expected_logits = Runner.from_file(fp32.mzip).predict(images)
    assert np.array_equal(np.load(preds_path), expected_preds)
    assert np.load(preds_path).dtype == np.int64
    assert np.allclose(np.load(logits_path), expected_logits, atol=1e-5)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []


def test_run_prints_class_index_and_name(capsys, fp32, dataset_meta, test_images, tmp_path):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    mzip = tmp_path / "named.mzip"
    mzip.write_bytes(pack_onnx(fp32.onnx_bytes, meta={**dataset_meta, "classes": names}))
    images, labels = test_images
    np.save(tmp_path / "images.npy", images[:3])
    code, out, _ = run_main(capsys, mzip, "--input", tmp_path / "images.npy")
    assert code == 0
    assert out.splitlines() == [f"{i}\t{k}\t{names[k]}" for i, k in enumerate(labels[:3])]
    code, out, _ = run_main(capsys, mzip, "--input", tmp_path / "images.npy", "--logits")
    assert code == 0
    _, logits = Runner.from_file(mzip).predict(images[:3])
    printed = np.array([[float(v) for v in line.split("\t")[3].split()]
                        for line in out.splitlines()])
    assert np.allclose(printed, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("make", "needles"), [
    (lambda: np.zeros((5, 28, 28), np.float32), ("(5, 28, 28)", "(N, 1, 28, 28) float32",
                                                 "uint8 images (N, 28, 28)")),
    (lambda: np.zeros((5, 1, 28, 28), np.float64), ("float64", "(N, 1, 28, 28) float32")),
    (lambda: np.zeros((5, 3, 32, 32), np.uint8), ("(5, 3, 32, 32)", "(N, 1, 28, 28)")),
    (lambda: np.zeros((), np.float32), ("shape ()", "(N, 1, 28, 28)")),
])
def test_run_refuses_a_wrong_input(capsys, fp32, tmp_path, make, needles):
    np.save(tmp_path / "bad.npy", make())
    out_path = tmp_path / "preds.npy"
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "bad.npy",
                            "--output", out_path)
    assert_one_error_line(code, err, *needles)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.npy"]


def test_run_refuses_missing_and_unreadable_files(capsys, fp32, tmp_path):
    out_path = tmp_path / "preds.npy"
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "nope.npy",
                            "--output", out_path)
    assert_one_error_line(code, err, "nope.npy", "not found")
    code, _, err = run_main(capsys, tmp_path / "nope.mzip", "--input", tmp_path / "nope.npy")
    assert_one_error_line(code, err, "nope.mzip", "not found")
    (tmp_path / "pickled.npy").write_bytes(b"not numpy at all")
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "pickled.npy")
    assert_one_error_line(code, err, "pickled.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "objects.npy")
    assert_one_error_line(code, err, "objects.npy")
    assert not out_path.exists()
    np.save(tmp_path / "images.npy", np.zeros((1, 28, 28), np.uint8))
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "images.npy",
                            "--output", tmp_path)  # a folder
    assert_one_error_line(code, err, "cannot write")


@pytest.mark.parametrize("where", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_corrupt_mzip_is_refused_before_any_inference(capsys, fp32, test_images, tmp_path,
                                                      monkeypatch, where):
    data = bytearray(fp32.mzip.read_bytes())
    pos = min(int(where * len(data)), len(data) - 1)
    data[pos] ^= 0x40
    bad = tmp_path / "bad.mzip"
    bad.write_bytes(bytes(data))
    np.save(tmp_path / "images.npy", test_images[0][:4])

    def no_session(*_a, **_k):
        raise AssertionError("a session was built from a corrupt artifact")

    monkeypatch.setattr(backends_mod, "build_session", no_session)
    monkeypatch.setattr(backends_mod, "_import_openvino", no_session)
    out_path = tmp_path / "preds.npy"
    code, _, err = run_main(capsys, bad, "--input", tmp_path / "images.npy",
                            "--output", out_path)
    assert_one_error_line(code, err)
    assert not out_path.exists()


def test_artifact_without_onnx_graph_says_how_to_pack_one(capsys, lenet5, test_images,
                                                           tmp_path):
    from modelzip.codec import pack

    plain = tmp_path / "plain.mzip"
    plain.write_bytes(pack(lenet5))
    np.save(tmp_path / "images.npy", test_images[0][:2])
    code, _, err = run_main(capsys, plain, "--input", tmp_path / "images.npy")
    line = assert_one_error_line(code, err, "no ONNX graph", "pack-onnx")
    assert "plain.mzip" in line
    with pytest.raises(ModelzipError, match="no ONNX graph"):
        load_onnx_package(read_artifact(plain.read_bytes()))


def test_graph_and_tensors_that_disagree_are_refused(fp32):
    art = read_artifact(fp32.mzip.read_bytes())
    tensors = dict(art.tensors)
    tensors.pop(sorted(tensors)[0])
    data = write_artifact(tensors, model=art.model, blobs=art.blobs, meta=art.meta)
    with pytest.raises(ModelzipError, match="differ"):
        load_onnx_package(read_artifact(data))
    tensors = {k: (v[:1] if v.ndim else v) for k, v in art.tensors.items()}
    data = write_artifact(tensors, model=art.model, blobs=art.blobs, meta=art.meta)
    with pytest.raises(ModelzipError, match="onnxruntime cannot load"):
        Runner.from_bytes(data)


# ---------------------------------------------------------------------------- import closure
CLOSURE_PROBE = """
import json, sys
sys.argv = ["modelzip", "run", {mzip!r}, "--input", {images!r}, "--output", {out!r}]
import modelzip.entry
try:
    modelzip.entry.main()
except SystemExit as exc:
    code = exc.code
heavy = sorted({{m.split(".")[0] for m in sys.modules
                if m.split(".")[0] in ("torch", "onnx", "typer", "rich", "safetensors")}})
print(json.dumps({{"code": code, "heavy": heavy, "cli": "modelzip.cli" in sys.modules,
                   "modelzip": sorted(m for m in sys.modules if m.startswith("modelzip"))}}))
"""


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_runner_import_closure_has_no_torch_or_onnx(variant, request, test_images, tmp_path):
    """A real inference through the console entry point, in a fresh interpreter."""
    packed: Packed = request.getfixturevalue(variant)
    np.save(tmp_path / "images.npy", test_images[0][:8])
    out = tmp_path / "preds.npy"
    code = CLOSURE_PROBE.format(mzip=str(packed.mzip), images=str(tmp_path / "images.npy"),
                                out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 0, result.stderr
    assert report["heavy"] == []
    assert report["cli"] is False
    assert "modelzip.runtime.runner" in report["modelzip"]
    assert np.load(out).shape == (8,)


def test_console_script_dispatches_run_and_other_commands(fp32, test_images, tmp_path):
    np.save(tmp_path / "images.npy", test_images[0][:2])
    run = subprocess.run([sys.executable, "-m", "modelzip.entry", "run", str(fp32.mzip),
                          "--input", str(tmp_path / "images.npy")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 2
    bad = subprocess.run([sys.executable, "-m", "modelzip.entry", "run", str(fp32.mzip),
                          "--input", str(tmp_path / "missing.npy")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert_one_error_line(bad.returncode, bad.stderr, "missing.npy")
    other = subprocess.run([sys.executable, "-m", "modelzip.entry", "--help"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert other.returncode == 0
    assert "run" in other.stdout and "train" in other.stdout


def test_npy_whose_header_claims_more_than_the_file_holds_is_refused(capsys, fp32, tmp_path):
    path = tmp_path / "forged.npy"
    with open(path, "wb") as f:  # a 5 GB array declared, 200 bytes present
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (5_000_000, 1, 28, 28)})
        f.write(bytes(200))
    code, _, err = run_main(capsys, fp32.mzip, "--input", path)
    assert_one_error_line(code, err, "header declares", "holds 200 bytes")


def test_nan_and_infinite_inputs_are_refused(capsys, fp32, tmp_path):
    x = np.zeros((3, 1, 28, 28), np.float32)
    x[1, 0, 3, 4], x[2, 0, 0, 0] = np.nan, np.inf
    np.save(tmp_path / "x.npy", x)
    out_path = tmp_path / "preds.npy"
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "x.npy",
                            "--output", out_path)
    assert_one_error_line(code, err, "2 NaN or infinite")
    assert not out_path.exists()


def test_threads_beyond_the_cpus_are_refused(capsys, fp32, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 28, 28), np.uint8))
    code, _, err = run_main(capsys, fp32.mzip, "--input", tmp_path / "x.npy",
                            "--threads", "10000")
    assert_one_error_line(code, err, "--threads must be between 1 and")


@pytest.mark.parametrize("forged", [{"mean": [None]}, {"mean": [0.1, 0.2], "std": [0.3, 0.4]},
                                    {"std": [0.0]}, {"mean": ["x"]},
                                    {"classes": ["only", "three", "names"]},
                                    {"classes": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}])
def test_forged_manifest_fields_are_refused_when_loading(capsys, fp32, tmp_path, forged):
    art = read_artifact(fp32.mzip.read_bytes())
    meta = {**art.meta, **forged}
    forged_path = tmp_path / "forged.mzip"
    forged_path.write_bytes(write_artifact(dict(art.tensors), model=art.model, blobs=art.blobs,
                                           meta=meta))
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.uint8))
    code, _, err = run_main(capsys, forged_path, "--input", tmp_path / "x.npy")
    assert_one_error_line(code, err, "manifest's")
