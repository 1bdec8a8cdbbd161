"""docs/FORMAT.md is precise enough to write a decoder from: this one follows the document
alone (standard library only; modelzip writes the files, never decodes them here) and must read
every layout, value coding and coder that the writer produces, bit for bit, and the document's
worked example."""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelzip.codec.artifact import read_artifact, write_artifact

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


class Corrupt(Exception):
    pass


# ---------------------------------------------------------------------------- primitives
def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(9):
        if pos >= len(buf):
            raise Corrupt("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos
    raise Corrupt("varint longer than 9 bytes")


def bits_msb_first(buf: bytes, count: int, width: int) -> list[int]:
    """``count`` numbers of ``width`` bits, most significant bit first."""
    if (count * width + 7) // 8 > len(buf):
        raise Corrupt("bit-packed numbers: too few bytes")
    out, bit = [], 0
    for _ in range(count):
        value = 0
        for _ in range(width):
            value = (value << 1) | ((buf[bit >> 3] >> (7 - (bit & 7))) & 1)
            bit += 1
        out.append(value)
    return out


class BitReader:
    """Bits of ``buf`` from byte ``pos`` on, MSB first."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.bit = buf, 8 * pos

    def read(self, width: int) -> int:
        value = 0
        for _ in range(width):
            if self.bit >= 8 * len(self.buf):
                raise Corrupt("bits run past the data")
            value = (value << 1) | ((self.buf[self.bit >> 3] >> (7 - (self.bit & 7))) & 1)
            self.bit += 1
        return value

    def exp_golomb(self, k: int) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
            if zeros + k > 62:
                raise Corrupt("exp-golomb code too long")
        return (((1 << (zeros + k)) | self.read(zeros + k)) - (1 << k))

    def end(self) -> int:
        """The byte after the last bit read."""
        return (self.bit + 7) // 8


def table(buf: bytes, pos: int) -> tuple[list[int], list[int], int]:
    """A symbol table: (present symbols, their positive values, position after it)."""
    mode = buf[pos]
    if mode > 4:
        raise Corrupt("table form")
    n, pos = varint(buf, pos + 1)
    if mode == 4:  # bit-coded: Exp-Golomb gaps, then zigzag value differences
        if not 1 <= n <= 16384:
            raise Corrupt("bit-coded table size")
        k_gap, k_value = buf[pos] & 15, buf[pos] >> 4
        reader = BitReader(buf, pos + 1)
        gaps = [reader.exp_golomb(k_gap) for _ in range(n)]
        zigzags = [reader.exp_golomb(k_value) for _ in range(n)]
        symbols, values, symbol, value = [], [], -1, 0
        for gap, z in zip(gaps, zigzags, strict=True):
            symbol += gap + 1
            value += z // 2 if z % 2 == 0 else -(z + 1) // 2
            if value < 1:
                raise Corrupt("table value")
            symbols.append(symbol)
            values.append(value)
        return symbols, values, reader.end()
    if mode & 1:  # sparse: gaps between present symbols
        symbols, last = [], -1
        for _ in range(n):
            gap, pos = varint(buf, pos)
            last += gap + 1
            symbols.append(last)
    else:  # dense: symbols 0..n-1
        symbols = list(range(n))
    if mode & 2:  # values as varints
        values = []
        for _ in range(n):
            v, pos = varint(buf, pos)
            values.append(v)
    else:  # one width byte, then the values bit-packed
        width = buf[pos]
        values = bits_msb_first(buf[pos + 1:], n, width)
        pos += 1 + (n * width + 7) // 8
    present = [(s, v) for s, v in zip(symbols, values, strict=True) if v > 0]
    return [s for s, _ in present], [v for _, v in present], pos


# ---------------------------------------------------------------------------- coders
def raw_decode(data: bytes, count: int) -> list[int]:
    if count == 0:
        return []
    width = data[0]
    if len(data) - 1 != (count * width + 7) // 8:
        raise Corrupt("raw stream size")
    return bits_msb_first(data[1:], count, width) if width else [0] * count


def huffman_decode(data: bytes, count: int) -> list[int]:
    if count == 0:
        return []
    symbols, lengths, pos = table(data, 0)
    if len(symbols) == 1:
        return symbols * count
    # canonical code: by (length, symbol), each code the previous + 1, shifted left to length
    order = sorted(zip(lengths, symbols, strict=True))
    codes, code, previous = {}, 0, order[0][0]
    for length, symbol in order:
        code <<= length - previous
        codes[(length, code)] = symbol
        code += 1
        previous = length
    payload, out, value, length, bit = data[pos:], [], 0, 0, 0
    while len(out) < count:
        if bit >= 8 * len(payload):
            raise Corrupt("huffman stream ends early")
        value = (value << 1) | ((payload[bit >> 3] >> (7 - (bit & 7))) & 1)
        length += 1
        bit += 1
        if (length, value) in codes:
            out.append(codes[(length, value)])
            value = length = 0
        elif length > 24:
            raise Corrupt("no code")
    if (bit + 7) // 8 != len(payload):
        raise Corrupt("huffman stream size")
    return out


def rans_decode(data: bytes, count: int) -> list[int]:
    if count == 0:
        return []
    if data[0] == 0x10:
        return rans_binned_decode(data, count)
    symbols, counts, pos = table(data, 0)
    if sum(counts) != count:
        raise Corrupt("frequency table")
    if len(symbols) == 1:
        return symbols * count
    return [symbols[r] for r in rans_ranks(data[pos:], counts, count)]


def rans_binned_decode(data: bytes, count: int) -> list[int]:
    b, m = data[1] & 63, data[1] >> 6
    if b > 32:
        raise Corrupt("split bits")
    bins, levels, pos = table(data, 2)
    k = 1 << m
    frequencies = [q if q < 2 * k else (k + (q - 2 * k) % k) << ((q - 2 * k) // k + 1)
                   for q in levels]

    def extra_bits(t: int) -> int:
        return max((t >> b) - 1, 0)

    def bin_start(t: int) -> int:
        w = extra_bits(t)
        return ((1 << b) + t % (1 << b)) << w if w else t

    if len(bins) == 1:
        if extra_bits(bins[0]) == 0:
            raise Corrupt("single bin without extra bits")
        ranks, rest = [0] * count, data[pos:]
    else:
        if any(extra_bits(t) for t in bins):
            size, pos = varint(data, pos)
            end = pos + size
        else:
            end = len(data)
        ranks = [r - 1 for r in rans_ranks(data[pos:end], [0, *frequencies], count)]
        if min(ranks) < 0:
            raise Corrupt("rank 0")
        rest = data[end:]
    reader, out = BitReader(rest, 0), []
    for r in ranks:
        out.append(bin_start(bins[r]) + reader.read(extra_bits(bins[r])))
    if reader.end() != len(rest):
        raise Corrupt("extra bits size")
    return out


def rans_ranks(payload: bytes, counts: list[int], count: int) -> list[int]:
    # the model: a fixed-point CDF of 24 bits, quantized from the counts in float64
    n = len(counts)
    scale = float((1 << 24) - n) / float(sum(counts))
    cdf, cumulative = [], 0.0
    for i, c in enumerate(counts):
        cdf.append(int(cumulative * scale) + i)
        cumulative += float(c)
    cdf.append(1 << 24)
    payload += b"\0" * (-len(payload) % 4)
    stack = list(struct.unpack(f"<{len(payload) // 4}I", payload))
    state = 0
    if stack:  # the last word is the top of the stack
        state = stack.pop()
        while stack and state < 1 << 32:
            state = (state << 32) | stack.pop()
    ranks = []
    for _ in range(count):
        quantile = state & ((1 << 24) - 1)
        r = bisect.bisect_right(cdf, quantile) - 1
        state = (state >> 24) * (cdf[r + 1] - cdf[r]) + quantile - cdf[r]
        if state < 1 << 32 and stack:
            state = (state << 32) | stack.pop()
        ranks.append(r)
    if state != 0 or stack:
        raise Corrupt("rans: data left over")
    return ranks


CODERS = {"raw": raw_decode, "huffman": huffman_decode, "rans": rans_decode}


# ---------------------------------------------------------------------------- manifest
def static_strings() -> list[str]:
    """The string table's start, as docs/FORMAT.md lists it."""
    block = re.search(r"```strings\n(.*?)```", FORMAT_MD.read_text(encoding="utf-8"), re.S)
    assert block, "docs/FORMAT.md has no ```strings block"
    return [line.split(maxsplit=1)[1] for line in block.group(1).splitlines() if line.strip()]


def compact_manifest(buf: bytes) -> Any:
    """The version 3 manifest encoding, section 3.1."""
    strings, shapes, pos = static_strings(), [], 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(buf):
            raise Corrupt("manifest: truncated")
        pos += n
        return buf[pos - n:pos]

    def number() -> int:
        nonlocal pos
        value, pos = varint(buf, pos)
        return value

    def string(tag: int) -> str:
        if 0x40 <= tag < 0x70:
            return strings[tag - 0x40]
        if tag == 0x0B:
            return strings[number()]
        if tag == 0x0F:
            s = string(take(1)[0])
            s += string(take(1)[0])
        else:
            s = take(tag - 0x10 if 0x10 <= tag < 0x20 else number()).decode("utf-8")
        strings.append(s)
        return s

    def value() -> Any:
        tag = take(1)[0]
        if tag >= 0x80:
            return tag - 0x80
        if 0x70 <= tag < 0x80:
            return {key: value() for key in shapes[tag - 0x70]}
        if 0x30 <= tag < 0x40 or tag == 0x0E:
            n = tag - 0x30 if tag != 0x0E else number()
            out = {}
            for _ in range(n):
                key = string(take(1)[0])
                out[key] = value()
            if out and tuple(out) not in shapes:
                shapes.append(tuple(out))
            return out
        if 0x20 <= tag < 0x30 or tag == 0x0D:
            return [value() for _ in range(tag - 0x20 if tag != 0x0D else number())]
        if tag >= 0x10 or tag in (0x0B, 0x0C, 0x0F):
            return string(tag)
        if tag <= 2:
            return [None, False, True][tag]
        if tag == 3:
            return struct.unpack("<d", take(8))[0]
        if tag in (4, 5):
            m, e = number(), number()
            e = e // 2 if e % 2 == 0 else -(e + 1) // 2
            return float(f"{'-' if tag == 5 else ''}{m}e{e}")
        if tag == 6:
            return number()
        if tag == 7:
            return -number() - 1
        if tag == 8:
            return struct.unpack("<I", take(4))[0]
        magnitude = int.from_bytes(take(number()), "little")
        return magnitude if tag == 9 else -magnitude

    out = value()
    assert pos == len(buf)
    return out


# ---------------------------------------------------------------------------- file
def decode_file(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, bytes]]:
    if b"MZFC" in (data[0:4], data[20:24], data[40:44]):
        data = strip_fec(data)
    magic, version = struct.unpack_from("<4sH", data, 0)
    assert magic == b"MZIP" and version in (1, 2, 3)
    if version == 3:
        flags = data[6]
        m_len, pos = varint(data, 7)
        c_len, head = varint(data, pos)
    else:
        _, _, flags, m_len, c_len = struct.unpack_from("<4sHHIQ", data, 0)
        head = 20
    assert flags & ~3 == 0
    if flags & 2:  # signed: public key and signature after the SHA-256
        assert len(data) == head + m_len + c_len + 32 + 96
        data = data[:-96]
    assert len(data) == head + m_len + c_len + 32
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    raw = data[head:head + m_len]
    raw = zlib.decompress(raw, wbits=-15) if flags & 1 else raw
    manifest = json.loads(raw) if version < 3 else compact_manifest(raw)
    chunks, pos = {}, head + m_len
    for name, length, crc in manifest["chunks"]:
        chunks[name] = data[pos:pos + length]
        assert zlib.crc32(chunks[name]) == crc
        pos += length
    tensors = {name: decode_tensor(entry, chunks["tensor:" + name], version, name)
               for name, entry in manifest["tensors"].items()}
    blobs = {name: chunks["blob:" + name] for name in manifest["blobs"]}
    return manifest, tensors, blobs


