"""The .mzip container: a header, a manifest, named chunks, and a SHA-256.

Format version 3 (written; integers little-endian, varints unsigned LEB128)::

    size  field
    4     magic b"MZIP"
    2     format version (uint16): 3
    1     flags; bit 0: the manifest is deflated (raw DEFLATE, RFC 1951); bit 1: a signature
          block follows the SHA-256
    1-9   M: manifest length in bytes as stored (varint)
    1-9   C: chunk area length in bytes (varint)
    M     manifest: the compact binary encoding of manifest.py, deflated when that is smaller
    C     chunks, back to back, in the order of manifest["chunks"]
    32    SHA-256 of all the bytes before it
    96    (signed files only) the signer's Ed25519 public key (32 bytes, raw) and the
          Ed25519 signature (64 bytes) of all the bytes before the block

Versions 1 and 2 (still read) have a fixed 20-byte header: magic, version (uint16), flags
(uint16), M (uint32), C (uint64), and the manifest as UTF-8 JSON, keys sorted, no
whitespace, deflated when that is smaller. The flags sit in byte 6 in every version.

``manifest["chunks"]`` lists every chunk as ``[name, length, crc32]``, in file order; what
the chunks mean is up to the caller (see artifact.py). ``read_container`` checks, in this order, and
raises ``ArtifactError`` naming the check that failed: the header's length, the magic, the
version, the declared sizes against the file's size (before allocating anything), the
signature (when trusted keys are given: an unsigned file, or one signed by another key or
whose signature does not verify, is refused here, before anything else is read), the
SHA-256, the manifest's encoding and chunk table, and each chunk's CRC32.

The SHA-256 and CRC32s stop accidents, not a forger (who can recompute them); the signature
stops a forger, for readers that are given the trusted public keys.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from modelzip.codec.bits import encode_varints
from modelzip.codec.manifest import decode_value, encode_value
from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MIN_HEADER_SIZE",
    "SHA_SIZE",
    "SIGNATURE_BLOCK_SIZE",
    "SUPPORTED_VERSIONS",
    "WRITABLE_VERSIONS",
    "ContainerLayout",
    "add_signature",
    "read_container",
    "signature_of",
    "write_container",
]

MAGIC = b"MZIP"
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
WRITABLE_VERSIONS = (2, 3)
_HEADER = struct.Struct("<4sHHIQ")  # versions 1 and 2
HEADER_SIZE = _HEADER.size  # 20: versions 1 and 2
_PREFIX = struct.Struct("<4sHB")  # version 3: magic, version, flags; then varints M and C
MIN_HEADER_SIZE = _PREFIX.size + 2  # 9: version 3 with M, C < 128
MAX_HEADER_VARINT = 9
SHA_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SIGNATURE_BLOCK_SIZE = PUBLIC_KEY_SIZE + SIGNATURE_SIZE
FLAG_DEFLATED = 1
FLAG_SIGNED = 2
KNOWN_FLAGS = FLAG_DEFLATED | FLAG_SIGNED
# verify(public_key, signature, message) -> bool: Ed25519, supplied by modelzip.flight.sign
Verifier = Callable[[bytes, bytes, bytes], bool]
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a few KB; refuse absurd ones before reading


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The canonical JSON of a manifest: same dict, same bytes."""
    try:
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the manifest is not plain JSON ({exc}); model and meta may "
                            "hold only dicts, lists, strings, finite numbers, booleans and "
                            "None") from None
    return text.encode("utf-8")


def write_container(manifest: dict[str, Any], chunks: list[tuple[str, bytes]], *,
                    version: int = FORMAT_VERSION) -> bytes:
    """Serialize: ``manifest`` (without "chunks", which this adds) and the named chunks, in
    the given order. ``version``: 3 (compact) or 2 (the JSON manifest, for older readers)."""
    if "chunks" in manifest:
        raise ValueError("the manifest's chunk table is written by write_container")
    if version not in WRITABLE_VERSIONS:
        raise ValueError(f"can write format versions {WRITABLE_VERSIONS}, not {version}")
    names = [name for name, _ in chunks]
    if len(set(names)) != len(names):
        raise ValueError("chunk names must be unique")
    table = [[name, len(data), zlib.crc32(data)] for name, data in chunks]
    full = {**manifest, "chunks": table}
    text = manifest_bytes(full) if version == 2 else encode_value(full)
    deflated = zlib.compress(text, level=9, wbits=-15)
    flags = 0
    if len(deflated) < len(text):
        text, flags = deflated, FLAG_DEFLATED
    body = b"".join(data for _, data in chunks)
    if version == 2:
        header = _HEADER.pack(MAGIC, version, flags, len(text), len(body))
    else:
        header = _PREFIX.pack(MAGIC, version, flags) + encode_varints([len(text), len(body)])
    blob = header + text + body
    return blob + hashlib.sha256(blob).digest()


