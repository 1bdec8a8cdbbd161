"""PNG plots (matplotlib, Agg backend: no display needed). Files are written atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

__all__ = ["plot_input_connections", "plot_nonzero_pattern", "save_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Render to memory, then write atomically, so no half-written PNG is left behind."""
    from modelzip.checkpoint import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    write_atomic(path, buf.getvalue())
    return Path(path)


def plot_nonzero_pattern(weight: torch.Tensor, path: str | os.PathLike[str],
                         title: str = "") -> Path:
    """Black where a weight survives, white where it was pruned. Conv weights are shown as
    (out channels) x (in channels * kh * kw)."""
    plt = _pyplot()
    w = weight.detach().reshape(weight.shape[0], -1) != 0
    fig, ax = plt.subplots(figsize=(min(12, 2 + w.shape[1] / 60), min(8, 2 + w.shape[0] / 60)))
    ax.imshow(w.numpy(), cmap="Greys", interpolation="nearest", aspect="auto")
    kept = 100.0 * float(w.float().mean())
    ax.set_title(f"{title} non-zero pattern ({kept:.1f}% kept)".strip())
    ax.set_xlabel("input" if weight.ndim == 2 else "input channel x kernel position")
    ax.set_ylabel("output")
    return save_figure(fig, path)


def plot_input_connections(weight: torch.Tensor, image_shape: tuple[int, int],
                           path: str | os.PathLike[str], title: str = "") -> Path:
    """For a first Linear layer on flattened images: surviving connections per input pixel,
    as an image (Han et al. 2015, Fig. 4: border pixels lose most)."""
    plt = _pyplot()
    counts = (weight.detach() != 0).sum(0).reshape(image_shape).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(counts, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=f"surviving connections (of {weight.shape[0]})")
    ax.set_title(title or "connections kept per input pixel")
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
