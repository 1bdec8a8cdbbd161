"""Dithered (universal) quantization: a float32 tensor coded as integer indices plus a seed.

Universal quantization (Choi, El-Khamy & Lee, "Universal deep neural network compression")
adds to every weight a uniform random dither u in [-1/2, 1/2) before rounding, and subtracts
it again after: ``w_hat = step * round(w / step + u) - step * u``. The dither is not stored:
encoder and decoder draw it from the same seeded generator. With fine-tuned shared values the
level ``step * k`` becomes ``levels[k]``.

An entry with ``"coding": "dither"`` (``modelzip.codec.tensor``)::

    layout    "dense" (every element an entry) or "sparse-gaps" (the non-zeros only; the index
              stream holds each non-zero's distance to the previous one minus one, as in the
              tensor layouts)
    entries   the number of value entries (sparse-gaps only; = nonzeros)
    index     {"coder", "bytes"}: the gap stream (sparse-gaps only)
    values    {"coder", "bytes"}: one level index k in 0 .. levels - 1 per entry
    dither    {"seed": 0 .. 2**32 - 1, "levels": L, "zero_point": z, "codebook": bool,
               "lattice": "z" (the default when absent) or "a2"}

The payload is the index stream, the values stream, ``step`` (float32, little-endian), and,
when ``codebook`` is true, the L levels (float32). Without a codebook level j is the affine
grid value ``(float32(j) - float32(z)) * step``. The element at position p with level index k
decodes, in float32 with each operation rounded once (so any IEEE 754 machine gives the same
bits), to::

    levels[k] - step * u[p]

where u is ``dither_noise(seed, count)``: the PCG64 bit generator of numpy seeded with
``seed`` gives count raw 64-bit words; the top 24 bits of word p, times 2**-24, minus 1/2
(all exact in float32) are u[p]. Positions that are not entries are exact zeros (pruned
weights are not dithered). A wrong seed or step decodes to other values, which the tensor's
CRC32 refuses.

Lattice ``a2`` (the hexagonal lattice, for pairs of weights; no codebook): the entries, in
position order, form pairs (entry 2i, entry 2i+1; an odd last entry is the first half of a
pair whose second half is dropped). The values stream holds two symbols per pair, k1 and
k2, and the dither is drawn per pair slot, not per position: n = ``dither_noise(seed, 2 *
pairs)``, (n1, n2) = (n[2i], n[2i+1]). With the basis b1 = (step, 0), b2 = (step / 2,
step * r), r = float32(sqrt(3) / 2), the pair decodes to the lattice point minus the dither
vector ``(k1 - z - n1) * b1 + (k2 - z - n2) * b2``, in float32 as::

    a = (float32(k1) - z) - n1;  b = (float32(k2) - z) - n2
    first  = a * step + b * (step * 0.5)
    second = b * (step * r)
"""

from __future__ import annotations

import bz2
import lzma
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelzip.codec.bits import gap_positions
from modelzip.codec.coders import CODERS, decode_symbols, encode_symbols
from modelzip.errors import ArtifactError

__all__ = ["LATTICES", "MAX_LEVELS", "MAX_SEED", "DitherSpec", "a2_quantize", "a2_values",
           "check_dither", "decode_dither",
           "dither_levels", "dither_noise", "dither_values", "encode_dither",
           "index_coder_bytes"]

MAX_LEVELS = 65536
MAX_SEED = 2**32 - 1
CODING = "dither"
LATTICES = ("z", "a2")
A2_HEIGHT = np.float32(np.sqrt(3.0) / 2)  # the hexagonal basis' second row, step units