def _read_varint(view: memoryview, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for _ in range(MAX_HEADER_VARINT):
        if pos >= len(view):
            raise ArtifactError(f"the header ends inside {what} (truncated, or not a .mzip "
                                "file)")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ArtifactError(f"header: {what} is longer than {MAX_HEADER_VARINT} bytes; the file "
                        "is corrupt")


def _header(view: memoryview) -> tuple[int, int, int, int, int]:
    """(version, flags, M, C, header size) of a file whose magic and version were read."""
    version = int.from_bytes(view[4:6], "little")
    if version in (1, 2):
        if len(view) < HEADER_SIZE:
            raise ArtifactError(f"file is {len(view)} bytes, shorter than the {HEADER_SIZE}-"
                                f"byte header of format version {version} (truncated)")
        _, _, flags, m, c = _HEADER.unpack_from(view, 0)
        return version, flags, m, c, HEADER_SIZE
    flags = view[6]
    m, pos = _read_varint(view, _PREFIX.size, "the manifest length")
    c, pos = _read_varint(view, pos, "the chunk area length")
    return version, flags, m, c, pos


def add_signature(blob: bytes, public_key: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """``blob`` (an unsigned container) signed: the signed flag set in its header, its SHA-256
    recomputed, then the signature block (``public_key``, ``sign(all bytes before it)``)
    appended. ``sign`` returns the 64-byte Ed25519 signature of its argument."""
    layout = read_container(blob)
    if layout.signer is not None:
        raise ArtifactError("the file is already signed")
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ArtifactError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got "
                            f"{len(public_key)}")
    data = bytearray(blob[:-SHA_SIZE])
    data[6] |= FLAG_SIGNED  # the flags' low byte, in every version
    data += hashlib.sha256(data).digest()
    signature = sign(bytes(data))
    if len(signature) != SIGNATURE_SIZE:
        raise ArtifactError(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes, got "
                            f"{len(signature)}")
    return bytes(data) + public_key + signature


def signature_of(data: bytes | bytearray | memoryview) -> tuple[bytes, bytes] | None:
    """(public key, signature) of a signed container, None for an unsigned one; only the
    header is checked."""
    view = memoryview(data).cast("B")
    if len(view) < MIN_HEADER_SIZE + SHA_SIZE + SIGNATURE_BLOCK_SIZE:
        return None
    if not view[6] & FLAG_SIGNED:
        return None
    block = bytes(view[len(view) - SIGNATURE_BLOCK_SIZE:])
    return block[:PUBLIC_KEY_SIZE], block[PUBLIC_KEY_SIZE:]


class ContainerLayout:
    """Where things are in a checked container: sizes of each part, chunks by name."""

    def __init__(self, manifest: dict[str, Any], chunks: dict[str, memoryview],
                 manifest_size: int, manifest_json_size: int, file_size: int,
                 signer: bytes | None = None, version: int = FORMAT_VERSION,
                 header_size: int = HEADER_SIZE) -> None:
        self.manifest = manifest
        self.chunks = chunks
        self.header_size = header_size
        self.manifest_size = manifest_size  # as stored
        self.manifest_json_size = manifest_json_size  # as canonical JSON
        self.checksum_size = SHA_SIZE
        self.signature_size = SIGNATURE_BLOCK_SIZE if signer is not None else 0
        self.file_size = file_size
        self.signer = signer  # the signer's public key (raw), None when unsigned
        self.version = version


def _check_chunk_table(manifest: dict[str, Any], chunk_area: int) -> list[tuple[str, int, int]]:
    table = manifest.get("chunks")
    if not isinstance(table, list):
        raise ArtifactError("manifest: field 'chunks' is missing or not a list")
    out, seen, total = [], set(), 0
    for i, item in enumerate(table):
        if not isinstance(item, list) or len(item) != 3:
            raise ArtifactError(f"manifest: chunk #{i} is not a [name, length, crc32] list")
        name, length, crc = item
        if not isinstance(name, str) or name in seen:
            raise ArtifactError(f"manifest: chunk #{i} has a missing or repeated name")
        if type(length) is not int or length < 0 or type(crc) is not int:
            raise ArtifactError(f"manifest: chunk {name!r} has no valid 'length' and 'crc32'")
        seen.add(name)
        total += length
        out.append((name, length, crc))
    if total != chunk_area:
        raise ArtifactError(f"manifest: chunk lengths add up to {total} bytes, but the header "
                            f"declares a chunk area of {chunk_area}")
    return out


def _check_signature(view: memoryview, signed: bool, trusted_keys: Sequence[bytes],
                     verify: Verifier | None) -> None:
    if not signed:
        raise ArtifactError("the file is not signed, and this reader accepts only files "
                            "signed by its trusted keys; sign it with: modelzip pack --sign KEY")
    if verify is None:
        from modelzip.flight.sign import verify_signature as verify
    trusted = set()
    for key in trusted_keys:
        if not isinstance(key, bytes | bytearray) or len(key) != PUBLIC_KEY_SIZE:
            raise ConfigError("trusted keys are raw 32-byte Ed25519 public keys; read key "
                              "files with modelzip.flight.sign.load_trusted_keys")
        trusted.add(bytes(key))
    size = len(view)
    public_key = bytes(view[size - SIGNATURE_BLOCK_SIZE:size - SIGNATURE_SIZE])
    if public_key not in trusted:
        raise ArtifactError(f"the file is signed by key {_fingerprint(public_key)}, which is "
                            "not among the trusted keys")
    if not verify(public_key, bytes(view[size - SIGNATURE_SIZE:]),
                  bytes(view[:size - SIGNATURE_BLOCK_SIZE])):
        raise ArtifactError(f"the signature by key {_fingerprint(public_key)} does not verify: "
                            "the file was changed after it was signed, or is forged")


def _fingerprint(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def read_container(data: bytes | bytearray | memoryview, *,
                   trusted_keys: Sequence[bytes] | None = None,
                   verify: Verifier | None = None) -> ContainerLayout:
    """Check and split a container; raises ArtifactError naming the first check that fails.
    ``trusted_keys`` (raw Ed25519 public keys): accept only a file signed by one of them,
    checked before the rest of the file is read (``verify``: the signature check, by default
    ``modelzip.flight.sign.verify_signature``). Without trusted keys, a signature is carried
    but not checked (the SHA-256 still is)."""
    view = memoryview(data).cast("B")
    size = len(view)
    if size < MIN_HEADER_SIZE:
        raise ArtifactError(f"file is {size} bytes, shorter than the smallest .mzip header "
                            f"({MIN_HEADER_SIZE} bytes): truncated, or not a .mzip file")
    if bytes(view[:4]) != MAGIC:
        raise ArtifactError(f"not a .mzip file (starts with {bytes(view[:4])!r}, expected "
                            f"{MAGIC!r})")
    version = int.from_bytes(view[4:6], "little")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(f".mzip format version {version} is not supported; this reader "
                            f"knows version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}")
    version, flags, manifest_size, chunk_area, header_size = _header(view)
    if flags & ~KNOWN_FLAGS:
        raise ArtifactError(f"header has unknown flags {flags:#06x} (this reader knows "
                            f"{KNOWN_FLAGS:#06x}); the file is corrupt or from a newer "
                            "modelzip")
    if manifest_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"header declares a manifest of {manifest_size:,} bytes, more than "
                            f"the limit of {MAX_MANIFEST_BYTES:,}; the file is corrupt")
    signed = bool(flags & FLAG_SIGNED)
    declared = (header_size + manifest_size + chunk_area + SHA_SIZE
                + (SIGNATURE_BLOCK_SIZE if signed else 0))
    if declared > size:
        raise ArtifactError(f"header declares {declared:,} bytes (manifest {manifest_size:,}, "
                            f"chunks {chunk_area:,}), but the file has {size:,}: it is "
                            "truncated or corrupt")
    if declared < size:
        raise ArtifactError(f"file has {size - declared:,} bytes after the end its header "
                            "declares: it is corrupt, or two files were joined")
    if trusted_keys is not None:
        _check_signature(view, signed, trusted_keys, verify)
    end = size - (SIGNATURE_BLOCK_SIZE if signed else 0)
    if hashlib.sha256(view[:end - SHA_SIZE]).digest() != view[end - SHA_SIZE:end]:
        raise ArtifactError("SHA-256 mismatch: the file is corrupted or truncated")
    raw = bytes(view[header_size:header_size + manifest_size])
    if flags & FLAG_DEFLATED:
        raw = _inflate(raw)
    manifest = _decode_manifest(raw, version)
    if not isinstance(manifest, dict):
        raise ArtifactError("manifest is not a JSON object")
    offset = header_size + manifest_size
    chunks = {}
    for name, length, crc in _check_chunk_table(manifest, chunk_area):
        chunk = view[offset:offset + length]
        if zlib.crc32(chunk) != crc:
            raise ArtifactError(f"chunk {name!r} fails its CRC32 check: its bytes are damaged")
        chunks[name] = chunk
        offset += length
    signer = bytes(view[end:end + PUBLIC_KEY_SIZE]) if signed else None
    json_size = len(raw) if version < 3 else len(manifest_bytes(manifest))
    return ContainerLayout(manifest, chunks, manifest_size, json_size, size, signer, version,
                           header_size)


def _decode_manifest(raw: bytes, version: int) -> Any:
    if version >= 3:
        try:
            return decode_value(raw)
        except RecursionError:
            raise ArtifactError("manifest nests too deeply") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"manifest is not valid UTF-8 JSON ({type(exc).__name__})") from None


def _inflate(data: bytes) -> bytes:
    """Inflate the manifest, never past MAX_MANIFEST_BYTES (a small hostile stream could
    otherwise expand to gigabytes)."""
    inflater = zlib.decompressobj(wbits=-15)
    try:
        text = inflater.decompress(data, MAX_MANIFEST_BYTES)
    except zlib.error as exc:
        raise ArtifactError(f"manifest does not inflate ({exc})") from None
    if inflater.unconsumed_tail:
        raise ArtifactError(f"manifest inflates to more than {MAX_MANIFEST_BYTES:,} bytes")
    if not inflater.eof or inflater.unused_data:
        raise ArtifactError("manifest is not one complete DEFLATE stream")
    return text
