"""The ``atlas`` console script: ``atlas verify RUN_DIR`` checks a run, ``atlas serve RUN_DIR``
serves its viewer on a loopback URL; anything else is the Hydra entry point
(``atlas key=value ...``, ``atlas -m ...``)."""

from __future__ import annotations

import sys

COMMANDS = ("verify", "serve")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        if sys.argv[1] == "serve":
            from pipelines.commands import serve

            sys.exit(serve.main(sys.argv[2:]))
        from pipelines.commands import verify

        sys.exit(verify.main(sys.argv[2:]))
    from pipelines.commands.main import main as hydra_main
    from pipelines.core import ray_ops

    try:
        hydra_main()  # a failed sweep job exits 1 when the multirun ends (SweepSummary)
    finally:
        ray_ops.shutdown()
