"""Kept for imports written before ``modelzip.core``: the registry and Context live in
``modelzip.core.registry`` and ``modelzip.core.context``."""

from modelzip.core.context import Context
from modelzip.core.registry import (
    KINDS,
    Technique,
    apply,
    apply_technique,
    config_from_dict,
    get_technique,
    list_techniques,
    normalise_layers,
    register_technique,
)

__all__ = ["KINDS", "Context", "Technique", "apply", "apply_technique", "config_from_dict",
           "get_technique", "list_techniques", "normalise_layers", "register_technique"]
