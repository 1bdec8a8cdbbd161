"""The .mzip artifact: entropy coders, sparse index coding, the container, pack/unpack.

Everything here imports without torch except ``modelzip.codec.model`` (``pack``, ``unpack``,
``pack_file``, ``unpack_file``), which is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from modelzip.codec.artifact import (
    Artifact,
    describe_artifact,
    protect_artifact,
    read_artifact,
    read_artifact_file,
    summarize_artifact,
    write_artifact,
)
from modelzip.codec.coders import CODERS, decode_symbols, empirical_entropy_bits, encode_symbols
from modelzip.codec.tensor import decode_tensor, encode_tensor

_TORCH_SIDE = ("pack", "pack_file", "unpack", "unpack_file")

__all__ = [
    "CODERS",
    "Artifact",
    "decode_symbols",
    "decode_tensor",
    "describe_artifact",
    "empirical_entropy_bits",
    "encode_symbols",
    "encode_tensor",
    "pack",
    "pack_file",
    "protect_artifact",
    "read_artifact",
    "read_artifact_file",
    "summarize_artifact",
    "unpack",
    "unpack_file",
    "write_artifact",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_SIDE:
        return getattr(importlib.import_module("modelzip.codec.model"), name)
    raise AttributeError(f"module 'modelzip.codec' has no attribute {name!r}")
