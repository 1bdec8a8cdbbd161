"""Pictures of pruned models: the non-zero pattern of each layer, and for lenet300's first
layer the surviving connections per input pixel (Han et al. 2015, Fig. 4).

    python bench/pruning_pictures.py [CHECKPOINT ...]

Default: every checkpoint under bench/checkpoints/pruned/ whose model is lenet300 or lenet5.
PNGs go to bench/results/pictures/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelzip.checkpoint import load_checkpoint
from modelzip.prune.masks import prunable_weights
from modelzip.report.plots import plot_input_connections, plot_nonzero_pattern

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "pictures"


def pictures(checkpoint: Path) -> list[Path]:
    ckpt = load_checkpoint(checkpoint)
    tag = checkpoint.name
    written = []
    for pname, weight in prunable_weights(ckpt.model).items():
        layer = pname.removesuffix(".weight")
        written.append(plot_nonzero_pattern(weight, OUT / f"{tag}_{layer}_pattern.png",
                                            f"{tag} {layer}"))
    if ckpt.meta["model"]["name"] == "lenet300":
        written.append(plot_input_connections(
            ckpt.model.fc1.weight, (28, 28), OUT / f"{tag}_fc1_pixels.png",
            f"{tag}: fc1 connections kept per input pixel"))
    return written


def main(argv: list[str]) -> int:
    pruned = (BENCH / "checkpoints" / "pruned").glob("*/modelzip.json")
    paths = [Path(a) for a in argv] or sorted(
        p.parent for p in pruned if "lenet300" in p.parent.name or "lenet5" in p.parent.name)
    for path in paths:
        for png in pictures(path):
            print(png.relative_to(BENCH.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
