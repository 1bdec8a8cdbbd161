"""Coding one tensor bit-exactly: where its non-zeros are (the sparse index) and what they are
(the values), choosing per tensor whichever layout is smallest.

Layouts (``entry["layout"]``):

- ``dense``: every element is a value entry; zero is just another value.
- ``sparse-gaps``: the non-zeros only; the index stream holds, per non-zero, the number of
  zeros before it since the previous one (its relative gap), entropy-coded.
- ``sparse-fixed``: Deep Compression's relative index: gaps in ``gap_bits`` bits; a gap too
  long for that width is bridged by filler entries (a zero value at most ``2**gap_bits``
  positions on), which take a value slot too. The width is chosen per tensor.
- ``sparse-lines`` (2 or more dimensions): the tensor as a matrix of ``shape[0]`` rows; the
  index stream first lists its live rows and live columns (those with a non-zero; ``lines``
  = their numbers), as gaps, then the non-zeros' gaps within the submatrix of live rows x
  live columns. Sparsity training (``sparse-vd``) leaves whole units dead, and then the
  gaps within the live submatrix are much shorter than in the whole.

Both gap layouts decode alike: entry i sits ``index[i] + 1`` positions after entry i-1 (in
``sparse-lines``, within the live submatrix).

Values (``entry["values"]``) are coded in one of three ways, whichever is smallest:

- ``codebook``: the distinct values, stored exactly in the tensor's dtype
  (``entry["codebook"]``), plus one entropy-coded codebook index per entry; a float32
  tensor's codebook whose values are all exactly float16 values (shared values rounded so,
  e.g. ``kmeans``' ``codebook_dtype``) is stored as float16 (``"dtype": "float16"``), half
  the bytes, and widened back exactly;
- ``grid`` (float32 tensors only; ``entry["grid"]``): an affine grid per channel, as uniform
  quantization leaves a weight. Channel c is row c along axis 0 (``channels`` = shape[0]),
  or the whole tensor (``channels`` = 1). Each entry is an entropy-coded integer k in
  0 .. ``levels`` - 1, and its value is, computed in float32 exactly so::

      (np.float32(k) - np.float32(zero_point[c])) * scale[c]

  ``scales``: ``channels`` float32, little-endian; ``zero_points``: ``channels`` integers in
  0 .. MAX_GRID_LEVELS, an entropy-coded stream. The integers and their difference are exact
  in float32, so the one rounding is the product's, and any IEEE 754 machine gives the same
  bits. The encoder tries a grid only when given a hint with the scales (``hint``), and
  keeps it only when the grid reproduces every element bit for bit. The zero points are its
  own choice: one for all channels, so that their integers share one histogram (with the
  ``raw`` coder, each channel's lowest integer instead: the narrowest fixed width);
- ``plain`` (``"coder": "plain"``): the entries' own little-endian bytes.

Whole-tensor codings (``entry["coding"]``, float32 only): a quantizer's hint (``encode_tensor``)
can ask for a coding that no layout expresses, each specified in its own module:
``dither`` (``modelzip.codec.dither``: level indices + a seed for the universal
quantizer's dither), ``transform`` (``modelzip.codec.transform``: quantized DCT
coefficients of blocks) and ``bloomier`` (``modelzip.codec.bloomier``: a Bloomier filter
from position to cluster). Such an entry has the same header (dtype, shape, nonzeros,
tensor_crc32) and the same checks; its streams are its module's.

"Zero" means the all-zero bit pattern, so -0.0 and NaN are values like any other, kept bit
for bit.

A tensor's payload is its index stream, then its values stream, then its codebook or its grid
(scales, then zero points); the entry records the bytes of each, and ``tensor_crc32``: the
CRC32 of the tensor's descriptor, ``<name> NUL <dtype>:<d0>,<d1>,...;`` (the name UTF-8, the
rest ASCII; e.g. ``b"fc.bias\\x00float32:10;"``, ``b"\\x00float32:;"`` for an unnamed scalar),
followed by its little-endian bytes, so that a relabelled dtype or shape, or two tensors
swapped by name, fail it as damaged bytes do. Entries of format version 1 carry
``decoded_crc32`` instead, the CRC32 of the bytes alone (still read; see docs/FORMAT.md).
``decode_tensor`` trusts nothing in the entry:
every count and size is checked against the others and against the payload, and the
decoded tensor against the declared number of non-zeros and the CRC32 (so that an entry that
lies, e.g. a longer shape whose tail would decode as zeros, or a decoder that differs, cannot
yield wrong weights). Every dimension is bounded by ``max_elements``, and a payload may
decode to at most ``ELEMENT_FLOOR + MAX_ELEMENTS_PER_BYTE`` x its size elements (a constant
or all-zero tensor costs a few bytes whatever its size: without this a tiny hostile file
could make the reader allocate gigabytes).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelzip.codec.bits import as_byte_array, gap_positions
from modelzip.codec.bloomier import check_bloomier, decode_bloomier, encode_bloomier
from modelzip.codec.coders import (
    CODERS,
    decode_symbols,
    encode_symbols,
    histogram_entropy_bits,
)
from modelzip.codec.dither import check_dither, decode_dither, encode_dither
from modelzip.codec.transform import check_transform, decode_transform, encode_transform
from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "CODINGS",
    "DEFAULT_MAX_ELEMENTS",
    "ELEMENT_FLOOR",
    "LAYOUTS",
    "MAX_CODEBOOK",
    "MAX_ELEMENTS_PER_BYTE",
    "MAX_GRID_LEVELS",
    "SUPPORTED_DTYPES",
    "TensorEntry",
    "check_entry",
    "decode_tensor",
    "encode_tensor",
    "fixed_gap_entries",
    "grid_values",
    "layout_candidates",
    "tensor_crc32",
]

SUPPORTED_DTYPES = ("bool", "float16", "float32", "float64", "int8", "int16", "int32",
                    "int64", "uint8", "uint16", "uint32", "uint64")
LAYOUTS = ("dense", "sparse-gaps", "sparse-fixed", "sparse-lines")
MAX_CODEBOOK = 65536
MAX_GRID_LEVELS = 65536  # grid integers and zero points: exact in float32 (below 2**24)
MAX_GAP_BITS = 16
MAX_NDIM = 32
DEFAULT_MAX_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any model this tool targets
# Relative bound: elements decoded per byte of coded payload. Real tensors take >= 1 bit per
# element unless constant (deep-compressed weights: 5-50 elements per byte); only constant or
# all-zero tensors go further, and those are small (biases, BatchNorm statistics).
ELEMENT_FLOOR = 1 << 20
MAX_ELEMENTS_PER_BYTE = 256
CRC_FIELDS = ("tensor_crc32", "decoded_crc32")  # format version 2, version 1
PLAIN = "plain"
# Whole-tensor codings that a technique's hint asks for (``entry["coding"]``), each with its
# own module: the fields it adds, how they are checked, decoded and encoded.
CODINGS = ("dither", "transform", "bloomier")
_CODING_CHECKS = {
    # what each coding's decoded tensor depends on besides the payload, for the CRC message
    "dither": "the dither seed or step does not reproduce the tensor",
    "transform": "the coefficients do not transform back to the tensor",
    "bloomier": "the filter does not query back to the tensor",
}


# ============================================================================ encoding
def _check_coder(coder: str) -> None:
    if coder != "best" and coder not in CODERS:
        raise ConfigError(f"unknown coder {coder!r}; choose best or one of "
                          f"{', '.join(sorted(CODERS))}")


def _bits_of(array: np.ndarray) -> tuple[np.ndarray, str]:
    """The elements' bit patterns as native unsigned ints (flat), and the dtype's name."""
    dtype = array.dtype
    name = "bool" if dtype == np.bool_ else dtype.name
    if name not in SUPPORTED_DTYPES or dtype.kind not in "biuf":
        raise ArtifactError(f"cannot store dtype {dtype}; supported: "
                            f"{', '.join(SUPPORTED_DTYPES)}")
    native = np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
    return native.view(f"u{dtype.itemsize}").ravel(), name


@dataclass
class _Candidate:
    fields: dict[str, Any]
    streams: list[tuple[str, dict[str, Any], bytes]]  # (entry key, info, bytes), in order


def _size(streams: list[tuple[str, dict[str, Any], bytes]]) -> int:
    return sum(len(data) for _, _, data in streams)


def grid_values(k: np.ndarray, zero_points: Any, scales: Any) -> np.ndarray:
    """The grid value coding's one formula, shared by encoder and decoder: ``(float32(k) -
    float32(zero_points)) * float32(scales)``, elementwise (broadcast), in float32."""
    with np.errstate(all="ignore"):  # hostile scales (inf, NaN) fail the CRC32, not here
        return ((np.asarray(k).astype(np.float32) - np.asarray(zero_points).astype(np.float32))
                * np.asarray(scales).astype(np.float32))


@dataclass
class _Grid:
    """A float32 tensor that lies exactly on an affine grid, as its grid integers: element i is
    ``(k[i] - zero_point[c]) * scale[c]`` for its channel c."""

    k: np.ndarray  # int64, one per element (flat), zeros included
    levels: int
    info: dict[str, Any]  # the entry's "grid" field
    side: bytes  # the scales, then the coded zero points

    def symbols(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The grid integers of the value entries at ``positions`` (None: all elements)."""
        return self.k if positions is None else self.k[positions]


