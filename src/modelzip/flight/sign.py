"""Signed .mzip files: Ed25519 keys, signing and verification (``cryptography``).

A checksum stops accidents, not a forger: whoever edits a file can recompute its CRC32s and
SHA-256. A signature made with a private key kept on the ground cannot be recomputed; a reader
given the trusted public keys (``read_artifact(..., trusted_keys=...)``, ``modelzip run
--trusted-key``) refuses an unsigned file, or one signed by another key or changed after
signing, before it decodes anything. Where the signature sits in the file: see
``modelzip.codec.container``.

Key files are PEM: the private key PKCS#8 (unencrypted, written with mode 0600), the public
key SubjectPublicKeyInfo. A public key may also be given as its 64 hex digits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from modelzip.codec.container import add_signature
from modelzip.errors import ArtifactError, ConfigError

__all__ = [
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "fingerprint",
    "generate_keys",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "sign_artifact",
    "verify_signature",
]

PRIVATE_KEY_NAME = "modelzip-signing.key"
PUBLIC_KEY_NAME = "modelzip-signing.pub"


def fingerprint(public_key: bytes) -> str:
    """A short name for a raw public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keys(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A new Ed25519 key pair in ``out_dir`` (created if needed): the private key (mode 0600)
    and the public key; returns their paths. Existing key files are never overwritten."""
    out = Path(out_dir)
    private_path, public_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; keys are never overwritten (remove it, or "
                              "choose another folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create the key folder ({exc.strerror or exc})"
                          ) from None
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        # created 0600 from the start: the private key is never readable by others
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        private_path.unlink(missing_ok=True)
        raise ConfigError(f"{out}: cannot write the keys ({exc.strerror or exc})") from None
    return private_path, public_path


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc}); make one "
                          "with: modelzip keygen -o DIR") from None


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file written by ``generate_keys``."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """A raw 32-byte Ed25519 public key from a PEM file, or from a file or string holding its
    64 hex digits."""
    text = str(path)
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    data = _read(path, "public key")
    stripped = data.strip()
    if len(stripped) == 64:
        try:
            return bytes.fromhex(stripped.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key or 64 hex digits ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an Ed25519 public key")
    return _raw(key)


def load_trusted_keys(paths: Iterable[str | os.PathLike[str]]) -> list[bytes]:
    """Raw public keys from key files (see ``load_public_key``)."""
    return [load_public_key(p) for p in paths]


def sign_artifact(blob: bytes, key: Ed25519PrivateKey | str | os.PathLike[str]) -> bytes:
    """A .mzip file signed with ``key`` (a private key, or the path of its PEM file). Sign
    before adding FEC parity: the parity protects the signed bytes."""
    from modelzip.flight.fec import is_protected

    if is_protected(blob):
        raise ArtifactError("sign the .mzip before adding FEC parity, not after")
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
    return add_signature(blob, _raw(private.public_key()), private.sign)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
