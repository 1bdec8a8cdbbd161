"""ONNX export: every zoo model and pruned ones match PyTorch under onnxruntime; bad input
gives a clear error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from modelzip.checkpoint import load_checkpoint
from modelzip.errors import ExportError, ModelzipError, ShapeError
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.prune.sparse import sparsify_linears
from modelzip.prune.structured import StructuredPruneConfig
from modelzip.registry import Context, apply_technique
from modelzip.runtime.export import evaluate_onnx, export_onnx, max_abs_diff
from modelzip.runtime.ort import make_session, run_batches
from modelzip.train import evaluate
from modelzip.zoo import build_model, list_models

CHECKPOINTS = Path(__file__).resolve().parent.parent / "bench" / "checkpoints"
ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(model: nn.Module, n: int = 8, seed: int = 0) -> torch.Tensor:
    shape = model.modelzip_spec.input_shape
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def _graph(blob: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(blob)


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_matches_pytorch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = _inputs(model)
    blob = export_onnx(model, check_inputs=x, atol=ATOL)
    graph = _graph(blob)
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    # BatchNorm is folded into the convolutions, dropout is gone
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"BatchNormalization", "Dropout"}
    assert max_abs_diff(model, blob, x) <= ATOL


def test_dynamic_batch_runs_any_batch_size_and_fixed_batch_is_one() -> None:
    model = build_model("lenet5").eval()
    session = make_session(export_onnx(model))
    for n in (1, 5):
        out = session.run(None, {"input": _inputs(model, n).numpy()})[0]
        assert out.shape == (n, 10)
    fixed = _graph(export_onnx(model, dynamic_batch=False))
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_global_pooling_is_exported_as_global_average_pool() -> None:
    # what lets onnxruntime run the head of eurosat_cnn in int8 (see export.py)
    ops = [n.op_type for n in _graph(export_onnx(build_model("eurosat_cnn"))).graph.node]
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops


def test_dynamo_exporter_also_matches() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    blob = export_onnx(model, check_inputs=_inputs(model), exporter="dynamo")
    assert [o.name for o in _graph(blob).graph.output] == ["logits"]


def test_magnitude_pruned_model_matches_on_real_images(mnist_test) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    model = apply_technique(model, MagnitudePruneConfig(sparsity=0.9), Context(progress=False))
    assert float((model.fc1.weight == 0).float().mean()) >= 0.89
    x = mnist_test.normalize(mnist_test.images[:64])
    export_onnx(model, check_inputs=x, atol=ATOL)


def test_weight_shared_model_exports_its_shared_values(mnist_test) -> None:
    """A pruned, k-means-shared model (as bench/deep_compression.py ships it) exports with
    its shared values expanded: the graph's weights hold the same few values, zeros kept."""
    from modelzip.codec.model import unpack

    artifact = CHECKPOINTS.parent / "results" / "mzip" / "grid-lenet5-max-3bit-lloyd.mzip"
    model = unpack(artifact.read_bytes())
    x = mnist_test.normalize(mnist_test.images[:64])
    graph = _graph(export_onnx(model, check_inputs=x, atol=ATOL))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    for name in ("fc1.weight", "conv2.weight"):
        layer = dict(model.named_parameters())[name].detach().numpy()
        exported = weights[name]
        np.testing.assert_array_equal(exported == 0, layer == 0)
        assert len(np.unique(exported[exported != 0])) <= 8  # 3 bits


def test_sparse_csr_layers_export_as_dense() -> None:
    torch.manual_seed(0)
    model = apply_technique(build_model("lenet300"), MagnitudePruneConfig(sparsity=0.9),
                            Context(progress=False)).eval()
    x = _inputs(model)
    with torch.no_grad():
        expected = model(x)
    assert sparsify_linears(model) == ["fc1", "fc2", "fc3"]
    blob = export_onnx(model, check_inputs=x, atol=ATOL)
    got = make_session(blob).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=ATOL)


def test_structurally_pruned_model_matches() -> None:
    torch.manual_seed(0)
    model = build_model("eurosat_cnn")
    pruned = apply_technique(model, StructuredPruneConfig(ratio=0.5, round_to=4),
                             Context(progress=False)).eval()
    convs = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] < 16  # channels were removed
    blob = export_onnx(pruned, check_inputs=_inputs(pruned), atol=ATOL)
    conv_weights = {i.name: tuple(i.dims) for i in _graph(blob).graph.initializer
                    if len(i.dims) == 4}
    assert sorted(w[0] for w in conv_weights.values()) == sorted(convs)


def test_trained_structurally_pruned_checkpoint_matches() -> None:
    model = load_checkpoint(CHECKPOINTS / "pruned" / "eurosat_cnn-l1").model
    export_onnx(model, check_inputs=_inputs(model, 16), atol=ATOL)


def test_evaluate_onnx_equals_pytorch_evaluate(mnist_test) -> None:
    model = load_checkpoint(CHECKPOINTS / "lenet5").model
    subset = mnist_test.subset(torch.arange(1000))
    got = evaluate_onnx(export_onnx(model), subset)
    ref = evaluate(model, subset)
    assert (got.errors, got.total) == (ref.errors, ref.total)
    assert got.loss == pytest.approx(ref.loss, abs=1e-4)


class _DataDependent(nn.Module):
    """Control flow on values: tracing records the branch taken for the example input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)[:, :4]
        return h * 2 if bool(h.sum() > 0) else -h


def test_export_that_disagrees_with_pytorch_is_refused() -> None:
    x = torch.ones(3, 1, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own warning about the branch
        with pytest.raises(ExportError, match=r"max \|ort - torch\| = .* > atol"):
            export_onnx(_DataDependent(), check_inputs=x)


def test_model_not_from_the_zoo_needs_an_input_shape() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ModelzipError, match="input_shape"):
        export_onnx(model)
    blob = export_onnx(model, input_shape=(3, 2, 2))
    assert make_session(blob).run(None, {"input": np.zeros((2, 3, 2, 2), np.float32)}
                                  )[0].shape == (2, 3)
    export_onnx(model, check_inputs=torch.randn(4, 3, 2, 2))  # the shape of the inputs


def test_bad_arguments_give_clear_errors() -> None:
    model = build_model("lenet5")
    with pytest.raises(ShapeError, match="1x28x28"):
        export_onnx(model, check_inputs=torch.zeros(2, 3, 28, 28))
    with pytest.raises(ExportError, match="float32"):
        export_onnx(model, check_inputs=torch.zeros(2, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(ExportError, match="exporter"):
        export_onnx(model, exporter="onnx-magic")
    with pytest.raises(ExportError, match="opset"):
        export_onnx(model, opset=9)
    with pytest.raises(ExportError, match=r"torch\.nn\.Module"):
        export_onnx("lenet5")  # type: ignore[arg-type]


def test_session_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot load"):
        make_session(b"not an onnx graph")
    with pytest.raises(ExportError, match="not found"):
        make_session(tmp_path / "missing.onnx")
    session = make_session(export_onnx(build_model("lenet5")))
    with pytest.raises(ShapeError, match="N x 1 x 28 x 28"):
        run_batches(session, np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ModelzipError, match="threads"):
        make_session(export_onnx(build_model("lenet5")), threads=0)
