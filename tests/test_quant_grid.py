"""Uniform quantization on the .mzip grid coding: the quantizer's values are bit for bit the
codec's float32 formula, the technique leaves grid hints that make a per-channel weight cost
its integers instead of its floats, and techniques that move a weight off its grid drop or
outlive the hint safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modelzip.codec import describe_artifact, read_artifact, write_artifact
from modelzip.codec.tensor import grid_values
from modelzip.core.dataset import Dataset
from modelzip.finetune import FinetuneConfig
from modelzip.quant import (
    UniformQuantConfig,
    WeightSharingConfig,
    grid_hints,
    quantizable_weights,
)
from modelzip.quant.grid import GRID_ATTR
from modelzip.quant.uniform import MAX_BITS, MIN_BITS, SCHEMES, dequantize, quantize_tensor
from modelzip.registry import Context, apply_technique
from modelzip.train import TrainConfig


def _weight(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # rows of very different ranges, some tiny, some large
    spread = torch.logspace(-6, 3, shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
    w = torch.randn(shape, generator=gen) * spread
    return w * (torch.rand(shape, generator=gen) > 0.3)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_dequantize_is_the_codec_formula_bit_for_bit(scheme: str, per_channel: bool) -> None:
    for bits in range(MIN_BITS, MAX_BITS + 1) if scheme in ("affine", "symmetric") else [None]:
        w = _weight(bits or 0, (40, 3, 5))
        codes, params = quantize_tensor(w, scheme, bits, per_channel)
        ours = dequantize(codes, params).numpy()
        shape = (-1, 1, 1) if per_channel else ()
        scale = params.scale.numpy().astype(np.float32).reshape(shape)
        zero = params.zero_point.numpy().reshape(shape)
        q = codes.numpy()
        # the formula as the brief states it, and the decoder's own function
        theirs = (np.float32(q) - np.float32(zero)) * np.float32(scale)
        assert ours.dtype == theirs.dtype == np.float32
        assert ours.tobytes() == theirs.tobytes()
        assert ours.tobytes() == grid_values(q, zero, scale).tobytes()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def _arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}


def _value_codings(data: bytes) -> dict[str, str]:
    return {r["name"]: r["value_coding"] for r in describe_artifact(data)}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_uniform_leaves_hints_that_store_weights_as_integers(scheme: str) -> None:
    bits = 4 if scheme in ("affine", "symmetric") else None
    model = apply_technique(_tiny(), UniformQuantConfig(bits=bits, scheme=scheme,
                                                        per_channel=True),
                            Context(progress=False))
    hints = grid_hints(model)
    assert list(hints) == ["conv.weight", "fc1.weight", "fc2.weight"]
    for key, hint in hints.items():
        rows = model.state_dict()[key].shape[0]
        assert hint["axis"] == 0 and hint["scheme"] == scheme and hint["bits"] == bits
        assert hint["scale"].dtype == np.float32 and hint["scale"].shape == (rows,)
        assert hint["zero_point"].dtype == np.int64 and hint["zero_point"].shape == (rows,)
    assert "modelzip_grid" not in str(list(model.state_dict()))  # no parameter, no buffer
    arrays = _arrays(model)
    data = write_artifact(arrays, hints=hints)
    back = read_artifact(data).tensors
    assert all(back[k].tobytes() == arrays[k].tobytes() for k in arrays)
    codings = _value_codings(data)
    assert all(codings[k] == "grid" for k in hints), codings
    assert len(data) < len(write_artifact(arrays)) * 0.6


def test_per_tensor_hints_are_one_channel() -> None:
    model = apply_technique(_tiny(), UniformQuantConfig(bits=8), Context(progress=False))
    hint = grid_hints(model)["fc1.weight"]
    assert hint["axis"] is None and hint["scale"].shape == (1,)
    data = write_artifact(_arrays(model), hints=grid_hints(model))
    assert _value_codings(data)["fc1.weight"] == "grid"
    entry = read_artifact(data).manifest["tensors"]["fc1.weight"]
    assert entry["grid"]["channels"] == 1


def test_a_stale_hint_costs_nothing_but_the_attempt() -> None:
    model = apply_technique(_tiny(), UniformQuantConfig(bits=4, per_channel=True),
                            Context(progress=False))
    with torch.no_grad():
        model.fc1.weight.add_(1e-3)  # off the grid, e.g. fine-tuned afterwards
    arrays = _arrays(model)
    data = write_artifact(arrays, hints=grid_hints(model))
    codings = _value_codings(data)
    assert codings["fc1.weight"] != "grid" and codings["fc2.weight"] == "grid"
    back = read_artifact(data).tensors
    assert all(back[k].tobytes() == arrays[k].tobytes() for k in arrays)


def test_kmeans_drops_the_hint_of_the_layers_it_shares() -> None:
    model = apply_technique(_tiny(), UniformQuantConfig(bits=8, per_channel=True),
                            Context(progress=False))
    model = apply_technique(model, WeightSharingConfig(bits=3, layers=("fc1",)),
                            Context(progress=False))
    assert list(grid_hints(model)) == ["conv.weight", "fc2.weight"]
    assert not hasattr(model.fc1, GRID_ATTR)
    model = apply_technique(model, WeightSharingConfig(bits=3), Context(progress=False))
    assert grid_hints(model) == {}


def test_quantizing_again_replaces_the_hint() -> None:
    model = apply_technique(_tiny(), UniformQuantConfig(bits=8, per_channel=True),
                            Context(progress=False))
    model = apply_technique(model, UniformQuantConfig(bits=2, scheme="symmetric",
                                                      layers=("fc2",)),
                            Context(progress=False))
    hints = grid_hints(model)
    assert hints["fc2.weight"]["bits"] == 2 and hints["fc2.weight"]["axis"] is None
    assert hints["fc1.weight"]["bits"] == 8
    data = write_artifact(_arrays(model), hints=hints)
    assert set(_value_codings(data).values()) >= {"grid"}
    assert _value_codings(data)["fc2.weight"] == "grid"


# ============================================================================ embeddings
class TextModel(nn.Module):
    """Token ids -> mean of their embeddings -> classes."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32, padding_idx=0)
        self.fc = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(dim=1))


