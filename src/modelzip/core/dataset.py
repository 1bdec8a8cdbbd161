"""The data protocol: what techniques that retrain, evaluate or calibrate read.

Anything with ``__len__`` (the number of samples) and
``batches(batch_size, *, shuffle=False, generator=None, augment="none")`` yielding
``(inputs, targets)`` pairs qualifies; ``modelzip.data.ImageDataset`` does. ``Dataset`` adapts
any other iterable of batches (a ``torch.utils.data.DataLoader``, a list of pairs) with an
optional ``transform_fn``, like ``nncf.Dataset(source, transform_fn)``. ``inputs`` may be a
tensor, a tuple of tensors (called as ``model(*inputs)``) or a dict (``model(**inputs)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from modelzip.errors import DataError

__all__ = ["BatchData", "Dataset", "batch_size_of", "call_model", "first_batch_inputs"]


@runtime_checkable
class BatchData(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None,
                augment: str = "none") -> Iterator[tuple[Any, Any]]: ...


class Dataset:
    """Any re-iterable source of batches as modelzip data. ``transform_fn(item)`` turns one
    item of ``source`` into ``(inputs, targets)`` (default: the item is that pair already).
    ``length``: the number of samples; counted by one pass over ``source`` when not given.
    The source's own batch size and order are used (``batch_size``/``shuffle`` are ignored:
    a DataLoader decides them)."""

    def __init__(self, source: Iterable[Any], transform_fn: Callable[[Any], Any] | None = None,
                 *, length: int | None = None, name: str = "dataset") -> None:
        if isinstance(source, Iterator):
            raise DataError(f"{name}: the source is a one-shot iterator; pass something that "
                            "can be iterated again (a list, a DataLoader)")
        self.source = source
        self.transform_fn = transform_fn
        self.name = name
        self._length = length

    def _pairs(self) -> Iterator[tuple[Any, Any]]:
        for item in self.source:
            pair = self.transform_fn(item) if self.transform_fn is not None else item
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise DataError(f"{self.name}: each batch must be an (inputs, targets) pair; "
                                "pass transform_fn to turn the source's items into one")
            yield pair[0], pair[1]

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(batch_size_of(x) for x, _ in self._pairs())
        return self._length

    def batches(self, batch_size: int = 0, *, shuffle: bool = False,
                generator: torch.Generator | None = None,
                augment: str = "none") -> Iterator[tuple[Any, Any]]:
        return self._pairs()

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, source={type(self.source).__name__})"


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict):
        return batch_size_of(next(iter(inputs.values())))
    if isinstance(inputs, tuple | list):
        return batch_size_of(inputs[0])
    raise DataError(f"cannot tell the batch size of inputs of type {type(inputs).__name__}")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` by the inputs' form."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def first_batch_inputs(data: Any, n: int = 2) -> Any:
    """The inputs of the first ``n`` samples of ``data`` (example inputs for tracing)."""
    for inputs, _ in data.batches(n):
        return _slice(inputs, n)
    raise DataError(f"{data!r} yielded no batch")


def _slice(inputs: Any, n: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[:n]
    if isinstance(inputs, dict):
        return {k: _slice(v, n) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(_slice(v, n) for v in inputs)
    return inputs
