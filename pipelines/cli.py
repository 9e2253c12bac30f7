"""The ``atlas`` console script: ``atlas verify RUN_DIR`` checks a run, ``atlas serve RUN_DIR``
serves its viewer on a loopback URL; anything else is the Hydra entry point
(``atlas key=value ...``, ``atlas -m ...``)."""

from __future__ import annotations

import sys

COMMANDS = ("verify", "serve")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        if sys.argv[1] == "serve":
            from pipelines import serve

            sys.exit(serve.main(sys.argv[2:]))
        from pipelines import verify

        sys.exit(verify.main(sys.argv[2:]))
    from pipelines import ray_ops, sweep
    from pipelines.main import main as hydra_main

    hydra_main()
    ray_ops.shutdown()
    sys.exit(sweep.finish())