def _text() -> nn.Module:
    torch.manual_seed(0)
    return TextModel()


def _ids() -> torch.Tensor:
    return torch.randint(0, 100, (16, 12), generator=torch.Generator().manual_seed(1))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("bits", [4, 8])
def test_uniform_quantizes_an_embedding_per_token_vector(bits: int) -> None:
    original = _text().eval()
    ctx = Context(progress=False)
    model = apply_technique(original, UniformQuantConfig(bits=bits, per_channel=True), ctx)
    assert [r["layer"] for r in ctx.records[-1]["layers"]] == ["emb", "fc"]
    emb = model.emb.weight.detach()
    assert not torch.equal(emb, original.emb.weight)
    assert bool((emb[0] == 0).all())  # the padding row stays exactly zero
    for row in emb:
        assert len(torch.unique(row)) <= 2**bits
    assert len(torch.unique(emb)) > 2**bits  # each row on its own grid
    with torch.no_grad():
        assert _cosine(model(_ids()), original(_ids())) > (0.99 if bits == 8 else 0.9)
    data = write_artifact(_arrays(model), hints=grid_hints(model))
    assert _value_codings(data)["emb.weight"] == "grid"


def test_an_embedding_is_chosen_like_any_layer() -> None:
    original = _text()
    model = apply_technique(original, UniformQuantConfig(bits=3, layers=("emb",)),
                            Context(progress=False))
    assert torch.equal(model.fc.weight, original.fc.weight)
    assert len(torch.unique(model.emb.weight)) <= 8
    model = apply_technique(original, UniformQuantConfig(bits={"emb.weight": 2, "fc": 5}),
                            Context(progress=False))
    assert len(torch.unique(model.emb.weight)) <= 4
    assert len(torch.unique(model.fc.weight)) <= 32


def _token_batches() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 100, (8, 12), generator=gen),
                torch.randint(0, 5, (8,), generator=gen)) for _ in range(4)]
    return Dataset(batches, length=32)


FAST = TrainConfig(epochs=1, batch_size=8, lr=0.05, schedule="constant")


def test_qat_trains_an_embedding_through_the_quantizer() -> None:
    original = _text()
    plain = apply_technique(original, UniformQuantConfig(bits=4, per_channel=True),
                            Context(progress=False))
    ctx = Context(train_data=_token_batches(), finetune=FAST, progress=False)
    model = apply_technique(original, UniformQuantConfig(
        bits=4, per_channel=True, finetune=FinetuneConfig(epochs=1)), ctx)
    emb = model.emb.weight.detach()
    assert not torch.equal(emb, plain.emb.weight)  # trained
    assert bool((emb[0] == 0).all())
    for row in emb:
        assert len(torch.unique(row)) <= 16
    # the hint is the grid of the final latent weights: the codec stores the integers
    data = write_artifact(_arrays(model), hints=grid_hints(model))
    assert _value_codings(data)["emb.weight"] == "grid"
    assert _value_codings(data)["fc.weight"] == "grid"


