"""Pruning: unstructured magnitude pruning with retraining schedules, structured filter
pruning that physically removes channels, data-driven filter pruning under a drop bound,
and sensitivity analysis. Importing this package registers its techniques."""

import sys
import types
from typing import Any

from modelzip.prune.drop_bound import DropBoundConfig, drop_bound_prune
from modelzip.prune.magnitude import (
    AGPConfig,
    IterativeMagnitudeConfig,
    MagnitudePruneConfig,
    agp_prune,
    iterative_magnitude_prune,
    magnitude_prune,
)
from modelzip.prune.masks import MaskKeeper, apply_masks, masks_from_zeros, prunable_weights
from modelzip.prune.sensitivity import (
    AutoStructuredConfig,
    SensitivityCurves,
    allocate,
    auto_structured_prune,
    channel_sensitivity,
    magnitude_sensitivity,
    plot_sensitivity,
)
from modelzip.prune.structured import (
    ChannelGroup,
    StructuredPruneConfig,
    channel_groups,
    prunable_channel_layers,
    remove_output_channels,
    structured_prune,
)

__all__ = ["MaskKeeper", "apply_masks", "masks_from_zeros", "prunable_weights"]
__all__ += ["AGPConfig", "IterativeMagnitudeConfig", "MagnitudePruneConfig", "agp_prune",
            "iterative_magnitude_prune", "magnitude_prune"]
__all__ += ["ChannelGroup", "StructuredPruneConfig", "channel_groups", "prunable_channel_layers",
            "remove_output_channels", "structured_prune"]
__all__ += ["DropBoundConfig", "drop_bound_prune"]
__all__ += ["AutoStructuredConfig", "SensitivityCurves", "allocate", "auto_structured_prune",
            "channel_sensitivity", "magnitude_sensitivity", "plot_sensitivity"]


class _CallablePackage(types.ModuleType):
    """``modelzip.prune`` is both this package and the verb ``modelzip.prune(model, config)``:
    importing a subpackage sets the parent's attribute to it, which would hide a function of
    the same name, so the package itself answers the call (``modelzip.api.prune``)."""

    def __call__(self, model: Any, config: Any, ctx: Any = None) -> Any:
        from modelzip.api import prune

        return prune(model, config, ctx)


sys.modules[__name__].__class__ = _CallablePackage
