"""Signed .mzip files: keygen, pack --sign, and readers with trusted keys that refuse unsigned,
foreign-signed or altered files before decoding anything; the CLI and the runner alike."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelzip.codec import artifact as artifact_mod
from modelzip.codec.artifact import protect_artifact, read_artifact, write_artifact
from modelzip.codec.container import SIGNATURE_BLOCK_SIZE
from modelzip.errors import ArtifactError, ConfigError
from modelzip.flight.sign import (
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    generate_keys,
    load_public_key,
    sign_artifact,
)

ARRAYS = {"w": np.linspace(-1, 1, 200, dtype=np.float32).reshape(10, 20)}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ours = generate_keys(tmp_path_factory.mktemp("ours"))
    theirs = generate_keys(tmp_path_factory.mktemp("theirs"))
    return {"key": ours[0], "pub": load_public_key(ours[1]), "pub_path": ours[1],
            "other_key": theirs[0], "other_pub": load_public_key(theirs[1])}


@pytest.fixture(scope="module")
def plain() -> bytes:
    return write_artifact(ARRAYS)


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    private, public = generate_keys(tmp_path / "k")
    assert private.name == PRIVATE_KEY_NAME and public.name == PUBLIC_KEY_NAME
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert len(load_public_key(public)) == 32
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_keys(tmp_path / "k")


def test_signed_file_reads_with_its_trusted_key(keys: dict, plain: bytes) -> None:
    signed = sign_artifact(plain, keys["key"])
    assert len(signed) == len(plain) + SIGNATURE_BLOCK_SIZE
    art = read_artifact(signed, trusted_keys=[keys["other_pub"], keys["pub"]])
    assert art.signer == keys["pub"]
    assert art.tensors["w"].tobytes() == ARRAYS["w"].tobytes()
    assert read_artifact(signed).signer == keys["pub"]  # without keys: read, not verified


def test_unsigned_file_is_refused_by_a_reader_with_trusted_keys(keys: dict,
                                                                plain: bytes) -> None:
    with pytest.raises(ArtifactError, match="not signed"):
        read_artifact(plain, trusted_keys=[keys["pub"]])


def test_file_signed_by_another_key_is_refused(keys: dict, plain: bytes) -> None:
    signed = sign_artifact(plain, keys["other_key"])
    with pytest.raises(ArtifactError, match="not among the trusted keys"):
        read_artifact(signed, trusted_keys=[keys["pub"]])


def forge_after_signing(signed: bytes, offset: int) -> bytes:
    """A forger changes a byte of a signed file and recomputes its SHA-256."""
    data = bytearray(signed[:-SIGNATURE_BLOCK_SIZE])
    data[offset] ^= 0x01
    body = bytes(data[:-32])
    return body + hashlib.sha256(body).digest() + signed[-SIGNATURE_BLOCK_SIZE:]


def test_altered_file_is_refused_before_anything_is_decoded(
        keys: dict, plain: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    signed = sign_artifact(plain, keys["key"])
    forged = forge_after_signing(signed, len(signed) - SIGNATURE_BLOCK_SIZE - 40)
    with pytest.raises(ArtifactError, match="CRC32"):  # without keys: only the CRC32 catches it
        read_artifact(forged)
    calls = []
    monkeypatch.setattr(artifact_mod, "check_entry",
                        lambda *a, **k: calls.append(1))  # must not be reached
    with pytest.raises(ArtifactError, match="does not verify"):
        read_artifact(forged, trusted_keys=[keys["pub"]])
    with pytest.raises(ArtifactError, match="does not verify"):
        read_artifact(forge_after_signing(signed, 30), trusted_keys=[keys["pub"]])
    assert calls == []


def test_swapped_public_key_in_the_block_is_refused(keys: dict, plain: bytes) -> None:
    signed = bytearray(sign_artifact(plain, keys["other_key"]))
    start = len(signed) - SIGNATURE_BLOCK_SIZE
    signed[start:start + 32] = keys["pub"]
    with pytest.raises(ArtifactError, match="does not verify"):
        read_artifact(bytes(signed), trusted_keys=[keys["pub"]])


def test_trusted_keys_must_be_raw_public_keys(keys: dict, plain: bytes) -> None:
    signed = sign_artifact(plain, keys["key"])
    for bad in (["/path/to/key.pub"], [keys["pub"][:16]]):
        with pytest.raises(ConfigError, match="raw 32-byte Ed25519 public keys"):
            read_artifact(signed, trusted_keys=bad)


def test_signed_then_fec(keys: dict, plain: bytes) -> None:
    blob = bytearray(protect_artifact(plain, fec="10%", sign=keys["key"]))
    blob[150] ^= 0xFF
    art = read_artifact(bytes(blob), trusted_keys=[keys["pub"]])
    assert art.fec.corrected_bytes == 1 and art.signer == keys["pub"]
    with pytest.raises(ArtifactError, match="before adding FEC"):
        sign_artifact(protect_artifact(plain, fec=0.08), keys["key"])
    with pytest.raises(ArtifactError, match="already signed"):
        sign_artifact(sign_artifact(plain, keys["key"]), keys["key"])


def test_bad_key_files(tmp_path: Path, keys: dict, plain: bytes) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        sign_artifact(plain, junk)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(junk)
    with pytest.raises(ConfigError, match="cannot read the private key"):
        sign_artifact(plain, tmp_path / "missing.key")
    assert load_public_key(keys["pub"].hex()) == keys["pub"]


def run_cli(*args: Any) -> Any:
    """The CLI in this process (typer's runner): the wiring, without a new interpreter."""
    from typer.testing import CliRunner

    from modelzip.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_keygen_pack_sign_fec_and_unpack_with_trusted_key(tmp_path: Path) -> None:
    from modelzip.checkpoint import save_checkpoint
    from modelzip.zoo import build_model

    torch.manual_seed(0)
    save_checkpoint(build_model("resconcat"), tmp_path / "ck")
    result = run_cli("keygen", "-o", tmp_path / "keys")
    assert result.exit_code == 0, result.output
    key, pub = tmp_path / "keys" / PRIVATE_KEY_NAME, tmp_path / "keys" / PUBLIC_KEY_NAME
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    other = generate_keys(tmp_path / "other")[1]
    out = tmp_path / "m.mzip"
    result = run_cli("pack", tmp_path / "ck", "-o", out, "--fec", "8%", "--sign", key)
    assert result.exit_code == 0, result.output
    data = bytearray(out.read_bytes())
    data[300] ^= 0x10
    out.write_bytes(bytes(data))
    result = run_cli("unpack", out, "-o", tmp_path / "back", "--trusted-key", pub)
    assert result.exit_code == 0, result.output
    assert "corrected 1 damaged byte" in result.output
    result = run_cli("unpack", out, "-o", tmp_path / "back2", "--trusted-key", other)
    assert isinstance(result.exception, ArtifactError)
    assert "not among the trusted keys" in str(result.exception)
    result = run_cli("pack", tmp_path / "ck", "-o", tmp_path / "x.mzip", "--fec", "200%")
    assert isinstance(result.exception, ConfigError)
    assert "out of range" in str(result.exception)
    assert not (tmp_path / "x.mzip").exists()


def test_runner_trusted_key(tmp_path: Path, keys: dict) -> None:
    from modelzip.runtime import runner as runner_mod
    from modelzip.runtime.onnx_artifact import pack_model_onnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    blob = pack_model_onnx(model, int8=False, example_inputs=torch.zeros(1, 3, 2, 2))
    signed = tmp_path / "signed.mzip"
    signed.write_bytes(protect_artifact(blob, sign=keys["key"], fec=0.05))
    unsigned = tmp_path / "plain.mzip"
    unsigned.write_bytes(blob)
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((2, 3, 2, 2), np.float32))
    assert runner_mod.main([str(signed), "--input", str(inputs), "--trusted-key",
                            str(keys["pub_path"])]) == 0
    assert runner_mod.main([str(unsigned), "--input", str(inputs), "--trusted-key",
                            str(keys["pub_path"])]) == 2
