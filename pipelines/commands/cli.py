"""The ``atlas`` console script: ``atlas verify RUN_DIR`` checks a run, ``atlas serve RUN_DIR``
serves its viewer on a loopback URL, ``atlas stages`` prints the stage registry; anything else
is the Hydra entry point (``atlas key=value ...``, ``atlas -m ...``)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = ("verify", "serve", "stages", "plan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        command = importlib.import_module(f"pipelines.commands.{sys.argv[1]}")
        sys.exit(command.main(sys.argv[2:]))
    from pipelines.commands.main import main as hydra_main
    from pipelines.core import ray_ops

    try:
        hydra_main()  # a failed sweep job exits 1 when the multirun ends (SweepSummary)
    finally:
        ray_ops.shutdown()
