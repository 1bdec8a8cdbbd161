"""The ``transform-coding`` technique (DCT over weight blocks, uniform or k-means levels of
the coefficients) and its .mzip coding (``modelzip.codec.transform``): the weights are what
the numpy decoder rebuilds, so a packed model unpacks bit for bit; bad blocks, forged fields
and flipped bytes are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelzip.checkpoint import load_checkpoint, save_checkpoint
from modelzip.codec import decode_tensor, encode_tensor
from modelzip.codec.model import pack, unpack
from modelzip.codec.transform import dct_matrix, forward_dct, inverse_dct, padded_shape
from modelzip.errors import ArtifactError, CheckpointError, ConfigError
from modelzip.quant.grid import grid_hints
from modelzip.quant.transform_coding import TransformCodingConfig, transform_quantize
from modelzip.recipe import Recipe, run_recipe
from modelzip.registry import Context, apply_technique
from modelzip.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quiet() -> Context:
    ctx = Context(progress=False)
    ctx.log = lambda message: None  # type: ignore[method-assign]
    return ctx


def _same_bits(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), k


def _coded(shape: tuple[int, ...], block: tuple[int, ...], bits: int = 6,
           quantizer: str = "uniform") -> tuple[np.ndarray, dict]:
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    c = transform_quantize(w, block, bits, quantizer)
    hint = {"kind": "transform", "block": list(block), "step": float(c.step),
            "indices": c.indices, "zero_point": c.zero_point}
    if c.codebook is not None:
        hint["levels"] = c.codebook
    return c.values, hint


# ============================================================================ the maths
def test_dct_is_orthonormal_and_inverts() -> None:
    for b in (1, 3, 5, 8):
        c = dct_matrix(b).astype(np.float64)
        assert np.allclose(c @ c.T, np.eye(b), atol=1e-6)
    w = np.random.default_rng(1).normal(size=(4, 3, 5, 5))
    back = inverse_dct(forward_dct(w, (5, 5)), (5, 5)).reshape(w.shape)
    assert np.allclose(back, w, atol=1e-5)


def test_padding_rule_blocks_that_do_not_divide_a_row() -> None:
    # rows of 37 in blocks of 8: padded to 40 by mirroring; the decoder drops the padding
    assert padded_shape((10, 37), (8,)) == (10, 5, 8)
    assert padded_shape((6, 3, 5, 5), (5, 5)) == (18, 1, 1, 5, 5)
    values, hint = _coded((10, 37), (8,), bits=10)
    w = np.random.default_rng(0).normal(size=(10, 37)).astype(np.float32)
    assert values.shape == (10, 37) and float(np.abs(values - w).max()) < 0.05
    entry, payload = encode_tensor(values, hint=hint, name="fc")
    assert entry["coding"] == "transform"
    assert decode_tensor(entry, payload, name="fc").tobytes() == values.tobytes()


# ============================================================================ the coding
@pytest.mark.parametrize("quantizer", ["uniform", "kmeans"])
def test_tensor_round_trip_conv_filters(quantizer: str) -> None:
    values, hint = _coded((8, 4, 3, 3), (3, 3), bits=4, quantizer=quantizer)
    entry, payload = encode_tensor(values, hint=hint, name="conv")
    assert entry["coding"] == "transform"
    assert entry["transform"]["codebook"] is (quantizer == "kmeans")
    assert len(payload) < values.size  # under a byte a weight, against 4 as floats
    assert decode_tensor(entry, payload, name="conv").tobytes() == values.tobytes()


def test_forged_fields_and_flipped_bytes_are_refused() -> None:
    values, hint = _coded((16, 20), (8,))
    entry, payload = encode_tensor(values, hint=hint, name="fc")
    t = entry["transform"]
    for field, bad in [("block", [0]), ("block", [65]), ("block", [2, 2, 2]), ("levels", 0),
                       ("kind", "dct-iv"), ("codebook", None)]:
        with pytest.raises(ArtifactError, match=field):
            decode_tensor({**entry, "transform": {**t, field: bad}}, payload, name="fc")
    # another block size declares another number of coefficients: the streams disagree
    with pytest.raises(ArtifactError):
        decode_tensor({**entry, "transform": {**t, "block": [4]}}, payload, name="fc")
    with pytest.raises(ArtifactError, match="layout"):
        decode_tensor({**entry, "layout": "sparse-gaps"}, payload, name="fc")
    step = np.frombuffer(payload[-4:], "<f4")[0]
    with pytest.raises(ArtifactError, match=r"CRC32 check.*transform back"):
        decode_tensor(entry, payload[:-4] + np.float32(step * 1.5).tobytes(), name="fc")
    for i in range(0, len(payload), max(1, len(payload) // 40)):
        bad = bytearray(payload)
        bad[i] ^= 0x04
        with pytest.raises(ArtifactError):
            decode_tensor(entry, bytes(bad), name="fc")


# ============================================================================ the technique
@pytest.mark.parametrize("quantizer", ["uniform", "kmeans"])
def test_pack_unpack_bit_exact(quantizer: str) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5")
    dense = len(pack(model))
    coded = apply_technique(model, TransformCodingConfig(bits=5, quantizer=quantizer),
                            _quiet())
    hints = grid_hints(coded)
    assert {h["kind"] for h in hints.values()} == {"transform"}
    assert hints["conv1.weight"]["block"] == [5, 5] and hints["fc1.weight"]["block"] == [8]
    blob = pack(coded)
    _same_bits(coded, unpack(blob))
    assert len(blob) < dense / 4


def test_config_errors_and_recipe() -> None:
    with pytest.raises(ConfigError, match="block"):
        TransformCodingConfig(block=0)
    with pytest.raises(ConfigError, match="block"):
        TransformCodingConfig(block=65)
    with pytest.raises(ConfigError, match="bits"):
        TransformCodingConfig(bits=9, quantizer="kmeans")
    with pytest.raises(ConfigError, match="quantizer"):
        TransformCodingConfig(quantizer="lloyd")
    conv3d = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="Conv1d and Conv2d"):
        apply_technique(conv3d, TransformCodingConfig(), _quiet())
    recipe = Recipe.from_dict({"name": "tc", "steps": [
        {"transform-coding": {"bits": 6, "block": 16, "layers": ["fc1"]}}]})
    torch.manual_seed(0)
    model = run_recipe(build_model("lenet300"), recipe, _quiet())
    assert list(grid_hints(model)) == ["fc1.weight"]
    assert grid_hints(model)["fc1.weight"]["block"] == [16]


def test_a_checkpoint_keeps_the_coefficients_compactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    coded = apply_technique(build_model("lenet300"),
                            TransformCodingConfig(bits=4, block=16, layers=("fc2",)), _quiet())
    save_checkpoint(coded, tmp_path / "ck")
    meta = tmp_path / "ck" / "modelzip.json"
    as_list = len(json.dumps(grid_hints(coded)["fc2.weight"]["indices"].tolist()))
    assert meta.stat().st_size < as_list / 3  # 30,000 indices: packed, not a JSON list
    assert pack(load_checkpoint(tmp_path / "ck").model) == pack(coded)
    doc = json.loads(meta.read_text())
    packed = doc["quantization_grids"]["fc2.weight"]["indices"]["packed_array"]
    packed["shape"] = [10**9]
    meta.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"fc2\.weight\.indices is malformed"):
        load_checkpoint(tmp_path / "ck")
