"""Delta uplink: the change from the model on board (a .mzip) to a new one, as a small patch,
and the patcher that applies it. numpy only (no torch): the patcher runs on board.

``make_delta(old, new)`` codes, tensor by tensor, whichever of these is smallest:

- ``same``: the tensor did not change (no bytes);
- ``grid``: both versions lie on the same affine grid (uniform quantization: value =
  step x scale, per channel): the change of the integer steps, exactly;
- ``codebook``: both versions take their values from one small set (k-means weight sharing,
  pruned zeros): the sorted set, then the change of each element's index in it, exactly;
- ``bits``: the XOR of the old and new bit patterns, byte planes apart, LZMA-compressed
  (or stored) -- exact, for anything (not tried when an exact integer change already takes
  at most an eighth of the tensor's bytes: LZMA is slow and would not win);
- ``step`` (only with ``tolerance`` > 0, and not for a weight on a grid or shared: it would
  leave them): a float tensor's change rounded to a multiple of ``2 * tolerance``: every
  element within ``tolerance`` of the new value (plus the float32 rounding of the sum); the
  loss is measured and written into the patch.

The integer changes of ``grid``, ``codebook`` and ``step`` are coded with 3LC
(``modelzip.flight.threelc``: balanced-ternary planes, base-3^5 packing, zero-run encoding)
or with modelzip's entropy coders (zigzag, then Huffman, rANS or raw), whichever is smaller
(``delta_coder`` forces one: "3lc" or "coders").

The patcher decodes the old file, applies the changes and writes the new file with the
codec's own writer (``write_artifact``, with the grids the patch carries), so that the result
is the very file the sender made; it checks the SHA-256 of the base before and of the result
after. Patch layout (little-endian)::

    magic "MZDELTA" | flags u8 | version u8 | header length u32 | header (zlib JSON) |
    payload | SHA-256 of everything before it | [signature block]

flags bit 0: the patch is signed, and a signature block follows its SHA-256: the signer's
Ed25519 public key (32 bytes) and its signature (64 bytes) of every byte before the block
(``make_delta(..., sign=KEY)``, ``modelzip delta --sign KEY``). A patcher given trusted keys
(``apply_patch(..., trusted_keys=...)``, ``modelzip patch --trusted-key PUB``) refuses an
unsigned patch, or one signed by another key or changed after signing, before it reads
anything else. A signed patch also carries the signature of its result
(``result_signature``), which the patcher appends to the file it writes: the new .mzip is
signed as the old one was, and a runner that trusts the key runs it.

Header: base_sha256/base_bytes, result_sha256/result_bytes, model, meta, artifact_coder
(the coder the result is written with), fec (parity added to the result, or null), grids
{name: {axis, channels}} (their float32 scales open the payload, in name order), tensors
{name: {mode, dtype, shape, coding, bytes, ...}} (their bytes follow, in name order),
lossless, max_abs_error, and in a signed patch result_signature (hex: the signer's public
key, then its signature of the result before any FEC parity).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelzip.atomic import write_atomic
from modelzip.codec.artifact import protect_artifact, read_artifact, write_artifact
from modelzip.codec.coders import CODERS, decode_symbols, encode_symbols
from modelzip.codec.container import add_signature
from modelzip.errors import ArtifactError, ConfigError
from modelzip.flight.threelc import decode_integers, encode_integers

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "DELTA_CODERS",
    "FLAG_SIGNED",
    "MAGIC",
    "PatchError",
    "apply_patch",
    "describe_patch",
    "make_delta",
    "patch_file",
]

MAGIC = b"MZDELTA\x00"  # an unsigned patch; the last byte holds the flags
FORMAT_VERSION = 1
FLAG_SIGNED = 1
_PREFIX = struct.Struct("<8sBI")
_HASH = 32
_PUBLIC_KEY = 32
_SIGNATURE = 64
MAX_HEADER_BYTES = 64 << 20  # inflated JSON header
MAX_ELEMENTS = 1 << 28  # as the artifact reader: far above any model this tool targets
MAX_CODEBOOK = 4096
MAX_GRID_STEP = 1 << 16  # grid steps the codec stores exactly (float32 integers)
DELTA_CODERS = ("best", "3lc", "coders")
MODES = ("same", "grid", "codebook", "bits", "step")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_DTYPES = ("bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64")


class PatchError(ArtifactError):
    """A patch that does not apply: another base, damaged, forged, or already applied."""


# ============================================================================ integer coding
def _zigzag(d: np.ndarray) -> np.ndarray:
    return np.where(d >= 0, 2 * d, -2 * d - 1)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return np.where(z % 2 == 0, z // 2, -(z + 1) // 2)


def _encode_ints(d: np.ndarray, delta_coder: str) -> tuple[str, bytes]:
    """The integer changes, coded with 3LC or modelzip's coders (the smaller with "best")."""
    d = d.astype(np.int64).ravel()
    candidates = []
    if delta_coder in ("best", "3lc"):
        candidates.append(("3lc", encode_integers(d)))
    if delta_coder in ("best", "coders"):
        candidates.append(encode_symbols(_zigzag(d), "best"))
    return min(candidates, key=lambda c: len(c[1]))


