"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class ModelzipError(Exception):
    """Base class: something the user handed us is wrong; the message says what to do."""


class DataError(ModelzipError):
    """A dataset is missing, corrupt or not in the expected layout."""


class UnknownModelError(ModelzipError):
    """A model name that the zoo does not know."""


class CheckpointError(ModelzipError):
    """A checkpoint is missing, corrupt, or for another architecture."""


class ShapeError(ModelzipError):
    """An input tensor does not have the shape the model expects."""


class ConfigError(ModelzipError):
    """A configuration value is out of range or unknown."""


def check_choice(value: object, allowed: tuple[str, ...], where: str, key: str) -> None:
    """Refuse a ``key`` whose ``value`` is not one of ``allowed``, in one ConfigError that
    names them (``where: key must be one of ..., got ...``)."""
    if value not in allowed:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")


def check_integer(value: object, low: int, high: int, where: str, key: str,
                  note: str = "") -> None:
    """Refuse a ``key`` that is not an integer from ``low`` to ``high`` (a bool is not one),
    in one ConfigError (``where: key must be an integer from low to high<note>, got ...``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: {key} must be an integer from {low} to {high}{note}, got "
                          f"{value!r}")


class ArtifactError(ModelzipError):
    """A .mzip artifact is damaged, hostile or inconsistent, or cannot be written."""


class ExportError(ModelzipError):
    """A model cannot be exported to ONNX, or its ONNX graph disagrees with PyTorch."""
