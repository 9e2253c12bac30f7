"""Hostile uploads to ``POST /api/locate``: every one refused with the status that names the
problem (never a 500, never a traceback), decoded by the data reader's own policy; good images
(raw or multipart) answered with what the backend computes on the decoded image."""

from __future__ import annotations

import io
import json
import logging
import socket
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import read_reply, request
from tests.server.fake_backend import locate_reference

log = logging.getLogger(__name__)
BOUNDARY = "atlasboundary"


def _png(size: int = 64, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size: int = 64) -> bytes:
    arr = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _gif() -> bytes:
    frames = [Image.new("P", (32, 32), i) for i in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 100_000) -> bytes:
    """A valid PNG header claiming side x side pixels, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """(field name, file name or None, content) parts, as a browser's form sends them."""
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: application/octet-stream\r\n" if filename else ""
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n{kind}\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
RAW = {"Content-Type": "image/png"}


def _hostile() -> dict[str, tuple[dict[str, str], bytes, int, str]]:
    """name: (headers, body, the status it must get, a word its message must hold)."""
    png, jpeg = _png(), _jpeg()
    text = b"GIF89a? no: just text that claims to be an image\n" * 10
    return {
        "zero bytes": (RAW, b"", 422, "empty"),
        "random bytes": (RAW, np.random.default_rng(2).bytes(10_000), 415, "not an image"),
        "truncated PNG": (RAW, png[: len(png) // 2], 422, "truncated"),
        "truncated JPEG": (RAW, jpeg[: len(jpeg) // 2], 422, "truncated"),
        "PNG header only (the decoder: unidentified)": (RAW, png[:33], 415, "not an image"),
        "bomb: PNG claiming 100k x 100k": (RAW, png_bomb(), 413, "pixels"),
        "bomb: PNG claiming 20k x 20k": (RAW, png_bomb(20_000), 413, "pixels"),
        "too small (4 x 4)": (RAW, _png(4), 422, "small"),
        "text as image/png": (RAW, text, 415, "not an image"),
        "SVG": ({"Content-Type": "image/svg+xml"}, b"<svg xmlns='x'></svg>", 415, "not an image"),
        "HTML as text/html": ({"Content-Type": "text/html"}, b"<html></html>", 415, "upload"),
        "JSON body": ({"Content-Type": "application/json"}, b"{}", 415, "upload"),
        "text named cat.png (multipart)": (
            FORM,
            multipart(("image", "cat.png", text)),
            415,
            "not an image",
        ),
        "multipart without boundary": (
            {"Content-Type": "multipart/form-data"},
            multipart(("image", "a.png", png)),
            400,
            "multipart",
        ),
        "multipart, two files": (
            FORM,
            multipart(("a", "a.png", png), ("b", "b.png", png)),
            400,
            "multipart",
        ),
        "multipart, no file": (FORM, multipart(("note", None, b"hello")), 400, "exactly one file"),
        "multipart, 10 fields": (
            FORM,
            multipart(*[(f"f{i}", None, b"x") for i in range(10)]),
            400,
            "multipart",
        ),
        "multipart, 10 kB field": (
            FORM,
            multipart(("note", None, b"x" * 10_000), ("image", "a.png", png)),
            400,
            "multipart",
        ),
        "multipart, garbage": (FORM, np.random.default_rng(3).bytes(5_000), 400, "multipart"),
        "multipart, unterminated": (FORM, multipart(("image", "a.png", png))[:-40], 400, ""),
        "multipart body as image/png": (
            RAW,
            multipart(("image", "a.png", png)),
            415,
            "not an image",
        ),
    }


def test_hostile_uploads_are_refused_with_their_status(server) -> None:
    cases = _hostile()
    wrong = {}
    for name, (headers, body, want, word) in cases.items():
        r = request(server.port, "POST", "/api/locate", headers, body)
        message = json.loads(r.body)["error"] if r.body.startswith(b"{") else r.body.decode()
        if r.status != want or word.lower() not in message.lower():
            wrong[name] = (r.status, message[:160])
        assert "Traceback" not in message and "0x" not in message, (name, message)
    assert wrong == {}
    by_status: dict[int, int] = {}
    for _, _, want, _ in cases.values():
        by_status[want] = by_status.get(want, 0) + 1
    log.info(
        "uploads: %d hostile uploads tried, %d refused with the expected status %s, 0 served",
        len(cases),
        len(cases) - len(wrong),
        dict(sorted(by_status.items())),
    )


@pytest.mark.parametrize(
    "name, make, form",
    [
        ("PNG raw", _png, False),
        ("JPEG multipart", _jpeg, True),
        ("16-bit grey PNG", lambda: _png(48, "I;16"), False),
        ("animated GIF (first frame)", _gif, True),
    ],
)
def test_good_images_are_located(server, name, make, form) -> None:
    data = make()
    if form:
        r = request(server.port, "POST", "/api/locate?top=2", FORM, multipart(("image", "x", data)))
    else:
        r = request(server.port, "POST", "/api/locate?top=2", RAW, data)
    assert r.status == 200, (name, r.body[:300])
    from atlas_core.data.decode import decode_bytes

    want = locate_reference(decode_bytes(data).image, 2)  # type: ignore[arg-type]
    assert json.loads(r.body) == want
    timing = r.headers["server-timing"]
    assert all(f"{k};dur=" in timing for k in ("read", "decode", "compute"))


def test_query_parameters_are_checked(server) -> None:
    for q in ("top=0", "top=51", "top=abc"):
        r = request(server.port, "POST", f"/api/locate?{q}", RAW, _png())
        assert r.status == 422 and "top" in json.loads(r.body)["error"], q


def test_too_large_is_refused_before_the_body_is_read(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        t0 = time.perf_counter()
        head = "POST /api/locate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        s.sendall((head + f"Content-Length: {30 << 20}\r\n\r\n").encode())
        r = read_reply(s)  # answered with no body byte sent
        assert r.status == 413 and time.perf_counter() - t0 < 2
    # chunked, no length: counted as it arrives, refused once past the limit
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"%x\r\n" % (1 << 20) + b"\0" * (1 << 20) + b"\r\n"
        sent = 0
        try:
            for _ in range(40):
                s.sendall(chunk)
                sent += 1
        except OSError:
            pass  # the server closed the connection after its answer
        r = read_reply(s)
        assert r.status == 413 and 20 <= sent + 1, sent


def test_a_slow_body_times_out(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        head = "POST /api/locate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        s.sendall((head + "Content-Length: 1000\r\n\r\n").encode() + b"\x89PNG")
        t0 = time.perf_counter()
        r = read_reply(s)
        waited = time.perf_counter() - t0
        assert r.status == 408 and 0.9 < waited < 3, (r.status, waited)
        assert s.recv(10) == b""  # and the connection is closed, not left waiting for the rest
