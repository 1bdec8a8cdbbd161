"""modelzip: compress trained PyTorch models to fit a hard budget of bytes, milliseconds and RAM.

The public API is re-exported here lazily, so that ``import modelzip`` stays light (the
on-board runtime must import without torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # the workflow and the one verb per technique family
    "compress": "modelzip.pipeline",
    "CompressionResult": "modelzip.pipeline",
    "apply": "modelzip.core.registry",
    "prune": "modelzip.prune",  # the package is callable: modelzip.prune(model, config)
    "quantize": "modelzip.api",
    "factorize": "modelzip.api",
    "distill": "modelzip.distill",  # callable: modelzip.distill(student, teacher, data, ...)
    "Context": "modelzip.core.context",
    "Dataset": "modelzip.core.dataset",
    "Recipe": "modelzip.recipe",
    "load_recipe": "modelzip.recipe",
    "list_techniques": "modelzip.core.registry",
    "register_technique": "modelzip.core.registry",
    "load_dataset": "modelzip.data",
    "load_image_folder": "modelzip.data",
    "ImageDataset": "modelzip.data",
    "build_model": "modelzip.zoo",
    "list_models": "modelzip.zoo",
    "register_model": "modelzip.zoo",
    "fit": "modelzip.train",
    "evaluate": "modelzip.train",
    "TrainConfig": "modelzip.train",
    "save_checkpoint": "modelzip.checkpoint",
    "load_checkpoint": "modelzip.checkpoint",
    "measure": "modelzip.metrics",
    "profile_model": "modelzip.metrics",
    "measure_latency": "modelzip.metrics",
    "measure_peak_memory": "modelzip.metrics",
    "ModelzipError": "modelzip.errors",
    "pack": "modelzip.codec.model",
    "unpack": "modelzip.codec.model",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return module if module.__name__ == f"modelzip.{name}" else getattr(module, name)
    raise AttributeError(f"module 'modelzip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
