"""3LC (Lim et al. 2019, "3LC: Lightweight and Effective Traffic Compression for Distributed
Machine Learning"): lossy compression of a model state change, numpy only.

Three steps, each a plain function here:

1. **3-value quantization with sparsity multiplication** (``ternary_quantize``): a tensor
   ``x`` becomes trits ``t`` in {-1, 0, 1} and one scale ``M = max|x| * s``, with
   ``t = round(x / M)``; ``x`` is approximated by ``M * t``. The sparsity multiplier
   ``s`` in [1, 2) widens the zero bucket (more zeros, smaller output, more error). With error
   feedback the caller keeps the residual ``x - M * t`` and adds it to the next change.
2. **Base-3^5 packing** (``pack_trits``): 5 trits per byte, ``byte = sum((t_i + 1) * 3**i)``,
   values 0..242 (3^5 = 243 <= 256: 1.6 bits per trit, 99% of log2(3)).
3. **Zero-run encoding** (``zero_run_encode``): five zero trits pack to byte 121; a run of
   2..14 such bytes becomes one byte 243..255 (the codes packing leaves unused), so an
   all-zero change shrinks up to 14 x 5 = 70 trits per byte.

``encode_trits`` / ``decode_trits`` chain 2 and 3. For an exact (lossless) code of integers
(e.g. the change of quantized weights' grid indices), ``encode_integers`` writes them as
balanced-ternary digit planes, each plane a trit tensor coded as above: the low plane carries
the +-1 steps, the higher planes are nearly all zero and shrink to almost nothing.

Every decoder checks its input against the sizes the caller expects and raises ``ThreeLCError``
(an ArtifactError) on anything else; nothing is allocated beyond the expected output.
"""

from __future__ import annotations

import numpy as np

from modelzip.errors import ArtifactError

__all__ = [
    "MAX_PLANES",
    "ThreeLCError",
    "decode_integers",
    "decode_trits",
    "encode_integers",
    "encode_trits",
    "pack_trits",
    "ternary_dequantize",
    "ternary_quantize",
    "unpack_trits",
    "zero_run_decode",
    "zero_run_encode",
]

TRITS_PER_BYTE = 5
ZERO_BYTE = 121  # five zero trits: sum(1 * 3**i for i in range(5))
RUN_BASE = 243  # byte 243 + (n - 2) stands for a run of n zero bytes, n = 2..14
MAX_RUN = 14
MAX_PLANES = 40  # digit weights up to 3**39 fit an int64; values up to +-(3**40 - 1) / 2
_POW3 = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.int64)


class ThreeLCError(ArtifactError):
    """3LC bytes that do not decode to the expected number of trits or integers."""


# ============================================================================ quantization
def ternary_quantize(x: np.ndarray, sparsity: float = 1.0,
                     residual: np.ndarray | None = None
                     ) -> tuple[np.ndarray, float, np.ndarray]:
    """3-value quantization with sparsity multiplication. Returns the trits (int8, the shape
    of ``x``), the scale ``M = max|x + residual| * sparsity`` and the new residual (what the
    trits leave out, for error feedback: pass it with the next change). ``sparsity`` in
    [1, 2): 1 rounds to nearest, larger values send more zeros. Elementwise error <= M / 2."""
    if not 1.0 <= sparsity < 2.0:
        raise ValueError(f"sparsity must be in [1, 2), got {sparsity}")
    x = np.asarray(x, dtype=np.float32)
    if residual is not None:
        x = x + np.asarray(residual, dtype=np.float32).reshape(x.shape)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not np.isfinite(peak):
        raise ValueError("ternary_quantize: the input holds NaN or infinity")
    scale = float(np.float32(peak * sparsity))
    if scale == 0.0:
        return np.zeros(x.shape, dtype=np.int8), 0.0, x.copy()
    trits = np.clip(np.rint(x / np.float32(scale)), -1, 1).astype(np.int8)
    return trits, scale, x - ternary_dequantize(trits, scale)


def ternary_dequantize(trits: np.ndarray, scale: float) -> np.ndarray:
    """``scale * trits`` in float32."""
    return np.asarray(trits, dtype=np.float32) * np.float32(scale)


# ============================================================================ packing
def pack_trits(trits: np.ndarray) -> bytes:
    """Base-3^5 packing: 5 trits (-1, 0, 1) per byte, the last byte padded with zero trits."""
    t = np.asarray(trits).ravel().astype(np.int64)
    if t.size and (t.min() < -1 or t.max() > 1):
        raise ValueError("trits must be -1, 0 or 1")
    pad = (-t.size) % TRITS_PER_BYTE
    digits = np.concatenate([t + 1, np.ones(pad, dtype=np.int64)]).reshape(-1, TRITS_PER_BYTE)
    return (digits @ _POW3).astype(np.uint8).tobytes()


