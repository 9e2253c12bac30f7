"""The compute endpoints over a fake backend: answers equal the backend's own, queries checked
(422 naming the field), a full queue answered 503 with Retry-After, a slow call 504, a backend's
refusal 422, its absence 501, its bug 500 without a trace of it."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest

from pipelines.server.backend import ExportRequest, Selection
from pipelines.server.jobs import Busy, Jobs, JobTimeout
from pipelines.server.runner import start
from pipelines.server.settings import ServerSettings
from tests.server.conftest import request
from tests.server.fake_backend import FakeBackend, points

log = logging.getLogger(__name__)
JSON = {"Content-Type": "application/json"}
PNG = b"\x89PNG\r\n\x1a\n"


def _post(port: int, path: str, payload: object) -> tuple[int, object, dict[str, str]]:
    r = request(port, "POST", path, JSON, json.dumps(payload).encode())
    body = json.loads(r.body) if r.headers.get("content-type") == "application/json" else r.body
    return r.status, body, r.headers


def test_render_answers_a_png_for_each_kind_of_selection(server) -> None:
    for payload in (
        {"rows": [1, 2, 3]},
        {"cell": {"level": 4, "ix": 1, "iy": 2}},
        {"polygon": [[0.1, 0.1], [0.5, 0.1], [0.3, 0.4]], "level": 4},
        {"direction": [0.5] * 64},
    ):
        status, body, headers = _post(server.port, "/api/render", payload)
        assert status == 200 and headers["content-type"] == "image/png", payload
        assert isinstance(body, bytes) and body.startswith(PNG)


def test_render_queries_are_checked(server) -> None:
    bad = {
        "nothing": {},
        "two kinds": {"rows": [1], "direction": [1.0]},
        "unknown key": {"rows": [1], "colour": "red"},
        "negative row": {"rows": [-1]},
        "row as text": {"rows": ["one"]},
        "two vertices": {"polygon": [[0, 0], [1, 1]]},
        "a cell without iy": {"cell": {"level": 4, "ix": 1}},
        "level 0": {"cell": {"level": 0, "ix": 1, "iy": 1}},
        "too many rows": {"rows": list(range(100_001))},
    }
    for name, payload in bad.items():
        status, body, _ = _post(server.port, "/api/render", payload)
        assert status in (413, 422), (name, status, body)
        assert isinstance(body, dict) and body["error"], name
    for raw in (b"{", b"[1, 2]", b"\xff\xfe", b'{"direction": [1e999]}', b"nul\x00"):
        r = request(server.port, "POST", "/api/render", JSON, raw)
        assert r.status == 422, (raw, r.status, r.body)


def test_the_backends_refusals_absence_and_bugs(server, run_dir) -> None:
    status, body, _ = _post(server.port, "/api/render", {"direction": [-1.0]})
    assert status == 422 and "non-negative" in body["error"]  # type: ignore[index]
    status, body, _ = _post(server.port, "/api/render", {"direction": [13.0]})
    assert status == 500 and "RuntimeError" in body["error"]  # type: ignore[index]
    assert "/secret/path" not in json.dumps(body)  # the bug stays in the log
    bare = start(ServerSettings(str(run_dir), port=0))  # no backend
    try:
        status, body, _ = _post(bare.port, "/api/render", {"rows": [1]})
        assert status == 501 and "--backend" in body["error"]  # type: ignore[index]
        assert request(bare.port, "GET", "/viewer/index.html").status == 200
    finally:
        bare.shutdown()


def test_neighbours_agree_with_a_direct_computation(server) -> None:
    pts = points()
    r = request(server.port, "GET", "/api/neighbours?row=7&k=5")
    want = np.argsort(np.linalg.norm(pts - pts[7], axis=1), kind="stable")[:5]
    assert r.status == 200 and json.loads(r.body)["rows"] == want.tolist()
    r = request(server.port, "GET", "/api/neighbours?rows=1,2,3&k=3")
    want = np.argsort(np.linalg.norm(pts - pts[[1, 2, 3]].mean(0), axis=1), kind="stable")[:3]
    assert json.loads(r.body)["rows"] == want.tolist()
    r = request(server.port, "GET", "/api/neighbours?level=4&ix=1&iy=2&k=2")
    cells = np.minimum((pts * 4).astype(int), 3)
    assert json.loads(r.body)["in_cell"] == int(((cells[:, 0] == 1) & (cells[:, 1] == 2)).sum())
    bad = {
        "": 422,
        "row=1&rows=2": 422,
        "row=-1": 422,
        "row=abc": 422,
        "rows=1,,2": 422,
        "rows=1;2": 422,
        "level=4&ix=1": 422,
        "row=1&k=0": 422,
        "row=1&k=100000": 422,
        "row=100": 422,  # the backend's refusal: out of range
        "level=8&ix=1&iy=1": 422,
    }
    for q, want_status in bad.items():
        r = request(server.port, "GET", f"/api/neighbours?{q}")
        assert r.status == want_status and json.loads(r.body)["error"], (q, r.status)


def test_export_writes_the_rows_inside_the_polygon(server) -> None:
    poly = [[0.0, 0.0], [0.6, 0.0], [0.6, 0.6], [0.0, 0.6]]
    status, body, headers = _post(server.port, "/api/export", {"polygon": poly, "format": "csv"})
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"] == 'attachment; filename="atlas-export.csv"'
    pts = points()
    want = np.flatnonzero((pts[:, 0] < 0.6) & (pts[:, 1] < 0.6))
    rows = [int(line.split(",")[0]) for line in body.decode().splitlines()[1:]]  # type: ignore[union-attr]
    assert rows == want.tolist()
    for payload, want_status in (
        ({"polygon": poly, "format": "xlsx"}, 422),
        ({"polygon": poly[:2]}, 422),
        ({"polygon": poly, "where": "x" * 501}, 422),
        ({"polygon": poly, "format": "parquet"}, 501),  # the fake writes csv and json only
    ):
        assert _post(server.port, "/api/export", payload)[0] == want_status, payload


def test_a_full_queue_says_busy_and_a_slow_call_times_out(run_dir) -> None:
    gate = threading.Event()
    s = ServerSettings(str(run_dir), port=0, workers=1, queue=1, job_timeout_s=20)
    running = start(s, FakeBackend(gate=gate))
    results: list[int] = []
    try:
        held = [
            threading.Thread(
                target=lambda: results.append(_post(running.port, "/api/render", {"rows": [1]})[0])
            )
            for _ in range(2)
        ]
        for t in held:
            t.start()
        deadline = time.monotonic() + 10
        while json.loads(request(running.port, "GET", "/api/health").body)["jobs"] != {
            "workers": 1,
            "queue": 1,
            "running": 1,
            "waiting": 1,
        }:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = [_post(running.port, "/api/render", {"rows": [2]}) for _ in range(5)]
        assert all(r[0] == 503 and "busy" in r[1]["error"] for r in refused)  # type: ignore[index]
        assert all(int(r[2]["retry-after"]) >= 1 for r in refused)
        assert request(running.port, "GET", "/viewer/index.html").status == 200  # pages still flow
        gate.set()
        for t in held:
            t.join(10)
        assert results == [200, 200]
        assert _post(running.port, "/api/render", {"rows": [3]})[0] == 200  # free again
    finally:
        gate.set()
        running.shutdown()
    log.info("queue: 2 calls held (1 running, 1 waiting), 5 more answered 503 with Retry-After")


def test_a_call_past_its_deadline_is_answered_504(run_dir) -> None:
    gate = threading.Event()
    running = start(ServerSettings(str(run_dir), port=0, job_timeout_s=0.5), FakeBackend(gate=gate))
    try:
        t0 = time.perf_counter()
        status, body, _ = _post(running.port, "/api/render", {"rows": [1]})
        assert status == 504 and "0.5 s" in body["error"] and time.perf_counter() - t0 < 3  # type: ignore[index]
    finally:
        gate.set()
        running.shutdown()


def test_jobs_release_their_slots() -> None:
    import asyncio

    jobs = Jobs(workers=1, queue=0, timeout_s=0.2)
    gate = threading.Event()

    async def scenario() -> None:
        with pytest.raises(JobTimeout):
            await jobs.run(gate.wait, 5)
        with pytest.raises(Busy):  # the timed-out call still holds its thread's slot
            await jobs.run(lambda: 1)
        gate.set()
        await asyncio.sleep(0.1)
        assert await jobs.run(lambda: 2) == 2

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        jobs.close()


def test_values_check_themselves() -> None:
    assert Selection(rows=(1, 2)).kind == "rows"
    with pytest.raises(ValueError, match="exactly one"):
        Selection()
    with pytest.raises(ValueError, match="finite"):
        Selection(direction=(float("nan"),))
    with pytest.raises(ValueError, match="vertices"):
        ExportRequest(polygon=((0, 0), (1, 1)))


def test_an_upload_holds_its_slot_while_its_body_arrives(run_dir) -> None:
    """Uploads take their compute slot before their body is read: the bytes held in memory are
    bounded by workers + queue; a slow upload gives its slot back at the body deadline."""
    import socket

    from tests.server.conftest import read_reply
    from tests.server.test_uploads import _png

    s = ServerSettings(str(run_dir), port=0, workers=1, queue=0, body_timeout_s=1.0)
    running = start(s, FakeBackend())
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as slow:
            head = "POST /api/locate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            slow.sendall((head + "Content-Length: 5000\r\n\r\n").encode() + b"\x89PNG")
            time.sleep(0.3)
            png = _png()
            busy = request(running.port, "POST", "/api/locate", {"Content-Type": "image/png"}, png)
            assert busy.status == 503 and int(busy.headers["retry-after"]) >= 1
            assert read_reply(slow).status == 408
        ok = request(running.port, "POST", "/api/locate", {"Content-Type": "image/png"}, png)
        assert ok.status == 200
    finally:
        running.shutdown()


def test_an_unused_slot_is_given_back() -> None:
    jobs = Jobs(workers=1, queue=0, timeout_s=1)
    try:
        with jobs.reserve():
            with pytest.raises(Busy):
                jobs.reserve()
        with jobs.reserve():  # free again
            pass
        assert jobs.stats()["running"] == 0
    finally:
        jobs.close()