def _hint_scales(hint: Any) -> np.ndarray:
    """The float32 scales of a grid hint; ArtifactError when the hint is malformed."""
    if not isinstance(hint, Mapping) or "scale" not in hint:
        raise ArtifactError("a grid hint is a dict with 'scale': one per channel along axis 0, "
                            "or one for the whole tensor")
    axis = hint.get("axis", 0)
    if axis not in (0, None):
        raise ArtifactError(f"a grid hint's axis must be 0 (or None: one scale), got {axis!r}")
    try:
        scales = np.asarray(hint["scale"], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ArtifactError("a grid hint's 'scale' is not a list of numbers") from None
    with np.errstate(all="ignore"):
        return scales.astype(np.float32)


def _grid_for(array: np.ndarray, hint: Any, coder: str) -> _Grid | None:
    """The grid that a hint's scales put ``array`` on; None when the array is not float32, the
    scales do not fit its shape or are not finite and positive, or any element (pruned zeros
    included) is not exactly its grid value. A hint that no longer fits (the weight changed
    after quantization) thus only costs the attempt."""
    scales = _hint_scales(hint)
    if array.dtype.kind != "f" or array.dtype.itemsize != 4 or array.size == 0:
        return None
    channels = scales.size
    if channels != 1 and (array.ndim == 0 or array.shape[0] != channels):
        return None
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        return None
    x = np.ascontiguousarray(array, dtype=np.dtype(np.float32)).reshape(channels, -1)
    with np.errstate(all="ignore"):
        steps = np.rint(x.astype(np.float64) / scales.astype(np.float64)[:, None])
    if not np.isfinite(steps).all() or float(np.abs(steps).max()) >= MAX_GRID_LEVELS:
        return None
    steps = steps.astype(np.int64)
    on_grid = grid_values(steps, 0, scales[:, None]).view(np.uint32) == x.view(np.uint32)
    if not on_grid.all():
        return None
    if coder == "raw":
        # a fixed width: each channel from its own lowest step keeps the widest span small
        zero_points = np.maximum(0, -steps.min(axis=1))
    else:
        # one histogram for all channels: centred alike, their steps share it best
        zero_points = np.full(channels, max(0, -int(steps.min())), dtype=np.int64)
    k = steps + zero_points[:, None]
    levels = int(k.max()) + 1
    if levels > MAX_GRID_LEVELS:
        return None
    scale_bytes = scales.astype("<f4").tobytes()
    zp_coder, zp_data = encode_symbols(zero_points, coder)
    info = {"channels": channels, "levels": levels, "scales": {"bytes": len(scale_bytes)},
            "zero_points": {"coder": zp_coder, "bytes": len(zp_data)}}
    return _Grid(k.ravel(), levels, info, scale_bytes + zp_data)


def half_codebook(codebook: np.ndarray) -> bytes | None:
    """A float32 codebook (as uint32 bit patterns) stored as float16, little-endian, when
    every value widens back to the same bits; else None."""
    f32 = codebook.astype(np.uint32).view(np.float32)
    with np.errstate(all="ignore"):
        f16 = f32.astype(np.float16)
    if not np.array_equal(f16.astype(np.float32).view(np.uint32), codebook):
        return None
    return f16.astype("<f2").tobytes()


def _encode_values(values: np.ndarray, itemsize: int, coder: str, grid: _Grid | None = None,
                   grid_symbols: np.ndarray | None = None, float32: bool = False
                   ) -> list[tuple[str, dict[str, Any], bytes]]:
    """The smallest of: plain bytes; a codebook of the distinct values + coded indices (a
    ``float32`` tensor's in float16 when that is exact); and, given a grid, the entries'
    grid integers (``grid_symbols``) + the grid."""
    plain = values.astype(f"<u{itemsize}").tobytes()
    best = [("values", {"coder": PLAIN, "bytes": len(plain)}, plain)]
    if values.size == 0:
        return best
    codebook, indices = np.unique(values, return_inverse=True)
    if codebook.size <= MAX_CODEBOOK and codebook.size * itemsize < len(plain):
        half = half_codebook(codebook) if float32 else None
        book = half if half is not None else codebook.astype(f"<u{itemsize}").tobytes()
        info: dict[str, Any] = {"size": int(codebook.size), "bytes": len(book)}
        if half is not None:
            info["dtype"] = "float16"
        name, data = encode_symbols(indices.ravel(), coder, alphabet_size=codebook.size)
        if len(book) + len(data) < _size(best):
            best = [("values", {"coder": name, "bytes": len(data)}, data),
                    ("codebook", info, book)]
    if grid is not None and len(grid.side) < _size(best):
        assert grid_symbols is not None
        name, data = encode_symbols(grid_symbols, coder, alphabet_size=grid.levels)
        if len(grid.side) + len(data) < _size(best):
            best = [("values", {"coder": name, "bytes": len(data)}, data),
                    ("grid", grid.info, grid.side)]
    return best


def _candidate(layout: str, index: np.ndarray | None, values: np.ndarray, itemsize: int,
               coder: str, grid: _Grid | None = None, grid_symbols: np.ndarray | None = None,
               float32: bool = False, **extra: Any) -> _Candidate:
    streams = []
    fields: dict[str, Any] = {"layout": layout, **extra}
    if index is not None:
        name, data = encode_symbols(index, coder)
        streams.append(("index", {"coder": name, "bytes": len(data)}, data))
        fields["entries"] = int(values.size)
    streams += _encode_values(values, itemsize, coder, grid, grid_symbols, float32)
    return _Candidate(fields, streams)


def fixed_gap_entries(gaps: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Deep Compression's fixed-width relative index. ``gaps[i]`` (>= 1) is how far non-zero i
    lies after non-zero i-1 (the first after position -1). A gap longer than
    ``2**gap_bits`` is bridged by filler entries every ``2**gap_bits`` positions. Returns the
    index symbols (entry distance minus one, each < ``2**gap_bits``) and, per non-zero, the
    position of its entry among all entries."""
    span = 1 << gap_bits
    per_gap = (gaps + span - 1) // span  # entries per gap: fillers + the non-zero itself
    real = np.cumsum(per_gap) - 1
    index = np.full(int(per_gap.sum()), span - 1, dtype=np.int64)
    index[real] = gaps - (per_gap - 1) * span - 1
    return index, real


def line_index(array: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
    """The ``sparse-lines`` index of ``array`` (2 or more dimensions; as a matrix of
    ``shape[0]`` rows): the gaps between its live rows, then between its live columns, then
    between its non-zeros within the live submatrix (each gap = the lines or elements skipped,
    so 0 for adjacent ones), and ``[live rows, live columns]``. None when every row and
    column is live (the layout would only repeat ``sparse-gaps``) or the array is 1-D, empty
    or all zero."""
    if array.ndim < 2 or array.size == 0:
        return None
    live = np.asarray(array).reshape(array.shape[0], -1) != 0
    rows, cols = np.flatnonzero(live.any(axis=1)), np.flatnonzero(live.any(axis=0))
    if rows.size == 0 or (rows.size == live.shape[0] and cols.size == live.shape[1]):
        return None
    within = np.flatnonzero(live[np.ix_(rows, cols)])
    index = np.concatenate([np.diff(rows, prepend=-1) - 1, np.diff(cols, prepend=-1) - 1,
                            np.diff(within, prepend=-1) - 1])
    return index, [int(rows.size), int(cols.size)]


def _choose_gap_bits(gaps: np.ndarray, nonzero_values: np.ndarray, itemsize: int,
                     coder: str) -> int | None:
    """The fixed gap width with the smallest estimated size (index + values), among the
    widths that need fillers (wider ones equal the ``sparse-gaps`` layout). The estimate is
    the entropy (or the fixed width for the raw coder) of each stream."""
    widest = min(MAX_GAP_BITS, int(gaps.max() - 1).bit_length() - 1)
    if widest < 1:
        return None
    distinct, value_counts = np.unique(nonzero_values, return_counts=True)
    best, best_bits = None, math.inf
    for bits in range(1, widest + 1):
        span = 1 << bits
        per_gap = (gaps + span - 1) // span
        fillers = int(per_gap.sum()) - gaps.size
        entries = gaps.size + fillers
        index_hist = np.bincount((gaps - 1) % span, minlength=span)
        index_hist[span - 1] += fillers
        value_hist = np.append(value_counts, fillers)
        book = distinct.size + (fillers > 0)
        if coder == "raw":
            index_bits = entries * bits
            value_bits = entries * max(1, (book - 1).bit_length())
        else:
            index_bits = min(entries * bits, histogram_entropy_bits(index_hist))
            value_bits = histogram_entropy_bits(value_hist)
        if book > MAX_CODEBOOK:  # plain values
            total = index_bits + entries * 8 * itemsize
        else:
            total = index_bits + value_bits + 8 * itemsize * book
        if total < best_bits:
            best, best_bits = bits, total
    return best


def layout_candidates(array: np.ndarray, coder: str = "best", hint: Any = None, *,
                      name: str = "") -> list[tuple[dict[str, Any], bytes]]:
    """Every layout tried for ``array``, each as (entry, payload): dense; and, unless it has
    no zero, sparse-gaps, (when a width below the longest gap helps) sparse-fixed with the
    gap width of smallest estimated size, and (when a row or column is all zero)
    sparse-lines. ``hint`` (see ``encode_tensor``) adds the grid to the
    value codings each layout chooses from. ``encode_tensor`` keeps the smallest."""
    _check_coder(coder)
    array = np.asarray(array)
    bits, dtype_name = _bits_of(array)
    grid = _grid_for(array, hint, coder) if hint is not None else None
    itemsize = array.dtype.itemsize
    nonzero = np.flatnonzero(bits)
    f32 = dtype_name == "float32"  # a float16 codebook is tried
    candidates = [_candidate("dense", None, bits, itemsize, coder, grid,
                             grid.symbols() if grid else None, f32)]
    if nonzero.size < bits.size:
        gaps = np.diff(nonzero, prepend=-1)
        candidates.append(_candidate("sparse-gaps", gaps - 1, bits[nonzero], itemsize, coder,
                                     grid, grid.symbols(nonzero) if grid else None, f32))
        # a grid's integers share the codebook's histogram but not its size: estimate with them
        estimated = grid.symbols(nonzero) if grid else bits[nonzero]
        gap_bits = (_choose_gap_bits(gaps, estimated, itemsize, coder)
                    if nonzero.size else None)
        if gap_bits is not None:
            index, real = fixed_gap_entries(gaps, gap_bits)
            values = np.zeros(index.size, dtype=bits.dtype)
            values[real] = bits[nonzero]
            # fillers are zeros, on the grid like the others
            symbols = grid.symbols(np.cumsum(index + 1) - 1) if grid else None
            candidates.append(_candidate("sparse-fixed", index, values, itemsize, coder,
                                         grid, symbols, f32, gap_bits=gap_bits))
        lines = line_index(bits.reshape(array.shape))
        if lines is not None:
            candidates.append(_candidate("sparse-lines", lines[0], bits[nonzero], itemsize,
                                         coder, grid,
                                         grid.symbols(nonzero) if grid else None, f32,
                                         lines=lines[1]))
    shape = [int(d) for d in array.shape]
    crc = tensor_crc32(bits, dtype_name, shape, name)
    out = []
    for c in candidates:
        entry: dict[str, Any] = {"dtype": dtype_name, "shape": shape,
                                 "nonzeros": int(nonzero.size), "tensor_crc32": crc,
                                 **c.fields}
        for key, info, _ in c.streams:
            entry[key] = info
        out.append((entry, b"".join(data for _, _, data in c.streams)))
    return out


def encode_tensor(array: np.ndarray, coder: str = "best", hint: Any = None, *,
                  name: str = "") -> tuple[dict[str, Any], bytes]:
    """Code ``array`` (any shape, a dtype in SUPPORTED_DTYPES) in its smallest layout. Returns
    the manifest entry and the payload; ``decode_tensor(entry, payload)`` gives the array back
    bit for bit. ``coder``: ``best`` or a name in ``CODERS``, used for every coded stream.

    ``hint``: where a float32 array came out of uniform quantization, a dict with its
    ``scale`` (one per channel along axis 0, or one), so that the grid value coding is tried
    (other keys, such as ``zero_point``, ``bits``, ``axis``: 0, are allowed; the zero points
    stored are the encoder's own choice). The grid is kept only when it is the smallest and
    its entry decodes to ``array`` bit for bit; otherwise the hint changes nothing. A hint
    with ``"kind"``: dither, transform or bloomier (``CODINGS``) carries that coding's integers
    instead (see its module's ``encode_*``); it too is kept only when smallest and bit-exact.
    ``name``:
    the tensor's name in its artifact, covered by the CRC32 (decode with the same name)."""
    def smallest(candidates: list[tuple[dict[str, Any], bytes]]
                 ) -> tuple[dict[str, Any], bytes]:
        # min keeps the first of equals: dense, sparse-gaps, sparse-fixed, sparse-lines
        return min(candidates, key=lambda c: len(c[1]))

    kind = hint.get("kind", "grid") if isinstance(hint, Mapping) else "grid"
    if kind in CODINGS:
        _check_coder(coder)
        candidates = layout_candidates(array, coder, name=name)
        coded = _coding_candidate(np.asarray(array), kind, hint, coder, name)
        if coded is not None:
            candidates.insert(0, coded)  # among equals, the coding the technique chose
        return smallest(candidates)
    if kind != "grid":
        raise ArtifactError(f"a hint's kind must be grid or one of {', '.join(CODINGS)}, "
                            f"got {kind!r}")
    entry, payload = smallest(layout_candidates(array, coder, hint, name=name))
    if "grid" in entry and not _decodes_to(entry, payload, np.asarray(array), name):
        # not expected (every element was checked on the grid); the full decode is the proof
        entry, payload = smallest(layout_candidates(array, coder, name=name))
    return entry, payload


_ENCODERS = {"dither": encode_dither, "transform": encode_transform,
             "bloomier": encode_bloomier}


def _coding_candidate(array: np.ndarray, kind: str, hint: Any, coder: str, name: str
                      ) -> tuple[dict[str, Any], bytes] | None:
    """The entry and payload of ``array`` in the coding a hint names (``CODINGS``), or None
    when the hint does not describe the array bit for bit or the entry does not decode to it
    (the full decode is the proof)."""
    coded = _ENCODERS[kind](array, hint, coder)
    if coded is None:
        return None
    bits, dtype_name = _bits_of(array)
    shape = [int(d) for d in array.shape]
    entry = {"dtype": dtype_name, "shape": shape, "nonzeros": int(np.count_nonzero(bits)),
             "tensor_crc32": tensor_crc32(bits, dtype_name, shape, name), **coded[0]}
    try:  # the default bound: a transform's padded coefficients outnumber the elements
        out = decode_tensor(entry, coded[1], name=name)
    except ArtifactError:
        return None
    if out.shape != array.shape or out.tobytes() != np.ascontiguousarray(array).tobytes():
        return None
    return entry, coded[1]


def _decodes_to(entry: dict[str, Any], payload: bytes, array: np.ndarray, name: str) -> bool:
    try:
        out = decode_tensor(entry, payload, max_elements=max(1, array.size), name=name)
    except ArtifactError:
        return False
    native = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    return out.shape == native.shape and out.tobytes() == native.tobytes()


# ============================================================================ checking
def _fail(where: str, message: str) -> ArtifactError:
    return ArtifactError(f"{where}: {message}")


def _int(d: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    value = d.get(key)
    if type(value) is not int:
        raise _fail(where, f"field {key!r} is missing or not an integer")
    if not lo <= value <= hi:
        raise _fail(where, f"field {key!r} = {value} is out of range {lo}..{hi}")
    return value


def _dict(d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise _fail(where, f"field {key!r} is missing or not an object")
    return value


def _stream(d: dict[str, Any], key: str, where: str, coders: tuple[str, ...]
            ) -> tuple[str, int]:
    info = _dict(d, key, where)
    coder = info.get("coder")
    if coder not in coders:
        raise _fail(where, f"{key} coder {coder!r} is unknown (known: {', '.join(coders)})")
    return coder, _int(info, "bytes", f"{where} {key}", 0, 1 << 62)


@dataclass(frozen=True)
class TensorEntry:
    """A manifest entry, checked: everything ``decode_tensor`` relies on is consistent."""

    dtype: np.dtype
    shape: tuple[int, ...]
    count: int
    nonzeros: int
    layout: str
    entries: int  # value entries: count (dense), non-zeros (+ fillers, sparse-fixed)
    gap_bits: int | None
    index_coder: str | None
    index_bytes: int
    value_coder: str
    value_bytes: int
    codebook_size: int
    codebook_bytes: int
    decoded_crc32: int  # the value of crc_field
    crc_field: str = "tensor_crc32"  # or "decoded_crc32": the bytes alone (format version 1)
    grid_channels: int = 0  # 0: no grid
    grid_levels: int = 0
    scale_bytes: int = 0
    zero_point_coder: str | None = None
    zero_point_bytes: int = 0
    lines: tuple[int, int] | None = None  # sparse-lines: live rows, live columns
    half_codebook: bool = False  # a float32 tensor's codebook stored as float16
    coding: str = ""  # "": layout + value coding; else one of CODINGS
    spec: Any = None  # the coding's checked fields (DitherSpec, TransformSpec, BloomierSpec)

    @property
    def value_coding(self) -> str:
        """How the values are stored: plain, codebook, grid, or a whole-tensor coding."""
        if self.coding:
            return self.coding
        if self.value_coder == PLAIN:
            return PLAIN
        return "grid" if self.grid_channels else "codebook"

    @property
    def side_bytes(self) -> int:
        """What maps value symbols to values: the codebook, a grid's scales and zero
        points, or a coding's step and levels (or cluster values)."""
        coding = self.spec.side_bytes if self.spec is not None else 0
        return self.codebook_bytes + self.scale_bytes + self.zero_point_bytes + coding

    @property
    def total_bytes(self) -> int:
        return self.index_bytes + self.value_bytes + self.side_bytes


def check_entry(entry: Any, *, where: str = "tensor",
                max_elements: int = DEFAULT_MAX_ELEMENTS) -> TensorEntry:
    """Validate a manifest entry before any decoding (and before allocating anything);
    raises ArtifactError naming the field that is wrong."""
    if not isinstance(entry, dict):
        raise _fail(where, "entry is not an object")
    dtype_name = entry.get("dtype")
    if dtype_name not in SUPPORTED_DTYPES:
        raise _fail(where, f"dtype {dtype_name!r} is not supported "
                           f"({', '.join(SUPPORTED_DTYPES)})")
    dtype = np.dtype(dtype_name)
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or any(type(d) is not int or d < 0 for d in shape)):
        raise _fail(where, f"shape {shape!r} is not a list of at most {MAX_NDIM} "
                           "non-negative integers")
    for d in shape:
        if d > max_elements:
            raise _fail(where, f"shape {shape} has a dimension of {d:,}, more than the limit of "
                               f"{max_elements:,} elements (max_elements)")
    count = math.prod(shape)
    if count > max_elements:
        raise _fail(where, f"declares {count:,} elements, more than the limit of "
                           f"{max_elements:,} (max_elements)")
    nonzeros = _int(entry, "nonzeros", where, 0, count)
    crcs = {key: _int(entry, key, where, 0, 2**32 - 1) for key in CRC_FIELDS if key in entry}
    if len(crcs) != 1:
        raise _fail(where, "needs exactly one of the fields 'tensor_crc32' (format version 2) "
                           "and 'decoded_crc32' (version 1): the CRC32 check of the decoded "
                           "tensor")
    crc_field, decoded_crc32 = next(iter(crcs.items()))
    if "coding" in entry:
        return _check_coding(entry, where, dtype_name, tuple(shape), count, nonzeros,
                             crc_field, decoded_crc32, max_elements)
    layout = entry.get("layout")
    if layout not in LAYOUTS:
        raise _fail(where, f"layout {layout!r} is unknown (known: {', '.join(LAYOUTS)})")
    gap_bits = lines = None
    if layout == "dense":
        entries, index_coder, index_bytes = count, None, 0
    else:
        entries = _int(entry, "entries", where, nonzeros, count)
        if layout in ("sparse-gaps", "sparse-lines") and entries != nonzeros:
            raise _fail(where, f"{layout} layout with {entries} entries for {nonzeros} "
                               "non-zeros")
        if layout == "sparse-fixed":
            gap_bits = _int(entry, "gap_bits", where, 1, MAX_GAP_BITS)
        if layout == "sparse-lines":
            lines = _check_lines(entry, where, shape, entries)
        index_coder, index_bytes = _stream(entry, "index", where, tuple(sorted(CODERS)))
    value_coder, value_bytes = _stream(entry, "values", where, (*sorted(CODERS), PLAIN))
    codebook_size = codebook_bytes = 0
    half_book = False
    grid: dict[str, Any] = {}
    if "grid" in entry:
        if value_coder == PLAIN or "codebook" in entry:
            raise _fail(where, "a grid goes with coded values and no codebook")
        grid = _check_grid(entry, where, dtype_name, shape)
    elif value_coder == PLAIN:
        if "codebook" in entry:
            raise _fail(where, "plain values with a codebook")
        if value_bytes != entries * dtype.itemsize:
            raise _fail(where, f"{entries} plain values of {dtype_name} take "
                               f"{entries * dtype.itemsize} bytes, the entry says {value_bytes}")
    else:
        book = _dict(entry, "codebook", where)
        codebook_size = _int(book, "size", f"{where} codebook", 1, MAX_CODEBOOK)
        codebook_bytes = _int(book, "bytes", f"{where} codebook", 0, 1 << 62)
        book_dtype = book.get("dtype", dtype_name)
        half_book = "dtype" in book
        if half_book and (book_dtype != "float16" or dtype_name != "float32"):
            raise _fail(where, f"a codebook's dtype may only be float16, for a float32 "
                               f"tensor; got {book_dtype!r} for {dtype_name}")
        width = 2 if half_book else dtype.itemsize
        if codebook_bytes != codebook_size * width:
            raise _fail(where, f"a codebook of {codebook_size} {book_dtype} values takes "
                               f"{codebook_size * width} bytes, the entry says "
                               f"{codebook_bytes}")
    return TensorEntry(dtype=dtype, shape=tuple(shape), count=count, nonzeros=nonzeros,
                       layout=layout, entries=entries, gap_bits=gap_bits,
                       index_coder=index_coder, index_bytes=index_bytes,
                       value_coder=value_coder, value_bytes=value_bytes,
                       codebook_size=codebook_size, codebook_bytes=codebook_bytes,
                       decoded_crc32=decoded_crc32, crc_field=crc_field, lines=lines,
                       half_codebook=half_book, **grid)


def _check_lines(entry: dict[str, Any], where: str, shape: list[int], entries: int
                 ) -> tuple[int, int]:
    """The ``lines`` field of a sparse-lines entry: [live rows, live columns], within the
    tensor's matrix of shape[0] rows, with room for the entries."""
    if len(shape) < 2 or math.prod(shape) == 0:
        raise _fail(where, f"the sparse-lines layout needs a non-empty tensor of 2 or more "
                           f"dimensions, not shape {shape}")
    lines = entry.get("lines")
    if (not isinstance(lines, list) or len(lines) != 2
            or any(type(n) is not int for n in lines)):
        raise _fail(where, f"lines {lines!r} is not [live rows, live columns]")
    rows, cols = shape[0], math.prod(shape) // shape[0]
    if not (0 <= lines[0] <= rows and 0 <= lines[1] <= cols):
        raise _fail(where, f"lines {lines} out of range for a matrix of {rows} x {cols}")
    if entries > lines[0] * lines[1]:
        raise _fail(where, f"{entries} entries do not fit in {lines[0]} x {lines[1]} live "
                           "rows and columns")
    return lines[0], lines[1]


def _check_coding(entry: dict[str, Any], where: str, dtype_name: str, shape: tuple[int, ...],
                  count: int, nonzeros: int, crc_field: str, crc: int, max_elements: int
                  ) -> TensorEntry:
    """An entry with a whole-tensor ``coding`` (``CODINGS``), checked by its module."""
    coding = entry["coding"]
    if coding not in CODINGS:
        raise _fail(where, f"coding {coding!r} is unknown (known: {', '.join(CODINGS)})")
    if dtype_name != "float32":
        raise _fail(where, f"the {coding} coding codes float32 tensors, not {dtype_name}")
    if count == 0:
        raise _fail(where, f"the {coding} coding needs a non-empty tensor")
    if coding == "dither":
        spec: Any = check_dither(entry, where, count, nonzeros)
        layout, entries = spec.layout, spec.entries
        index_coder, index_bytes = spec.index_coder, spec.index_bytes
    else:
        if entry.get("layout") != "dense":
            raise _fail(where, f"the {coding} coding has layout dense, not "
                               f"{entry.get('layout')!r}")
        if coding == "transform":
            spec = check_transform(entry, where, shape, max_elements)
            entries = spec.coefficients
        else:
            spec = check_bloomier(entry, where, count)
            entries = spec.cells
        layout, index_coder, index_bytes = "dense", None, 0
    return TensorEntry(dtype=np.dtype(np.float32), shape=shape, count=count, nonzeros=nonzeros,
                       layout=layout, entries=entries, gap_bits=None, index_coder=index_coder,
                       index_bytes=index_bytes, value_coder=spec.value_coder,
                       value_bytes=spec.value_bytes, codebook_size=0, codebook_bytes=0,
                       decoded_crc32=crc, crc_field=crc_field, coding=coding, spec=spec)


def _check_grid(entry: dict[str, Any], where: str, dtype_name: str, shape: list[int]
                ) -> dict[str, Any]:
    """The ``grid`` field of an entry, checked; as TensorEntry's grid fields."""
    if dtype_name != "float32":
        raise _fail(where, f"a grid codes float32 values, not {dtype_name}")
    grid = _dict(entry, "grid", where)
    at = f"{where} grid"
    rows = shape[0] if shape else 1
    channels = _int(grid, "channels", at, 1, max(1, rows))
    if channels not in (1, rows):
        raise _fail(at, f"{channels} channels for a tensor of shape {shape}: a grid has one "
                        "channel or one per row along axis 0")
    levels = _int(grid, "levels", at, 1, MAX_GRID_LEVELS)
    scale_bytes = _int(_dict(grid, "scales", at), "bytes", f"{at} scales", 0, 1 << 62)
    if scale_bytes != 4 * channels:
        raise _fail(at, f"{channels} float32 scales take {4 * channels} bytes, the entry says "
                        f"{scale_bytes}")
    zero_point_coder, zero_point_bytes = _stream(grid, "zero_points", at,
                                                 tuple(sorted(CODERS)))
    return {"grid_channels": channels, "grid_levels": levels, "scale_bytes": scale_bytes,
            "zero_point_coder": zero_point_coder, "zero_point_bytes": zero_point_bytes}


# ============================================================================ decoding
def _line_positions(e: TensorEntry, data: np.ndarray) -> np.ndarray:
    """Element positions of a sparse-lines entry: live rows, live columns, then the entries
    within the live submatrix (row-major), mapped back to the whole tensor."""
    assert e.lines is not None
    n_rows, n_cols = e.lines
    width = e.count // e.shape[0]
    index = decode_symbols(e.index_coder, data, n_rows + n_cols + e.entries)
    rows = gap_positions(index[:n_rows], e.shape[0], "live row")
    cols = gap_positions(index[n_rows:n_rows + n_cols], width, "live column")
    within = gap_positions(index[n_rows + n_cols:], n_rows * n_cols)
    if within.size == 0:
        return within
    return rows[within // n_cols] * width + cols[within % n_cols]


def _positions(e: TensorEntry, data: np.ndarray) -> np.ndarray:
    """Element positions of the value entries of a sparse layout."""
    if e.layout == "sparse-lines":
        return _line_positions(e, data)
    index = decode_symbols(e.index_coder, data, e.entries)
    limit = e.count if e.gap_bits is None else min(e.count, 1 << e.gap_bits)
    return gap_positions(index, e.count, limit=limit, of=f"a tensor of {e.count} elements")


def decode_tensor(entry: dict[str, Any], payload: bytes, *, where: str = "tensor",
                  max_elements: int = DEFAULT_MAX_ELEMENTS, name: str = "") -> np.ndarray:
    """Decode a tensor written by ``encode_tensor`` (under the same ``name``); raises
    ArtifactError (prefixed with ``where``) when the entry and payload disagree in any way."""
    e = check_entry(entry, where=where, max_elements=max_elements)
    buf = as_byte_array(payload)
    if buf.size != e.total_bytes:
        raise _fail(where, f"payload is {buf.size} bytes, the entry declares {e.total_bytes}")
    bound = ELEMENT_FLOOR + MAX_ELEMENTS_PER_BYTE * buf.size
    if e.count > bound:
        raise _fail(where, f"declares {e.count:,} elements in a payload of {buf.size:,} bytes, "
                           f"more than the bound of {bound:,} ({ELEMENT_FLOOR:,} + "
                           f"{MAX_ELEMENTS_PER_BYTE} per byte); the entry is corrupt or "
                           "hostile")
    word = np.dtype(f"u{e.dtype.itemsize}")
    if e.coding:
        return _decode_coding(e, buf, where, name)
    try:
        positions = (_positions(e, buf[:e.index_bytes]) if e.layout != "dense"
                     else None)
        value_data = buf[e.index_bytes:e.index_bytes + e.value_bytes]
        if e.value_coder == PLAIN:
            values = value_data.view(word.newbyteorder("<")).astype(word)
        elif e.grid_channels:
            values = _grid_decode(e, buf[e.index_bytes + e.value_bytes:], value_data,
                                  positions, where)
        else:
            book_data = buf[e.index_bytes + e.value_bytes:]
            book = (book_data.view("<f2").astype(np.float32).view(np.uint32)
                    if e.half_codebook else book_data.view(word.newbyteorder("<")))
            indices = decode_symbols(e.value_coder, value_data, e.entries)
            if indices.size and int(indices.max()) >= e.codebook_size:
                raise _fail(where, f"codebook index {int(indices.max())} out of range "
                                   f"(codebook of {e.codebook_size})")
            values = book.astype(word)[indices]
    except ArtifactError as exc:
        if str(exc).startswith(where):
            raise
        raise _fail(where, str(exc)) from None
    if positions is None:
        bits = values
    else:
        bits = np.zeros(e.count, dtype=word)
        bits[positions] = values
    found = int(np.count_nonzero(bits))
    if found != e.nonzeros:
        raise _fail(where, f"decodes to {found} non-zeros, the entry declares {e.nonzeros}")
    if e.crc_field == "tensor_crc32":
        crc = tensor_crc32(bits, e.dtype.name, e.shape, name)
    else:
        crc = _crc_of(bits, e.dtype.itemsize)
    if crc != e.decoded_crc32:
        raise _fail(where, f"the decoded tensor fails its CRC32 check ({e.crc_field}): the "
                           "entry (dtype, shape or coding) does not describe its payload")
    if e.dtype == np.bool_ and bits.size and int(bits.max()) > 1:
        raise _fail(where, "bool tensor holds bytes other than 0 and 1")
    return bits.view(e.dtype).reshape(e.shape)


def _decode_coding(e: TensorEntry, buf: np.ndarray, where: str, name: str) -> np.ndarray:
    """Decode an entry with a whole-tensor coding, with the same checks as any entry: the
    number of non-zeros and the CRC32 (its message says what a mismatch means)."""
    try:
        if e.coding == "dither":
            values = decode_dither(e.spec, buf, e.count, where)
        elif e.coding == "transform":
            values = decode_transform(e.spec, buf, e.shape, where)
        else:
            values = decode_bloomier(e.spec, buf, e.count, where)
    except ArtifactError as exc:
        if str(exc).startswith(where):
            raise
        raise _fail(where, str(exc)) from None
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).ravel()
    found = int(np.count_nonzero(bits))
    if found != e.nonzeros:
        raise _fail(where, f"decodes to {found} non-zeros, the entry declares {e.nonzeros} "
                           f"({_CODING_CHECKS[e.coding]})")
    crc = (tensor_crc32(bits, "float32", e.shape, name) if e.crc_field == "tensor_crc32"
           else _crc_of(bits, 4))
    if crc != e.decoded_crc32:
        raise _fail(where, f"the decoded tensor fails its CRC32 check ({e.crc_field}): "
                           f"{_CODING_CHECKS[e.coding]}")
    return bits.view(np.float32).reshape(e.shape)


def _grid_decode(e: TensorEntry, side: np.ndarray, value_data: np.ndarray,
                 positions: np.ndarray | None, where: str) -> np.ndarray:
    """The value entries (as uint32 bit patterns) of a grid-coded float32 tensor; ``side``
    holds the scales, then the coded zero points."""
    k = decode_symbols(e.value_coder, value_data, e.entries)
    if k.size and int(k.max()) >= e.grid_levels:
        raise _fail(where, f"grid integer {int(k.max())} out of range (levels "
                           f"{e.grid_levels})")
    channels = e.grid_channels
    scales = side[:e.scale_bytes].view("<f4")
    zero_points = decode_symbols(e.zero_point_coder, side[e.scale_bytes:], channels)
    if int(zero_points.max()) > MAX_GRID_LEVELS:
        raise _fail(where, f"grid zero point {int(zero_points.max())} out of range "
                           f"0..{MAX_GRID_LEVELS}")
    if k.size == 0:
        values = np.zeros(0, dtype=np.float32)
    elif channels == 1:
        values = grid_values(k, zero_points[0], scales[0])
    elif positions is None:  # dense: entry i is element i
        values = grid_values(k.reshape(channels, e.count // channels), zero_points[:, None],
                             scales[:, None]).ravel()
    else:
        rows = positions // (e.count // channels)
        values = grid_values(k, zero_points[rows], scales[rows])
    return values.view(np.uint32)


def tensor_crc32(bits: np.ndarray, dtype: str, shape: list[int] | tuple[int, ...],
                 name: str = "") -> int:
    """The ``tensor_crc32`` of a tensor (format version 2): CRC32 of its descriptor
    ``<name> NUL <dtype>:<d0>,<d1>,...;`` and then of its little-endian bytes (``bits``: the
    elements' bit patterns as unsigned ints, flat)."""
    descriptor = (name.encode("utf-8", "surrogatepass") + b"\0"
                  + f"{dtype}:{','.join(str(int(d)) for d in shape)};".encode("ascii"))
    return zlib.crc32(bits.astype(f"<u{bits.dtype.itemsize}", copy=False).tobytes(),
                      zlib.crc32(descriptor))


def _crc_of(bits: np.ndarray, itemsize: int) -> int:
    """CRC32 of a tensor's little-endian bytes: checks the whole decoding end to end."""
    return zlib.crc32(bits.astype(f"<u{itemsize}", copy=False).tobytes())
