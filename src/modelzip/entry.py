"""The ``modelzip`` console script. ``modelzip run ...`` goes straight to the torch-free
runner (argparse, numpy, onnxruntime) without importing ``modelzip.cli``, whose typer, rich
and torch the runner does not need; every other command goes to ``modelzip.cli``."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        from modelzip.runtime.runner import main as run_main

        sys.exit(run_main(sys.argv[2:]))
    try:
        from modelzip.cli import main as cli_main
    except ModuleNotFoundError as exc:  # the base install is the on-board runner only
        print(f"error: 'modelzip {' '.join(sys.argv[1:2])}' needs {exc.name}, which the base "
              "install (the on-board runner: modelzip run) leaves out; install "
              "'modelzip[compress]' for the compression commands", file=sys.stderr)
        sys.exit(2)
    cli_main()


if __name__ == "__main__":
    main()
