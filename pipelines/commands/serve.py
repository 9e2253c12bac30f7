"""``atlas serve RUN_DIR``: the run's viewer over HTTP, for people who prefer a URL to a file.

Serves the run directory read-only with Python's standard HTTP server, bound to 127.0.0.1 by
default (``--host`` to change it, knowingly). The page is the same static page that opens from
disk; its Content-Security-Policy allows files of this origin only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import logging
import os
import threading

log = logging.getLogger(__name__)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("serve: %s", format % args)


def make_server(run_dir: str, host: str = "127.0.0.1", port: int = 8000) -> http.server.HTTPServer:
    """An HTTP server over ``run_dir`` (not started); port 0 picks a free one."""
    viewer = os.path.join(run_dir, "viewer", "index.html")
    if not os.path.isfile(viewer):
        raise SystemExit(
            f"atlas serve: {viewer} does not exist: build the run first "
            f"(atlas run_dir={run_dir}), or point at a run directory."
        )
    handler = functools.partial(_Handler, directory=os.path.abspath(run_dir))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_in_thread(run_dir: str, host: str = "127.0.0.1", port: int = 0) -> tuple[str, object]:
    """Start a server in a daemon thread: (the viewer's URL, the server: call .shutdown())."""
    server = make_server(run_dir, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_port}/viewer/index.html", server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a run directory (local)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = make_server(args.run_dir, args.host, args.port)
    log.info(
        "atlas serve: http://%s:%s/viewer/index.html (Ctrl-C stops)", args.host, server.server_port
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