def dither_noise(seed: int, count: int) -> np.ndarray:
    """The dither u of a tensor of ``count`` elements: float32 in [-1/2, 1/2), one per
    position, from PCG64(seed)'s raw words (not numpy's distributions, whose streams may
    change between numpy versions)."""
    if not (isinstance(seed, int | np.integer) and 0 <= int(seed) <= MAX_SEED):
        raise ArtifactError(f"dither seed {seed!r} is not an integer in 0..{MAX_SEED}")
    words = np.random.PCG64(int(seed)).random_raw(int(count))
    return ((words >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
            - np.float32(0.5))


def dither_levels(levels: int, zero_point: int, step: float) -> np.ndarray:
    """The affine grid levels ``(j - zero_point) * step`` for j in 0..levels-1, float32."""
    with np.errstate(all="ignore"):
        return ((np.arange(levels, dtype=np.float32) - np.float32(zero_point))
                * np.float32(step))


def dither_values(levels: np.ndarray, k: np.ndarray, step: float,
                  noise: np.ndarray) -> np.ndarray:
    """The coding's one formula, shared by the quantizer and the decoder:
    ``levels[k] - step * noise`` in float32 (elementwise; ``noise`` at the entries'
    positions)."""
    with np.errstate(all="ignore"):  # hostile steps (inf, NaN) fail the CRC32, not here
        return (np.asarray(levels, dtype=np.float32)[k]
                - np.float32(step) * np.asarray(noise, dtype=np.float32))


def index_coder_bytes(indices: np.ndarray, levels: int) -> dict[str, int]:
    """The bytes each coder takes for one stream of level indices: modelzip's coders (as
    stored, their tables included) and two universal lossless coders of the standard library
    on the indices as bytes (one byte each, two above 256 levels): ``lzma`` (raw LZMA2
    stream, preset 9 extreme, no container) and ``bz2`` (level 9, with its header)."""
    k = np.asarray(indices, dtype=np.int64).ravel()
    out = {name: len(encode_symbols(k, name, alphabet_size=levels)[1]) for name in CODERS}
    raw = k.astype("<u1" if levels <= 256 else "<u2").tobytes()
    out["lzma"] = len(lzma.compress(raw, format=lzma.FORMAT_RAW,
                                    filters=[{"id": lzma.FILTER_LZMA2,
                                              "preset": 9 | lzma.PRESET_EXTREME}]))
    out["bz2"] = len(bz2.compress(raw, 9))
    return out


def a2_values(symbols: np.ndarray, zero_point: int, step: float, noise: np.ndarray,
              entries: int) -> np.ndarray:
    """The ``a2`` lattice's one formula, shared by the quantizer and the decoder: the
    ``entries`` values (float32) of the pairs (k1, k2) in ``symbols`` (two per pair) with the
    dither ``noise`` (two per pair)."""
    k = np.asarray(symbols).reshape(-1, 2).astype(np.float32)
    n = np.asarray(noise, dtype=np.float32).reshape(-1, 2)
    s = np.float32(step)
    with np.errstate(all="ignore"):
        a = (k[:, 0] - np.float32(zero_point)) - n[:, 0]
        b = (k[:, 1] - np.float32(zero_point)) - n[:, 1]
        first = a * s + b * (s * np.float32(0.5))
        second = b * (s * A2_HEIGHT)
    return np.stack([first, second], axis=1).ravel()[:entries]


def a2_quantize(values: np.ndarray, step: float, noise: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The nearest hexagonal lattice point's coordinates (k1, k2 per pair, int64, two per
    pair, not yet shifted by a zero point) of each pair of ``values`` plus its dither vector
    (``noise``: two per pair); an odd last value is paired with 0."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size % 2:
        v = np.append(v, 0.0)
    x, y = v[0::2], v[1::2]
    n = np.asarray(noise, dtype=np.float64).reshape(-1, 2)
    s, h = float(step), float(A2_HEIGHT)
    # the dithered point t = x + n1 * b1 + n2 * b2, in lattice coordinates
    c2 = (y + n[:, 1] * s * h) / (s * h)
    c1 = (x + n[:, 0] * s + n[:, 1] * s / 2) / s - c2 / 2
    best = None
    for d1 in (0, 1):
        for d2 in (0, 1):
            k1, k2 = np.floor(c1) + d1, np.floor(c2) + d2
            dx = (c1 - k1) * s + (c2 - k2) * s / 2
            dy = (c2 - k2) * s * h
            dist = dx * dx + dy * dy
            if best is None:
                best = (dist, k1, k2)
            else:
                closer = dist < best[0]
                best = (np.where(closer, dist, best[0]), np.where(closer, k1, best[1]),
                        np.where(closer, k2, best[2]))
    assert best is not None
    return np.stack([best[1], best[2]], axis=1).astype(np.int64).ravel(), n.ravel()


@dataclass(frozen=True)
class DitherSpec:
    """A dither entry, checked."""

    layout: str
    entries: int
    index_coder: str | None
    index_bytes: int
    value_coder: str
    value_bytes: int
    seed: int
    levels: int
    zero_point: int
    codebook: bool
    lattice: str = "z"

    @property
    def side_bytes(self) -> int:
        return 4 + (4 * self.levels if self.codebook else 0)

    @property
    def symbols(self) -> int:
        """Symbols in the values stream: one per entry, or two per pair (a2)."""
        return self.entries if self.lattice == "z" else 2 * ((self.entries + 1) // 2)


def _int(d: Any, key: str, where: str, lo: int, hi: int) -> int:
    value = d.get(key) if isinstance(d, dict) else None
    if type(value) is not int or not lo <= value <= hi:
        raise ArtifactError(f"{where}: field {key!r} is missing or not an integer in "
                            f"{lo}..{hi}")
    return value


def _stream(entry: dict[str, Any], key: str, where: str) -> tuple[str, int]:
    info = entry.get(key)
    coder = info.get("coder") if isinstance(info, dict) else None
    if coder not in CODERS:
        raise ArtifactError(f"{where}: {key} coder {coder!r} is unknown (known: "
                            f"{', '.join(sorted(CODERS))})")
    return coder, _int(info, "bytes", f"{where} {key}", 0, 1 << 62)


def check_dither(entry: dict[str, Any], where: str, count: int, nonzeros: int) -> DitherSpec:
    """The dither fields of a tensor entry, checked against each other and the tensor's
    element count; ArtifactError naming the field that is wrong."""
    layout = entry.get("layout")
    if layout == "dense":
        entries, index_coder, index_bytes = count, None, 0
    elif layout == "sparse-gaps":
        entries = _int(entry, "entries", where, nonzeros, nonzeros)
        index_coder, index_bytes = _stream(entry, "index", where)
    else:
        raise ArtifactError(f"{where}: a dither coding has layout dense or sparse-gaps, not "
                            f"{layout!r}")
    value_coder, value_bytes = _stream(entry, "values", where)
    info = entry.get(CODING)
    if not isinstance(info, dict):
        raise ArtifactError(f"{where}: field 'dither' is missing or not an object")
    at = f"{where} dither"
    seed = _int(info, "seed", at, 0, MAX_SEED)
    levels = _int(info, "levels", at, 1, MAX_LEVELS)
    zero_point = _int(info, "zero_point", at, 0, MAX_LEVELS)
    codebook = info.get("codebook")
    if type(codebook) is not bool:
        raise ArtifactError(f"{at}: field 'codebook' is missing or not true/false")
    lattice = info.get("lattice", "z")
    if lattice not in LATTICES:
        raise ArtifactError(f"{at}: lattice {lattice!r} is unknown (known: "
                            f"{', '.join(LATTICES)})")
    if lattice == "a2" and codebook:
        raise ArtifactError(f"{at}: the a2 lattice has no codebook")
    return DitherSpec(layout, entries, index_coder, index_bytes, value_coder, value_bytes,
                      seed, levels, zero_point, codebook, lattice)


def decode_dither(spec: DitherSpec, buf: np.ndarray, count: int, where: str) -> np.ndarray:
    """The float32 elements (flat) of a checked dither entry; ``buf``: its payload (uint8,
    the size already checked)."""
    positions = None
    if spec.layout == "sparse-gaps":
        assert spec.index_coder is not None
        gaps = decode_symbols(spec.index_coder, buf[:spec.index_bytes], spec.entries)
        positions = gap_positions(gaps, count, of=f"a tensor of {count} elements")
    at = spec.index_bytes
    k = decode_symbols(spec.value_coder, buf[at:at + spec.value_bytes], spec.symbols)
    if k.size and int(k.max()) >= spec.levels:
        raise ArtifactError(f"{where}: level index {int(k.max())} out of range (levels "
                            f"{spec.levels})")
    side = buf[at + spec.value_bytes:]
    step = float(side[:4].view("<f4")[0])
    if spec.lattice == "a2":
        values = a2_values(k, spec.zero_point, step, dither_noise(spec.seed, spec.symbols),
                           spec.entries)
        if positions is None:
            return values
        out = np.zeros(count, dtype=np.float32)
        out[positions] = values
        return out
    levels = (side[4:].view("<f4").astype(np.float32) if spec.codebook
              else dither_levels(spec.levels, spec.zero_point, step))
    noise = dither_noise(spec.seed, count)
    if positions is None:
        return dither_values(levels, k, step, noise)
    out = np.zeros(count, dtype=np.float32)
    out[positions] = dither_values(levels, k, step, noise[positions])
    return out


def encode_dither(array: np.ndarray, hint: Any, coder: str
                  ) -> tuple[dict[str, Any], bytes] | None:
    """The dither fields and payload of a float32 ``array`` that a dither hint describes
    (``{"kind": "dither", "seed", "step"``, ``"levels"`` (float32) or ``"zero_point"``, and
    for lattice z optionally ``"indices"``: one level index per element, else each kept
    element's nearest level after adding back its dither; for lattice a2 ``"lattice": "a2"``
    and ``"indices"``: the values stream's symbols}), or None when the hint does not
    reproduce the array bit for bit (a hint that is out of date costs only the attempt)."""
    if array.dtype != np.float32 or array.size == 0:
        return None
    try:
        seed, step = int(hint["seed"]), np.float32(hint["step"])
        indices = (np.asarray(hint["indices"]).astype(np.int64).ravel()
                   if hint.get("indices") is not None else None)
        book = (np.asarray(hint["levels"], dtype=np.float32).ravel()
                if hint.get("levels") is not None else None)
        zero_point = int(hint.get("zero_point", 0))
    except (KeyError, TypeError, ValueError):
        raise ArtifactError("a dither hint needs seed, step, and levels or zero_point") \
            from None
    if not np.isfinite(step) or step <= 0 or not 0 <= seed <= MAX_SEED \
            or not 0 <= zero_point <= MAX_LEVELS:
        return None
    bits = np.ascontiguousarray(array, dtype=np.dtype(np.float32)).view(np.uint32).ravel()
    positions = np.flatnonzero(bits)
    dense = positions.size == bits.size
    if hint.get("lattice", "z") == "a2":
        return _encode_a2(bits, positions, dense, indices, zero_point, seed, step, coder) \
            if indices is not None else None
    if positions.size == 0 or (indices is not None and indices.size != array.size):
        return None
    noise = dither_noise(seed, bits.size)[positions]
    if indices is not None:
        k = indices[positions]
    else:  # the level that the kept element plus its dither lies on
        target = bits[positions].view(np.float32).astype(np.float64) \
            + float(step) * noise.astype(np.float64)
        k = _nearest(target, book, zero_point, float(step))
    if int(k.min()) < 0 or int(k.max()) >= MAX_LEVELS:
        return None
    levels_count = int(k.max()) + 1
    if book is not None:
        if book.size < levels_count:
            return None
        book, zero_point, codebook = book[:levels_count], 0, True
    else:
        book, codebook = dither_levels(levels_count, zero_point, step), False
    decoded = dither_values(book, k, step, noise)
    if decoded.view(np.uint32).tobytes() != bits[positions].tobytes():
        return None
    fields: dict[str, Any] = {"coding": CODING, "layout": "dense" if dense else "sparse-gaps"}
    streams = []
    if not dense:
        name, data = encode_symbols(np.diff(positions, prepend=-1) - 1, coder)
        fields["entries"] = int(positions.size)
        fields["index"] = {"coder": name, "bytes": len(data)}
        streams.append(data)
    name, data = encode_symbols(k, coder, alphabet_size=levels_count)
    fields["values"] = {"coder": name, "bytes": len(data)}
    streams.append(data)
    streams.append(np.asarray([step], dtype="<f4").tobytes())
    if codebook:
        streams.append(book.astype("<f4").tobytes())
    fields[CODING] = {"seed": seed, "levels": levels_count, "zero_point": zero_point,
                      "codebook": codebook}
    return fields, b"".join(streams)


def _nearest(target: np.ndarray, book: np.ndarray | None, zero_point: int, step: float
             ) -> np.ndarray:
    """The index of the level nearest to each target: on the grid, or in the codebook."""
    if book is None:
        return np.rint(target / step).astype(np.int64) + zero_point
    order = np.argsort(book, kind="stable")
    ranked = book[order].astype(np.float64)
    above = np.searchsorted(ranked, target)
    lo = np.clip(above - 1, 0, ranked.size - 1)
    hi = np.clip(above, 0, ranked.size - 1)
    pick = np.where(np.abs(target - ranked[lo]) <= np.abs(ranked[hi] - target), lo, hi)
    return order[pick].astype(np.int64)


def _encode_a2(bits: np.ndarray, positions: np.ndarray, dense: bool, symbols: np.ndarray,
               zero_point: int, seed: int, step: np.float32, coder: str
               ) -> tuple[dict[str, Any], bytes] | None:
    """The a2 lattice's fields and payload; ``symbols``: the values stream (k1, k2 per pair,
    zero point included)."""
    entries = positions.size
    if (entries == 0 or symbols.size != 2 * ((entries + 1) // 2) or int(symbols.min()) < 0
            or int(symbols.max()) >= MAX_LEVELS):
        return None
    decoded = a2_values(symbols, zero_point, step, dither_noise(seed, symbols.size), entries)
    if decoded.view(np.uint32).tobytes() != bits[positions].tobytes():
        return None
    fields: dict[str, Any] = {"coding": CODING, "layout": "dense" if dense else "sparse-gaps"}
    streams = []
    if not dense:
        name, data = encode_symbols(np.diff(positions, prepend=-1) - 1, coder)
        fields["entries"] = int(entries)
        fields["index"] = {"coder": name, "bytes": len(data)}
        streams.append(data)
    levels = int(symbols.max()) + 1
    name, data = encode_symbols(symbols, coder, alphabet_size=levels)
    fields["values"] = {"coder": name, "bytes": len(data)}
    streams += [data, np.asarray([step], dtype="<f4").tobytes()]
    fields[CODING] = {"seed": seed, "levels": levels, "zero_point": zero_point,
                      "codebook": False, "lattice": "a2"}
    return fields, b"".join(streams)