def unpack_trits(data: bytes, count: int) -> np.ndarray:
    """The ``count`` trits (int8) of ``pack_trits`` bytes."""
    b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    if b.size != -(-count // TRITS_PER_BYTE):
        raise ThreeLCError(f"packed trits: {b.size} bytes, {count} trits need "
                           f"{-(-count // TRITS_PER_BYTE)}")
    if b.size and int(b.max()) >= RUN_BASE:
        raise ThreeLCError(f"packed trits: byte value {int(b.max())} is above 242")
    digits = (b[:, None] // _POW3) % 3 - 1
    trits = digits.astype(np.int8).ravel()
    if np.any(trits[count:]):
        raise ThreeLCError("packed trits: the padding after the last trit is not zero")
    return trits[:count]


def zero_run_encode(packed: bytes) -> bytes:
    """Replace every run of 2..14 zero bytes (121: five zero trits) by one byte 243..255."""
    b = np.frombuffer(packed, dtype=np.uint8)
    if b.size == 0:
        return b""
    # run boundaries: split the stream where "is a zero byte" changes
    is_zero = b == ZERO_BYTE
    edges = np.flatnonzero(np.diff(is_zero.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [b.size]])
    out = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if not is_zero[start]:
            out.append(b[start:end])
            continue
        n = end - start
        full, rest = divmod(n, MAX_RUN)
        codes = [RUN_BASE + MAX_RUN - 2] * full
        if rest == 1:
            codes.append(ZERO_BYTE)
        elif rest:
            codes.append(RUN_BASE + rest - 2)
        out.append(np.asarray(codes, dtype=np.uint8))
    return np.concatenate(out).tobytes()


def zero_run_decode(data: bytes, max_bytes: int) -> bytes:
    """Expand ``zero_run_encode`` bytes; refuses output longer than ``max_bytes``."""
    b = np.frombuffer(data, dtype=np.uint8)
    runs = np.where(b >= RUN_BASE, b.astype(np.int64) - RUN_BASE + 2, 1)
    total = int(runs.sum())
    if total > max_bytes:
        raise ThreeLCError(f"zero-run code expands to {total} bytes, more than the "
                           f"{max_bytes} expected")
    values = np.where(b >= RUN_BASE, ZERO_BYTE, b).astype(np.uint8)
    return np.repeat(values, runs).tobytes()


def encode_trits(trits: np.ndarray) -> bytes:
    """Base-3^5 packing, then zero-run encoding."""
    return zero_run_encode(pack_trits(trits))


def decode_trits(data: bytes, count: int) -> np.ndarray:
    """The ``count`` trits of ``encode_trits`` bytes (int8)."""
    expected = -(-count // TRITS_PER_BYTE)
    packed = zero_run_decode(data, expected)
    return unpack_trits(packed, count)


# ============================================================================ integers
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ThreeLCError("integer planes: truncated or overlong length field")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def encode_integers(values: np.ndarray) -> bytes:
    """Integers exactly, as balanced-ternary digit planes (least significant first), each
    plane's trits coded with ``encode_trits``: the number of planes, then per plane its
    length and bytes. Zero planes cost nothing: an all-zero tensor is one byte."""
    v = np.asarray(values).ravel().astype(np.int64)
    planes = []
    while v.size and np.any(v):
        digit = ((v + 1) % 3) - 1  # in {-1, 0, 1}, v = 3 * next + digit
        planes.append(encode_trits(digit))
        if len(planes) > MAX_PLANES:
            raise ValueError(f"integers beyond +-(3**{MAX_PLANES} - 1) / 2 cannot be coded")
        v = (v - digit) // 3
    out = bytearray(_varint(len(planes)))
    for plane in planes:
        out += _varint(len(plane)) + plane
    return bytes(out)


def decode_integers(data: bytes, count: int) -> np.ndarray:
    """The ``count`` integers (int64) of ``encode_integers`` bytes."""
    n_planes, pos = _read_varint(data, 0)
    if n_planes > MAX_PLANES:
        raise ThreeLCError(f"integer planes: {n_planes} planes, at most {MAX_PLANES}")
    if n_planes and count == 0:
        raise ThreeLCError("integer planes: planes given for an empty tensor")
    total = np.zeros(count, dtype=np.int64)
    weight = 1
    for _ in range(n_planes):
        size, pos = _read_varint(data, pos)
        if pos + size > len(data):
            raise ThreeLCError("integer planes: truncated plane")
        digits = decode_trits(data[pos:pos + size], count)
        pos += size
        with np.errstate(over="ignore"):  # hostile top planes wrap; the caller's hash says
            total += digits.astype(np.int64) * np.int64(weight)
        weight *= 3
    if pos != len(data):
        raise ThreeLCError(f"integer planes: {len(data) - pos} bytes after the last plane")
    return total
