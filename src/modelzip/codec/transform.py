"""Transform coding (Laude et al. 2018): a float32 tensor coded as quantized DCT coefficients
of its blocks, as an image codec codes pixels.

An entry with ``"coding": "transform"`` (``modelzip.codec.tensor``)::

    values     {"coder", "bytes"}: one level index k per coefficient
    transform  {"kind": "dct-ii", "block": [b] or [bh, bw], "levels": L, "zero_point": z,
                "codebook": bool}

The transform acts on the tensor's last ``len(block)`` axes (a conv weight's k x k filters:
block [k, k]; a fully connected weight's rows in pieces of B: block [B]); the leading axes
are flattened into R rows. Each transformed axis of length t is padded to
``ceil(t / b) * b``; the decoder drops the padded positions, so what the encoder puts there
is its own choice (modelzip mirrors the row's tail, which keeps the high frequencies small).
The coefficients are stored in the order of an array of shape
``(R, nb_1, .., nb_d, b_1, .., b_d)`` (nb_i blocks along axis i): block by block, each
block's coefficients in row-major frequency order.

The payload is the values stream, then ``step`` (float32, little-endian), then, when
``codebook`` is true, the L levels (float32); otherwise level j is the affine grid value
``(float32(j) - float32(z)) * step``. Decoding, in float32 with every operation rounded once
and in a fixed order (so any IEEE 754 machine gives the same bits): coefficient = levels[k];
then along each block axis, in order, the inverse orthonormal DCT-II ``x[n] = sum over f of
C[f, n] * X[f]``, summed for f = 0, 1, .., b-1 one product at a time, where
``C[f, n] = s(f) * cos(pi * (2n + 1) * f / (2b))``, s(0) = sqrt(1/b), s(f) = sqrt(2/b),
computed in float64 and rounded to float32. (A platform whose cosine differs in the last
place could decode other bits; the tensor's CRC32 then refuses the file rather than giving
other weights.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelzip.codec.coders import CODERS, decode_symbols, encode_symbols
from modelzip.codec.dither import dither_levels
from modelzip.errors import ArtifactError

__all__ = ["KIND", "MAX_BLOCK", "MAX_LEVELS", "TransformSpec", "check_transform",
           "dct_matrix", "decode_transform", "encode_transform", "forward_dct",
           "inverse_dct", "padded_shape"]

CODING = "transform"
KIND = "dct-ii"
MAX_BLOCK = 64
MAX_LEVELS = 65536


def dct_matrix(b: int) -> np.ndarray:
    """The orthonormal DCT-II matrix C (b x b, float32): X = C @ x, x = C.T @ X."""
    f = np.arange(b, dtype=np.float64)[:, None]
    n = np.arange(b, dtype=np.float64)[None, :]
    scale = np.where(f == 0, math.sqrt(1.0 / b), math.sqrt(2.0 / b))
    return (scale * np.cos(np.pi * (2 * n + 1) * f / (2 * b))).astype(np.float32)


def padded_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """``(R, nb_1, .., nb_d, b_1, .., b_d)``: the coefficient array of a tensor of
    ``shape`` in blocks of ``block`` (its last len(block) axes)."""
    d = len(block)
    lead = math.prod(shape[:-d]) if len(shape) > d else 1
    blocks = tuple(-(-t // b) for t, b in zip(shape[-d:], block, strict=True))
    return (lead, *blocks, *block)


def _blocked(x: np.ndarray, shape: tuple[int, ...], block: tuple[int, ...]) -> np.ndarray:
    """A padded (R, p_1, .., p_d) array as (R, nb_1, .., nb_d, b_1, .., b_d)."""
    d = len(block)
    coef_shape = padded_shape(shape, block)
    split = [coef_shape[0]]
    for i in range(d):
        split += [coef_shape[1 + i], block[i]]
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2)]
    return x.reshape(split).transpose(order)


def _unblocked(c: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``_blocked``: (R, nb.., b..) as a padded (R, p_1, .., p_d) array."""
    d = len(block)
    order = [0]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    rows = c.shape[0]
    padded = [c.shape[1 + i] * block[i] for i in range(d)]
    return np.ascontiguousarray(c.transpose(order)).reshape(rows, *padded)


