"""Which layers a technique works on: one selector for every technique config.

    layers: [fc1, "features.*"]                      # names and patterns
    layers: {types: [Conv], ignore: [features.0.0]}  # by class, minus some
    layers: "encoder.layer.*.output.dense"           # one name or pattern

A ``LayerSelector`` holds module names or glob patterns (``names``), module class names
(``types``) and names or patterns to leave out (``ignore``). Each technique decides which
modules it can take (its candidates: e.g. every Linear and Conv for magnitude pruning) and
``select`` picks among them, in module order. Empty ``names`` means every candidate.

Matching rules:

- an entry names a module or any module inside it: ``encoder`` takes every candidate under
  ``encoder``; a layer's weight (``fc1.weight``) names its layer;
- patterns are glob patterns as in ``fnmatch`` (``*``, ``?``, ``[seq]``, ``[!seq]``), except
  that ``*`` and ``?`` stay within one level of the module tree (they do not match a dot), so
  ``encoder.layer.*.output.dense`` takes the feed-forward output of every layer but not
  ``encoder.layer.0.attention.output.dense``; ``**`` matches across levels;
- ``types`` are class names: ``Linear``, ``Conv2d``, ``Embedding``, ``Conv`` for any
  Conv1d/2d/3d; a subclass counts as its base (``types: [Linear]`` takes a subclass of
  ``nn.Linear``);
- an entry that matches nothing is an error that names it and lists the candidates; a
  ``names`` entry must match a candidate, an ``ignore`` entry any module of the model.

Per-layer values (``sparsity: {fc1: 0.9, "fc*": 0.5}``) go through ``select_values``: the
keys are entries as above; an exact name wins over a pattern, and among patterns the first
in the mapping that matches.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from modelzip.errors import ConfigError

__all__ = ["FIELDS", "LayerSelector", "as_selector", "is_pattern", "matches", "select",
           "select_values"]

FIELDS = ("names", "types", "ignore")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LISTED = 40  # candidates named in an error message; the rest are counted
_GLOB = re.compile(r"[*?\[]")

V = TypeVar("V")


def _entries(value: Any, where: str) -> tuple[str, ...]:
    """A string or a list of strings as a tuple of non-empty strings."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{where} must be a name or a list of names, got {value!r}")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where} must hold layer names or patterns, got {item!r}")
    return tuple(items)


@dataclass(frozen=True)
class LayerSelector:
    """Module names or glob patterns (``names``; empty: every candidate), module class names
    (``types``) and names or patterns to leave out (``ignore``). See the module docstring."""

    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in FIELDS:  # lists (and one string) from Python callers become tuples
            object.__setattr__(self, key, _entries(getattr(self, key), f"layers: {key}"))

    @classmethod
    def from_value(cls, value: Any, where: str = "layers") -> LayerSelector | None:
        """YAML/CLI values: a name, a list of names, or a mapping {names, types, ignore}."""
        return as_selector(value, where)

    def ignores(self, name: str) -> bool:
        """Whether ``ignore`` names ``name`` (or a module it is inside)."""
        return any(matches(entry, name) for entry in self.ignore)


def as_selector(value: Any, where: str = "layers") -> LayerSelector | None:
    """``value`` as a LayerSelector (None stays None); ``where`` begins the error messages."""
    if value is None or isinstance(value, LayerSelector):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in FIELDS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; a layer selector "
                              f"takes {', '.join(FIELDS)}")
        return LayerSelector(**{k: _entries(v, f"{where}: {k}") for k, v in value.items()})
    names = _entries(value, where)
    if not names:
        raise ConfigError(f"{where} is empty; leave it out to take every layer the technique "
                          "can handle")
    return LayerSelector(names=names)


