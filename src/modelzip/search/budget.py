"""Budgets: what the compressed model must fit in, parsed from ``KIND=VALUE`` strings.

    size=32KB      bytes of the whole .mzip file (B, KB = 1000 B, KiB = 1024 B, MB, MiB)
    latency=0.3ms  median batch-1 latency with the on-board runner (ms, us, s)
    macs=2M        multiply-accumulates per sample (k, M, G)
    params=50k     non-zero parameters (k, M, G)

Several may be given at once; ``max_drop`` is the validation accuracy a result may lose, in
points. A budget is always checked on a measurement of the packed result: the bytes of the
file, the runner timing the graph, MACs and parameters counted on the model read back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from modelzip.errors import ConfigError

__all__ = ["UNITS", "Budget", "format_budget_value", "parse_budget", "parse_target"]

UNITS: dict[str, dict[str, float]] = {
    "size": {"B": 1, "KB": 1e3, "KIB": 1024, "MB": 1e6, "MIB": 1024 ** 2},
    "latency": {"S": 1e3, "MS": 1.0, "US": 1e-3},  # to milliseconds
    "macs": {"": 1, "K": 1e3, "M": 1e6, "G": 1e9},
    "params": {"": 1, "K": 1e3, "M": 1e6, "G": 1e9},
}
_SPELLING = {"size": "B, KB (1000 B), KiB (1024 B), MB, MiB", "latency": "ms, us, s",
             "macs": "none, k, M, G", "params": "none, k, M, G"}
_EXAMPLE = {"size": "size=32KB", "latency": "latency=0.3ms", "macs": "macs=2M",
            "params": "params=50k"}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the packed result (None: not bounded). ``threads``: the runner's
    threads for the latency measurement (at batch 1)."""

    size_bytes: int | None = None
    latency_ms: float | None = None
    macs: int | None = None
    params: int | None = None
    max_drop: float | None = None  # validation accuracy points
    threads: int = 1

    def __post_init__(self) -> None:
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ConfigError(f"max_drop is in accuracy points and must be >= 0, got "
                              f"{self.max_drop!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) \
                or self.threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {self.threads!r}")

    @property
    def bounds(self) -> dict[str, float]:
        """The resource bounds given: measurement name -> limit."""
        return {k: v for k, v in (("size_bytes", self.size_bytes),
                                  ("latency_ms", self.latency_ms), ("macs", self.macs),
                                  ("params", self.params)) if v is not None}

    def excess(self, measured: Mapping[str, float | None]) -> dict[str, float]:
        """Per bound, measured / limit - 1 (<= 0: met)."""
        out = {}
        for key, limit in self.bounds.items():
            value = measured.get(key)
            if value is None:
                raise ConfigError(f"the budget bounds {key} but it was not measured")
            out[key] = float(value) / float(limit) - 1.0
        return out

    def met(self, measured: Mapping[str, float | None]) -> bool:
        return all(v <= 0 for v in self.excess(measured).values())

    def describe(self) -> str:
        parts = [f"{k.split('_')[0]}<={format_budget_value(k, v)}"
                 for k, v in self.bounds.items()]
        if self.max_drop is not None:
            parts.append(f"drop<={self.max_drop:g} points")
        return ", ".join(parts) or "no budget"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_budget_value(key: str, value: float) -> str:
    if key == "size_bytes":
        return f"{int(value):,} B"
    if key == "latency_ms":
        return f"{value:.3g} ms"
    return f"{int(value):,}"


def parse_target(text: str) -> tuple[str, float]:
    """``"size=32KB"`` -> ("size_bytes", 32000.0); one ConfigError naming the accepted units
    for anything else."""
    kind, sep, value = str(text).partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in UNITS:
        raise ConfigError(f"target {text!r}: expected KIND=VALUE with KIND one of "
                          f"{', '.join(UNITS)} (e.g. size=32KB, latency=0.3ms, macs=2M, "
                          "params=50k)")
    match = _NUMBER.match(value)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in UNITS[kind]:
        raise ConfigError(f"target {text!r}: cannot read {value.strip()!r}; {kind} takes a "
                          f"number with a unit of {_SPELLING[kind]} (e.g. {_EXAMPLE[kind]})")
    number = float(match.group(1)) * UNITS[kind][unit]
    if not number > 0:
        raise ConfigError(f"target {text!r}: the bound must be > 0")
    key = {"size": "size_bytes", "latency": "latency_ms"}.get(kind, kind)
    return key, number


def parse_budget(targets: Iterable[str] | str | None = None, max_drop: float | None = None, *,
                 threads: int = 1) -> Budget:
    """A Budget from target strings (one, or several) and ``max_drop`` points."""
    if isinstance(targets, str):
        targets = [targets]
    values: dict[str, Any] = {}
    for text in targets or []:
        key, number = parse_target(text)
        if key in values:
            raise ConfigError(f"target {text!r}: {key.split('_')[0]} is bounded twice")
        values[key] = number if key == "latency_ms" else int(number)
    return Budget(**values, max_drop=max_drop, threads=threads)
