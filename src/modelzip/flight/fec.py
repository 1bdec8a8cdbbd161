"""Forward error correction for .mzip files: Reed-Solomon parity, interleaved, so that a file
hit by bit flips (single-event upsets) in storage or on the link still decodes bit-exactly.

Why ``reedsolo``: a maintained, pure-Python Reed-Solomon codec over GF(2^8) with errors-and-
erasures decoding and no native build, so the torch-free reader installs anywhere (galois
pulls numba; zfec is an erasure code only, it cannot find which bytes are wrong). It is slow
per codeword (about 1 ms), so the reader finds the damaged codewords first with a vectorized
syndrome check (numpy) and hands only those to it.

Layout of a protected file (integers little-endian)::

    offset  size       field
    0       20         FEC header: magic b"MZFC", FEC version (uint16, 1), parity symbols per
                       codeword P (uint16), length L of the protected file (uint64), CRC32 of
                       these 16 bytes (uint32)
    20      20         a second copy of the header
    40      20         a third copy
    60      255 x N    N codewords of 255 bytes, interleaved: byte j of codeword i is at
                       60 + j * N + i

Codeword i holds bytes ``i*K .. i*K + K - 1`` of the protected file (K = 255 - P; the last
one zero-padded) followed by its P parity bytes (systematic RS(255, K), primitive polynomial
0x11d, generator 2, first consecutive root 1 = reedsolo's defaults). A codeword corrects up to
P // 2 damaged bytes wherever they are, and thanks to the interleaving any burst of up to
N x (P // 2) consecutive damaged bytes. The reader takes the first header copy whose CRC32
holds (else a bytewise majority of the three), corrects what it can, and refuses the file,
saying how many codewords were beyond repair, when it cannot; the corrected bytes are then
an ordinary .mzip whose SHA-256 is checked as always, so a miscorrection (possible only past
the capacity) is refused too, never returned as wrong weights.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import reedsolo

from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "FEC_MAGIC",
    "FecReport",
    "capacity",
    "is_protected",
    "parity_symbols",
    "parse_parity",
    "protect",
    "recover",
]

FEC_MAGIC = b"MZFC"
FEC_VERSION = 1
CODEWORD = 255
_HEADER = struct.Struct("<4sHHQ")
HEADER_SIZE = _HEADER.size + 4  # 20 with its CRC32
COPIES = 3
MIN_PARITY, MAX_PARITY = 0.01, 1.0  # parity bytes per data byte
MIN_SYMBOLS, MAX_SYMBOLS = 2, 128


def parse_parity(text: str | float) -> float:
    """``"8%"`` or ``0.08`` as a parity fraction (parity bytes per data byte); ConfigError when
    malformed or outside 1% .. 100%."""
    raw = text.strip() if isinstance(text, str) else text
    try:
        value = (float(raw[:-1]) / 100 if isinstance(raw, str) and raw.endswith("%")
                 else float(raw))
    except (TypeError, ValueError):
        raise ConfigError(f"FEC parity {text!r} is not a number; write e.g. 8% or 0.08") from None
    if isinstance(raw, str) and not raw.endswith("%") and value > MAX_PARITY:
        raise ConfigError(f"FEC parity {text!r}: write a percentage (8%) or a fraction (0.08)")
    if not math.isfinite(value) or not MIN_PARITY <= value <= MAX_PARITY:
        raise ConfigError(f"FEC parity {text!r} is out of range: choose {MIN_PARITY:.0%} to "
                          f"{MAX_PARITY:.0%} (8% corrects 9 bad bytes in every 255)")
    return value


def parity_symbols(parity: float) -> int:
    """Parity bytes per 255-byte codeword for a parity fraction (even, so that every symbol
    adds half a correctable error): the nearest to ``255 * parity / (1 + parity)``."""
    parity = parse_parity(parity)
    nsym = 2 * round(CODEWORD * parity / (1 + parity) / 2)
    return min(MAX_SYMBOLS, max(MIN_SYMBOLS, nsym))


def capacity(parity: float, size: int | None = None) -> dict[str, Any]:
    """What a parity fraction buys: parity and data bytes per codeword, bad bytes corrected
    per codeword, the size overhead (parity and header copies; for a file of ``size`` bytes
    when given, else parity only) and, given ``size``, the longest correctable burst."""
    nsym = parity_symbols(parity)
    k = CODEWORD - nsym
    out: dict[str, Any] = {"parity_symbols": nsym, "data_symbols": k,
                           "correctable_bytes_per_codeword": nsym // 2,
                           "parity_overhead": nsym / k}
    if size is not None:
        n = max(1, math.ceil(size / k))
        out.update(codewords=n, protected_bytes=COPIES * HEADER_SIZE + CODEWORD * n,
                   overhead=(COPIES * HEADER_SIZE + CODEWORD * n) / size - 1,
                   longest_correctable_burst=n * (nsym // 2))
    return out


def _header(nsym: int, length: int) -> bytes:
    head = _HEADER.pack(FEC_MAGIC, FEC_VERSION, nsym, length)
    return head + struct.pack("<I", zlib.crc32(head))


def protect(data: bytes, parity: float | str = 0.08) -> bytes:
    """``data`` (a .mzip file) with Reed-Solomon parity, interleaved (see the module's
    docstring); ``parity``: parity bytes per data byte, a fraction or "8%"."""
    if is_protected(data):
        raise ArtifactError("the file already carries FEC parity")
    if not data:
        raise ArtifactError("cannot protect an empty file")
    nsym = parity_symbols(parse_parity(parity))
    k = CODEWORD - nsym
    n = math.ceil(len(data) / k)
    padded = bytes(data) + bytes(n * k - len(data))
    codec = reedsolo.RSCodec(nsym, nsize=CODEWORD)
    words = np.frombuffer(bytes(codec.encode(padded)), dtype=np.uint8).reshape(n, CODEWORD)
    return _header(nsym, len(data)) * COPIES + words.T.tobytes()


def is_protected(data: bytes | bytearray | memoryview) -> bool:
    """True when any copy of the FEC header's magic is intact (a plain .mzip starts MZIP, and
    its manifest could by chance hold the magic where a copy would be)."""
    view = memoryview(data).cast("B")
    if bytes(view[:4]) == b"MZIP":
        return False
    return any(bytes(view[i * HEADER_SIZE:i * HEADER_SIZE + 4]) == FEC_MAGIC
               for i in range(COPIES) if len(view) >= (i + 1) * HEADER_SIZE)


@dataclass(frozen=True)
class FecReport:
    """What the reader corrected: codewords, bytes fixed in how many codewords, and damaged
    header copies."""

    parity_symbols: int
    codewords: int
    corrected_bytes: int
    corrected_codewords: int
    damaged_header_copies: int

    @property
    def clean(self) -> bool:
        return self.corrected_bytes == 0 and self.damaged_header_copies == 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        if self.clean:
            return (f"FEC: {self.codewords} codewords, no damage found")
        return (f"FEC: corrected {self.corrected_bytes} damaged byte(s) in "
                f"{self.corrected_codewords} of {self.codewords} codewords"
                + (f", {self.damaged_header_copies} damaged header copies"
                   if self.damaged_header_copies else ""))


def _read_header(view: memoryview) -> tuple[int, int, int]:
    """(parity symbols, protected length, damaged copies)."""
    if len(view) < COPIES * HEADER_SIZE:
        raise ArtifactError(f"FEC: file is {len(view)} bytes, shorter than its "
                            f"{COPIES * HEADER_SIZE}-byte header copies (truncated)")
    copies = [bytes(view[i * HEADER_SIZE:(i + 1) * HEADER_SIZE]) for i in range(COPIES)]
    good = [c for c in copies if zlib.crc32(c[:-4]) == struct.unpack("<I", c[-4:])[0]]
    if not good:  # every copy hit: a bytewise majority vote may still rebuild it
        stack = np.frombuffer(b"".join(copies), dtype=np.uint8).reshape(COPIES, HEADER_SIZE)
        bits = np.unpackbits(stack, axis=1).sum(axis=0) >= 2
        voted = np.packbits(bits).tobytes()
        if zlib.crc32(voted[:-4]) != struct.unpack("<I", voted[-4:])[0]:
            raise ArtifactError("FEC: all three header copies are damaged beyond repair")
        good = [voted]
    magic, version, nsym, length = _HEADER.unpack(good[0][:-4])
    if magic != FEC_MAGIC:
        raise ArtifactError(f"FEC: header magic is {magic!r}, expected {FEC_MAGIC!r}")
    if version != FEC_VERSION:
        raise ArtifactError(f"FEC: version {version} is not supported (this reader knows "
                            f"{FEC_VERSION})")
    if not MIN_SYMBOLS <= nsym <= MAX_SYMBOLS:
        raise ArtifactError(f"FEC: {nsym} parity symbols per codeword is out of range "
                            f"{MIN_SYMBOLS}..{MAX_SYMBOLS}")
    if length < 1:
        raise ArtifactError("FEC: the header declares an empty file")
    return nsym, length, COPIES - sum(c == good[0] for c in copies)


# GF(2^8) with reedsolo's default primitive polynomial 0x11d and generator 2
_EXP = np.zeros(512, dtype=np.int64)
_LOG = np.zeros(256, dtype=np.int64)
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= 0x11D
_EXP[255:510] = _EXP[:255]


def _damaged(words: np.ndarray, nsym: int) -> np.ndarray:
    """Indices of the codewords with a non-zero syndrome (vectorized: reedsolo would take
    about a millisecond per codeword just to check)."""
    nonzero = words != 0
    logs = _LOG[words]
    power = CODEWORD - 1 - np.arange(CODEWORD)  # the degree of each byte's coefficient
    bad = np.zeros(len(words), dtype=bool)
    for i in range(nsym):  # syndrome i: the codeword evaluated at 2**i
        terms = np.where(nonzero, _EXP[(logs + i * power) % 255], 0)
        bad |= np.bitwise_xor.reduce(terms, axis=1) != 0
    return np.flatnonzero(bad)


def recover(data: bytes | bytearray | memoryview) -> tuple[bytes, FecReport]:
    """The protected file, corrected, and what was corrected; ArtifactError when the damage is
    beyond the parity (saying in how many codewords) or the layout is wrong."""
    view = memoryview(data).cast("B")
    nsym, length, damaged_copies = _read_header(view)
    k = CODEWORD - nsym
    n = math.ceil(length / k)
    expected = COPIES * HEADER_SIZE + n * CODEWORD
    if len(view) != expected:
        raise ArtifactError(f"FEC: file is {len(view):,} bytes, its header declares "
                            f"{expected:,} ({n:,} codewords of {CODEWORD}): truncated or "
                            "corrupt")
    body = np.frombuffer(view[COPIES * HEADER_SIZE:], dtype=np.uint8)
    words = body.reshape(CODEWORD, n).T.copy()
    bad = _damaged(words, nsym)
    codec = reedsolo.RSCodec(nsym, nsize=CODEWORD) if bad.size else None
    corrected, lost = 0, []
    for i in bad.tolist():
        try:
            _, fixed, errata = codec.decode(bytearray(words[i].tobytes()))
        except reedsolo.ReedSolomonError:
            lost.append(i)
            continue
        words[i] = np.frombuffer(bytes(fixed), dtype=np.uint8)
        corrected += len(errata)
    if lost:
        raise ArtifactError(
            f"FEC: {len(lost)} of {n} codewords have more than {nsym // 2} damaged bytes "
            f"each (the capacity of {nsym} parity bytes per {CODEWORD}; first: codeword "
            f"{lost[0]}), so at least {len(lost) * (nsym // 2 + 1)} bytes are bad: the file "
            "cannot be repaired; fetch it again")
    report = FecReport(parity_symbols=nsym, codewords=n, corrected_bytes=corrected,
                       corrected_codewords=int(bad.size), damaged_header_copies=damaged_copies)
    return words[:, :k].tobytes()[:length], report
