"""Packing any ONNX graph and running it: a tiny ViT (fp32, int8, dynamo export: graphs with
int64 shape constants) packs and runs bit-identically; pack checks itself and names the first
output that differs; a user's .onnx file packs, a broken one gives one line naming it; the
runner feeds int64 token ids and several inputs, and refuses float images that were never
normalized."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from modelzip.codec import artifact as artifact_mod
from modelzip.codec.artifact import read_artifact, write_artifact
from modelzip.errors import ConfigError, DataError, ModelzipError, ShapeError
from modelzip.runtime import runner as runner_mod
from modelzip.runtime.export import export_onnx
from modelzip.runtime.int8 import quantize_onnx_int8
from modelzip.runtime.onnx_artifact import (
    NoOnnxGraphError,
    input_spec_text,
    load_onnx_package,
    pack_onnx,
    pack_onnx_file,
)
from modelzip.runtime.ort import make_session
from modelzip.runtime.runner import Runner
from tests.test_runtime_export_any import TextNet, ViTLogits, text_inputs

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]
MNIST_STATS = {"mean": [0.1307], "std": [0.3081]}


def original_outputs(onnx_bytes: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(onnx_bytes, threads=1).run(None, feeds)


def assert_bit_identical(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return ViTLogits().eval()


@pytest.fixture(scope="module")
def vit_graphs(vit) -> dict[str, bytes]:
    """The ViT exported (TorchScript and dynamo) and quantized to static int8."""
    torch.set_num_threads(1)
    example = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    fp32 = export_onnx(vit, example_inputs=example)
    calibration = np.random.default_rng(2).standard_normal((32, 3, 16, 16)).astype(np.float32)
    int8, _ = quantize_onnx_int8(fp32, calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dynamo = export_onnx(vit, example_inputs=example, exporter="dynamo")
    return {"fp32": fp32, "int8": int8, "dynamo": dynamo}


@pytest.fixture(scope="module")
def text_model() -> tuple[nn.Module, bytes]:
    torch.manual_seed(0)
    model = TextNet().eval()
    return model, export_onnx(model, example_inputs=text_inputs())


def numpy_feeds(feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in feeds.items()}


# ---------------------------------------------------------------------------- ViT
@pytest.mark.parametrize("variant", ["fp32", "int8", "dynamo"])
def test_vit_packs_and_runs_bit_identical_to_its_graph(vit_graphs, variant) -> None:
    onnx_bytes = vit_graphs[variant]
    data = pack_onnx(onnx_bytes)
    runner = Runner.from_bytes(data)
    x = np.random.default_rng(3).standard_normal((5, 3, 16, 16)).astype(np.float32)
    [expected] = original_outputs(onnx_bytes, {"input": x})
    assert_bit_identical(runner.logits(x, batch_size=2), expected)
    art = read_artifact(data)
    assert art.model["kind"] == "onnx-graph"
    assert art.model["precision"] == ("int8" if variant == "int8" else "fp32")
    # integer constants (shapes, axes) stay in the graph with their data
    original = onnx.load_model_from_string(onnx_bytes).graph.initializer
    int64 = {t.name for t in original if t.data_type == TensorProto.INT64}
    if variant != "fp32":  # the TorchScript fp32 graph writes them as Constant nodes
        assert int64
    stripped = {t.name: t for t in onnx.load_model_from_string(
        art.blobs["onnx_graph"]).graph.initializer}
    for name in int64:
        assert name not in art.tensors
        assert stripped[name].data_location == TensorProto.DEFAULT


def test_vit_runs_from_a_file_through_the_command(vit_graphs, capsys, tmp_path) -> None:
    mzip = tmp_path / "vit-int8.mzip"
    mzip.write_bytes(pack_onnx(vit_graphs["int8"]))
    x = np.random.default_rng(4).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = runner_mod.main([str(mzip), "--input", str(tmp_path / "x.npy"), "--output",
                            str(tmp_path / "logits.npy"), "--logits"])
    assert code == 0, capsys.readouterr().err
    [expected] = original_outputs(vit_graphs["int8"], {"input": x})
    assert_bit_identical(np.load(tmp_path / "logits.npy"), expected)


# ---------------------------------------------------------------------------- pack checks
class _HiddenFirst(TextNet):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden = super().forward(input_ids, attention_mask)
        return hidden, logits


def test_pack_check_names_the_first_output_that_differs(monkeypatch) -> None:
    torch.manual_seed(0)
    onnx_bytes = export_onnx(_HiddenFirst().eval(), example_inputs=text_inputs(),
                             output_names=["hidden", "logits"])
    # sanity: the genuine artifact passes its check
    pack_onnx(onnx_bytes)
    real_read = artifact_mod.read_artifact

    def tampered(name: str):
        def read(data: bytes, **kwargs):
            art = real_read(data, **kwargs)
            art.tensors[name] = art.tensors[name] + np.float32(0.5)
            return art
        return read

    # the classifier's weight changes only "logits", the second output
    monkeypatch.setattr(artifact_mod, "read_artifact", tampered("fc.weight"))
    with pytest.raises(ModelzipError, match="output 'logits'") as info:
        pack_onnx(onnx_bytes)
    assert "\n" not in str(info.value)
    # the embeddings change both: the first is named
    monkeypatch.setattr(artifact_mod, "read_artifact", tampered("embed.weight"))
    with pytest.raises(ModelzipError, match="output 'hidden'"):
        pack_onnx(onnx_bytes)


def test_pack_checks_on_given_inputs_and_refuses_wrong_ones(text_model) -> None:
    _, onnx_bytes = text_model
    feeds = numpy_feeds(text_inputs(n=3, seed=5))
    assert pack_onnx(onnx_bytes, check_inputs=feeds) == pack_onnx(onnx_bytes)
    with pytest.raises(ConfigError, match="check_inputs has inputs"):
        pack_onnx(onnx_bytes, check_inputs={"input_ids": feeds["input_ids"]})
    with pytest.raises(ConfigError, match="int64"):
        pack_onnx(onnx_bytes, check_inputs={**feeds, "input_ids": feeds["input_ids"].astype(
            np.int32)})
    with pytest.raises(ConfigError, match="dict of arrays"):
        pack_onnx(onnx_bytes, check_inputs=feeds["input_ids"])
    # token ids past the vocabulary: onnxruntime's own error, in one line
    bad = {**feeds, "input_ids": feeds["input_ids"] + 1000}
    with pytest.raises(ConfigError, match="cannot run the ONNX graph") as info:
        pack_onnx(onnx_bytes, check_inputs=bad)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- token ids
def test_runner_feeds_int64_token_ids_and_several_inputs(text_model) -> None:
    model, onnx_bytes = text_model
    runner = Runner.from_bytes(pack_onnx(onnx_bytes))
    feeds = text_inputs(n=5, seed=6)
    got = runner.logits(numpy_feeds(feeds), batch_size=2)
    np.testing.assert_allclose(got, model(**feeds)[0].detach().numpy(), atol=1e-5)
    # narrower integer ids are converted losslessly
    narrow = {k: v.numpy().astype(np.int32) for k, v in feeds.items()}
    assert_bit_identical(runner.logits(narrow), runner.logits(numpy_feeds(feeds)))
    with pytest.raises(ShapeError, match=r"input 'input_ids'.*float32"):
        runner.logits({**numpy_feeds(feeds), "input_ids": feeds["input_ids"].numpy().astype(
            np.float32)})
    with pytest.raises(ShapeError, match="attention_mask"):
        runner.logits({"input_ids": feeds["input_ids"].numpy()})
    with pytest.raises(ShapeError, match="dict of arrays"):
        runner.logits(feeds["input_ids"].numpy())
    with pytest.raises(ShapeError, match="another batch size"):
        runner.logits({**numpy_feeds(feeds), "attention_mask": feeds["attention_mask"][:2]
                       .numpy()})
    assert "input_ids (N, 7) int64, attention_mask (N, 7) int64" in input_spec_text(runner.spec)


class _Bag(nn.Module):
    """One int64 input: a bag of token ids -> 3 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(30, 8, mode="mean")
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids))


