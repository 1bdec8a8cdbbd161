"""The CPU features that decide int8 and bf16 speed and exactness. Torch-free (the runner uses
it), standard library only.

x86 int8 dot products come in three kinds:
- AVX2 only: VPMADDUBSW multiplies uint8 activations by int8 weights and adds pairs into
  int16, which saturates when both are large; onnxruntime's answer is 7-bit weights
  (``reduce_range``), which halves the products;
- VNNI (``avx512_vnni``, or ``avx_vnni`` on 256-bit cores): VPDPBUSD accumulates straight
  into int32, so full 8-bit weights are exact (and as fast);
- AMX (``amx_int8``): tile multiplies, also int32 accumulation.
bf16 arithmetic needs ``avx512_bf16`` or ``amx_bf16``; without them a bf16 request is emulated
or ignored by the runtimes.

Flags come from /proc/cpuinfo (Linux); elsewhere only the architecture is known and the
conservative choices are taken (7-bit weights on x86, no bf16).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["FEATURE_FLAGS", "CpuFeatures", "cpu_features", "int8_weight_bits",
           "parse_cpuinfo", "weight_bits_supported"]

# The flags that matter here, in the spelling of /proc/cpuinfo.
FEATURE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16",
                 "amx_bf16")
_VNNI = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_BF16 = frozenset({"avx512_bf16", "amx_bf16"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU model name, its architecture and which of ``FEATURE_FLAGS`` it has (None when
    they could not be read)."""

    model: str | None
    machine: str
    flags: frozenset[str] | None

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in _X86

    @property
    def has_vnni(self) -> bool:
        """int8 dot products that accumulate in int32 (VNNI or AMX): 8-bit weights are exact."""
        return bool(self.flags and self.flags & _VNNI)

    @property
    def has_bf16(self) -> bool:
        return bool(self.flags and self.flags & _BF16)

    @property
    def int8_kind(self) -> str:
        """"amx", "vnni", "avx2", "pre-avx2", "unknown" (flags unreadable) or "not-x86"."""
        if not self.is_x86:
            return "not-x86"
        if self.flags is None:
            return "unknown"
        if "amx_int8" in self.flags:
            return "amx"
        if self.has_vnni:
            return "vnni"
        return "avx2" if "avx2" in self.flags else "pre-avx2"

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_model": self.model, "machine": self.machine,
                "cpu_flags": None if self.flags is None else sorted(self.flags),
                "int8_kind": self.int8_kind, "bf16": self.has_bf16}


def parse_cpuinfo(text: str, machine: str | None = None) -> CpuFeatures:
    """The features named in /proc/cpuinfo ``text`` (the first processor's ``flags`` line)."""
    model = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            present = set(value.split())
            flags = frozenset(f for f in FEATURE_FLAGS if f in present)
    return CpuFeatures(model, machine or platform.machine(), flags)


@cache
def cpu_features() -> CpuFeatures:
    """This machine's features (read once)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuFeatures(platform.processor() or None, platform.machine(), None)


def int8_weight_bits(cpu: CpuFeatures | None = None) -> int:
    """The int8 weight width to quantize for on ``cpu`` (default: this one): 7 bits on an x86
    CPU without VNNI/AMX (or whose flags are unknown), where 8-bit weights saturate
    onnxruntime's AVX2 kernels; 8 bits elsewhere (exact, and more accurate)."""
    cpu = cpu or cpu_features()
    if cpu.is_x86 and not cpu.has_vnni:
        return 7
    return 8


def weight_bits_supported(bits: int, cpu: CpuFeatures | None = None) -> bool:
    """Whether int8 kernels on ``cpu`` compute weights of ``bits`` bits exactly."""
    return bits <= int8_weight_bits(cpu)