# ---------------------------------------------------------------------------- matching
def is_pattern(entry: str) -> bool:
    """Whether ``entry`` is a glob pattern rather than a plain name."""
    return bool(_GLOB.search(entry))


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    """fnmatch's translation, with ``*`` and ``?`` kept within one dotted level."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i > 1 else "[^.]*")
            i = j
            continue
        if c == "?":
            out.append("[^.]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "[", as in fnmatch
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                out.append(f"[{body}]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def matches(entry: str, name: str) -> bool:
    """Whether a names/ignore entry takes the module called ``name``: the entry names it, a
    module it is inside, or its weight ("fc1.weight" for "fc1")."""
    if not is_pattern(entry):
        return (name == entry or name.startswith(entry + ".")
                or entry == (f"{name}.weight" if name else "weight"))
    regex = _regex(entry)
    parts = name.split(".")
    return any(regex.fullmatch(".".join(parts[:k])) for k in range(1, len(parts) + 1))


def _type_matches(type_name: str, module: nn.Module) -> bool:
    if type_name == "Conv":
        return isinstance(module, _CONVS)
    return any(cls.__name__ == type_name for cls in type(module).__mro__)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _listing(names: Iterable[str]) -> str:
    names = [n or "(the model itself)" for n in names]
    more = len(names) - _LISTED
    return ", ".join(names[:_LISTED]) + (f" and {more} more" if more > 0 else "") \
        if names else "(none)"


class _Choice:
    """The candidates of one technique on one model, and the problems found while matching
    entries against them (raised together, as one line)."""

    def __init__(self, selector: LayerSelector | None, candidates: Mapping[str, nn.Module],
                 technique: str, model: nn.Module | None, kind: str, takes: str | None
                 ) -> None:
        self.selector = selector or LayerSelector()
        self.candidates = dict(candidates)
        self.technique, self.kind, self.takes = technique, kind, takes
        self.modules = dict(model.named_modules()) if model is not None else None
        self.params = {n for n, _ in model.named_parameters()} if model is not None else set()
        self.problems: list[str] = []
        self.left_out: dict[str, str] = {}  # candidate -> why types/ignore left it out
        sel = self.selector
        for type_name in sel.types:
            if not any(_type_matches(type_name, m) for m in self.candidates.values()):
                self.problems.append(self._type_problem(type_name))
        for name, module in self.candidates.items():
            if sel.types and not any(_type_matches(t, module) for t in sel.types):
                self.left_out[name] = (f"{_a(type(module).__name__)}, not of types "
                                       f"{', '.join(sel.types)}")
        for entry in sel.ignore:
            pool = self.modules if self.modules is not None else self.candidates
            if not any(matches(entry, n) for n in pool):
                self.problems.append(self._unmatched(entry))
        for name in self.candidates:
            if name not in self.left_out and sel.ignores(name):
                self.left_out[name] = "ignored"

    @property
    def pool(self) -> list[str]:
        """The candidates that types and ignore leave, in module order."""
        return [n for n in self.candidates if n not in self.left_out]

    def hits(self, entry: str) -> list[str]:
        """The pool's candidates that ``entry`` takes; records a problem when there are none."""
        hit = [n for n in self.candidates if matches(entry, n)]
        if not hit:
            self.problems.append(self._unmatched(entry))
            return []
        kept = [n for n in hit if n not in self.left_out]
        if not kept:
            why = "; ".join(f"{n}: {self.left_out[n]}" for n in hit[:3])
            self.problems.append(f"{entry!r} takes only layers that types/ignore leave out "
                                 f"({why})")
        return kept

    def raise_problems(self) -> None:
        if self.problems:
            raise ConfigError(f"{self.technique}: {'; '.join(self.problems)}; {self.kind}: "
                              f"{_listing(self.candidates)}")

    def _cannot(self) -> str:
        return (f"{self.technique} takes only {self.takes}" if self.takes
                else f"not one of the {self.kind}")

    def _unmatched(self, entry: str) -> str:
        if self.modules is not None and not is_pattern(entry):
            if entry in self.modules:
                return f"{entry!r} is {_a(type(self.modules[entry]).__name__)} ({self._cannot()})"
            if entry in self.params:
                return f"{entry!r} is a parameter, not a layer ({self._cannot()})"
            return f"no layer named {entry!r} in this model"
        if self.modules is not None:
            found = sorted({type(m).__name__ for n, m in self.modules.items()
                            if n and matches(entry, n)})
            if found:
                return f"{entry!r} matches only {', '.join(found)} modules ({self._cannot()})"
        return f"no layer matches {entry!r}" if is_pattern(entry) else \
            f"no layer named {entry!r}"

    def _type_problem(self, type_name: str) -> str:
        if self.modules is not None and any(_type_matches(type_name, m)
                                            for m in self.modules.values()):
            return f"types: {type_name} layers are not among the {self.kind} ({self._cannot()})"
        present = sorted({type(m).__name__ for m in self.candidates.values()})
        return (f"types: no {type_name} layer among the {self.kind} (their types: "
                f"{', '.join(present) or 'none'}; Conv means any Conv1d/2d/3d)")


def select(selector: LayerSelector | None, candidates: Mapping[str, nn.Module], *,
           technique: str, model: nn.Module | None = None, kind: str = "candidate layers",
           takes: str | None = None) -> list[str]:
    """The names of the ``candidates`` (name -> module, in module order) that ``selector``
    takes, in module order; None takes every candidate.

    Raises ConfigError naming every entry that matches nothing (or only layers that types or
    ignore leave out), and when nothing is left. ``model`` (the whole model) lets the message
    say what a named module that is not a candidate is; ``kind`` names the candidates
    ("prunable layers") and ``takes`` what the technique handles ("Linear and Conv
    layers")."""
    if not candidates:
        raise ConfigError(f"{technique}: this model has none of the {kind}"
                          + (f" ({technique} takes {takes})" if takes else ""))
    choice = _Choice(selector, candidates, technique, model, kind, takes)
    if choice.selector.names:
        chosen: set[str] = set()
        for entry in choice.selector.names:
            chosen.update(choice.hits(entry))
    else:
        chosen = set(choice.pool)
    choice.raise_problems()
    if not chosen:
        raise ConfigError(f"{technique}: types/ignore leave none of the {kind}: "
                          f"{_listing(candidates)}")
    return [n for n in candidates if n in chosen]


def select_values(values: Mapping[str, V], candidates: Mapping[str, nn.Module], *,
                  technique: str, selector: LayerSelector | None = None,
                  model: nn.Module | None = None, kind: str = "candidate layers",
                  takes: str | None = None) -> dict[str, V]:
    """Candidate name -> value for a per-layer mapping whose keys are names or patterns (see
    the module docstring), in module order. ``selector``'s types and ignore leave candidates
    out (its names must be empty: the mapping names the layers). Errors as ``select``."""
    choice = _Choice(selector, candidates, technique, model, kind, takes)
    if choice.selector.names:
        raise ConfigError(f"{technique}: give either layer names or a per-layer mapping, not "
                          "both (the mapping names the layers)")
    out: dict[str, V] = {}
    exact = [k for k in values if not is_pattern(k)]
    for key in [*exact, *(k for k in values if is_pattern(k))]:
        for name in choice.hits(key):
            out.setdefault(name, values[key])
    choice.raise_problems()
    return {n: out[n] for n in candidates if n in out}
