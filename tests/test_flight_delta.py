"""3LC maths (modelzip.flight.threelc) and the delta uplink (modelzip.flight.delta): exact
round trips, the patch's checks (wrong base, damaged, applied twice), atomic patching, the
torch-free patcher, and the `delta` / `patch` commands."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from modelzip.codec.artifact import read_artifact, write_artifact
from modelzip.errors import ConfigError
from modelzip.flight import delta as delta_mod
from modelzip.flight.delta import PatchError, apply_patch, describe_patch, make_delta, patch_file
from modelzip.flight.threelc import (
    ThreeLCError,
    decode_integers,
    decode_trits,
    encode_integers,
    encode_trits,
    pack_trits,
    ternary_dequantize,
    ternary_quantize,
    unpack_trits,
    zero_run_decode,
    zero_run_encode,
)
from tests.test_cli_hardening import cli, user_error


# ============================================================================ 3LC
@pytest.mark.parametrize("count", [0, 1, 4, 5, 6, 69, 70, 71, 1001])
def test_trits_round_trip_exactly(count: int) -> None:
    rng = np.random.default_rng(count)
    trits = rng.integers(-1, 2, count)
    trits[: count // 2] = 0  # a long zero run, as a sparse change has
    assert np.array_equal(unpack_trits(pack_trits(trits), count), trits)
    assert np.array_equal(decode_trits(encode_trits(trits), count), trits)


def test_base3_packs_five_trits_per_byte() -> None:
    assert pack_trits([-1, -1, -1, -1, -1]) == bytes([0])
    assert pack_trits([1, 1, 1, 1, 1]) == bytes([242])
    assert pack_trits([0] * 5) == bytes([121])
    assert pack_trits([1, 0, 0, 0, 0]) == bytes([122])  # the first trit is the lowest digit
    assert len(pack_trits(np.ones(11))) == 3


@pytest.mark.parametrize("run, expected", [(1, [121]), (2, [243]), (14, [255]),
                                           (15, [255, 121]), (16, [255, 243]),
                                           (28, [255, 255])])
def test_zero_run_encoding_of_runs(run: int, expected: list[int]) -> None:
    data = bytes([7]) + bytes([121] * run) + bytes([9])
    assert zero_run_encode(data) == bytes([7, *expected, 9])
    assert zero_run_decode(zero_run_encode(data), len(data)) == data


def test_an_all_zero_change_is_tiny() -> None:
    assert len(encode_trits(np.zeros(7000, dtype=np.int8))) == 100  # 70 trits per byte
    assert encode_integers(np.zeros(10_000, dtype=np.int64)) == b"\x00"


def test_trit_decoders_refuse_bad_input() -> None:
    with pytest.raises(ThreeLCError, match="above 242"):
        unpack_trits(bytes([243]), 5)
    with pytest.raises(ThreeLCError, match="bytes"):
        unpack_trits(bytes(3), 5)
    with pytest.raises(ThreeLCError, match="expands"):
        zero_run_decode(bytes([255] * 10), 20)  # a bomb: 140 bytes for 20
    with pytest.raises(ThreeLCError, match="padding"):
        unpack_trits(pack_trits([0, 0, 0, 0, 1]), 3)


@pytest.mark.parametrize("values", [
    [0, 1, -1, 2, -2, 13, -13, 40, -41, 121, -122],
    [2 ** 62, -(2 ** 62), 3 ** 39, -(3 ** 39)],
    list(range(-300, 300)),
])
def test_integer_planes_round_trip_exactly(values: list[int]) -> None:
    v = np.array(values, dtype=np.int64)
    assert np.array_equal(decode_integers(encode_integers(v), v.size), v)


def test_integer_planes_refuse_trailing_and_truncated_bytes() -> None:
    data = encode_integers(np.array([5, -7, 0, 1]))
    with pytest.raises(ThreeLCError, match="after the last plane"):
        decode_integers(data + b"\x00", 4)
    with pytest.raises(ThreeLCError):
        decode_integers(data[:-1], 4)
    with pytest.raises(ThreeLCError, match="planes"):
        decode_integers(bytes([99]), 4)


def test_ternary_quantization_with_sparsity_multiplication() -> None:
    x = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    trits, scale, residual = ternary_quantize(x, sparsity=1.0)
    assert set(np.unique(trits)) <= {-1, 0, 1}
    assert scale == pytest.approx(float(np.abs(x).max()))
    assert np.abs(x - ternary_dequantize(trits, scale)).max() <= scale / 2 + 1e-6
    assert np.allclose(residual, x - ternary_dequantize(trits, scale))
    sparser, _, _ = ternary_quantize(x, sparsity=1.9)
    assert (sparser == 0).mean() > (trits == 0).mean()
    with pytest.raises(ValueError, match="sparsity"):
        ternary_quantize(x, sparsity=2.0)


def test_error_feedback_carries_what_was_left_out() -> None:
    """With error feedback the quantized changes add up to the true ones, up to one
    residual (bounded by half a scale), however many rounds."""
    rng = np.random.default_rng(1)
    changes = rng.normal(scale=0.01, size=(50, 1000)).astype(np.float32)
    sent = np.zeros(1000, dtype=np.float32)
    residual = None
    for change in changes:
        trits, scale, residual = ternary_quantize(change, sparsity=1.5, residual=residual)
        sent += ternary_dequantize(trits, scale)
    assert np.allclose(sent + residual, changes.sum(0), atol=1e-4)


# ============================================================================ delta
def _grid(steps: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return steps.astype(np.float32) * scales.astype(np.float32)[:, None]


@pytest.fixture
def versions() -> dict:
    """An old and a new .mzip: a per-channel grid weight (a few steps moved), a shared
    (k-means) weight (some indices moved), a float bias, an unchanged tensor, an int64
    counter, a tensor dropped and one added."""
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.001, 0.01, 16).astype(np.float32)
    steps = rng.integers(-127, 128, (16, 64))
    moved = steps + (rng.random(steps.shape) < 0.1) * rng.integers(-1, 2, steps.shape)
    book = np.sort(rng.normal(size=8)).astype(np.float32)
    idx = rng.integers(0, 8, (32, 20))
    new_idx = np.clip(idx + (rng.random(idx.shape) < 0.1) * rng.integers(-1, 2, idx.shape),
                      0, 7)
    old = {"conv.weight": _grid(steps, scales), "fc.weight": book[idx],
           "fc.bias": rng.normal(size=20).astype(np.float32),
           "bn.running_mean": rng.normal(size=16).astype(np.float32),
           "bn.num_batches_tracked": np.array(100, dtype=np.int64),
           "old.only": np.ones(3, dtype=np.float32)}
    new = {**old, "conv.weight": _grid(moved, scales), "fc.weight": book[new_idx],
           "fc.bias": old["fc.bias"] + rng.normal(scale=1e-3, size=20).astype(np.float32),
           "bn.num_batches_tracked": np.array(117, dtype=np.int64),
           "new.only": np.arange(5, dtype=np.int32)}
    del new["old.only"]
    hints = {"conv.weight": {"scale": scales, "axis": 0}}
    model = {"kind": "state-dict", "name": "test"}
    return {"old": write_artifact(old, model=model, meta={"v": 1}, hints=hints),
            "new": write_artifact(new, model=model, meta={"v": 2}, hints=hints),
            "hints": hints, "new_tensors": new}


def test_lossless_patch_gives_the_new_file_byte_for_byte(versions: dict) -> None:
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    assert apply_patch(versions["old"], patch) == versions["new"]
    info = describe_patch(patch)
    assert info["lossless"] and info["max_abs_error"] == 0
    assert info["base_sha256"] == hashlib.sha256(versions["old"]).hexdigest()
    assert info["result_sha256"] == hashlib.sha256(versions["new"]).hexdigest()
    assert {"grid", "codebook", "same", "bits"} <= set(info["bytes_by_mode"])
    assert info["bytes_by_mode"]["same"] == 0
    assert len(patch) < len(versions["new"]) / 2


@pytest.mark.parametrize("coder", ["3lc", "coders"])
def test_each_integer_coder_alone_round_trips(versions: dict, coder: str) -> None:
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"],
                       delta_coder=coder)
    assert apply_patch(versions["old"], patch) == versions["new"]
    codings = set(describe_patch(patch)["bytes_by_coding"])
    assert ("3lc" in codings) == (coder == "3lc")


def test_lossy_patch_keeps_every_float_within_the_tolerance(versions: dict) -> None:
    tolerance = 1e-3
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"],
                       tolerance=tolerance)
    info = describe_patch(patch)
    result = read_artifact(apply_patch(versions["old"], patch)).tensors
    errors = [float(np.abs(result[k].astype(np.float64) - v.astype(np.float64)).max())
              for k, v in versions["new_tensors"].items()]
    assert max(errors) <= tolerance * (1 + 1e-5)
    assert info["max_abs_error"] == pytest.approx(max(errors))
    assert not info["lossless"] and "step" in info["bytes_by_mode"]
    for grid_or_shared in ("conv.weight", "fc.weight"):  # stay on their grid / codebook
        assert np.array_equal(result[grid_or_shared], versions["new_tensors"][grid_or_shared])


def test_a_patch_from_arrays(versions: dict) -> None:
    arrays = dict(versions["new_tensors"])
    patch = make_delta(versions["old"], arrays, hints=versions["hints"])
    result = read_artifact(apply_patch(versions["old"], patch))
    assert result.meta == {"v": 1}  # the old file's meta when none is given
    for key, value in arrays.items():
        assert result.tensors[key].tobytes() == value.tobytes()


def test_a_new_file_that_cannot_be_reproduced_is_refused(versions: dict) -> None:
    with pytest.raises(PatchError, match="hints"):  # written with grids the patch lacks
        make_delta(versions["old"], versions["new"])


def test_bad_delta_settings_and_graph_files_are_refused(versions: dict) -> None:
    for kwargs in ({"tolerance": -1.0}, {"tolerance": float("nan")}, {"delta_coder": "zip"}):
        with pytest.raises(ConfigError):
            make_delta(versions["old"], versions["new"], hints=versions["hints"], **kwargs)
    graph = write_artifact({"x": np.zeros(2, np.float32)}, blobs={"graph": b"onnx"})
    with pytest.raises(PatchError, match="blobs"):
        make_delta(versions["old"], graph)
    with pytest.raises(PatchError, match="blobs"):
        make_delta(graph, versions["new"], hints=versions["hints"])


def test_wrong_base_names_both_hashes(versions: dict) -> None:
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    other = write_artifact({"x": np.zeros(3, np.float32)})
    with pytest.raises(PatchError) as err:
        apply_patch(other, patch)
    assert hashlib.sha256(versions["old"]).hexdigest() in str(err.value)
    assert hashlib.sha256(other).hexdigest() in str(err.value)


def test_a_patch_applied_twice_is_refused(versions: dict) -> None:
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    with pytest.raises(PatchError, match="applied already"):
        apply_patch(apply_patch(versions["old"], patch), patch)


def test_truncated_or_corrupt_patches_are_refused(versions: dict) -> None:
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    for bad in (patch[:-1], patch[: len(patch) // 2], patch[:10]):
        with pytest.raises(PatchError, match=r"damaged|not a modelzip patch"):
            apply_patch(versions["old"], bad)
    for pos in range(0, len(patch), max(1, len(patch) // 40)):
        flipped = bytearray(patch)
        flipped[pos] ^= 0x10
        with pytest.raises(PatchError):
            apply_patch(versions["old"], bytes(flipped))


def _forge(patch: bytes, edit) -> bytes:
    """The patch with its header edited and its SHA-256 recomputed (a forger's patch)."""
    header, payload = delta_mod._parse(patch)
    edit(header)
    return delta_mod._serialize(header, payload)


@pytest.mark.parametrize("edit", [
    lambda h: h["tensors"]["conv.weight"].update(shape=[16, 65]),
    lambda h: h["tensors"]["conv.weight"].update(shape=[2 ** 40]),
    lambda h: h["tensors"]["conv.weight"].update(dtype="object"),
    lambda h: h["tensors"]["conv.weight"].update(mode="magic"),
    lambda h: h["tensors"]["conv.weight"].update(coding="zip"),
    lambda h: h["tensors"]["fc.weight"].update(codebook=10 ** 9),
    lambda h: h["tensors"]["fc.bias"].update(bytes=h["tensors"]["fc.bias"]["bytes"] + 1),
    lambda h: h["grids"]["conv.weight"].update(channels=3),
    lambda h: h.update(result_sha256="0" * 64),
    lambda h: h.update(tensors=[]),
    lambda h: h["tensors"].update(extra={"mode": "same", "dtype": "float32", "shape": [2],
                                         "bytes": 0}),
])
def test_forged_patches_are_refused_cleanly(versions: dict, edit) -> None:
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    with pytest.raises(PatchError):
        apply_patch(versions["old"], _forge(patch, edit))


def test_forged_payloads_are_refused_or_give_the_named_result(versions: dict) -> None:
    """Seeded byte edits of the payload with the SHA-256 recomputed: every case is a clean
    PatchError (the result hash catches whatever decodes to other weights)."""
    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    header, payload = delta_mod._parse(patch)
    rng = np.random.default_rng(7)
    for _ in range(150):
        edited = bytearray(payload)
        for pos in rng.integers(0, len(edited), rng.integers(1, 4)):
            edited[pos] = int(rng.integers(0, 256))
        forged = delta_mod._serialize(header, bytes(edited))
        with contextlib.suppress(PatchError):
            assert apply_patch(versions["old"], forged) == versions["new"]


def test_the_result_can_carry_fec_parity(versions: dict) -> None:
    from modelzip.codec.artifact import protect_artifact

    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"], fec="8%")
    result = apply_patch(versions["old"], patch)
    assert result == protect_artifact(versions["new"], fec=0.08)
    assert read_artifact(result).fec is not None
    with pytest.raises(ConfigError, match="out of range"):
        make_delta(versions["old"], versions["new"], hints=versions["hints"], fec="900%")


def test_a_header_bomb_is_refused(versions: dict, monkeypatch) -> None:
    monkeypatch.setattr(delta_mod, "MAX_HEADER_BYTES", 1 << 16)
    bomb = zlib.compress(b" " * (delta_mod.MAX_HEADER_BYTES + 10), 9)
    body = struct.pack("<8sBI", delta_mod.MAGIC, 1, len(bomb)) + bomb
    with pytest.raises(PatchError, match=r"too large|JSON"):
        apply_patch(versions["old"], body + hashlib.sha256(body).digest())


def test_patch_file_is_atomic(versions: dict, tmp_path: Path, monkeypatch) -> None:
    old, upd = tmp_path / "model.mzip", tmp_path / "update.mzipd"
    old.write_bytes(versions["old"])
    upd.write_bytes(make_delta(versions["old"], versions["new"], hints=versions["hints"]))

    def crash(*args, **kwargs):
        raise OSError("power lost")

    monkeypatch.setattr(os, "replace", crash)  # the write is interrupted before the rename
    with pytest.raises(OSError, match="power lost"):
        patch_file(old, upd, old)
    assert old.read_bytes() == versions["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mzip", "update.mzipd"]
    monkeypatch.undo()
    patch_file(old, upd, old)  # in place, once verified
    assert old.read_bytes() == versions["new"]
    with pytest.raises(PatchError, match="applied already"):
        patch_file(old, upd, old)
    assert old.read_bytes() == versions["new"]


def test_the_patcher_imports_without_torch() -> None:
    code = ("import sys; import modelzip.flight.delta, modelzip.flight.threelc; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_patch_command_runs_without_torch(versions: dict, tmp_path: Path) -> None:
    old, upd = tmp_path / "model.mzip", tmp_path / "update.mzipd"
    old.write_bytes(versions["old"])
    upd.write_bytes(make_delta(versions["old"], versions["new"], hints=versions["hints"]))
    code = ("import sys; sys.modules['torch'] = None; from modelzip.cli import main; "
            f"sys.argv = ['modelzip', 'patch', {str(old)!r}, {str(upd)!r}, '-o', {str(old)!r}]; "
            "main()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    assert old.read_bytes() == versions["new"]


# ============================================================================ CLI
def test_delta_and_patch_commands(capsys, tmp_path: Path) -> None:
    import torch

    import modelzip
    from modelzip.checkpoint import load_checkpoint, save_checkpoint
    from modelzip.codec.model import pack
    from modelzip.quant.grid import grid_hints
    from modelzip.quant.uniform_technique import UniformQuantConfig
    from modelzip.zoo import build_model

    torch.manual_seed(0)
    old_model = modelzip.quantize(build_model("lenet300"),
                                  UniformQuantConfig(bits=8, per_channel=True))
    save_checkpoint(old_model, tmp_path / "old")
    (tmp_path / "old.mzip").write_bytes(pack(old_model))
    new_model = modelzip.quantize(old_model, UniformQuantConfig(bits=8, per_channel=True))
    hints = grid_hints(new_model)
    with torch.no_grad():  # a few weights one step along their old grid
        for key, param in new_model.state_dict().items():
            if key in hints:
                scale = torch.as_tensor(hints[key]["scale"]).reshape(-1, 1)
                steps = torch.round(param / scale)
                steps[:, ::50] += 1
                param.copy_(steps * scale)
            else:
                param.add_(0.01)
    save_checkpoint(new_model, tmp_path / "new")
    expected = pack(load_checkpoint(tmp_path / "new").model)
    upd = tmp_path / "update.mzipd"
    code, _, err = cli(capsys, "delta", tmp_path / "old.mzip", tmp_path / "new", "-o", upd)
    assert code == 0, err
    assert len(upd.read_bytes()) < len(expected) / 5
    out = tmp_path / "patched.mzip"
    code, _, err = cli(capsys, "patch", tmp_path / "old.mzip", upd, "-o", out)
    assert code == 0, err
    assert out.read_bytes() == expected
    # applied twice, to the wrong base, a damaged patch, an existing -o: one error line each
    assert "applied already" in user_error(capsys, "patch", out, upd, "-o", out)
    assert "exists" in user_error(capsys, "patch", tmp_path / "old.mzip", upd, "-o", out)
    wrong = tmp_path / "wrong.mzip"
    wrong.write_bytes(write_artifact({"x": np.zeros(2, np.float32)}))
    line = user_error(capsys, "patch", wrong, upd, "-o", tmp_path / "w2.mzip")
    assert hashlib.sha256(wrong.read_bytes()).hexdigest() in line
    assert hashlib.sha256((tmp_path / "old.mzip").read_bytes()).hexdigest() in line
    damaged = tmp_path / "damaged.mzipd"
    damaged.write_bytes(upd.read_bytes()[:-5])
    old_bytes = (tmp_path / "old.mzip").read_bytes()
    assert "damaged" in user_error(capsys, "patch", tmp_path / "old.mzip", damaged, "-o",
                                   tmp_path / "old.mzip")
    assert (tmp_path / "old.mzip").read_bytes() == old_bytes
    assert "exists" in user_error(capsys, "delta", tmp_path / "old.mzip", tmp_path / "new",
                                  "-o", upd)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ============================================================================ signed patches
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from modelzip.flight.sign import generate_keys, load_public_key

    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_keys(folder / "ground")
    other_private, other_public = generate_keys(folder / "other")
    return {"private": private, "public": load_public_key(public), "public_path": public,
            "other_private": other_private, "other_public": load_public_key(other_public)}


def test_a_signed_patch_applies_and_signs_its_result(versions: dict, keys: dict) -> None:
    from modelzip.flight.sign import fingerprint, sign_artifact

    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"],
                       sign=keys["private"])
    result = apply_patch(versions["old"], patch, trusted_keys=[keys["public"]])
    # the very file the sender signs; a reader that trusts the key accepts it
    assert result == sign_artifact(versions["new"], keys["private"])
    assert read_artifact(result, trusted_keys=[keys["public"]]).tensors.keys() == \
        read_artifact(versions["new"]).tensors.keys()
    assert apply_patch(versions["old"], patch) == result  # no keys: the signature is carried
    assert describe_patch(patch)["signer"] == fingerprint(keys["public"])
    assert describe_patch(make_delta(versions["old"], versions["new"],
                                     hints=versions["hints"]))["signer"] is None


def test_signed_patch_with_fec_result(versions: dict, keys: dict) -> None:
    from modelzip.codec.artifact import protect_artifact
    from modelzip.flight.sign import sign_artifact

    patch = make_delta(versions["old"], versions["new"], hints=versions["hints"], fec="8%",
                       sign=keys["private"])
    result = apply_patch(versions["old"], patch, trusted_keys=[keys["public"]])
    assert result == protect_artifact(sign_artifact(versions["new"], keys["private"]), fec=0.08)
    read_artifact(result, trusted_keys=[keys["public"]])


def test_a_patcher_with_trusted_keys_refuses_unsigned_and_wrongly_signed(
        versions: dict, keys: dict, monkeypatch) -> None:
    unsigned = make_delta(versions["old"], versions["new"], hints=versions["hints"])
    signed = make_delta(versions["old"], versions["new"], hints=versions["hints"],
                        sign=keys["private"])
    by_other = make_delta(versions["old"], versions["new"], hints=versions["hints"],
                          sign=keys["other_private"])
    trusted = [keys["public"]]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the signature was checked")

    monkeypatch.setattr(delta_mod, "read_artifact", no_decoding)
    monkeypatch.setattr(delta_mod.zlib, "decompressobj", no_decoding)
    with pytest.raises(PatchError, match="not signed"):
        apply_patch(versions["old"], unsigned, trusted_keys=trusted)
    with pytest.raises(PatchError, match="not among the trusted keys"):
        apply_patch(versions["old"], by_other, trusted_keys=trusted)
    # a byte changed after signing, even with the SHA-256 recomputed
    body = bytearray(signed[:-96 - 32])
    body[-1] ^= 1
    forged = bytes(body) + hashlib.sha256(body).digest() + signed[-96:]
    with pytest.raises(PatchError, match="does not verify"):
        apply_patch(versions["old"], forged, trusted_keys=trusted)
    # the signature block stripped and the flag cleared: unsigned, refused
    stripped = bytearray(signed[:-96 - 32])
    stripped[7] = 0
    stripped = bytes(stripped) + hashlib.sha256(stripped).digest()
    with pytest.raises(PatchError, match="not signed"):
        apply_patch(versions["old"], stripped, trusted_keys=trusted)
    flags = bytearray(signed)
    flags[7] = 0x80
    with pytest.raises(PatchError, match="unknown flags"):
        apply_patch(versions["old"], bytes(flags), trusted_keys=trusted)
    with pytest.raises(ConfigError, match="32-byte"):
        apply_patch(versions["old"], signed, trusted_keys=[b"short"])


def test_a_forged_result_signature_is_refused(versions: dict, keys: dict) -> None:
    signed = make_delta(versions["old"], versions["new"], hints=versions["hints"],
                        sign=keys["private"])
    header, payload = delta_mod._parse(signed)
    for bad in ("zz" * 96, keys["other_public"].hex() + "00" * 64, 5):
        forged = delta_mod._serialize({**header, "result_signature": bad}, payload)
        with pytest.raises(PatchError, match="result_signature"):
            apply_patch(versions["old"], forged)


def test_a_signed_new_file_needs_its_key(versions: dict, keys: dict) -> None:
    from modelzip.flight.sign import sign_artifact

    signed_new = sign_artifact(versions["new"], keys["private"])
    patch = make_delta(versions["old"], signed_new, hints=versions["hints"],
                       sign=keys["private"])
    assert apply_patch(versions["old"], patch) == signed_new
    with pytest.raises(PatchError, match="signed"):
        make_delta(versions["old"], signed_new, hints=versions["hints"])


def test_signed_delta_and_patch_commands(capsys, versions: dict, keys: dict,
                                         tmp_path: Path) -> None:
    old, new = tmp_path / "old.mzip", tmp_path / "new.mzip"
    old.write_bytes(versions["old"])
    new.write_bytes(versions["new"])
    upd = tmp_path / "update.mzipd"
    plain = tmp_path / "plain.mzipd"
    plain.write_bytes(make_delta(versions["old"], versions["new"], hints=versions["hints"]))
    upd.write_bytes(make_delta(versions["old"], versions["new"], hints=versions["hints"],
                               sign=keys["private"]))
    pub = keys["public_path"]
    line = user_error(capsys, "patch", old, plain, "-o", tmp_path / "a.mzip",
                      "--trusted-key", pub)
    assert "not signed" in line and not (tmp_path / "a.mzip").exists()
    code, _, err = cli(capsys, "patch", old, upd, "-o", old, "--trusted-key", pub)
    assert code == 0, err
    read_artifact(old.read_bytes(), trusted_keys=[keys["public"]])
    code, _, err = cli(capsys, "delta", tmp_path / "old-copy.mzip", new, "-o",
                       tmp_path / "x.mzipd", "--sign", tmp_path / "missing.key")
    assert code == 2 and "private key" in err
