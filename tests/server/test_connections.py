"""Slow and idle clients: 200 connections that never finish their headers, and 50 that send
nothing, hold no thread and are closed at the head deadline; idle keep-alive connections close;
an oversized head is refused. The figures (threads, connections, seconds) are logged."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time

import pytest

from pipelines.server.runner import start
from pipelines.server.settings import ServerSettings
from tests.server.conftest import read_reply, request

log = logging.getLogger(__name__)
HEAD_S = 1.0


@pytest.fixture
def strict(run_dir):
    s = ServerSettings(str(run_dir), port=0, head_timeout_s=HEAD_S, keep_alive_s=1)
    running = start(s)
    yield running
    running.shutdown()


def _closed_within(socks: list[socket.socket], limit: float, t0: float) -> tuple[int, float]:
    """(how many of ``socks`` the server closed within ``limit`` s of ``t0``, and when the
    last of them was closed, in seconds after ``t0``)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed, last = 0, 0.0
    while closed < len(socks) and time.perf_counter() - t0 < limit:
        for key, _ in sel.select(timeout=0.1):
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except ConnectionResetError:
                data = b""
            if not data or b"408" in data:
                sel.unregister(key.fileobj)
                closed, last = closed + 1, time.perf_counter() - t0
    sel.close()
    return closed, last


def test_half_sent_connections_hold_no_thread_and_are_closed(strict) -> None:
    port, state = strict.port, strict.server.server_state
    threads_before = threading.active_count()
    half, t0 = [], time.perf_counter()
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"GET /viewer/index.html?{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        half.append(s)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(50)]
    time.sleep(0.3)
    open_now, threads_now = len(state.connections), threading.active_count()
    during = request(port, "GET", "/viewer/index.html").status  # 503 while over the limit
    closed, took = _closed_within(half + silent, HEAD_S + 4, t0)
    settle = time.perf_counter() + 5  # the server forgets a closed connection on its own loop
    while state.connections and time.perf_counter() < settle:
        time.sleep(0.05)
    after = request(port, "GET", "/viewer/index.html").status
    for s in half + silent:
        s.close()
    log.info(
        "slow clients: 200 half-sent + 50 silent connections: %d open on the server, threads "
        "%d -> %d; a request meanwhile got %d (limit %d connections); %d closed by the server, "
        "the last %.2f s after the first opened (head deadline %.1f s), %d left open; then a "
        "request got %d",
        open_now,
        threads_before,
        threads_now,
        during,
        strict.server.config.limit_concurrency,
        closed,
        took,
        HEAD_S,
        len(state.connections),
        after,
    )
    assert open_now >= 240 and threads_now - threads_before <= 2
    assert during in (200, 503)
    assert closed == 250 and took < HEAD_S + 2
    assert len(state.connections) == 0 and after == 200


def test_idle_keep_alive_and_oversized_heads(strict) -> None:
    port = strict.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /viewer/index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_reply(s).status == 200
        t0 = time.perf_counter()
        assert s.recv(10) == b""  # closed by the keep-alive timeout
        assert time.perf_counter() - t0 < 3
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        big = b"GET /viewer/index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000
        s.sendall(big + b"\r\n\r\n")
        assert read_reply(s).status in (400, 431)  # over the 16 KiB bound on a request head
    # a second request on a kept-alive connection that stalls half-way is cut too
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /viewer/viewer.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_reply(s).status == 200
        s.sendall(b"GET /viewer/index.html HTTP/1.1\r\nHo")
        t0 = time.perf_counter()
        while s.recv(4096):
            pass
        assert time.perf_counter() - t0 < HEAD_S + 2