def test_kmeans_shares_an_embedding() -> None:
    original = _text().eval()
    ctx = Context(progress=False)
    model = apply_technique(original, WeightSharingConfig(), ctx)
    bits = {r["layer"]: r["bits"] for r in ctx.records[-1]["layers"]}
    assert bits == {"emb": 8, "fc": 5}  # an embedding gets the conv layers' 8 bits
    emb = model.emb.weight.detach()
    assert len(torch.unique(emb[emb != 0])) == 256
    assert bool((emb[0] == 0).all())
    with torch.no_grad():
        assert _cosine(model(_ids()), original(_ids())) > 0.99
    model = apply_technique(original, WeightSharingConfig(bits={"emb": 2}),
                            Context(progress=False))
    assert len(torch.unique(model.emb.weight[model.emb.weight != 0])) == 4
    assert torch.equal(model.fc.weight, original.fc.weight)
    # centroid fine-tuning reaches an embedding too
    shared = model
    ctx = Context(train_data=_token_batches(), finetune=FAST, progress=False)
    model = apply_technique(original, WeightSharingConfig(bits={"emb": 2},
                                                          finetune=FinetuneConfig(epochs=1)),
                            ctx)
    emb = model.emb.weight.detach()
    assert torch.equal(emb == 0, shared.emb.weight == 0)
    assert len(torch.unique(emb[emb != 0])) == 4
    assert not torch.equal(emb, shared.emb.weight)


class Decoder(nn.Module):
    """Layers of every quantizable kind besides Linear and Embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3)
        self.seq = nn.Conv1d(6, 5, 3)
        self.norm = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.seq(self.up(x).mean(dim=3)))


def test_every_quantizable_kind_is_chosen_and_stored_on_its_grid() -> None:
    torch.manual_seed(0)
    original = Decoder().eval()
    assert list(quantizable_weights(original)) == ["up.weight", "seq.weight"]
    ctx = Context(progress=False)
    model = apply_technique(original, WeightSharingConfig(), ctx)
    assert {r["layer"]: r["bits"] for r in ctx.records[-1]["layers"]} == {"up": 8, "seq": 8}
    model = apply_technique(original, UniformQuantConfig(bits=3, per_channel=True),
                            Context(progress=False))
    for name, w in quantizable_weights(model).items():
        assert max(len(torch.unique(row)) for row in w.detach()) <= 8, name  # per dim-0 row
    data = write_artifact(_arrays(model), hints=grid_hints(model))
    codings = _value_codings(data)
    assert codings["up.weight"] == codings["seq.weight"] == "grid"
    assert codings["norm.weight"] != "grid"


# ============================================================================ a text encoder
@pytest.fixture(scope="module")
def bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def _bert_output(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 1000, (4, 16), generator=gen)
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def _bert_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight.detach() for n, m in model.named_modules()
            if isinstance(m, nn.Linear | nn.Embedding)}


def test_uniform_per_channel_8_bits_on_a_bert_model(bert: nn.Module) -> None:
    ctx = Context(progress=False)
    model = apply_technique(bert, UniformQuantConfig(bits=8, per_channel=True), ctx)
    weights = _bert_weights(model)
    assert len(weights) == 16  # 3 embeddings and 13 Linear layers
    assert [r["param"] for r in ctx.records[-1]["layers"]] == list(weights)
    before = _bert_weights(bert)
    for name, w in weights.items():
        assert not torch.equal(w, before[name]), name
        assert max(len(torch.unique(row)) for row in w) <= 256, name
    assert _cosine(_bert_output(model), _bert_output(bert)) > 0.99
    # stored as integers: about 8 bits per weight instead of a float each
    arrays = _arrays(model)
    data = write_artifact(arrays, hints=grid_hints(model))
    codings = _value_codings(data)
    assert all(codings[name] == "grid" for name in weights)
    back = read_artifact(data).tensors
    assert all(back[k].tobytes() == arrays[k].tobytes() for k in arrays)
    assert len(data) < 0.3 * len(write_artifact(arrays))


def test_kmeans_8_bits_on_a_bert_model(bert: nn.Module) -> None:
    model = apply_technique(bert, WeightSharingConfig(bits=8), Context(progress=False))
    for name, w in _bert_weights(model).items():
        assert len(torch.unique(w)) <= 256 + 1, name  # shared values, and a padding row of 0
    assert _cosine(_bert_output(model), _bert_output(bert)) > 0.99


def test_grids_survive_a_checkpoint(tmp_path) -> None:
    """A uniform-quantized model saved and reloaded still packs its weights as integers."""
    from modelzip.checkpoint import load_checkpoint, save_checkpoint
    from modelzip.codec.artifact import describe_artifact
    from modelzip.codec.model import pack
    from modelzip.quant.uniform_technique import UniformQuantConfig
    from modelzip.registry import Context, apply_technique
    from modelzip.zoo import build_model

    model = apply_technique(build_model("lenet300"), UniformQuantConfig(bits=4, per_channel=True),
                            Context(progress=False))
    save_checkpoint(model, tmp_path / "q")
    reloaded = load_checkpoint(tmp_path / "q").model
    rows = {r["name"]: r for r in describe_artifact(pack(reloaded))}
    assert rows["fc1.weight"]["value_coding"] == "grid"
    assert pack(reloaded) == pack(model)
