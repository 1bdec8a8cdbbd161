"""ONNX export of models that are not zoo image classifiers: example inputs that are a tensor,
a tuple or a dict of keyword tensors (int64 token ids), outputs that are tuples or
ModelOutput-like mappings, a tiny transformers ViT; the graph runs any batch size and matches
PyTorch; bad arguments give one clear line."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from modelzip.errors import ExportError
from modelzip.runtime.export import export_onnx, max_abs_diff
from modelzip.runtime.ort import make_session

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]
ATOL = 1e-4


class Conv1dNet(nn.Module):
    """Signals (N, 2, 8) -> 3 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.fc = nn.Linear(4 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class TextNet(nn.Module):
    """A text encoder: (input_ids int64, attention_mask) -> (logits, masked embeddings)."""

    def __init__(self, vocab: int = 50, dim: int = 8, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        hidden = self.embed(input_ids) * mask
        pooled = hidden.sum(1) / mask.sum(1).clamp(min=1)
        return self.fc(pooled), hidden


def text_inputs(n: int = 4, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.int64)
    mask[0, length // 2:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def vit_config():
    transformers = pytest.importorskip("transformers")
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, image_size=16, patch_size=8,
                                  num_labels=3)


class ViTLogits(nn.Module):
    """A ViTForImageClassification whose forward returns its ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTForImageClassification

        self.vit = ViTForImageClassification(vit_config())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).logits


def graph(blob: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(blob)


def ort_outputs(blob: bytes, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return make_session(blob).run(None, {k: v.numpy() for k, v in feeds.items()})


def test_conv1d_linear_model_exports_with_a_dynamic_batch() -> None:
    torch.manual_seed(0)
    model = Conv1dNet().eval()
    blob = export_onnx(model, example_inputs=torch.randn(3, 2, 8))
    g = graph(blob)
    assert [i.name for i in g.graph.input] == ["input"]
    assert [o.name for o in g.graph.output] == ["logits"]
    assert {t.name for t in g.graph.initializer} >= {"conv.weight", "fc.weight"}
    for n in (1, 5):
        x = torch.randn(n, 2, 8)
        [got] = ort_outputs(blob, {"input": x})
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=ATOL)


def test_keyword_int64_inputs_are_named_by_their_keywords() -> None:
    torch.manual_seed(0)
    model = TextNet().eval()
    blob = export_onnx(model, example_inputs=text_inputs())
    g = graph(blob)
    assert [(i.name, i.type.tensor_type.elem_type) for i in g.graph.input] == [
        ("input_ids", onnx.TensorProto.INT64), ("attention_mask", onnx.TensorProto.INT64)]
    # the first tensor of the tuple it returns, as "logits"; the model's own weight names
    assert [o.name for o in g.graph.output] == ["logits"]
    assert {t.name for t in g.graph.initializer} >= {"embed.weight", "fc.weight", "fc.bias"}
    other = text_inputs(n=6, seed=1)  # another batch size
    [got] = ort_outputs(blob, other)
    np.testing.assert_allclose(got, model(**other)[0].detach().numpy(), atol=ATOL)
    assert max_abs_diff(model, blob, other) <= ATOL


def test_tuple_inputs_are_input_i_and_output_names_choose_the_outputs() -> None:
    torch.manual_seed(0)
    model = TextNet().eval()
    feeds = text_inputs()
    example = (feeds["input_ids"], feeds["attention_mask"])
    blob = export_onnx(model, example_inputs=example, output_names=["scores", "hidden"])
    g = graph(blob)
    assert [i.name for i in g.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in g.graph.output] == ["scores", "hidden"]
    scores, hidden = ort_outputs(blob, {"input_0": example[0], "input_1": example[1]})
    expected = model(*example)
    np.testing.assert_allclose(scores, expected[0].detach().numpy(), atol=ATOL)
    np.testing.assert_allclose(hidden, expected[1].detach().numpy(), atol=ATOL)


def test_tiny_vit_classifier_matches_pytorch() -> None:
    torch.manual_seed(0)
    model = ViTLogits().eval()
    x = torch.randn(3, 3, 16, 16)
    blob = export_onnx(model, example_inputs=x, atol=ATOL)
    assert [o.name for o in graph(blob).graph.output] == ["logits"]
    for n in (1, 4):
        y = torch.randn(n, 3, 16, 16)
        [got] = ort_outputs(blob, {"input": y})
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, model(y).detach().numpy(), atol=ATOL)


def test_model_output_mapping_exports_its_first_tensor_or_the_named_keys() -> None:
    from transformers import ViTModel

    torch.manual_seed(0)
    model = ViTModel(vit_config()).eval()
    x = torch.randn(2, 3, 16, 16)
    blob = export_onnx(model, example_inputs={"pixel_values": x})
    [hidden] = ort_outputs(blob, {"pixel_values": x})
    np.testing.assert_allclose(hidden, model(pixel_values=x).last_hidden_state.detach().numpy(),
                               atol=ATOL)
    assert [i.name for i in graph(blob).graph.input] == ["pixel_values"]
    blob = export_onnx(model, example_inputs={"pixel_values": x},
                       output_names=["pooler_output"])
    [pooled] = ort_outputs(blob, {"pixel_values": x})
    assert pooled.shape == (2, 32)
    np.testing.assert_allclose(pooled, model(pixel_values=x).pooler_output.detach().numpy(),
                               atol=ATOL)


def test_dynamo_exporter_takes_keyword_inputs() -> None:
    torch.manual_seed(0)
    model = TextNet().eval()
    blob = export_onnx(model, example_inputs=text_inputs(), exporter="dynamo")
    assert [i.name for i in graph(blob).graph.input] == ["input_ids", "attention_mask"]
    other = text_inputs(n=3, seed=2)
    [got] = ort_outputs(blob, other)
    np.testing.assert_allclose(got, model(**other)[0].detach().numpy(), atol=ATOL)


def test_check_inputs_of_the_same_structure_are_checked() -> None:
    torch.manual_seed(0)
    model = TextNet().eval()
    blob = export_onnx(model, example_inputs=text_inputs(n=2),
                       check_inputs=text_inputs(n=9, seed=3))
    assert [o.name for o in graph(blob).graph.output] == ["logits"]
    # a dict of check inputs alone is the example too
    assert export_onnx(model, check_inputs=text_inputs()) == export_onnx(
        model, example_inputs=text_inputs())


class _BakedBatch(nn.Module):
    """Turns the batch size into a Python int: tracing bakes it into the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.ones(int(x.shape[0]), 1)


def test_a_batch_size_baked_into_the_graph_is_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ExportError, match=r"fails on inputs|disagrees"):
            export_onnx(_BakedBatch(), example_inputs=torch.randn(4, 3))


def test_bad_example_inputs_give_one_clear_line() -> None:
    model = TextNet()
    feeds = text_inputs()
    cases = [
        (dict(example_inputs={"input_ids": feeds["input_ids"],
                              "attention_mask": feeds["attention_mask"][:2]}),
         "different batch sizes"),
        (dict(example_inputs={"input_ids": [1, 2, 3]}), "not a tensor"),
        (dict(example_inputs=torch.tensor(3)), "batch axis"),
        (dict(example_inputs="tokens"), "tensor, a tuple of tensors or a dict"),
        (dict(example_inputs=feeds, output_names=["a", "b", "c"]), "3 output"),
        (dict(example_inputs=feeds, output_names=["a", "a"]), "distinct"),
        (dict(example_inputs=feeds, check_inputs={"input_ids": feeds["input_ids"]}),
         "check_inputs has inputs"),
        (dict(example_inputs=feeds, input_shape=(7,)), "not both"),
        (dict(example_inputs={"input_ids": feeds["input_ids"]}), "fails on inputs"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ExportError) as info:
            export_onnx(model, **kwargs)
        assert needle in str(info.value), (kwargs, str(info.value))
        assert "\n" not in str(info.value)