def test_a_one_input_int64_graph_takes_an_int64_array(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = _Bag().eval()
    ids = torch.randint(0, 30, (4, 6), generator=torch.Generator().manual_seed(7))
    data = pack_onnx(export_onnx(model, example_inputs=ids))
    runner = Runner.from_bytes(data)
    assert runner.spec.input_dtype == "int64"
    np.testing.assert_allclose(runner.logits(ids.numpy()), model(ids).detach().numpy(),
                               atol=1e-5)
    assert_bit_identical(runner.logits(ids.numpy().astype(np.uint8)), runner.logits(ids.numpy()))
    with pytest.raises(ShapeError, match=r"this model expects \(N, 6\) int64"):
        runner.logits(ids.numpy().astype(np.float32))
    mzip = tmp_path / "bag.mzip"
    mzip.write_bytes(data)
    np.save(tmp_path / "ids.npy", ids.numpy())
    assert runner_mod.main([str(mzip), "--input", str(tmp_path / "ids.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split("\t")[1]) for line in lines] == runner.predict(ids.numpy())[0].tolist()


def test_command_takes_an_npz_for_a_graph_with_several_inputs(text_model, tmp_path, capsys
                                                              ) -> None:
    _, onnx_bytes = text_model
    mzip = tmp_path / "text.mzip"
    mzip.write_bytes(pack_onnx(onnx_bytes))
    feeds = numpy_feeds(text_inputs(n=4, seed=8))
    np.savez(tmp_path / "tokens.npz", **feeds)
    out = tmp_path / "preds.npy"
    assert runner_mod.main([str(mzip), "--input", str(tmp_path / "tokens.npz"), "--output",
                            str(out)]) == 0
    assert np.array_equal(np.load(out), Runner.from_file(mzip).predict(feeds)[0])
    capsys.readouterr()
    np.save(tmp_path / "ids.npy", feeds["input_ids"])
    code = runner_mod.main([str(mzip), "--input", str(tmp_path / "ids.npy")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and ".npz" in err[0] and "attention_mask" in err[0]
    np.savez(tmp_path / "half.npz", input_ids=feeds["input_ids"])
    code = runner_mod.main([str(mzip), "--input", str(tmp_path / "half.npz")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "missing: attention_mask" in err[0]


def test_int8_text_model_calibrates_on_a_dict_of_inputs(text_model) -> None:
    _, onnx_bytes = text_model
    calibration = numpy_feeds(text_inputs(n=16, seed=9))
    int8, report = quantize_onnx_int8(onnx_bytes, calibration)
    assert report["ops_quantized"].get("Gemm") == 1
    runner = Runner.from_bytes(pack_onnx(int8))
    assert runner.spec.precision == "int8"
    feeds = numpy_feeds(text_inputs(n=3, seed=10))
    [expected] = original_outputs(int8, feeds)
    assert_bit_identical(runner.logits(feeds), expected)
    with pytest.raises(ConfigError, match="calibration has inputs"):
        quantize_onnx_int8(onnx_bytes, {"input_ids": calibration["input_ids"]})
    with pytest.raises(ConfigError, match="dict of arrays"):
        quantize_onnx_int8(onnx_bytes, calibration["input_ids"])


# ---------------------------------------------------------------------------- graphs by hand
def _free_length_graph() -> bytes:
    """tokens (N, T) int64, T free -> mean of their embeddings (N, 4); opset 18's ReduceMean
    reads its axes from an int64 initializer."""
    table = numpy_helper.from_array(
        np.random.default_rng(11).standard_normal((20, 4)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
             helper.make_node("ReduceMean", ["embedded", "axes"], ["mean"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "bag", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 4])], [table, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_free_dimensions_are_recorded_and_any_length_runs() -> None:
    onnx_bytes = _free_length_graph()
    data = pack_onnx(onnx_bytes)  # checked on generated inputs: T = 16, ids in {0, 1}
    art = read_artifact(data)
    assert art.model["inputs"] == [{"name": "tokens", "shape": [None], "dtype": "int64"}]
    assert sorted(art.tensors) == ["table"]  # the axes stay in the graph
    runner = Runner.from_bytes(data)
    assert input_spec_text(runner.spec) == "(N, ?) int64"
    for length in (3, 9):
        tokens = np.random.default_rng(length).integers(0, 20, (2, length))
        [expected] = original_outputs(onnx_bytes, {"tokens": tokens})
        assert_bit_identical(runner.logits(tokens), expected)


# ---------------------------------------------------------------------------- .onnx files
def test_pack_onnx_file_packs_like_pack_onnx(vit_graphs, tmp_path) -> None:
    path = tmp_path / "vit.onnx"
    path.write_bytes(vit_graphs["int8"])
    meta = {"classes": ["a", "b", "c"]}
    assert pack_onnx_file(path, meta=meta) == pack_onnx(vit_graphs["int8"], meta=meta)
    # weights kept in an external data file beside the graph are read too
    proto = onnx.load_model_from_string(vit_graphs["fp32"])
    ext = tmp_path / "ext" / "vit.onnx"
    ext.parent.mkdir()
    onnx.save_model(proto, str(ext), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    assert (ext.parent / "weights.bin").stat().st_size > 0
    runner = Runner.from_bytes(pack_onnx_file(ext))
    x = np.random.default_rng(12).standard_normal((2, 3, 16, 16)).astype(np.float32)
    [expected] = original_outputs(vit_graphs["fp32"], {"input": x})
    assert_bit_identical(runner.logits(x), expected)
    (ext.parent / "weights.bin").unlink()
    with pytest.raises(ConfigError, match="external weight data"):
        pack_onnx_file(ext)


def test_pack_onnx_file_names_a_broken_file_in_one_line(vit_graphs, tmp_path) -> None:
    good = vit_graphs["fp32"]
    cases: list[tuple[Path, str]] = [(tmp_path / "missing.onnx", "not found"),
                                     (tmp_path, "folder")]
    for name, data in [("text.onnx", b"hello, this is not a graph\n"),
                       ("empty.onnx", b""),
                       ("numbers.onnx", np.arange(64, dtype=np.float32).tobytes())]:
        (tmp_path / name).write_bytes(data)
        cases.append((tmp_path / name, "not a valid ONNX model"))
    for i, cut in enumerate((10, len(good) // 3, len(good) // 2, len(good) - 7)):
        path = tmp_path / f"truncated-{i}.onnx"
        path.write_bytes(good[:cut])
        cases.append((path, "not a valid ONNX model"))
    for path, needle in cases:
        with pytest.raises(ConfigError) as info:
            pack_onnx_file(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and needle in message, message
        assert "\n" not in message


# ---------------------------------------------------------------------------- model kinds
def test_the_manifest_names_its_kind_and_the_runner_checks_it(text_model) -> None:
    _, onnx_bytes = text_model
    art = read_artifact(pack_onnx(onnx_bytes))
    assert art.model["kind"] == "onnx-graph" and art.model["format"] == "onnx"

    def rewritten(**model) -> bytes:
        return write_artifact(art.tensors, model=model, blobs=art.blobs, meta=art.meta)

    with pytest.raises(NoOnnxGraphError, match="no ONNX graph"):
        load_onnx_package(read_artifact(rewritten(kind="state-dict", name="lenet5")))
    with pytest.raises(ModelzipError, match="kind 'mystery'"):
        load_onnx_package(read_artifact(rewritten(**{**art.model, "kind": "mystery"})))
    # an artifact written before "kind" (and "inputs") existed still runs
    old = {k: v for k, v in art.model.items() if k not in ("kind", "inputs", "outputs")}
    old_model = {**old, "input_name": "input_ids", "input_shape": [7], "input_dtype": "int64"}
    runner = Runner.from_bytes(rewritten(**old_model))
    # its first input as recorded; the others are read from the graph itself
    assert runner.spec.inputs[0].name == "input_ids" and len(runner.spec.inputs) == 2


# ---------------------------------------------------------------------------- normalization
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A tiny 1 x 8 x 8 image classifier packed with MNIST's mean/std."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    path = tmp_path_factory.mktemp("digits") / "digits.mzip"
    path.write_bytes(pack_onnx(export_onnx(model.eval(), example_inputs=torch.randn(2, 1, 8, 8)),
                               meta=MNIST_STATS))
    return path


def _raw_images(n: int = 3, top: int = 256) -> np.ndarray:
    return np.random.default_rng(13).integers(0, top, (n, 1, 8, 8)).astype(np.uint8)


def test_runner_refuses_float_images_that_were_never_normalized(digits) -> None:
    runner = Runner.from_file(digits)
    pixels = _raw_images()
    normalized = ((pixels / np.float32(255.0) - np.float32(0.1307)) / np.float32(0.3081)
                  ).astype(np.float32)
    expected = runner.logits(pixels)  # uint8 images: normalized by the runner
    np.testing.assert_allclose(runner.logits(normalized), expected, atol=1e-5)
    for raw in (pixels.astype(np.float32),  # 0..255 as floats
                _raw_images(top=10).astype(np.float32)):  # dark images: whole numbers 0..9
        with pytest.raises(DataError, match="un-normalized") as info:
            runner.logits(raw)
        assert "uint8" in str(info.value) and "\n" not in str(info.value)
    # values a normalized image cannot reach, even if not whole numbers
    with pytest.raises(DataError, match="un-normalized"):
        runner.logits(pixels.astype(np.float32) + np.float32(0.5))
    # normalized values may exceed the statistics' range a little (augmentation, noise)
    runner.logits(normalized * np.float32(1.5))


def test_without_stored_statistics_any_float_is_taken(digits) -> None:
    art = read_artifact(digits.read_bytes())
    plain = write_artifact(art.tensors, model=art.model, blobs=art.blobs, meta={})
    raw = _raw_images().astype(np.float32)
    assert Runner.from_bytes(plain).logits(raw).shape == (3, 3)


def test_command_refuses_raw_float_pixels_in_one_line(digits, tmp_path, capsys) -> None:
    np.save(tmp_path / "raw.npy", _raw_images().astype(np.float32))
    out = tmp_path / "preds.npy"
    code = runner_mod.main([str(digits), "--input", str(tmp_path / "raw.npy"), "--output",
                            str(out)])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "pass uint8 images" in err[0]
    assert not out.exists()


def test_manifest_of_a_packed_graph_is_plain_json(vit_graphs) -> None:
    art = read_artifact(pack_onnx(vit_graphs["int8"]))
    text = json.dumps(art.model)
    assert json.loads(text)["inputs"] == [{"name": "input", "shape": [3, 16, 16],
                                           "dtype": "float32"}]
    assert art.model["outputs"] == ["logits"] and art.model["num_outputs"] == 3
