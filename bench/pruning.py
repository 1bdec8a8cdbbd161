"""All pruning benchmarks, merged into bench/results/pruning.json.

    MODELZIP_DATA=../shared/data python bench/pruning.py [--parts magnitude structured ...]
    MODELZIP_DATA=../shared/data python bench/pruning.py --quick   # smoke test of every part

Parts (each also runs alone and writes its own results file):
- magnitude:  unstructured magnitude pruning with retraining on lenet300 / lenet5 (Han 2015)
- structured: L1 filter pruning of eurosat_cnn to <= 50% FLOPs, latency vs unpruned
- drop_bound: the data-driven drop-bound agent vs L1 at the same per-layer ratios
A part that is not run keeps its previous rows. Every compression is a recipe run through
``modelzip.compress``; every error figure is that of the model read back from its .mzip, on
the full test split. ``--quick`` runs the tiny version of the chosen parts (default: all)
and merges them in a new temporary folder instead of bench/results.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
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
    parser.add_argument("--quick", action="store_true",
                        help="the tiny version of each chosen part (default: all), merged in a "
                             "temporary folder, to check the scripts")
    args = parser.parse_args(argv)
    results, parts = RESULTS, args.parts
    if args.quick:
        results, parts = Path(tempfile.mkdtemp(prefix="modelzip-quick-")), parts or list(PARTS)
        print(f"--quick: merging into {results}", flush=True)
    rows: list[dict] = []
    for part, (module_name, fname) in PARTS.items():
        path = results / fname
        if part in parts:
            module = importlib.import_module(module_name)
            part_rows = module.run(progress=args.progress, quick=args.quick)
            write_atomic(path, (json.dumps({"benchmark": module_name, "models": part_rows},
                                           indent=2) + "\n").encode())
        if path.is_file():
            for row in json.loads(path.read_text())["models"]:
                rows.append({"part": part, **row})
    write_results(results / "pruning.json", "pruning",
                  "pruning benchmarks, each a recipe run through modelzip.compress; errors of "
                  "the models read back from their .mzip, full test splits", rows)
    print(f"{len(rows)} rows in {results / 'pruning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
