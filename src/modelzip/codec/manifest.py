"""The compact manifest of format version 3: any JSON value in a few bytes.

A manifest is a JSON object (see artifact.py); version 2 stored it as canonical JSON text,
deflated. Version 3 stores the same value in a small binary encoding with a string table, so
that keys and strings every manifest repeats ("bytes", "coder", "float32", ...) cost one
byte, small integers one byte, and a repeated string (a tensor's name, after its chunk name)
one or two. It stays generic: any JSON-like value round-trips, whatever fields a writer adds.

A value starts with a tag byte::

    tag        value
    0x00       null
    0x01 0x02  false, true
    0x03       float: 8 bytes, IEEE 754 binary64, little-endian
    0x04 0x05  float, decimal: +/- m * 10**e; varint m, then varint zigzag(e) (e >= 0: 2e,
               e < 0: -2e - 1): the shortest decimal that reads back as the same double
    0x06       integer n >= 128: varint n
    0x07       integer n < 0: varint (-n - 1)
    0x08       integer 2**28 <= n < 2**32: 4 bytes, little-endian (a CRC32: one byte less
               than its varint)
    0x09 0x0a  integer n >= 2**63 (0x09) or n < -2**63 (0x0a): varint k, then |n| in k bytes,
               little-endian
    0x0b       string: varint i, the i-th string of the table
    0x0c       string: varint k, then k bytes of UTF-8 (added to the table)
    0x0d       array: varint count, then that many values
    0x0e       object: varint count, then that many (key, value) pairs; a key is a string
    0x0f       string: two string values follow; the string is the first then the second,
               joined (added to the table after its parts)
    0x10-0x1f  string of 0..15 bytes of UTF-8 (tag - 0x10), added to the table
    0x20-0x2f  array of 0..15 values
    0x30-0x3f  object of 0..15 pairs
    0x40-0x6f  string: the (tag - 0x40)-th string of the table
    0x70-0x7f  object of shape (tag - 0x70): the keys of that shape, in order; values only.
               An object read with its keys whose key list is not yet a shape becomes the
               next shape when it ends (inner objects first); the writer uses this tag for
               the first 16 shapes and writes the keys of any later one
    0x80-0xff  integer 0..127 (tag - 0x80)

The string table starts as ``STATIC_STRINGS`` (fixed for the format version), and every
string written out in full (0x0c, 0x10-0x1f) or joined (0x0f) is appended to it in the order
it is read. The encoder writes object keys in sorted order (the canonical JSON's order), so
the same value always gives the same bytes; non-string keys become strings as ``json.dumps``
makes them. The decoder trusts nothing: every count is bounded by the bytes left, strings
must be UTF-8, objects may not repeat a key, nesting is bounded, and nothing may follow the
value; each failure is an ``ArtifactError``.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import Any

from modelzip.errors import ArtifactError

__all__ = ["MAX_DEPTH", "STATIC_STRINGS", "decode_value", "encode_value"]

# Keys and strings that (almost) every manifest holds, most frequent first: the first 64
# strings of the table cost one byte per use. Fixed for format version 3.
STATIC_STRINGS = (
    "bytes", "coder", "dtype", "shape", "layout", "nonzeros", "values", "tensor_crc32",
    "float32", "dense", "sparse-gaps", "sparse-fixed", "plain", "huffman", "rans", "raw",
    "codebook", "size", "index", "entries", "gap_bits", "grid", "channels", "levels",
    "scales", "zero_points", "chunks", "tensors", "blobs", "model", "meta", "producer",
    "tensor:", "blob:", "modelzip ", "kind", "state-dict", "kwargs", "name", "parameters",
    "structure", "zoo", "input_shape", "dataset", "classes", "mean", "std", "weight", "bias",
    "int64", "int8", "uint8", "int32", "float16", "bool", "onnx-graph", "mnist",
)
MAX_DEPTH = 64  # nesting of arrays and objects (a manifest needs 5)
_FLOAT64 = struct.Struct("<d")
_UINT32 = struct.Struct("<I")
_VARINT_MAX = (1 << 63) - 1


class _Encoder:
    def __init__(self) -> None:
        self.out = bytearray()
        self.table: dict[str, int] = {s: i for i, s in enumerate(STATIC_STRINGS)}
        self.shapes: dict[tuple[str, ...], int] = {}  # key lists of the objects written
        # longest table strings first, for the joined-string search
        self.prefixes = sorted((s for s in STATIC_STRINGS if len(s) >= 3), key=len,
                               reverse=True)

    def varint(self, n: int) -> None:
        while n >= 0x80:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def value(self, v: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ArtifactError(f"the manifest nests deeper than {MAX_DEPTH} levels")
        if v is None:
            self.out.append(0x00)
        elif v is True or v is False:
            self.out.append(0x02 if v else 0x01)
        elif isinstance(v, int):
            self.integer(int(v))
        elif isinstance(v, float):
            self.float(float(v))
        elif isinstance(v, str):
            self.string(v)
        elif isinstance(v, list | tuple):
            self.count(0x20, 0x0D, len(v))
            for item in v:
                self.value(item, depth + 1)
        elif isinstance(v, dict):
            items = sorted((_key(k), item) for k, item in v.items())
            if len({k for k, _ in items}) != len(items):
                raise ArtifactError("the manifest has an object with two keys that are the "
                                    "same as JSON strings")
            keys = tuple(k for k, _ in items)
            shape = self.shapes.get(keys)
            if shape is not None and shape < 16:
                self.out.append(0x70 + shape)
            else:
                self.count(0x30, 0x0E, len(items))
            for key, item in items:
                if shape is None or shape >= 16:  # only shapes 0-15 have a tag of their own
                    self.string(key)
                self.value(item, depth + 1)
            # registered after the values, as the decoder does, and once: a nested object
            # with the same keys has registered them already
            if shape is None and keys and keys not in self.shapes:
                self.shapes[keys] = len(self.shapes)
        else:
            raise ArtifactError(f"the manifest is not plain JSON (a {type(v).__name__}); "
                                "model and meta may hold only dicts, lists, strings, finite "
                                "numbers, booleans and None")

    def count(self, short_tag: int, long_tag: int, n: int) -> None:
        if n < 16:
            self.out.append(short_tag + n)
        else:
            self.out.append(long_tag)
            self.varint(n)

    def integer(self, n: int) -> None:
        if 0 <= n < 0x80:
            self.out.append(0x80 + n)
        elif (1 << 28) <= n < (1 << 32):
            self.out.append(0x08)
            self.out += _UINT32.pack(n)
        elif 0 <= n <= _VARINT_MAX:
            self.out.append(0x06)
            self.varint(n)
        elif -n - 1 <= _VARINT_MAX and n < 0:
            self.out.append(0x07)
            self.varint(-n - 1)
        else:
            magnitude = abs(n)
            data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
            self.out.append(0x09 if n > 0 else 0x0A)
            self.varint(len(data))
            self.out += data

    def float(self, x: float) -> None:
        if not math.isfinite(x):
            raise ArtifactError(f"the manifest is not plain JSON ({x} is not a finite "
                                "number)")
        sign, digits, exponent = Decimal(repr(x)).as_tuple()
        mantissa = int("".join(map(str, digits)))
        while mantissa and mantissa % 10 == 0:  # 5.0: 5 * 10**0, not 50 * 10**-1
            mantissa, exponent = mantissa // 10, exponent + 1
        decimal = _Encoder()
        decimal.varint(mantissa)
        decimal.varint(2 * exponent if exponent >= 0 else -2 * exponent - 1)
        if mantissa <= _VARINT_MAX and len(decimal.out) < _FLOAT64.size:
            self.out.append(0x05 if sign else 0x04)
            self.out += decimal.out
        else:
            self.out.append(0x03)
            self.out += _FLOAT64.pack(x)

    def string(self, s: str, join: bool = True) -> None:
        index = self.table.get(s)
        if index is not None:
            if index < 48:
                self.out.append(0x40 + index)
            else:
                self.out.append(0x0B)
                self.varint(index)
            return
        prefix = next((p for p in self.prefixes if len(s) > len(p) and s.startswith(p)),
                      None) if join else None
        if prefix is not None:  # "tensor:" + "fc1.weight": the name is then in the table
            self.out.append(0x0F)
            self.string(prefix)
            self.string(s[len(prefix):], join=False)
        else:
            try:
                data = s.encode("utf-8")
            except UnicodeEncodeError:
                raise ArtifactError(f"the manifest holds a string that is not valid Unicode "
                                    f"({s[:40]!r})") from None
            self.count(0x10, 0x0C, len(data))
            self.out += data
        self.table[s] = len(self.table)


def _key(k: Any) -> str:
    """An object key as JSON writes it."""
    if isinstance(k, str):
        return k
    if k is True or k is False or k is None:
        return {True: "true", False: "false", None: "null"}[k]
    if isinstance(k, int):
        return str(int(k))
    if isinstance(k, float) and math.isfinite(k):
        return repr(float(k))
    raise ArtifactError(f"the manifest is not plain JSON (an object key {k!r})")


def encode_value(value: Any) -> bytes:
    """The compact encoding of a JSON-like value (dicts, lists, tuples, strings, ints, finite
    floats, booleans, None); ArtifactError for anything else."""
    encoder = _Encoder()
    encoder.value(value, 0)
    return bytes(encoder.out)


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.table: list[str] = list(STATIC_STRINGS)
        self.shapes: list[tuple[str, ...]] = []  # key lists of the objects read, in order
        self.known_shapes: set[tuple[str, ...]] = set()

    def fail(self, message: str) -> ArtifactError:
        return ArtifactError(f"manifest: {message} at byte {self.pos}")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"a field of {n:,} bytes runs past the end")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self) -> int:
        value = shift = 0
        for _ in range(9):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
        raise self.fail("a number is longer than 9 bytes")

    def count(self, tag: int, short_tag: int) -> int:
        n = tag - short_tag if tag >= short_tag else self.varint()
        if n > len(self.data) - self.pos:  # every item takes at least one byte
            raise self.fail(f"a count of {n:,} items is more than the bytes left")
        return n

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels")
        tag = self.byte()
        if tag >= 0x80:
            return tag - 0x80
        if 0x70 <= tag < 0x80:
            if tag - 0x70 >= len(self.shapes):
                raise self.fail(f"object shape #{tag - 0x70} is not in the table "
                                f"({len(self.shapes)} shapes)")
            keys = self.shapes[tag - 0x70]
            return {key: self.value(depth + 1) for key in keys}
        if tag >= 0x40 or tag in (0x0B, 0x0C, 0x0F) or 0x10 <= tag < 0x20:
            return self.string(tag, depth)
        if tag == 0x0D or 0x20 <= tag < 0x30:
            return [self.value(depth + 1) for _ in range(self.count(tag, 0x20))]
        if tag == 0x0E or 0x30 <= tag < 0x40:
            out: dict[str, Any] = {}
            for _ in range(self.count(tag, 0x30)):
                key = self.string(self.byte(), depth)
                if key in out:
                    raise self.fail(f"an object repeats the key {key[:40]!r}")
                out[key] = self.value(depth + 1)
            keys = tuple(out)
            if keys and keys not in self.known_shapes:
                self.known_shapes.add(keys)
                self.shapes.append(keys)
            return out
        if tag <= 0x02:
            return (None, False, True)[tag]
        if tag == 0x03:
            x = _FLOAT64.unpack(self.take(8))[0]
            if not math.isfinite(x):
                raise self.fail("a number is not finite")
            return x
        if tag in (0x04, 0x05):
            mantissa, exponent = self.varint(), self.varint()
            exponent = exponent // 2 if exponent % 2 == 0 else -(exponent + 1) // 2
            if abs(exponent) > 400:
                raise self.fail("a decimal number's exponent is out of range")
            x = float(f"{'-' if tag == 0x05 else ''}{mantissa}e{exponent}")
            if not math.isfinite(x):
                raise self.fail("a number is not finite")
            return x
        if tag == 0x06:
            return self.varint()
        if tag == 0x07:
            return -self.varint() - 1
        if tag == 0x08:
            return _UINT32.unpack(self.take(4))[0]
        if tag in (0x09, 0x0A):
            magnitude = int.from_bytes(self.take(self.varint()), "little")
            return magnitude if tag == 0x09 else -magnitude
        raise self.fail(f"unknown tag {tag:#04x}")

    def string(self, tag: int, depth: int) -> str:
        if 0x40 <= tag < 0x70 or tag == 0x0B:
            index = tag - 0x40 if tag != 0x0B else self.varint()
            if index >= len(self.table):
                raise self.fail(f"string #{index} is not in the table "
                                f"({len(self.table)} strings)")
            return self.table[index]
        if tag == 0x0F:
            if depth > MAX_DEPTH:
                raise self.fail(f"nesting deeper than {MAX_DEPTH} levels")
            s = (self.string(self.byte(), depth + 1)
                 + self.string(self.byte(), depth + 1))
        elif tag == 0x0C or 0x10 <= tag < 0x20:
            n = tag - 0x10 if tag != 0x0C else self.varint()
            try:
                s = self.take(n).decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("a string is not UTF-8") from None
        else:
            raise self.fail(f"a string was expected, found tag {tag:#04x}")
        self.table.append(s)
        return s


def decode_value(data: bytes | bytearray | memoryview) -> Any:
    """The value of ``encode_value`` bytes; ArtifactError when they are not exactly one
    well-formed value."""
    decoder = _Decoder(bytes(data))
    value = decoder.value(0)
    if decoder.pos != len(decoder.data):
        raise decoder.fail(f"{len(decoder.data) - decoder.pos:,} bytes follow the value")
    return value
