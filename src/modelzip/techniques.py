"""Where techniques come from: the built-in ones, imported here (and only here), and those of
third-party packages that declare an entry point in the ``modelzip.techniques`` group::

    [project.entry-points."modelzip.techniques"]
    my-pruner = "my_package.pruner"      # a module whose import registers its techniques

A plugin that fails to import is reported (``plugin_errors``, a warning on the ``modelzip``
logger naming it) and left out; modelzip itself still starts.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from modelzip.core.context import logger

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "load_techniques", "plugin_errors"]

ENTRY_POINT_GROUP = "modelzip.techniques"
BUILTIN_MODULES = (
    "modelzip.finetune",
    "modelzip.prune",
    "modelzip.quant",
    "modelzip.quant.universal",
    "modelzip.quant.transform_coding",
    "modelzip.quant.weightless",
    "modelzip.runtime.qat",
    "modelzip.distill",
    "modelzip.lowrank",
    "modelzip.search.fold",
    "modelzip.rate",
    "modelzip.quant.slq",
)

_loaded = False
plugin_errors: dict[str, str] = {}  # entry-point name -> the error its import raised


def load_techniques() -> None:
    """Import the built-in techniques and the plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a technique module may call back into the registry
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not stop modelzip
            plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            logger.warning("plugin %r (%s) failed to load and is left out: %s: %s",
                           ep.name, ep.value, type(exc).__name__, exc)
