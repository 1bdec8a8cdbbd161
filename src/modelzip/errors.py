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


class ArtifactError(ModelzipError):
    """A .mzip artifact is damaged, hostile or inconsistent, or cannot be written."""


class ExportError(ModelzipError):
    """A model cannot be exported to ONNX, or its ONNX graph disagrees with PyTorch."""