def inverse_dct(coefficients: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """The inverse DCT of every block of a coefficient array (R, nb.., b..), float32 and in
    the coding's fixed order of operations."""
    x = np.asarray(coefficients, dtype=np.float32)
    d = len(block)
    for i, b in enumerate(block):
        axis = x.ndim - d + i
        basis = dct_matrix(b)
        moved = np.moveaxis(x, axis, -1)
        acc = basis[0] * moved[..., 0:1]
        for f in range(1, b):
            acc = acc + basis[f] * moved[..., f:f + 1]
        x = np.moveaxis(acc, -1, axis)
    return np.ascontiguousarray(x, dtype=np.float32)


def forward_dct(array: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """The DCT coefficients (float64, shape ``padded_shape``) of ``array``'s blocks; each
    transformed axis padded by mirroring its tail (the encoder's choice; see the module
    docstring)."""
    shape = tuple(array.shape)
    d = len(block)
    x = np.asarray(array, dtype=np.float64).reshape(-1, *shape[-d:]) if len(shape) > d \
        else np.asarray(array, dtype=np.float64).reshape(1, *shape)
    pads = [(0, 0)] + [(0, -(-t // b) * b - t) for t, b in zip(shape[-d:], block, strict=True)]
    x = _blocked(np.pad(x, pads, mode="symmetric"), shape, block)
    for i, b in enumerate(block):
        axis = x.ndim - d + i
        x = np.moveaxis(np.moveaxis(x, axis, -1) @ dct_matrix(b).astype(np.float64).T, -1,
                        axis)
    return x


@dataclass(frozen=True)
class TransformSpec:
    """A transform entry, checked."""

    block: tuple[int, ...]
    coefficients: int
    value_coder: str
    value_bytes: int
    levels: int
    zero_point: int
    codebook: bool

    @property
    def side_bytes(self) -> int:
        return 4 + (4 * self.levels if self.codebook else 0)


def _int(d: Any, key: str, where: str, lo: int, hi: int) -> int:
    value = d.get(key) if isinstance(d, dict) else None
    if type(value) is not int or not lo <= value <= hi:
        raise ArtifactError(f"{where}: field {key!r} is missing or not an integer in "
                            f"{lo}..{hi}")
    return value


def check_transform(entry: dict[str, Any], where: str, shape: tuple[int, ...],
                    max_elements: int) -> TransformSpec:
    """The transform fields of a tensor entry, checked against the tensor's shape;
    ArtifactError naming the field that is wrong."""
    info = entry.get(CODING)
    if not isinstance(info, dict):
        raise ArtifactError(f"{where}: field 'transform' is missing or not an object")
    at = f"{where} transform"
    if info.get("kind") != KIND:
        raise ArtifactError(f"{at}: kind {info.get('kind')!r} is unknown (known: {KIND})")
    block = info.get("block")
    if (not isinstance(block, list) or len(block) not in (1, 2)
            or any(type(b) is not int or not 1 <= b <= MAX_BLOCK for b in block)):
        raise ArtifactError(f"{at}: block {block!r} is not a list of 1 or 2 sizes in "
                            f"1..{MAX_BLOCK}")
    if len(shape) < len(block) or math.prod(shape) == 0:
        raise ArtifactError(f"{at}: a {len(block)}-D block does not fit a tensor of shape "
                            f"{list(shape)}")
    coefficients = math.prod(padded_shape(shape, tuple(block)))
    if coefficients > max_elements:
        raise ArtifactError(f"{at}: {coefficients:,} coefficients, more than the limit of "
                            f"{max_elements:,} (max_elements)")
    values = entry.get("values")
    coder = values.get("coder") if isinstance(values, dict) else None
    if coder not in CODERS:
        raise ArtifactError(f"{where}: values coder {coder!r} is unknown (known: "
                            f"{', '.join(sorted(CODERS))})")
    value_bytes = _int(values, "bytes", f"{where} values", 0, 1 << 62)
    levels = _int(info, "levels", at, 1, MAX_LEVELS)
    zero_point = _int(info, "zero_point", at, 0, MAX_LEVELS)
    codebook = info.get("codebook")
    if type(codebook) is not bool:
        raise ArtifactError(f"{at}: field 'codebook' is missing or not true/false")
    return TransformSpec(tuple(block), coefficients, coder, value_bytes, levels, zero_point,
                         codebook)


def transform_levels(spec_levels: int, zero_point: int, step: float,
                     book: np.ndarray | None) -> np.ndarray:
    """The coefficient levels: the codebook, or the affine grid."""
    if book is not None:
        return np.asarray(book, dtype=np.float32)
    return dither_levels(spec_levels, zero_point, step)


def reconstruct(k: np.ndarray, levels: np.ndarray, shape: tuple[int, ...],
                block: tuple[int, ...]) -> np.ndarray:
    """The float32 tensor (of ``shape``) that level indices ``k`` (one per coefficient, in
    the coding's order) decode to: shared by the quantizer and the decoder."""
    coef_shape = padded_shape(shape, block)
    coefficients = np.asarray(levels, dtype=np.float32)[np.asarray(k).reshape(coef_shape)]
    with np.errstate(all="ignore"):  # hostile levels fail the CRC32, not here
        padded = _unblocked(inverse_dct(coefficients, block), block)
    d = len(block)
    crop = (slice(None), *(slice(0, t) for t in shape[-d:]))
    return np.ascontiguousarray(padded[crop]).reshape(shape)


def decode_transform(spec: TransformSpec, buf: np.ndarray, shape: tuple[int, ...],
                     where: str) -> np.ndarray:
    """The float32 elements (flat) of a checked transform entry; ``buf``: its payload."""
    k = decode_symbols(spec.value_coder, buf[:spec.value_bytes], spec.coefficients)
    if k.size and int(k.max()) >= spec.levels:
        raise ArtifactError(f"{where}: level index {int(k.max())} out of range (levels "
                            f"{spec.levels})")
    side = buf[spec.value_bytes:]
    step = float(side[:4].view("<f4")[0])
    book = side[4:].view("<f4") if spec.codebook else None
    levels = transform_levels(spec.levels, spec.zero_point, step, book)
    return reconstruct(k, levels, shape, spec.block).ravel()


def encode_transform(array: np.ndarray, hint: Any, coder: str
                     ) -> tuple[dict[str, Any], bytes] | None:
    """The transform fields and payload of a float32 ``array`` that a transform hint
    describes (``{"kind": "transform", "block", "indices"`` (one level index per
    coefficient), ``"step"``, and ``"levels"`` (float32) or ``"zero_point"``}), or None when
    the hint does not reproduce the array bit for bit."""
    if array.dtype != np.float32 or array.size == 0:
        return None
    try:
        block = tuple(int(b) for b in hint["block"])
        step = np.float32(hint.get("step", 0.0))
        k = np.asarray(hint["indices"]).astype(np.int64).ravel()
    except (KeyError, TypeError, ValueError):
        raise ArtifactError("a transform hint needs block, step and indices") from None
    shape = tuple(int(d) for d in array.shape)
    if (len(block) not in (1, 2) or len(shape) < len(block)
            or not all(1 <= b <= MAX_BLOCK for b in block)
            or k.size != math.prod(padded_shape(shape, block)) or int(k.min()) < 0):
        return None
    levels_count = int(k.max()) + 1
    if levels_count > MAX_LEVELS:
        return None
    if hint.get("levels") is not None:
        book = np.asarray(hint["levels"], dtype=np.float32).ravel()
        if book.size < levels_count:
            return None
        book, zero_point, codebook = book[:levels_count], 0, True
    else:
        zero_point = int(hint.get("zero_point", 0))
        if not 0 <= zero_point <= MAX_LEVELS:
            return None
        book, codebook = dither_levels(levels_count, zero_point, step), False
    decoded = reconstruct(k, book, shape, block)
    if decoded.tobytes() != np.ascontiguousarray(array, dtype=np.float32).tobytes():
        return None
    name, data = encode_symbols(k, coder, alphabet_size=levels_count)
    streams = [data, np.asarray([step], dtype="<f4").tobytes()]
    if codebook:
        streams.append(book.astype("<f4").tobytes())
    fields = {"coding": CODING, "layout": "dense", "values": {"coder": name, "bytes": len(data)},
              CODING: {"kind": KIND, "block": list(block), "levels": levels_count,
                       "zero_point": zero_point, "codebook": codebook}}
    return fields, b"".join(streams)
