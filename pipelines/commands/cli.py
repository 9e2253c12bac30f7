"""The ``atlas`` console script: a command (``atlas verify RUN_DIR``, ...), this project's help
(``atlas --help``: the commands and the groups a person chooses, generated from the schema), or
the Hydra entry point (``atlas key=value ...``, ``atlas -m ...``; ``atlas --hydra-help`` for
Hydra's own options)."""

from __future__ import annotations

import importlib
import sys

from pipelines.commands.catalog import COMMANDS


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        command = importlib.import_module(f"pipelines.commands.{sys.argv[1]}")
        sys.exit(command.main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] in ("--help", "-h", "help"):
        from pipelines.commands.reference import help_text

        sys.stdout.write(help_text())
        sys.exit(0)
    from pipelines.commands import guard
    from pipelines.commands.main import main as hydra_main
    from pipelines.core import ray_ops

    guard.EXIT_ON_ERROR[0] = True  # a config Hydra must not act on: the message, exit 2

    try:
        hydra_main()  # a failed sweep job exits 1 when the multirun ends (SweepSummary)
    finally:
        ray_ops.shutdown()