def _decode_ints(coding: str, data: bytes, count: int) -> np.ndarray:
    if coding == "3lc":
        return decode_integers(data, count)
    if coding not in CODERS:
        raise PatchError(f"unknown integer coding {coding!r}")
    return _unzigzag(decode_symbols(coding, data, count))


# ============================================================================ bit patterns
def _uint(a: np.ndarray) -> np.ndarray:
    dtype = np.dtype(np.bool_) if a.dtype == np.bool_ else a.dtype
    native = np.ascontiguousarray(a, dtype=dtype.newbyteorder("<"))
    return native.view(f"<u{dtype.itemsize}").ravel()


def _from_uint(u: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    return u.astype(f"<u{dt.itemsize}").view(dt.newbyteorder("<")).astype(dt).reshape(shape)


def _planes(u: np.ndarray) -> bytes:
    """Byte planes apart (all first bytes, then all second bytes...): the sign and exponent
    bytes of a small change are mostly zero and compress well together."""
    return u.view(np.uint8).reshape(-1, u.dtype.itemsize).T.tobytes()


def _unplanes(data: bytes, count: int, itemsize: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, count).T
    return np.ascontiguousarray(b).view(f"<u{itemsize}").ravel()


def _lzma_decompress(data: bytes, size: int) -> bytes:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    try:
        out = d.decompress(data, max_length=size + 1)
    except lzma.LZMAError as exc:
        raise PatchError(f"damaged LZMA stream ({exc})") from None
    if len(out) != size or not d.eof:
        raise PatchError(f"LZMA stream gives {len(out)} bytes, {size} expected")
    return out


# ============================================================================ candidates
def _on_grid(x: np.ndarray, scales: np.ndarray) -> np.ndarray | None:
    """The integer steps of ``x`` (rows = channels) on the grid ``step * scale``, or None when
    an element is not exactly its grid value (the codec's float32 formula, bit for bit)."""
    if x.dtype != np.float32 or x.size == 0:
        return None
    rows = x.reshape(scales.size, -1)
    with np.errstate(all="ignore"):
        steps = np.rint(rows.astype(np.float64) / scales.astype(np.float64)[:, None])
    if not np.isfinite(steps).all() or float(np.abs(steps).max()) >= MAX_GRID_STEP:
        return None
    steps = steps.astype(np.int64)
    if not np.array_equal(_grid_value(steps, scales).view(np.uint32), rows.view(np.uint32)):
        return None
    return steps


def _grid_value(steps: np.ndarray, scales: np.ndarray) -> np.ndarray:
    # the codec's (float32(k) - float32(zero_point)) * scale: k - zero_point is the step
    return steps.astype(np.float32) * scales.astype(np.float32)[:, None]


def _codebook(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The distinct bit patterns of both versions in value order, and each version's index in
    it; None when there are more than MAX_CODEBOOK."""
    bits = np.unique(np.concatenate([_uint(old), _uint(new)]))
    if bits.size > MAX_CODEBOOK:
        return None
    order = np.argsort(bits.view(old.dtype.newbyteorder("<")) if old.dtype != np.bool_
                       else bits, kind="stable")
    book = bits[order]
    rank_of = np.empty(book.size, dtype=np.int64)
    rank_of[order] = np.arange(book.size)
    idx = [rank_of[np.searchsorted(bits, _uint(a))] for a in (old, new)]
    return book, np.stack(idx)


def _candidates(old: np.ndarray | None, new: np.ndarray, grid: np.ndarray | None,
                tolerance: float, delta_coder: str) -> list[tuple[dict, bytes, float]]:
    """(entry, payload, max abs error) for every way this tensor can be sent."""
    comparable = old is not None and old.dtype == new.dtype and old.shape == new.shape
    if comparable and np.array_equal(_uint(old), _uint(new)):
        return [({"mode": "same"}, b"", 0.0)]
    out = []
    if comparable:
        out += _integer_candidates(old, new, grid, tolerance, delta_coder)
    raw_bytes = new.size * new.dtype.itemsize
    if any(err == 0.0 and len(data) <= raw_bytes // 8 for _, data, err in out):
        return out  # exact in <= 4 bits per float: LZMA on the bits will not beat it
    base = _uint(old) if comparable else np.zeros_like(_uint(new))
    planes = _planes(base ^ _uint(new))
    packed = lzma.compress(planes, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    out.append(({"mode": "bits", "xor": comparable, "coding": "lzma"}, packed, 0.0)
               if len(packed) < len(planes) else
               ({"mode": "bits", "xor": comparable, "coding": "raw"}, planes, 0.0))
    return out


def _integer_candidates(old: np.ndarray, new: np.ndarray, grid: np.ndarray | None,
                        tolerance: float, delta_coder: str) -> list[tuple[dict, bytes, float]]:
    """The changes that are integers: of grid steps, codebook indices, tolerance steps."""
    out = []
    if grid is not None:
        old_steps, new_steps = _on_grid(old, grid), _on_grid(new, grid)
        if old_steps is not None and new_steps is not None:
            coding, data = _encode_ints(new_steps - old_steps, delta_coder)
            out.append(({"mode": "grid", "coding": coding}, data, 0.0))
    book = _codebook(old, new)
    if book is not None:
        values, idx = book
        coding, data = _encode_ints(idx[1] - idx[0], delta_coder)
        side = values.astype(f"<u{new.dtype.itemsize}").tobytes()
        out.append(({"mode": "codebook", "coding": coding, "codebook": int(values.size)},
                    side + data, 0.0))
    # a weight on a grid or shared (few distinct values) stays exact: rounding its change
    # would move it off its grid or codebook, and the new file would store it as floats
    shared = bool(out) and (out[0][0]["mode"] == "grid"
                            or np.unique(_uint(new)).size * 4 <= new.size)
    if tolerance > 0 and new.dtype.kind == "f" and not shared:
        step = 2.0 * tolerance
        with np.errstate(all="ignore"):
            q = np.rint((new.astype(np.float64) - old.astype(np.float64)) / step)
        if np.isfinite(q).all() and float(np.abs(q).max(initial=0)) < 2.0 ** 52:
            q = q.astype(np.int64)
            got = _stepped(old, q, step)
            with np.errstate(all="ignore"):
                err = float(np.abs(got.astype(np.float64) - new.astype(np.float64)).max())
            coding, data = _encode_ints(q, delta_coder)
            out.append(({"mode": "step", "coding": coding, "step": step}, data, err))
    return out


def _stepped(old: np.ndarray, q: np.ndarray, step: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        return (old.astype(np.float64) + q.reshape(old.shape).astype(np.float64) * step
                ).astype(old.dtype)


# ============================================================================ making
def _grid_scales(hints: Mapping[str, Any] | None, tensors: Mapping[str, np.ndarray]
                 ) -> dict[str, tuple[Any, np.ndarray]]:
    """The hints' float32 scales by tensor name, where they fit the tensor's shape."""
    out = {}
    for name, hint in (hints or {}).items():
        if name not in tensors or not isinstance(hint, Mapping) or "scale" not in hint:
            continue
        axis = hint.get("axis", 0)
        scales = np.asarray(hint["scale"], dtype=np.float64).ravel().astype(np.float32)
        a = tensors[name]
        if axis not in (0, None) or (scales.size != 1 and (a.ndim == 0 or
                                                            a.shape[0] != scales.size)):
            continue
        out[name] = (axis, scales)
    return out


def make_delta(old: bytes, new: bytes | Mapping[str, np.ndarray], *,
               hints: Mapping[str, Any] | None = None, tolerance: float = 0.0,
               delta_coder: str = "best", artifact_coder: str = "best",
               model: dict | None = None, meta: dict | None = None,
               fec: float | str | None = None,
               sign: Ed25519PrivateKey | str | os.PathLike[str] | None = None) -> bytes:
    """The patch that turns the .mzip bytes ``old`` into ``new``: .mzip bytes, or arrays by
    name (written with ``model`` and ``meta``, by default the old file's). ``hints``: the
    grids the new weights were quantized to (``modelzip.quant.grid_hints(model)``); the new
    file is written with them, as ``pack`` writes it. ``tolerance`` > 0 lets float tensors
    change by at most that much (plus float32 rounding) when it makes the patch smaller;
    0 sends every tensor exactly. ``fec``: Reed-Solomon parity the patcher adds to the
    result (as ``pack --fec``; ``modelzip.flight.fec``). ``sign``: an Ed25519 private key
    (or its PEM file, ``modelzip keygen``) that signs the patch and the result it yields (a
    signed ``new`` must be signed by this key). The patch is applied once here and checked:
    it always yields the result it names (``new`` itself when lossless)."""
    if delta_coder not in DELTA_CODERS:
        raise ConfigError(f"unknown delta coder {delta_coder!r}; choose one of "
                          f"{', '.join(DELTA_CODERS)}")
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    private = None
    if sign is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from modelzip.flight.sign import load_private_key

        private = sign if isinstance(sign, Ed25519PrivateKey) else load_private_key(sign)
    base = read_artifact(bytes(old))
    target = None
    if isinstance(new, bytes | bytearray | memoryview):
        target = bytes(new)
        got = read_artifact(target)
        if got.blobs:
            raise PatchError("the new file carries blobs (an ONNX graph); patches cover "
                             "weight artifacts only: send the new file whole")
        tensors, model, meta = got.tensors, got.model, got.meta
    else:
        tensors = {k: np.asarray(v) for k, v in new.items()}
        model = base.model if model is None else model
        meta = base.meta if meta is None else meta
    if base.blobs:
        raise PatchError("the old file carries blobs (an ONNX graph); patches cover weight "
                         "artifacts only: send the new file whole")
    grids = _grid_scales(hints, tensors)
    entries, payload, exact = {}, [], {}
    for name in sorted(grids):
        payload.append(grids[name][1].astype("<f4").tobytes())
    worst = 0.0
    for name in sorted(tensors):
        a = tensors[name]
        scales = grids[name][1] if name in grids else None
        options = _candidates(base.tensors.get(name), a, scales, tolerance, delta_coder)
        entry, data, err = min(options, key=lambda c: (len(c[1]), c[2]))
        entries[name] = {**entry, "dtype": "bool" if a.dtype == np.bool_ else a.dtype.name,
                         "shape": list(a.shape), "bytes": len(data)}
        if err:
            entries[name]["max_abs_error"] = err
        exact[name] = err == 0.0
        worst = max(worst, err)
        payload.append(data)
    header = {
        "base_sha256": hashlib.sha256(old).hexdigest(), "base_bytes": len(old),
        "model": model, "meta": meta, "artifact_coder": artifact_coder,
        "grids": {name: {"axis": axis, "channels": int(s.size)}
                  for name, (axis, s) in sorted(grids.items())},
        "tensors": entries, "lossless": all(exact.values()), "max_abs_error": worst,
        "fec": _parity(fec),
    }
    bare = plain = _write_result(base.tensors, {**header, "fec": None}, b"".join(payload))
    if private is not None:
        from modelzip.flight.sign import sign_artifact

        signed = sign_artifact(bare, private)
        header["result_signature"] = signed[len(signed) - _PUBLIC_KEY - _SIGNATURE:].hex()
        bare = signed
    result = bare if header["fec"] is None else protect_artifact(bare, fec=header["fec"])
    # the new file as given: with the parity it was packed with, or without any
    if header["lossless"] and target is not None and target not in (result, bare, plain):
        raise PatchError("the new file is not reproduced from its tensors: it was written "
                         "with grids not given as hints, with another coder, with FEC parity "
                         "or a signature, or by another modelzip version; pass "
                         "hints=grid_hints(model), the coder and the fec it was packed with "
                         "(a signed file: pass the key it was signed with as sign=)")
    header.update(result_sha256=hashlib.sha256(result).hexdigest(), result_bytes=len(result))
    patch = _serialize(header, b"".join(payload), private)
    if apply_patch(old, patch) != result:  # the patcher's own path, once, before it is sent
        raise PatchError("the patch does not reproduce its result; this is a bug in modelzip")
    return patch


def _parity(fec: float | str | None) -> float | None:
    if fec is None:
        return None
    from modelzip.flight.fec import parse_parity

    return float(parse_parity(fec))


def _serialize(header: dict, payload: bytes, private: Ed25519PrivateKey | None = None
               ) -> bytes:
    text = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":")).encode(), 9)
    magic = MAGIC[:-1] + bytes([FLAG_SIGNED if private is not None else 0])
    body = _PREFIX.pack(magic, FORMAT_VERSION, len(text)) + text + payload
    body += hashlib.sha256(body).digest()
    if private is None:
        return body
    from cryptography.hazmat.primitives import serialization

    public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
    body += public
    return body + private.sign(body)


def _unsign(patch: bytes, trusted_keys: Sequence[bytes] | None) -> tuple[bytes, bytes | None]:
    """The patch without its signature block, and the signer's public key (None when
    unsigned). Given ``trusted_keys``, an unsigned patch, or one not signed by one of them,
    is refused here, before anything else is read."""
    if len(patch) < _PREFIX.size + _HASH or patch[:len(MAGIC) - 1] != MAGIC[:-1]:
        raise PatchError("not a modelzip patch (no MZDELTA header); is it a .mzipd file?")
    flags = patch[len(MAGIC) - 1]
    if flags & ~FLAG_SIGNED:
        raise PatchError(f"the patch has unknown flags {flags:#04x}: it is damaged or from a "
                         "newer modelzip")
    signed = bool(flags & FLAG_SIGNED)
    block = _PUBLIC_KEY + _SIGNATURE
    if signed and len(patch) < _PREFIX.size + _HASH + block:
        raise PatchError("the patch is damaged or truncated (shorter than its signature)")
    signer = bytes(patch[len(patch) - block:len(patch) - _SIGNATURE]) if signed else None
    if trusted_keys is not None:
        from modelzip.flight.sign import fingerprint, verify_signature

        trusted = {bytes(k) for k in trusted_keys}
        if any(len(k) != _PUBLIC_KEY for k in trusted):
            raise ConfigError("trusted keys are raw 32-byte Ed25519 public keys; read key "
                              "files with modelzip.flight.sign.load_trusted_keys")
        if signer is None:
            raise PatchError("the patch is not signed, and this patcher accepts only patches "
                             "signed by its trusted keys; make it with: modelzip delta --sign "
                             "KEY")
        if signer not in trusted:
            raise PatchError(f"the patch is signed by key {fingerprint(signer)}, which is not "
                             "among the trusted keys")
        if not verify_signature(signer, patch[len(patch) - _SIGNATURE:],
                                patch[:len(patch) - _SIGNATURE]):
            raise PatchError(f"the patch's signature by key {fingerprint(signer)} does not "
                             "verify: it was changed after it was signed, or is forged")
    return (patch[:len(patch) - block] if signed else patch), signer


# ============================================================================ applying
def _parse(patch: bytes, trusted_keys: Sequence[bytes] | None = None) -> tuple[dict, bytes]:
    """The checked header and the payload of a patch (its signature checked first when
    ``trusted_keys`` are given)."""
    patch, signer = _unsign(patch, trusted_keys)
    body, digest = patch[:-_HASH], patch[-_HASH:]
    if hashlib.sha256(body).digest() != digest:
        raise PatchError("the patch is damaged or truncated (its SHA-256 does not match); "
                         "send it again")
    _, version, size = _PREFIX.unpack_from(body)
    if version != FORMAT_VERSION:
        raise PatchError(f"patch format version {version}; this patcher reads version "
                         f"{FORMAT_VERSION}")
    if _PREFIX.size + size > len(body):
        raise PatchError("the patch header runs past the end of the patch")
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(body[_PREFIX.size:_PREFIX.size + size], MAX_HEADER_BYTES)
        header = json.loads(text)
    except (zlib.error, ValueError) as exc:
        raise PatchError(f"the patch header is not valid compressed JSON ({exc})") from None
    if inflate.unconsumed_tail or not isinstance(header, dict):
        raise PatchError("the patch header is too large or not an object")
    _check_header(header)
    signature = header.get("result_signature")
    if signature is not None and (
            signer is None or not isinstance(signature, str) or len(signature) != 192
            or not all(c in "0123456789abcdef" for c in signature)
            or bytes.fromhex(signature[:64]) != signer):
        raise PatchError("patch header: 'result_signature' is not the signer's key and a "
                         "signature")
    return header, body[_PREFIX.size + size:]


def _check_header(h: dict) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise PatchError(f"patch header: {what}")

    for key in ("base_sha256", "result_sha256"):
        need(isinstance(h.get(key), str) and len(h[key]) == 64, f"{key} is not a SHA-256")
    need(isinstance(h.get("tensors"), dict), "'tensors' is not an object")
    need(isinstance(h.get("grids"), dict), "'grids' is not an object")
    need(h.get("model") is None or isinstance(h.get("model"), dict), "'model' not an object")
    need(isinstance(h.get("meta"), dict), "'meta' is not an object")
    need(h.get("artifact_coder") == "best" or h.get("artifact_coder") in CODERS,
         "unknown artifact_coder")
    need(h.get("fec") is None or (isinstance(h["fec"], float) and 0 < h["fec"] <= 1),
         "'fec' is not a parity fraction")
    total = 0
    for name, e in h["tensors"].items():
        need(isinstance(e, dict) and e.get("mode") in MODES, f"tensor {name!r}: unknown mode")
        need(e.get("dtype") in _DTYPES, f"tensor {name!r}: unknown dtype {e.get('dtype')!r}")
        shape = e.get("shape")
        need(isinstance(shape, list) and len(shape) <= 32 and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS
            for d in shape), f"tensor {name!r}: bad shape")
        need(isinstance(e.get("bytes"), int) and e["bytes"] >= 0, f"tensor {name!r}: bad size")
        total += math.prod(shape)
        need(total <= MAX_ELEMENTS, f"more than {MAX_ELEMENTS:,} elements in all")
    for name, g in h["grids"].items():
        need(name in h["tensors"] and isinstance(g, dict) and g.get("axis") in (0, None)
             and isinstance(g.get("channels"), int) and 1 <= g["channels"] <= MAX_ELEMENTS,
             f"grid {name!r} is malformed")


def apply_patch(old: bytes, patch: bytes, *,
                trusted_keys: Sequence[bytes] | None = None) -> bytes:
    """The new .mzip bytes: ``patch`` applied to ``old``. Raises PatchError, naming both
    hashes, when ``old`` is not the patch's base (or is already its result), and when the
    patch is damaged or its result does not come out bit for bit. ``trusted_keys`` (raw
    Ed25519 public keys, ``modelzip.flight.sign.load_trusted_keys``): accept only a patch
    signed by one of them, checked before anything else."""
    header, payload = _parse(bytes(patch), trusted_keys)
    have = hashlib.sha256(old).hexdigest()
    if have != header["base_sha256"]:
        if have == header["result_sha256"]:
            raise PatchError(f"the patch is applied already: the file is its result "
                             f"(SHA-256 {have}); nothing to do")
        raise PatchError(f"this patch is for the file with SHA-256 {header['base_sha256']}, "
                         f"but the file given has SHA-256 {have}; the model on board is "
                         "another version")
    base = read_artifact(bytes(old))
    result = _write_result(base.tensors, header, payload)
    got = hashlib.sha256(result).hexdigest()
    if got != header["result_sha256"]:
        raise PatchError(f"the patched file has SHA-256 {got}, the patch names "
                         f"{header['result_sha256']}; not written (another modelzip version "
                         "writes other bytes, or the patch was forged)")
    return result


def _write_result(old: Mapping[str, np.ndarray], header: dict, payload: bytes) -> bytes:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(payload):
            raise PatchError("the patch payload is shorter than its header says")
        pos += n
        return payload[pos - n:pos]

    hints, scales = {}, {}
    for name in sorted(header["grids"]):
        g = header["grids"][name]
        scales[name] = np.frombuffer(take(4 * g["channels"]), dtype="<f4").astype(np.float32)
        hints[name] = {"axis": g["axis"], "scale": scales[name]}
    tensors = {}
    for name in sorted(header["tensors"]):
        e = header["tensors"][name]
        try:
            tensors[name] = _apply_one(old.get(name), e, take(e["bytes"]), scales.get(name))
        except ArtifactError as exc:  # the 3LC and entropy decoders' refusals too
            raise PatchError(f"tensor {name!r}: {exc}") from None
        except (ValueError, TypeError, OverflowError, IndexError, MemoryError) as exc:
            raise PatchError(f"tensor {name!r}: the patch does not decode ({exc})") from None
    if pos != len(payload):
        raise PatchError(f"{len(payload) - pos} bytes after the last tensor of the patch")
    try:
        blob = write_artifact(tensors, model=header["model"], meta=header["meta"],
                              coder=header["artifact_coder"], hints=hints)
        if header.get("result_signature"):  # the sender's signature of this very file
            signature = bytes.fromhex(header["result_signature"])
            blob = add_signature(blob, signature[:_PUBLIC_KEY], lambda _: signature[_PUBLIC_KEY:])
        return blob if header.get("fec") is None else protect_artifact(blob, fec=header["fec"])
    except ArtifactError as exc:
        raise PatchError(f"the patched tensors cannot be written ({exc})") from None


def _apply_one(old: np.ndarray | None, e: dict, data: bytes, scales: np.ndarray | None
               ) -> np.ndarray:
    dtype, shape, mode = e["dtype"], tuple(e["shape"]), e["mode"]
    count, itemsize = math.prod(shape), np.dtype(dtype).itemsize
    comparable = old is not None and old.dtype == np.dtype(dtype) and old.shape == shape
    if mode == "bits":
        if e.get("coding") not in ("lzma", "raw"):
            raise PatchError(f"unknown bits coding {e.get('coding')!r}")
        raw = data if e["coding"] == "raw" else _lzma_decompress(data, count * itemsize)
        if len(raw) != count * itemsize:
            raise PatchError(f"{len(raw)} bytes for {count} elements of {dtype}")
        u = _unplanes(raw, count, itemsize)
        if e.get("xor"):
            if not comparable:
                raise PatchError("the old tensor has another shape or dtype")
            u = u ^ _uint(old)
        return _from_uint(u, dtype, shape)
    if not comparable:
        raise PatchError(f"mode {mode!r} needs the old tensor of the same shape and dtype")
    if mode == "same":
        if data:
            raise PatchError("an unchanged tensor carries bytes")
        return old.copy()
    if mode == "grid":
        if scales is None:
            raise PatchError("no grid for a grid change")
        steps = _on_grid(old, scales) if scales.size in (1, shape[0] if shape else 0) else None
        if steps is None:
            raise PatchError("the old tensor is not on the patch's grid")
        new = steps + _decode_ints(e.get("coding"), data, count).reshape(steps.shape)
        if new.size and int(np.abs(new).max()) >= MAX_GRID_STEP:
            raise PatchError("a grid step out of range")
        return _grid_value(new, scales).reshape(shape)
    if mode == "codebook":
        n = e.get("codebook")
        if not (isinstance(n, int) and 1 <= n <= MAX_CODEBOOK and n * itemsize <= len(data)):
            raise PatchError("bad codebook size")
        book = np.frombuffer(data[:n * itemsize], dtype=f"<u{itemsize}")
        order = np.argsort(book, kind="stable")
        sorted_bits = book[order]
        if np.any(sorted_bits[1:] == sorted_bits[:-1]):
            raise PatchError("the codebook repeats a value")
        u = _uint(old)
        at = np.minimum(np.searchsorted(sorted_bits, u), n - 1)
        if not np.array_equal(sorted_bits[at], u):
            raise PatchError("the old tensor has values outside the patch's codebook")
        idx = order[at] + _decode_ints(e.get("coding"), data[n * itemsize:], count)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise PatchError("a codebook index out of range")
        return _from_uint(book[idx], dtype, shape)
    # step: a float change rounded to a multiple of the step
    step = e.get("step")
    if np.dtype(dtype).kind != "f" or not (isinstance(step, float) and math.isfinite(step)
                                           and step > 0):
        raise PatchError("bad step change")
    return _stepped(old, _decode_ints(e.get("coding"), data, count), step)


# ============================================================================ files, summary
def describe_patch(patch: bytes) -> dict[str, Any]:
    """What a patch holds (checked, nothing decoded): its hashes, size, lossless flag, max
    error, bytes by mode and by coding, and its signer's key fingerprint (None: unsigned)."""
    header, _ = _parse(bytes(patch))
    _, signer = _unsign(bytes(patch), None)
    by_mode: dict[str, int] = {}
    by_coding: dict[str, int] = {}
    for e in header["tensors"].values():
        by_mode[e["mode"]] = by_mode.get(e["mode"], 0) + e["bytes"]
        key = e.get("coding", "none")
        by_coding[key] = by_coding.get(key, 0) + e["bytes"]
    return {"patch_bytes": len(patch), "base_sha256": header["base_sha256"],
            "result_sha256": header["result_sha256"], "result_bytes": header.get("result_bytes"),
            "lossless": header.get("lossless"), "max_abs_error": header.get("max_abs_error"),
            "tensors": len(header["tensors"]), "bytes_by_mode": by_mode,
            "bytes_by_coding": by_coding, "signer": _fingerprint(signer),
            "grid_bytes": sum(4 * g["channels"] for g in header["grids"].values())}


def _fingerprint(public_key: bytes | None) -> str | None:
    return None if public_key is None else hashlib.sha256(public_key).hexdigest()[:16]


def patch_file(old_path: str | os.PathLike[str], patch_path: str | os.PathLike[str],
               out_path: str | os.PathLike[str], *,
               trusted_keys: Sequence[bytes] | None = None) -> bytes:
    """Apply a patch file to a .mzip file and write the result atomically to ``out_path``
    (which may be ``old_path``): on any error, or a crash while writing, the old file stays
    as it was. ``trusted_keys``: see ``apply_patch``. Returns the new bytes."""
    old = _read(old_path, "model file")
    new = apply_patch(old, _read(patch_path, "patch"), trusted_keys=trusted_keys)
    write_atomic(out_path, new)
    return new


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PatchError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise PatchError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
