"""The ``atlas`` console script: ``atlas verify RUN_DIR`` checks a run; anything else is the
Hydra entry point (``atlas key=value ...``, ``atlas -m ...``)."""

from __future__ import annotations

import sys

COMMANDS = ("verify",)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        from pipelines import verify

        sys.exit(verify.main(sys.argv[2:]))
    from pipelines import ray_ops, sweep
    from pipelines.main import main as hydra_main

    hydra_main()
    ray_ops.shutdown()
    sys.exit(sweep.finish())
