"""A run directory laid out like a real one (the real page and data script, tiles, sheets, a
class view with its report, and what must never be served: manifest, store, markers, icon cache,
symlinks out), a server over it with a fake backend, and a raw HTTP client that sends exactly
the bytes a test gives (no client library normalizes a hostile path)."""

from __future__ import annotations

import base64
import io
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas_core.compose.report import CSP as REPORT_CSP
from atlas_core.compose.viewer import data_script, page_html, put_script, static_files

SLUG = "atlas-3-cat"


def _image(path: Path, fmt: str, size: int = 16, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    path.write_bytes(buf.getvalue())


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _b64(values: object, dtype: str) -> str:
    """A little-endian typed array as the viewer's data files carry it."""
    a = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return base64.b64encode(a.tobytes()).decode("ascii")


def _viewer(folder: Path, title: str) -> None:
    """A viewer folder as compose writes it: the real page, script, style and Leaflet, and a
    one-level run record (4 x 4 cells, 3 of them filled) the page opens."""
    for rel, data in static_files().items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    run = {
        "title": title,
        "meta": "a fake run for the server's tests",
        "label_kind": "predictions",
        "classes": ["cat", "dog"],
        "levels": [
            {"size": 4, "zmin": 0, "zmax": 0, "cells": 3, "heat": None, "kind": "predictions"}
            | {"widest": "dog", "plausibility": None}
        ],
        "icon_px": 32,
        "tile_px": 256,
        "tile_ext": "jpg",
        "background": 255,
        "sheet_columns": 16,
        "k": 1,
        "card_chunk": 1024,
        "exemplars": {"dir": "../exemplars/blocks.2/", "per": 256, "cols": 16}
        | {"patch_px": 64, "thumb_px": 128},
        "overview": "../atlas-4.png",
        "axis": None,
        "links": [],
    }
    cells = {"ix": _b64([0, 1, 2], "u2"), "iy": _b64([0, 1, 2], "u2")}
    counts = {"count": _b64([3, 2, 1], "u4"), "label": _b64([0, 1, 0], "i2")}
    _write(
        folder / "data/level-4.js", put_script(cells | counts | {"top": counts["label"], "t": 1})
    )
    card = {"topv": _b64([3, 2, 1], "f4"), "ex": _b64([0, -1, -1], "i4")}
    card |= {"slot": _b64([0, -1, -1], "i4"), "box": _b64(np.zeros((3, 1, 4)), "f4")}
    _write(folder / "data/cards-4-0.js", put_script(card))
    _write(folder / "data/sources-0.js", put_script({"names": ["a.jpg"], "w": [64], "h": [64]}))
    _write(folder / "data/atlas.js", data_script(run))
    _write(folder / "data/links.js", "window.ATLAS_LINKS = [];\n")
    _write(folder / "index.html", page_html(title, ["data/atlas.js", "data/links.js"]))
    _image(folder / "tiles/4/0/0/0.jpg", "JPEG", 256)
    _image(folder / "levels/4/icons-0.png", "PNG", 32)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serve")
    run = base / "run"
    _viewer(run / "viewer", "tiny blocks.2")
    _image(run / "exemplars/blocks.2/patches-0.jpg", "JPEG", 64, 1)
    _image(run / "exemplars/blocks.2/sources-0.jpg", "JPEG", 64, 2)
    _write(run / "exemplars/blocks.2/index.html", "<p>not a page of the viewer</p>")
    view = run / "views" / SLUG
    _viewer(view / "viewer", "class activation atlas: cat")
    _image(view / "exemplars/blocks.2/sources-0.jpg", "JPEG", 64, 3)
    meta = f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">'
    _write(view / "patches/index.html", meta + '<img src="patch-0.png">')
    _write(view / "patches/report.css", "body {}\n")
    _image(view / "patches/patch-0.png", "PNG", 16, 4)
    # never served: absolute source paths, error texts, the store, markers, the cache
    _write(run / "manifest.json", '{"data": {"path": "/home/someone/private/images"}}')
    _write(run / "atlas.zarr/zarr.json", '{"zarr_format": 3}')
    _write(run / "markers/stage-compose.json", '{"error": "Traceback ... /home/someone"}')
    _write(run / "icon-cache/ab/abcdef.npz", "npz")
    _image(run / "atlas.png", "PNG")
    _write(run / "viewer/.hidden.js", "secret")
    # symlinks and odd files
    outside = base / "outside"
    _image(outside / "secret.png", "PNG")
    _write(outside / "viewer/secret.js", "secret")
    os.symlink("/etc/passwd", run / "viewer/data/passwd.js")
    os.symlink(outside, run / "viewer/tiles/out")
    os.symlink(outside, run / "views/evil")
    os.symlink("../../manifest.json", run / "viewer/data/manifest.js")
    os.symlink("atlas.js", run / "viewer/data/alias.js")  # inside its folder: served
    os.mkfifo(run / "viewer/data/fifo.js")
    return run


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]]


def send(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send raw bytes, read one response (the server closes or says its length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_reply(s)


def read_reply(s: socket.socket) -> Reply:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    raw = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    headers = {k.lower(): v for k, v in raw}
    length = int(headers.get("content-length", -1))
    while (length < 0 or len(body) < length) and (chunk := s.recv(65536)):
        body += chunk
    return Reply(int(lines[0].split()[1]), headers, body, raw)  # type: ignore[arg-type]


def request(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    host: str | None = None,
) -> Reply:
    """One HTTP/1.1 request with exactly this target; Host 127.0.0.1:<port> unless given."""
    h = {"Host": host if host is not None else f"127.0.0.1:{port}", "Connection": "close"}
    h |= headers or {}
    if body and "Content-Length" not in h and "Transfer-Encoding" not in h:
        h["Content-Length"] = str(len(body))
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in h.items())]
    return send(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


@pytest.fixture(scope="module")
def server(run_dir):
    """A server over the run: a fake backend, short deadlines for the tests."""
    from pipelines.server.runner import start
    from pipelines.server.settings import ServerSettings
    from tests.server.fake_backend import FakeBackend

    s = ServerSettings(str(run_dir), port=0, head_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1)
    running = start(s, FakeBackend())
    yield running
    running.shutdown()