def strip_fec(data: bytes) -> bytes:
    """An undamaged FEC file: three header copies, then the interleaved codewords; the
    protected bytes are the first 255 - P bytes of each codeword, in order."""
    magic, fec_version, nsym, length, crc = struct.unpack_from("<4sHHQI", data, 0)
    assert magic == b"MZFC" and fec_version == 1 and zlib.crc32(data[:16]) == crc
    assert data[0:20] == data[20:40] == data[40:60]
    k = 255 - nsym
    n = -(-length // k)
    body = data[60:]
    assert len(body) == 255 * n
    words = [bytes(body[j * n + i] for j in range(255)) for i in range(n)]
    return b"".join(w[:k] for w in words)[:length]


def decode_tensor(entry: dict[str, Any], payload: bytes, version: int = 2,
                  name: str = "") -> np.ndarray:
    dtype = np.dtype(entry["dtype"])
    size = dtype.itemsize
    count = int(np.prod(entry["shape"], dtype=np.int64))
    pos = 0
    positions = None
    if entry["layout"] != "dense":
        n = entry["entries"]
        live_rows, live_cols = entry["lines"] if entry["layout"] == "sparse-lines" else (0, 0)
        index = CODERS[entry["index"]["coder"]](payload[:entry["index"]["bytes"]],
                                                live_rows + live_cols + n)
        pos = entry["index"]["bytes"]

        def gaps_to_positions(gaps: list[int], limit: int) -> list[int]:
            out, at = [], -1
            for gap in gaps:
                assert gap < limit
                at += gap + 1
                out.append(at)
            assert not out or out[-1] < limit
            return out

        if entry["layout"] == "sparse-lines":
            rows = entry["shape"][0]
            width = count // rows
            row_at = gaps_to_positions(index[:live_rows], rows)
            col_at = gaps_to_positions(index[live_rows:live_rows + live_cols], width)
            within = gaps_to_positions(index[live_rows + live_cols:], live_rows * live_cols)
            positions = [row_at[p // live_cols] * width + col_at[p % live_cols]
                         for p in within]
        else:
            positions = gaps_to_positions(index, count)
    else:
        n = count
    values_info = entry["values"]
    data = payload[pos:pos + values_info["bytes"]]
    pos += values_info["bytes"]
    if values_info["coder"] == "plain":
        words = [int.from_bytes(data[i * size:(i + 1) * size], "little") for i in range(n)]
    elif "codebook" in entry:
        book = payload[pos:pos + entry["codebook"]["bytes"]]
        if entry["codebook"].get("dtype") == "float16":  # binary16, widened to float32
            assert entry["dtype"] == "float32"
            book_words = [struct.unpack("<I", struct.pack("<f", struct.unpack(
                "<e", book[2 * i:2 * i + 2])[0]))[0] for i in range(entry["codebook"]["size"])]
        else:
            book_words = [int.from_bytes(book[i * size:(i + 1) * size], "little")
                          for i in range(entry["codebook"]["size"])]
        words = [book_words[i] for i in CODERS[values_info["coder"]](data, n)]
    else:  # the affine grid: integers k, then float32 scales and coded zero points
        grid = entry["grid"]
        channels = grid["channels"]
        ks = CODERS[values_info["coder"]](data, n)
        scales = struct.unpack(f"<{channels}f", payload[pos:pos + 4 * channels])
        zp_at = pos + 4 * channels
        zero_points = CODERS[grid["zero_points"]["coder"]](
            payload[zp_at:zp_at + grid["zero_points"]["bytes"]], channels)
        per_row = count // channels
        words = []
        for i, k in enumerate(ks):
            assert k < grid["levels"]
            element = i if positions is None else positions[i]
            c = 0 if channels == 1 else element // per_row
            value = (np.float32(k) - np.float32(zero_points[c])) * np.float32(scales[c])
            words.append(int(np.array(value, dtype="<f4").view("<u4")))
    bits = [0] * count
    for i, w in enumerate(words):
        bits[i if positions is None else positions[i]] = w
    raw = b"".join(w.to_bytes(size, "little") for w in bits)
    assert sum(1 for w in bits if w) == entry["nonzeros"]
    if version == 1:
        assert zlib.crc32(raw) == entry["decoded_crc32"]
    else:  # the descriptor "name NUL dtype:d0,d1,...;" and then the bytes
        descriptor = (name.encode() + b"\0"
                      + f"{entry['dtype']}:{','.join(map(str, entry['shape']))};".encode())
        assert zlib.crc32(descriptor + raw) == entry["tensor_crc32"]
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(entry["shape"])


# ---------------------------------------------------------------------------- tests
def arrays() -> dict[str, np.ndarray]:
    """Small tensors that make the writer choose every layout and value coding."""
    rng = np.random.default_rng(0)
    sparse = np.zeros(600, np.float32)
    sparse[rng.choice(600, 40, replace=False)] = rng.choice([-0.5, 0.25, 1.0], 40)
    dead_units = np.zeros((40, 3, 5), np.float32)  # sparse-lines: rows 3, 17, 30 and 6 columns
    live = np.random.default_rng(1).choice([0.5, -1.0], (3, 6))  # own rng: the rest unchanged
    dead_units.reshape(40, 15)[np.ix_([3, 17, 30], [0, 4, 7, 8, 11, 14])] = live
    far = np.zeros(3000, np.int8)  # long runs of zeros: the fixed-width gaps need fillers
    far[rng.choice(3000, 30, replace=False)] = rng.choice([3, -2, 7], 30).astype(np.int8)
    return {
        "dense_codebook": rng.choice([-1.5, 0.0, 2.0, 7.25], (8, 16)).astype(np.float32),
        "dense_plain": rng.standard_normal(37).astype(np.float32),
        "sparse": sparse,
        "far": far,
        "dead_units": dead_units,
        "skewed": np.repeat(np.arange(5, dtype=np.int32), [200, 50, 10, 3, 1]),
        "uint16": rng.integers(0, 4, 100).astype(np.uint16),
        "bool": rng.random(70) < 0.3,
        "float16": rng.choice([0.5, -2.0, 0.0], 50).astype(np.float16),
        "int64": np.array([5, -7, 1 << 40], np.int64),
        "one_value": np.full(33, 9, np.int16),
        "zeros": np.zeros((2, 3), np.float64),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "negative_zero": np.array([-0.0, 0.0, np.nan, 1.0], np.float32),
    }


@pytest.mark.parametrize("coder", ["best", "huffman", "rans", "raw"])
def test_independent_decoder_reads_every_layout(coder: str) -> None:
    inputs = arrays()
    data = write_artifact(inputs, model={"kind": "test"}, blobs={"graph": b"\x00\x01graph"},
                          meta={"note": "é"}, coder=coder)
    manifest, tensors, blobs = decode_file(data)
    assert blobs == {"graph": b"\x00\x01graph"}
    assert manifest["model"] == {"kind": "test"} and manifest["meta"] == {"note": "é"}
    for name, array in inputs.items():
        assert tensors[name].shape == array.shape, name
        assert tensors[name].tobytes() == np.ascontiguousarray(
            array, dtype=array.dtype.newbyteorder("<")).tobytes(), name
    entries = manifest["tensors"].values()
    if coder == "best":  # the arrays do reach every layout and value coding
        assert {e["layout"] for e in entries} == {"dense", "sparse-gaps", "sparse-fixed",
                                                  "sparse-lines"}
        assert {"plain", "huffman", "raw"} <= {e["values"]["coder"] for e in entries}
        books = [e["codebook"] for e in entries if "codebook" in e]
        assert {b.get("dtype") for b in books} == {None, "float16"}
    else:
        assert {e["values"]["coder"] for e in entries} <= {coder, "plain"}


@pytest.mark.parametrize("coder", ["best", "huffman", "rans", "raw"])
def test_independent_decoder_reads_affine_grids(coder: str) -> None:
    """Per-channel and per-tensor grids, dense and pruned, as uniform quantization writes
    them (the writer is given the scales as a hint, as modelzip.codec.model.pack does)."""
    rng = np.random.default_rng(2)
    scales = (rng.random(6) * 0.1 + 0.01).astype(np.float32)
    k = rng.integers(0, 16, (6, 40))
    per_channel = ((k.astype(np.float32) - np.float32(8)) * scales[:, None]).astype(np.float32)
    pruned = per_channel.copy()
    pruned[rng.random(pruned.shape) < 0.7] = 0.0
    one = np.float32(0.05)
    per_tensor = ((rng.integers(0, 8, 90).astype(np.float32) - np.float32(3)) * one)
    inputs = {"per_channel": per_channel, "pruned": pruned, "per_tensor": per_tensor}
    hints = {"per_channel": {"scale": scales, "axis": 0},
             "pruned": {"scale": scales, "axis": 0},
             "per_tensor": {"scale": np.array([one]), "axis": None}}
    data = write_artifact(inputs, coder=coder, hints=hints)
    manifest, tensors, _ = decode_file(data)
    assert all("grid" in manifest["tensors"][name] for name in inputs)
    for name, array in inputs.items():
        assert tensors[name].tobytes() == array.astype("<f4").tobytes(), name


def test_independent_rans_decoder_reads_long_streams() -> None:
    rng = np.random.default_rng(1)
    big = rng.choice(np.arange(40, dtype=np.uint8), 20000, p=np.r_[[0.5], [0.5 / 39] * 39])
    data = write_artifact({"big": big}, coder="rans")
    _, tensors, _ = decode_file(data)
    assert np.array_equal(tensors["big"], big)


def example_bytes() -> bytes:
    text = FORMAT_MD.read_text(encoding="utf-8")
    block = re.search(r"```hex\n(.*?)```", text, re.S)
    assert block, "docs/FORMAT.md has no ```hex block"
    return bytes.fromhex("".join(line.split("|")[0].split(":", 1)[-1]
                                 for line in block.group(1).splitlines()).replace(" ", ""))


def test_the_worked_example_decodes_as_the_document_says() -> None:
    data = example_bytes()
    manifest, tensors, _ = decode_file(data)
    assert read_artifact(data).tensors.keys() == tensors.keys()
    text = FORMAT_MD.read_text(encoding="utf-8")
    for name, array in tensors.items():
        assert np.array_equal(read_artifact(data).tensors[name], array)
        assert f"`{name}`" in text
    # the document shows the manifest it inflates to
    assert json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False) in text.replace("\n", "")


def test_independent_decoder_reads_signed_and_fec_files(tmp_path: Path) -> None:
    from modelzip.codec.artifact import protect_artifact
    from modelzip.flight.sign import generate_keys

    key, _ = generate_keys(tmp_path)
    inputs = arrays()
    plain = write_artifact(inputs)
    for fec, sign in ((0.08, None), (None, key), (0.2, key)):
        _, tensors, _ = decode_file(protect_artifact(plain, fec=fec, sign=sign))
        for name, array in inputs.items():
            assert tensors[name].tobytes() == np.ascontiguousarray(array).tobytes(), name


def test_fec_parity_is_the_documented_reed_solomon_code() -> None:
    """Every codeword, read as a polynomial (first byte highest), vanishes at 2^0 .. 2^(P-1)
    in GF(2^8) with the primitive polynomial 0x11d (docs/FORMAT.md, section 13)."""
    from modelzip.codec.artifact import protect_artifact

    def gf_mul(a: int, b: int) -> int:
        out = 0
        while b:
            if b & 1:
                out ^= a
            a <<= 1
            if a & 0x100:
                a ^= 0x11D
            b >>= 1
        return out

    data = protect_artifact(write_artifact(arrays()), fec=0.05)
    nsym, length = struct.unpack_from("<HQ", data, 6)
    n = -(-length // (255 - nsym))
    body = data[60:]
    for i in range(0, n, max(1, n // 3)):
        word = [body[j * n + i] for j in range(255)]
        root = 1
        for _ in range(nsym):
            value = 0
            for byte in word:
                value = gf_mul(value, root) ^ byte
            assert value == 0
            root = gf_mul(root, 2)


def test_independent_decoder_reads_the_compact_manifest_of_version_3() -> None:
    from modelzip.codec.manifest import STATIC_STRINGS

    assert static_strings() == list(STATIC_STRINGS)
    meta = {"mean": [0.1307, -0.0, 1e300, 1 / 3], "big": [2**70, -(2**70), -5, 3_000_000_000],
            "flags": [True, False, None], "names": ["tensor:x", "é" * 20, ""],
            "deep": {"a": {"b": [{"c": 1}, {"c": 2}, {"c": 3}]}}, "many": list(range(40)),
            "wide": {f"k{i}": i for i in range(20)}}
    data = write_artifact(arrays(), meta=meta, model={"zoo": "lenet5", "kwargs": {}})
    assert int.from_bytes(data[4:6], "little") == 3
    manifest, tensors, _ = decode_file(data)
    art = read_artifact(data)
    assert manifest == art.manifest and manifest["meta"] == meta
    assert all(tensors[k].tobytes() == art.tensors[k].tobytes() for k in tensors)


def test_independent_decoder_reads_compact_tables() -> None:
    """Index gaps of a pruned layer: a binned rANS model, and a bit-coded Huffman table."""
    from modelzip.codec.container import read_container

    rng = np.random.default_rng(2)
    sparse = np.where(rng.random((60, 200)) < 0.03, rng.integers(1, 9, (60, 200)),
                      0).astype(np.int8)
    for coder, first_byte in (("rans", 0x10), ("huffman", 4)):
        data = write_artifact({"w": sparse}, coder=coder)
        _, tensors, _ = decode_file(data)
        assert np.array_equal(tensors["w"], sparse)
        assert bytes(read_container(data).chunks["tensor:w"])[0] == first_byte
