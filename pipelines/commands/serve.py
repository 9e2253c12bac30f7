"""``atlas serve RUN_DIR``: the run's viewer and its questions over HTTP (pipelines/server).

Bound to 127.0.0.1 by default. Any other address needs a token (``ATLAS_SERVE_TOKEN``, or
``--token``, which other users of the machine can see in the process list): every request must
carry it, as ``Authorization: Bearer <token>`` or the cookie set by opening
``/viewer/index.html?token=<token>`` once. Only the pages and the files they read are served.
The compute endpoints (locate, render, neighbours, export) are answered by the atlas API over
the run (``pipelines.server.atlas_backend``; the model loads on the first question and stays
warm), or by ``--backend MODULE:FACTORY``; ``--no-compute`` serves the pages alone.
"""

from __future__ import annotations

import argparse
import logging

from atlas_core.errors import ConfigError
from pipelines.server.backend import load_backend
from pipelines.server.runner import Running, serve_forever, start
from pipelines.server.settings import ServerSettings

log = logging.getLogger(__name__)
DEFAULT_BACKEND = "pipelines.server.atlas_backend:backend"


def serve_in_thread(run_dir: str, host: str = "127.0.0.1", port: int = 0) -> tuple[str, Running]:
    """Start a server in a daemon thread: (the viewer's URL, the server: call .shutdown())."""
    running = start(ServerSettings.from_env(run_dir, host=host, port=port))
    return f"{running.url}/viewer/index.html", running


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="atlas serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory (local)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    ap.add_argument("--token", help="required on every request (prefer ATLAS_SERVE_TOKEN)")
    ap.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the Host header may carry (repeat; a DNS name the server is reached by)",
    )
    ap.add_argument(
        "--backend",
        metavar="MODULE:FACTORY",
        default=DEFAULT_BACKEND,
        help=f"answers the compute endpoints (default: {DEFAULT_BACKEND})",
    )
    ap.add_argument("--no-compute", action="store_true", help="serve the pages only")
    ap.add_argument("--workers", type=int, default=2, help="compute threads (default 2)")
    ap.add_argument("--queue", type=int, default=8, help="compute requests that may wait")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {"host": args.host, "port": args.port, "workers": args.workers, "queue": args.queue}
    if args.token:
        overrides["token"] = args.token
    try:
        s = ServerSettings.from_env(args.run_dir, extra_hosts=tuple(args.allow_host), **overrides)
        backend = load_backend(None if args.no_compute else args.backend, s.run_dir)
    except ConfigError as exc:
        raise SystemExit(f"atlas serve: {exc}") from None
    serve_forever(s, backend)
    return 0
