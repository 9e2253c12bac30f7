"""The app on uvicorn, on this machine: in the foreground (``atlas serve``) or in a thread (tests).

uvicorn's h11 protocol times out idle keep-alive connections but not a request that never
finishes its headers, nor a connection that sends nothing: :func:`deadline_protocol` adds a
deadline for the request line and headers (``head_timeout_s``; then ``408`` and the connection
closes), and closes a connection whose response went out before its request body finished. With
``max_connections`` (uvicorn's ``limit_concurrency``: more connections or tasks get 503),
``header_bytes`` (h11's bound on a request head) and ``keep_alive_s``, a client holds no more than
one socket and a few kB for at most ``head_timeout_s`` without sending a request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipelines.server.app import create_app
from pipelines.server.backend import Backend
from pipelines.server.settings import ServerSettings

log = logging.getLogger(__name__)
_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeadDeadline(H11Protocol):
    """h11 with a deadline on each request's head (see the module docstring)."""

    head_timeout_s = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()  # answered before its body came: do not wait for the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """A timer while no complete request head is in (nothing yet, or a part of one)."""
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()
        elif self._head_timer is None and self.timeout_keep_alive_task is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug(
                "serve: %s sent no complete request in %g s", self.client, self.head_timeout_s
            )
            self.transport.write(_TIMEOUT_408)
            self.transport.close()


def deadline_protocol(head_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a ``head_timeout_s`` deadline on request heads."""
    return type("HeadDeadline", (_HeadDeadline,), {"head_timeout_s": float(head_timeout_s)})


def uvicorn_config(settings: ServerSettings, backend: Backend | None = None) -> uvicorn.Config:
    """uvicorn's settings for the app: h11 with head deadlines, no WebSocket, no proxy headers
    trusted, no server banner, bounded connections, keep-alive and request heads."""
    return uvicorn.Config(
        create_app(settings, backend),
        host=settings.host,
        port=settings.port,
        http=deadline_protocol(settings.head_timeout_s),
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=settings.header_bytes,
        timeout_graceful_shutdown=5,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@dataclass
class Running:
    """A server running in a daemon thread: its base URL; ``shutdown()`` stops it."""

    url: str
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    def shutdown(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start(settings: ServerSettings, backend: Backend | None = None) -> Running:
    """Start the app in a daemon thread and wait until it accepts connections."""
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(settings, backend))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="atlas-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("atlas serve: the server did not start (see the log above)")
        time.sleep(0.01)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return Running(f"http://{host}:{port}", port, server, thread)


def serve_forever(settings: ServerSettings, backend: Backend | None = None) -> None:
    """Run in the foreground until Ctrl-C (uvicorn handles the signals)."""
    sock = bind(settings.host, settings.port)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info(
        "atlas serve: http://%s:%d/viewer/index.html%s (Ctrl-C stops)",
        host,
        sock.getsockname()[1],
        "?token=<the token> (once)" if settings.token else "",
    )
    uvicorn.Server(uvicorn_config(settings, backend)).run(sockets=[sock])
