"""Pruning: unstructured magnitude pruning with retraining schedules, structured filter
pruning that physically removes channels, data-driven filter pruning under a drop bound,
and sensitivity analysis. Importing this package registers its techniques."""

from modelzip.prune.masks import MaskKeeper, apply_masks, masks_from_zeros, prunable_weights

__all__ = ["MaskKeeper", "apply_masks", "masks_from_zeros", "prunable_weights"]
