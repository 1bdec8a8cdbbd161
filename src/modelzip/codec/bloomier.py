"""Weightless (Reagen et al. 2018): a pruned, clustered weight stored as a Bloomier filter
that maps each kept position to its cluster, instead of a sparse index plus values.

The filter is a table of ``cells`` cells of ``cell_bits`` bits (XOR-based, 3 hashes, built by
peeling). The table is split into three equal segments; position p hashes to one cell in each
(``bloomier_cells``), and its query value is the XOR of those three cells and of the
position's mask (a hash of ``cell_bits`` bits, which makes the query of a position that is
not in the filter look random). Every kept position
queries to its cluster number c + 1 (1 .. clusters); any other position queries to a value
that looks random: 0 or above ``clusters`` means "zero", and a value in 1 .. clusters is a
false positive: that pruned weight takes the cluster's value. The false positive rate is about
clusters / 2**cell_bits, so the cell width trades bytes against false positives; training
with the false positives in place makes the network tolerate them.

An entry with ``"coding": "bloomier"`` (``modelzip.codec.tensor``)::

    values    {"coder", "bytes"}: the table's cells, one symbol each (0 .. 2**cell_bits - 1)
    bloomier  {"cells": 3 x segment, "cell_bits": 1..16, "seed": 0..2**32-1,
               "clusters": 1 .. 2**cell_bits - 1}

The payload is the values stream, then the ``clusters`` cluster values (float32,
little-endian). Hashes: for position p and segment i in 0..2, ``x = seed * 2**32 + p * 4 + i``
(as uint64; positions below 2**30), mixed by SplitMix64's finalizer (``z = x +
0x9E3779B97F4A7C15; z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) *
0x94D049BB133111EB; z ^= z >> 31``, all mod 2**64); the cell is ``i * segment + z mod
segment``; the mask is the top ``cell_bits`` bits of the mix of ``x`` with i = 3.

Building fails when the positions' hash hypergraph has a 2-core (the peeling stops); with 3
hashes that is rare above about 1.23 cells per position. ``build_bloomier`` then raises
``FilterSizeError`` naming the smallest size that works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from modelzip.codec.coders import CODERS, decode_symbols, encode_symbols
from modelzip.errors import ArtifactError, ConfigError

__all__ = ["MAX_CELL_BITS", "MAX_SEED", "BloomierSpec", "FilterSizeError", "bloomier_cells",
           "bloomier_weights", "build_bloomier", "check_bloomier", "decode_bloomier",
           "encode_bloomier", "query_bloomier", "smallest_cells"]

CODING = "bloomier"
MAX_CELL_BITS = 16
MAX_SEED = 2**32 - 1
MAX_POSITION = 1 << 30
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class FilterSizeError(ConfigError):
    """A Bloomier filter cannot hold the positions at the size asked for."""


def _mix(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def bloomier_cells(positions: np.ndarray, cells: int, seed: int, cell_bits: int
                   ) -> np.ndarray:
    """Per position (n x 4, int64): its three cells (one per segment), then its mask."""
    segment = np.uint64(cells // 3)
    p = np.asarray(positions, dtype=np.uint64).ravel()
    base = (np.uint64(seed) << np.uint64(32)) + (p << np.uint64(2))
    out = np.empty((p.size, 4), dtype=np.int64)
    with np.errstate(over="ignore"):
        for i in range(3):
            out[:, i] = (_mix(base + np.uint64(i)) % segment).astype(np.int64) \
                + i * int(segment)
        out[:, 3] = (_mix(base + np.uint64(3)) >> np.uint64(64 - cell_bits)).astype(np.int64)
    return out


def query_bloomier(table: np.ndarray, count: int, seed: int, cell_bits: int) -> np.ndarray:
    """The query value of every position 0 .. count-1 (int64)."""
    t = np.asarray(table, dtype=np.int64)
    out = np.zeros(count, dtype=np.int64)
    chunk = 1 << 20
    for start in range(0, count, chunk):
        h = bloomier_cells(np.arange(start, min(count, start + chunk)), t.size, seed,
                           cell_bits)
        out[start:start + h.shape[0]] = t[h[:, 0]] ^ t[h[:, 1]] ^ t[h[:, 2]] ^ h[:, 3]
    return out


def _peel(h: np.ndarray, cells: int) -> list[tuple[int, int]] | None:
    """The peeling order: (key, its free cell) pairs, last to assign first; None when the
    hypergraph has a 2-core."""
    n = h.shape[0]
    rows = h[:, :3].tolist()
    degree = np.bincount(h[:, :3].ravel(), minlength=cells).tolist()
    xor_keys = [0] * cells
    for key, row in enumerate(rows):
        for c in row:
            xor_keys[c] ^= key
    stack = [c for c in range(cells) if degree[c] == 1]
    order = []
    while stack:
        c = stack.pop()
        if degree[c] != 1:
            continue
        key = xor_keys[c]
        order.append((key, c))
        for loc in rows[key]:
            degree[loc] -= 1
            xor_keys[loc] ^= key
            if degree[loc] == 1:
                stack.append(loc)
    return order if len(order) == n else None


def _try_build(positions: np.ndarray, values: np.ndarray, cells: int, seed: int,
               cell_bits: int) -> np.ndarray | None:
    h = bloomier_cells(positions, cells, seed, cell_bits)
    order = _peel(h, cells)
    if order is None:
        return None
    table = [0] * cells
    rows = h.tolist()
    vals = values.tolist()
    for key, free in reversed(order):
        a, b, c, mask = rows[key]
        table[free] = 0
        table[free] = vals[key] ^ mask ^ table[a] ^ table[b] ^ table[c]
    return np.asarray(table, dtype=np.int64)


def smallest_cells(positions: np.ndarray, values: np.ndarray, start: int, seed: int,
                   cell_bits: int, limit: int) -> int | None:
    """The smallest table size (a multiple of 3, from ``start`` up, growing by about 1%)
    at which the filter builds with ``seed``; None when none up to ``limit`` does."""
    cells = max(3, start - start % 3)
    while cells <= limit:
        if _try_build(positions, values, cells, seed, cell_bits) is not None:
            return cells
        cells += max(3, (cells // 100) // 3 * 3)
    return None


def build_bloomier(positions: np.ndarray, values: np.ndarray, cells: int, cell_bits: int,
                   seed: int) -> np.ndarray:
    """The table (``cells`` int64 cells) of a Bloomier filter in which each of
    ``positions`` queries to its value (1 .. 2**cell_bits - 1). FilterSizeError, saying the
    smallest size that works, when the peeling fails at this size."""
    positions = np.asarray(positions, dtype=np.int64).ravel()
    values = np.asarray(values, dtype=np.int64).ravel()
    if not 1 <= cell_bits <= MAX_CELL_BITS:
        raise ConfigError(f"bloomier: cell_bits must be in 1..{MAX_CELL_BITS}, got {cell_bits}")
    if positions.size != values.size:
        raise ValueError("one value per position")
    if values.size and (int(values.min()) < 1 or int(values.max()) >= 1 << cell_bits):
        raise ConfigError(f"bloomier: values must lie in 1..{(1 << cell_bits) - 1} for "
                          f"{cell_bits}-bit cells, got {int(values.min())}..{int(values.max())}")
    if positions.size and (int(positions.min()) < 0 or int(positions.max()) >= MAX_POSITION):
        raise ConfigError(f"bloomier: positions must lie in 0..{MAX_POSITION - 1}")
    if cells < 3 or cells % 3:
        raise ConfigError(f"bloomier: cells must be a multiple of 3 (three segments), got "
                          f"{cells}")
    table = (_try_build(positions, values, cells, seed, cell_bits)
             if positions.size <= cells else None)
    if table is None:
        smallest = smallest_cells(positions, values, max(cells, positions.size), seed,
                                  cell_bits, limit=4 * positions.size + 30)
        works = (f"the smallest size that works is {smallest} cells "
                 f"({smallest / max(1, positions.size):.3f} per position)"
                 if smallest else "no size up to 4 per position works with this seed")
        raise FilterSizeError(f"a Bloomier filter of {cells} cells cannot hold "
                              f"{positions.size} positions (the peeling stops); {works}")
    return table


def bloomier_weights(table: np.ndarray, count: int, seed: int, cell_bits: int,
                     codebook: np.ndarray) -> np.ndarray:
    """The float32 tensor (flat) that a filter and its cluster values decode to: the coding's
    one formula, shared by the quantizer and the decoder."""
    book = np.concatenate([[np.float32(0)], np.asarray(codebook, dtype=np.float32)])
    v = query_bloomier(table, count, seed, cell_bits)
    v[v > book.size - 1] = 0
    return book[v]


@dataclass(frozen=True)
class BloomierSpec:
    """A bloomier entry, checked."""

    value_coder: str
    value_bytes: int
    cells: int
    cell_bits: int
    seed: int
    clusters: int

    @property
    def side_bytes(self) -> int:
        return 4 * self.clusters


def _int(d: Any, key: str, where: str, lo: int, hi: int) -> int:
    value = d.get(key) if isinstance(d, dict) else None
    if type(value) is not int or not lo <= value <= hi:
        raise ArtifactError(f"{where}: field {key!r} is missing or not an integer in "
                            f"{lo}..{hi}")
    return value


def check_bloomier(entry: dict[str, Any], where: str, count: int) -> BloomierSpec:
    """The bloomier fields of a tensor entry, checked; ArtifactError naming the field."""
    if count >= MAX_POSITION:
        raise ArtifactError(f"{where}: a Bloomier filter codes at most {MAX_POSITION - 1} "
                            "positions")
    info = entry.get(CODING)
    if not isinstance(info, dict):
        raise ArtifactError(f"{where}: field 'bloomier' is missing or not an object")
    at = f"{where} bloomier"
    cells = _int(info, "cells", at, 3, 3 * count + 3)
    if cells % 3:
        raise ArtifactError(f"{at}: cells = {cells} is not a multiple of 3")
    cell_bits = _int(info, "cell_bits", at, 1, MAX_CELL_BITS)
    seed = _int(info, "seed", at, 0, MAX_SEED)
    clusters = _int(info, "clusters", at, 1, (1 << cell_bits) - 1)
    values = entry.get("values")
    coder = values.get("coder") if isinstance(values, dict) else None
    if coder not in CODERS:
        raise ArtifactError(f"{where}: values coder {coder!r} is unknown (known: "
                            f"{', '.join(sorted(CODERS))})")
    value_bytes = _int(values, "bytes", f"{where} values", 0, 1 << 62)
    return BloomierSpec(coder, value_bytes, cells, cell_bits, seed, clusters)


def decode_bloomier(spec: BloomierSpec, buf: np.ndarray, count: int, where: str
                    ) -> np.ndarray:
    """The float32 elements (flat) of a checked bloomier entry; ``buf``: its payload."""
    table = decode_symbols(spec.value_coder, buf[:spec.value_bytes], spec.cells)
    if table.size and int(table.max()) >= 1 << spec.cell_bits:
        raise ArtifactError(f"{where}: a filter cell holds {int(table.max())}, more than "
                            f"{spec.cell_bits} bits")
    book = buf[spec.value_bytes:].view("<f4").astype(np.float32)
    return bloomier_weights(table, count, spec.seed, spec.cell_bits, book)


def encode_bloomier(array: np.ndarray, hint: Any, coder: str
                    ) -> tuple[dict[str, Any], bytes] | None:
    """The bloomier fields and payload of a float32 ``array`` that a bloomier hint describes
    (``{"kind": "bloomier", "table", "cell_bits", "seed", "codebook"}``), or None when the
    hint does not reproduce the array bit for bit."""
    if array.dtype != np.float32 or array.size == 0 or array.size >= MAX_POSITION:
        return None
    try:
        table = np.asarray(hint["table"]).astype(np.int64).ravel()
        cell_bits, seed = int(hint["cell_bits"]), int(hint["seed"])
        book = np.asarray(hint["codebook"], dtype=np.float32).ravel()
    except (KeyError, TypeError, ValueError):
        raise ArtifactError("a bloomier hint needs table, cell_bits, seed and codebook") \
            from None
    if (table.size < 3 or table.size % 3 or not 1 <= cell_bits <= MAX_CELL_BITS
            or not 1 <= book.size < 1 << cell_bits or not 0 <= seed <= MAX_SEED
            or int(table.min()) < 0 or int(table.max()) >= 1 << cell_bits):
        return None
    decoded = bloomier_weights(table, array.size, seed, cell_bits, book)
    if decoded.tobytes() != np.ascontiguousarray(array, dtype=np.float32).ravel().tobytes():
        return None
    name, data = encode_symbols(table, coder, alphabet_size=1 << cell_bits)
    fields = {"coding": CODING, "layout": "dense", "values": {"coder": name, "bytes": len(data)},
              CODING: {"cells": int(table.size), "cell_bits": cell_bits, "seed": seed,
                       "clusters": int(book.size)}}
    return fields, data + book.astype("<f4").tobytes()
