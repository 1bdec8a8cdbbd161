"""The .mzip container: a header, a JSON manifest, named chunks, and a SHA-256.

Layout (integers little-endian)::

    offset  size  field
    0       4     magic b"MZIP"
    4       2     format version (uint16): 2 (1: tensors' CRC32 without dtype and shape)
    6       2     flags (uint16); bit 0: the manifest is deflated (raw DEFLATE, RFC 1951);
                  bit 1: a signature block follows the SHA-256
    8       4     manifest length M in bytes, as stored (uint32)
    12      8     chunk area length C in bytes (uint64)
    20      M     manifest: UTF-8 JSON, keys sorted, no whitespace; deflated when that is
                  smaller (its keys and tensor names repeat: typically 5-6x smaller)
    20+M    C     chunks, back to back, in the order of manifest["chunks"]
    20+M+C  32    SHA-256 of all the bytes before it
    52+M+C  96    (signed files only) the signer's Ed25519 public key (32 bytes, raw) and the
                  Ed25519 signature (64 bytes) of all the bytes before the block

``manifest["chunks"]`` lists every chunk as ``[name, length, crc32]``, in file order; what
the chunks mean is up to the caller (see artifact.py). ``read_container`` checks, in this order, and
raises ``ArtifactError`` naming the check that failed: the header's length, the magic, the
version, the declared sizes against the file's size (before allocating anything), the
signature (when trusted keys are given: an unsigned file, or one signed by another key or
whose signature does not verify, is refused here, before anything else is read), the
SHA-256, the manifest's JSON and chunk table, and each chunk's CRC32.

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

from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "SHA_SIZE",
    "SIGNATURE_BLOCK_SIZE",
    "SUPPORTED_VERSIONS",
    "ContainerLayout",
    "add_signature",
    "read_container",
    "signature_of",
    "write_container",
]

MAGIC = b"MZIP"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
_HEADER = struct.Struct("<4sHHIQ")
HEADER_SIZE = _HEADER.size  # 20
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


def write_container(manifest: dict[str, Any], chunks: list[tuple[str, bytes]]) -> bytes:
    """Serialize: ``manifest`` (without "chunks", which this adds) and the named chunks, in
    the given order."""
    if "chunks" in manifest:
        raise ValueError("the manifest's chunk table is written by write_container")
    names = [name for name, _ in chunks]
    if len(set(names)) != len(names):
        raise ValueError("chunk names must be unique")
    table = [[name, len(data), zlib.crc32(data)] for name, data in chunks]
    text = manifest_bytes({**manifest, "chunks": table})
    deflated = zlib.compress(text, level=9, wbits=-15)
    flags = 0
    if len(deflated) < len(text):
        text, flags = deflated, FLAG_DEFLATED
    body = b"".join(data for _, data in chunks)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, len(text), len(body))
    blob = header + text + body
    return blob + hashlib.sha256(blob).digest()


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
    magic, version, flags, m, c = _HEADER.unpack_from(data, 0)
    _HEADER.pack_into(data, 0, magic, version, flags | FLAG_SIGNED, m, c)
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
    if len(view) < HEADER_SIZE:
        return None
    _, _, flags, _, _ = _HEADER.unpack_from(view, 0)
    if not flags & FLAG_SIGNED or len(view) < HEADER_SIZE + SHA_SIZE + SIGNATURE_BLOCK_SIZE:
        return None
    block = bytes(view[len(view) - SIGNATURE_BLOCK_SIZE:])
    return block[:PUBLIC_KEY_SIZE], block[PUBLIC_KEY_SIZE:]


class ContainerLayout:
    """Where things are in a checked container: sizes of each part, chunks by name."""

    def __init__(self, manifest: dict[str, Any], chunks: dict[str, memoryview],
                 manifest_size: int, manifest_json_size: int, file_size: int,
                 signer: bytes | None = None, version: int = FORMAT_VERSION) -> None:
        self.manifest = manifest
        self.chunks = chunks
        self.header_size = HEADER_SIZE
        self.manifest_size = manifest_size  # as stored
        self.manifest_json_size = manifest_json_size  # inflated
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
    if size < HEADER_SIZE:
        raise ArtifactError(f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte .mzip "
                            "header (truncated, or not a .mzip file)")
    magic, version, flags, manifest_size, chunk_area = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise ArtifactError(f"not a .mzip file (starts with {bytes(magic)!r}, expected "
                            f"{MAGIC!r})")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(f".mzip format version {version} is not supported; this reader "
                            f"knows version(s) {', '.join(map(str, SUPPORTED_VERSIONS))}")
    if flags & ~KNOWN_FLAGS:
        raise ArtifactError(f"header has unknown flags {flags:#06x} (this reader knows "
                            f"{KNOWN_FLAGS:#06x}); the file is corrupt or from a newer "
                            "modelzip")
    if manifest_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"header declares a manifest of {manifest_size:,} bytes, more than "
                            f"the limit of {MAX_MANIFEST_BYTES:,}; the file is corrupt")
    signed = bool(flags & FLAG_SIGNED)
    declared = (HEADER_SIZE + manifest_size + chunk_area + SHA_SIZE
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
    raw = bytes(view[HEADER_SIZE:HEADER_SIZE + manifest_size])
    if flags & FLAG_DEFLATED:
        raw = _inflate(raw)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"manifest is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError("manifest is not a JSON object")
    offset = HEADER_SIZE + manifest_size
    chunks = {}
    for name, length, crc in _check_chunk_table(manifest, chunk_area):
        chunk = view[offset:offset + length]
        if zlib.crc32(chunk) != crc:
            raise ArtifactError(f"chunk {name!r} fails its CRC32 check: its bytes are damaged")
        chunks[name] = chunk
        offset += length
    signer = bytes(view[end:end + PUBLIC_KEY_SIZE]) if signed else None
    return ContainerLayout(manifest, chunks, manifest_size, len(raw), size, signer, version)


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
