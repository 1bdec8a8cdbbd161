"""Error-correcting .mzip files: Reed-Solomon parity, interleaved; the reader corrects what it
can, says what it corrected, and refuses (saying how much was bad) what it cannot, never
returning wrong weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelzip.codec.artifact import protect_artifact, read_artifact, write_artifact
from modelzip.errors import ArtifactError, ConfigError
from modelzip.flight import fec
from modelzip.flight.seu import flip_bits


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((60, 80)).astype(np.float32),
            "q": rng.integers(-8, 8, 3000).astype(np.int8)}


@pytest.fixture(scope="module")
def plain(arrays: dict[str, np.ndarray]) -> bytes:
    return write_artifact(arrays, coder="raw")


def same(art, arrays: dict[str, np.ndarray]) -> bool:
    return all(art.tensors[k].tobytes() == v.tobytes() for k, v in arrays.items())


def test_capacity_and_overhead_as_stated(plain: bytes) -> None:
    protected = fec.protect(plain, "8%")
    cap = fec.capacity(0.08, len(plain))
    assert cap["parity_symbols"] == 18 and cap["correctable_bytes_per_codeword"] == 9
    assert len(protected) == cap["protected_bytes"]
    assert len(protected) / len(plain) - 1 == pytest.approx(cap["overhead"])
    assert cap["overhead"] < 0.10
    assert cap["longest_correctable_burst"] == 9 * cap["codewords"]


def test_clean_file_reads_and_reports_nothing_corrected(plain: bytes, arrays) -> None:
    art = read_artifact(protect_artifact(plain, fec=0.08))
    assert same(art, arrays)
    assert art.fec.clean and art.fec.corrected_bytes == 0
    assert read_artifact(plain).fec is None


def test_scattered_damage_within_capacity_is_corrected_and_reported(plain: bytes,
                                                                    arrays) -> None:
    protected = fec.protect(plain, 0.08)
    rng = np.random.default_rng(1)
    n = fec.capacity(0.08, len(plain))["codewords"]
    damaged = bytearray(protected)
    body = 60
    # 9 bad bytes in every codeword: byte j of codeword i sits at 60 + j * n + i
    for i in range(n):
        for j in rng.choice(255, 9, replace=False):
            damaged[body + int(j) * n + i] ^= int(rng.integers(1, 256))
    art = read_artifact(bytes(damaged))
    assert same(art, arrays)
    assert art.fec.corrected_bytes == 9 * n and art.fec.corrected_codewords == n
    assert "corrected" in art.fec.describe()


def test_a_burst_is_spread_over_the_codewords(plain: bytes, arrays) -> None:
    protected = fec.protect(plain, 0.08)
    burst = fec.capacity(0.08, len(plain))["longest_correctable_burst"]
    damaged = bytearray(protected)
    damaged[100:100 + burst] = bytes(b ^ 0xFF for b in damaged[100:100 + burst])
    assert same(read_artifact(bytes(damaged)), arrays)


def test_damage_beyond_capacity_is_refused_saying_how_much(plain: bytes) -> None:
    protected = bytearray(fec.protect(plain, 0.08))
    n = fec.capacity(0.08, len(plain))["codewords"]
    for j in range(10):  # 10 bad bytes in codeword 0: one more than 9
        protected[60 + j * n] ^= 0x5A
    with pytest.raises(ArtifactError, match=r"FEC: 1 of \d+ codewords have more than 9 "
                                            r"damaged bytes .* at least 10 bytes are bad"):
        read_artifact(bytes(protected))


def test_heavy_damage_never_returns_wrong_weights(plain: bytes, arrays) -> None:
    """Past the capacity a codeword may be miscorrected; the .mzip's own SHA-256 catches it."""
    protected = fec.protect(plain, 0.02)
    outcomes = set()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        damaged = flip_bits(protected, 10 ** rng.uniform(-4, -2.5), rng).tobytes()
        try:
            art = read_artifact(damaged)
        except ArtifactError:
            outcomes.add("refused")
            continue
        assert same(art, arrays)
        outcomes.add("exact")
    assert outcomes == {"refused", "exact"}


def test_header_copies(plain: bytes, arrays) -> None:
    protected = bytearray(fec.protect(plain, 0.08))
    protected[0:4] = b"JUNK"
    protected[30] ^= 1
    art = read_artifact(bytes(protected))
    assert same(art, arrays) and art.fec.damaged_header_copies == 2
    protected[45] ^= 1
    protected[47] ^= 1  # the three copies now differ in different places: the vote holds
    assert same(read_artifact(bytes(protected)), arrays)
    protected[25] ^= 0xFF
    protected[5] ^= 0xFF
    with pytest.raises(ArtifactError, match="header copies are damaged beyond repair"):
        read_artifact(bytes(protected))


def test_truncated_or_padded_fec_file_is_refused(plain: bytes) -> None:
    protected = fec.protect(plain, 0.08)
    for bad in (protected[:-1], protected + b"\0", protected[:50]):
        with pytest.raises(ArtifactError, match="FEC: file is"):
            read_artifact(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("0.5%", "out of range"), ("150%", "out of range"), ("abc", "not a number"),
    ("8", "write a percentage"), ("-3%", "out of range"), ("nan%", "out of range")])
def test_bad_parity_options_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fec.parse_parity(text)


def test_parity_options() -> None:
    assert fec.parse_parity("8%") == pytest.approx(0.08) == fec.parse_parity("0.08")
    assert fec.parity_symbols(0.01) == 2 and fec.parity_symbols(1.0) == 128


def test_protecting_twice_is_refused(plain: bytes) -> None:
    with pytest.raises(ArtifactError, match="already carries FEC"):
        fec.protect(fec.protect(plain, 0.08), 0.08)


def test_the_reader_needs_no_torch(tmp_path: Path, plain: bytes) -> None:
    path = tmp_path / "f.mzip"
    damaged = bytearray(fec.protect(plain, 0.08))
    damaged[200] ^= 0xFF
    path.write_bytes(bytes(damaged))
    code = ("import sys; from modelzip.codec.artifact import read_artifact_file; "
            f"a = read_artifact_file({str(path)!r}); "
            "assert a.fec.corrected_bytes == 1; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
