"""Quantization and weight sharing of Linear, Conv and Embedding weights. Importing this
package registers the techniques ``uniform`` (affine, symmetric, binary, ternary; optional
quantization-aware fine-tuning) and ``kmeans`` (Deep Compression weight sharing with centroid
fine-tuning).

The math is in plain tensor functions (``uniform``, ``kmeans``); the techniques only do the
module surgery. After either technique each chosen weight is a float32 tensor that holds
exactly its quantized values, with pruned weights exactly 0.0. After ``uniform`` each
quantized module also carries a grid hint; ``grid_hints(model)`` collects them for
``modelzip.codec.write_artifact(..., hints=...)``, which then stores such a weight as its
integer codes."""

from modelzip.quant.grid import grid_hints
from modelzip.quant.kmeans import assign, init_centroids, kmeans_1d, kmeans_1d_optimal, within_sse
from modelzip.quant.targets import quantizable_weights
from modelzip.quant.uniform import (
    QuantParams,
    dequantize,
    fake_quantize,
    quant_params,
    quantize,
    quantize_tensor,
    quantize_weight,
)
from modelzip.quant.uniform_technique import UniformQuantConfig, uniform_quantize
from modelzip.quant.weight_sharing import WeightSharingConfig, weight_sharing

__all__ = ["assign", "init_centroids", "kmeans_1d", "kmeans_1d_optimal", "within_sse"]
__all__ += ["QuantParams", "dequantize", "fake_quantize", "quant_params", "quantize",
            "quantize_tensor", "quantize_weight"]
__all__ += ["UniformQuantConfig", "WeightSharingConfig", "uniform_quantize", "weight_sharing"]
__all__ += ["grid_hints", "quantizable_weights"]
