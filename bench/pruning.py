"""All pruning benchmarks, merged into bench/results/pruning.json.

    MODELZIP_DATA=../shared/data python bench/pruning.py [--parts magnitude structured ...]

Parts (each also runs alone and writes its own results file):
- magnitude:  unstructured magnitude pruning with retraining on lenet300 / lenet5 (Han 2015)
- structured: L1 filter pruning of eurosat_cnn to <= 50% FLOPs, latency vs unpruned
- drop_bound: the data-driven drop-bound agent vs L1 at the same per-layer ratios
A part that is not run keeps its previous rows. Every error figure is that of a model saved
and reloaded from disk, on the full test split.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from benchlib import write_results  # noqa: E402
from modelzip.checkpoint import write_atomic  # noqa: E402

PARTS = {
    "magnitude": ("pruning_magnitude", "pruning_magnitude.json"),
    "structured": ("pruning_structured", "pruning_structured.json"),
    "drop_bound": ("pruning_drop_bound", "pruning_drop_bound.json"),
}
RESULTS = BENCH / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=[])
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for part, (module_name, fname) in PARTS.items():
        path = RESULTS / fname
        if part in args.parts:
            module = importlib.import_module(module_name)
            part_rows = module.run(progress=args.progress)
            write_atomic(path, (json.dumps({"benchmark": module_name, "models": part_rows},
                                           indent=2) + "\n").encode())
        if path.is_file():
            for row in json.loads(path.read_text())["models"]:
                rows.append({"part": part, **row})
    write_results(RESULTS / "pruning.json", "pruning",
                  "pruning benchmarks; errors of models saved and reloaded from disk, full "
                  "test splits", rows)
    print(f"{len(rows)} rows in {RESULTS / 'pruning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
