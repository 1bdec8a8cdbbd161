"""The ``universal`` technique (dithered uniform quantization) and its .mzip coding
(``modelzip.codec.dither``): the decoder regenerates the dither from the seed, so a packed
model unpacks bit for bit; a wrong seed, a forged field or a flipped byte is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelzip.codec import decode_tensor, encode_tensor
from modelzip.codec.dither import dither_noise, index_coder_bytes
from modelzip.codec.model import pack, unpack
from modelzip.errors import ArtifactError, ConfigError
from modelzip.finetune import FinetuneConfig
from modelzip.prune.magnitude import MagnitudePruneConfig
from modelzip.quant.grid import grid_hints
from modelzip.quant.universal import (
    UniversalQuantConfig,
    dithered_quantize,
    lattice_quantize,
)
from modelzip.recipe import Recipe, run_recipe
from modelzip.registry import Context, apply_technique, config_from_dict
from modelzip.zoo import build_model
from tests.search_tiny import synthetic, tiny_model
from tests.test_cli import assert_ok, assert_user_error, run_cli

BENCH = Path(__file__).resolve().parent.parent / "bench" / "checkpoints"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quiet() -> Context:
    ctx = Context(progress=False)
    ctx.log = lambda message: None  # type: ignore[method-assign]
    return ctx


def _pruned_lenet300() -> nn.Module:
    torch.manual_seed(0)
    return apply_technique(build_model("lenet300"), MagnitudePruneConfig(sparsity=0.9),
                           Context(progress=False))


def _same_bits(a: nn.Module, b: nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), k


def _dithered_tensor(seed: int = 5) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 30)).astype(np.float32)
    keep = np.abs(w) > 0.7
    d = dithered_quantize(w, keep, 4, seed)
    return d.values(), {"kind": "dither", "seed": seed, "step": float(d.step),
                        "indices": d.indices, "zero_point": d.zero_point}


# ============================================================================ the maths
def test_dither_is_uniform_seeded_and_reproducible() -> None:
    u = dither_noise(3, 100_000)
    assert u.dtype == np.float32 and float(u.min()) >= -0.5 and float(u.max()) < 0.5
    assert abs(float(u.mean())) < 0.01
    assert np.array_equal(u, dither_noise(3, 100_000))
    assert not np.array_equal(u[:100], dither_noise(4, 100)[:100])
    assert np.array_equal(dither_noise(3, 10), u[:10])  # position p's dither is fixed


def test_quantization_error_is_within_half_a_step_and_zeros_stay() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(50, 40)).astype(np.float32)
    w[:, :10] = 0
    d = dithered_quantize(w, w != 0, 5, 9)
    out = d.values()
    assert np.array_equal(out == 0, w == 0)
    # w_hat = step * round(w / step + u) - step * u lies within step / 2 of w
    assert float(np.abs(out - w).max()) <= float(d.step) / 2 * (1 + 1e-5)
    assert d.levels.size <= 2**5 + 1


# ============================================================================ the coding
def test_tensor_round_trip_and_wrong_seed_is_refused() -> None:
    values, hint = _dithered_tensor()
    entry, payload = encode_tensor(values, hint=hint, name="w")
    assert entry["coding"] == "dither" and entry["layout"] == "sparse-gaps"
    assert len(payload) < values.size  # well under a byte per element
    assert decode_tensor(entry, payload, name="w").tobytes() == values.tobytes()
    forged = {**entry, "dither": {**entry["dither"], "seed": entry["dither"]["seed"] + 1}}
    with pytest.raises(ArtifactError, match=r"CRC32 check.*dither seed"):
        decode_tensor(forged, payload, name="w")
    step = np.frombuffer(payload[-4:], "<f4")[0]
    with pytest.raises(ArtifactError, match=r"CRC32 check.*dither seed or step"):
        decode_tensor(entry, payload[:-4] + np.float32(step * 2).tobytes(), name="w")


def test_levels_are_found_without_indices_in_the_hint() -> None:
    values, hint = _dithered_tensor()
    with_indices = encode_tensor(values, hint=hint, name="w")
    del hint["indices"]
    assert encode_tensor(values, hint=hint, name="w") == with_indices
    rng = np.random.default_rng(3)
    w = rng.normal(size=(30, 30)).astype(np.float32)
    d = dithered_quantize(w, np.ones(w.shape, bool), 4, 1)
    d.levels = d.levels + rng.normal(scale=float(d.step) / 10, size=d.levels.size).astype(
        np.float32)  # tuned levels: a codebook
    tuned = d.values()
    entry, payload = encode_tensor(tuned, hint={"kind": "dither", "seed": 1,
                                                "step": float(d.step), "levels": d.levels})
    assert entry["dither"]["codebook"] is True and entry["layout"] == "dense"
    assert decode_tensor(entry, payload).tobytes() == tuned.tobytes()


def test_forged_fields_and_flipped_bytes_are_refused() -> None:
    values, hint = _dithered_tensor()
    entry, payload = encode_tensor(values, hint=hint, name="w")
    for field, bad in [("seed", -1), ("seed", 2**40), ("levels", 0), ("codebook", 1),
                       ("zero_point", "3")]:
        forged = {**entry, "dither": {**entry["dither"], field: bad}}
        with pytest.raises(ArtifactError, match=field):
            decode_tensor(forged, payload, name="w")
    with pytest.raises(ArtifactError, match="layout"):
        decode_tensor({**entry, "layout": "sparse-fixed"}, payload, name="w")
    with pytest.raises(ArtifactError, match="coding"):
        decode_tensor({**entry, "coding": "dithers"}, payload, name="w")
    with pytest.raises(ArtifactError, match="float32"):
        decode_tensor({**entry, "dtype": "float16"}, payload, name="w")
    for i in range(0, len(payload), max(1, len(payload) // 40)):
        bad = bytearray(payload)
        bad[i] ^= 0x10
        with pytest.raises(ArtifactError):
            decode_tensor(entry, bytes(bad), name="w")


def test_a_stale_hint_costs_only_the_attempt() -> None:
    values, hint = _dithered_tensor()
    changed = values.copy()
    changed[changed != 0] += 1e-3
    entry, payload = encode_tensor(changed, hint=hint, name="w")
    assert "coding" not in entry
    assert decode_tensor(entry, payload, name="w").tobytes() == changed.tobytes()


def test_universal_coders_compared_on_the_same_indices() -> None:
    k = np.random.default_rng(0).binomial(16, 0.5, size=5000)
    sizes = index_coder_bytes(k, 17)
    assert {"huffman", "rans", "raw", "lzma", "bz2"} <= set(sizes)
    assert all(n > 0 for n in sizes.values())
    assert sizes["rans"] < sizes["raw"]  # about 2.5 bits of entropy against 5 bits fixed


# ============================================================================ the technique
def test_pack_unpack_bit_exact_with_and_without_level_finetuning() -> None:
    model = _pruned_lenet300()
    zeros = {k: (v == 0) for k, v in model.state_dict().items() if k.endswith("weight")}
    quantized = apply_technique(model, UniversalQuantConfig(bits=3, seed=11), _quiet())
    for k, z in zeros.items():
        assert torch.equal(quantized.state_dict()[k] == 0, z), k
    hints = grid_hints(quantized)
    assert {h["kind"] for h in hints.values()} == {"dither"}
    blob = pack(quantized)
    _same_bits(quantized, unpack(blob))
    assert len(blob) < 35_000  # 26.6k kept weights: ~ 1 byte each with the index

    model = tiny_model()
    ctx = _quiet()
    ctx.train_data = synthetic(128, 1, "train")
    tuned = apply_technique(model, UniversalQuantConfig(
        bits=3, finetune=FinetuneConfig(epochs=1, lr=0.01, batch_size=64)), ctx)
    record = ctx.records[-1]
    assert record["finetune_epochs"] == 1 and set(record["index_bytes"]) >= {"lzma", "rans"}
    assert "levels" in grid_hints(tuned)["4.weight"]  # a codebook of tuned levels
    _same_bits(tuned, unpack(pack(tuned), model=tiny_model()))


def test_config_errors_and_recipe() -> None:
    with pytest.raises(ConfigError, match="bits"):
        UniversalQuantConfig(bits=13)
    with pytest.raises(ConfigError, match="seed"):
        UniversalQuantConfig(seed=-1)
    with pytest.raises(ConfigError, match="unknown"):
        config_from_dict("universal", {"bitz": 3})
    recipe = Recipe.from_dict({"name": "universal", "steps": [
        {"magnitude": {"sparsity": 0.9}}, {"universal": {"bits": {"fc1": 3, "fc2": 4}}}]})
    torch.manual_seed(0)
    model = run_recipe(build_model("lenet300"), recipe, _quiet())
    assert set(grid_hints(model)) == {"fc1.weight", "fc2.weight"}


@pytest.mark.realdata
def test_cli_quantize_universal(tmp_path: Path, data_root: Path) -> None:
    source = BENCH / "pruned" / "magnitude-lenet300-12x"
    out = tmp_path / "u"
    assert_ok(run_cli("quantize", source, "--method", "universal", "--set", "bits=4",
                      "--no-progress", "-o", out))
    assert (out / "model.mzip").stat().st_size < 20_000
    assert_user_error(run_cli("quantize", source, "--method", "universal", "--set", "bits=0",
                              "--no-progress", "-o", tmp_path / "bad"), "bits")
    assert not (tmp_path / "bad").exists()


# ============================================================================ the a2 lattice
def test_hexagonal_lattice_pairs_round_trip_bit_exact() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(21, 15)).astype(np.float32)  # 315 elements: an odd last pair
    keep = np.abs(w) > 0.3
    lat = lattice_quantize(w, keep, 4, 3)
    assert np.array_equal(lat.weight == 0, ~keep)
    # the error of a pair lies in the hexagon around 0: within step / sqrt(3) of the pair
    kept = w[keep]
    err = (lat.weight[keep] - kept)
    if err.size % 2:
        err = np.append(err, 0.0)
    assert float(np.hypot(err[0::2], err[1::2]).max()) <= float(lat.step) / np.sqrt(3) * 1.001
    hint = {"kind": "dither", "lattice": "a2", "seed": 3, "step": float(lat.step),
            "indices": lat.symbols, "zero_point": lat.zero_point}
    entry, payload = encode_tensor(lat.weight, hint=hint, name="w")
    assert entry["dither"]["lattice"] == "a2" and entry["entries"] == int(keep.sum())
    assert decode_tensor(entry, payload, name="w").tobytes() == lat.weight.tobytes()
    with pytest.raises(ArtifactError, match="lattice"):
        decode_tensor({**entry, "dither": {**entry["dither"], "lattice": "e8"}}, payload,
                      name="w")
    with pytest.raises(ArtifactError, match="dither seed"):
        decode_tensor({**entry, "dither": {**entry["dither"], "seed": 4}}, payload, name="w")

    model = apply_technique(_pruned_lenet300(), UniversalQuantConfig(bits=4, lattice="a2"),
                            _quiet())
    assert {h.get("lattice") for h in grid_hints(model).values()} == {"a2"}
    _same_bits(model, unpack(pack(model)))
    with pytest.raises(ConfigError, match="lattice"):
        UniversalQuantConfig(lattice="a2", finetune=FinetuneConfig(epochs=1))
    with pytest.raises(ConfigError, match="lattice"):
        UniversalQuantConfig(lattice="d4")
