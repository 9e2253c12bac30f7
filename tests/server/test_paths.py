"""Which files the server hands out: exactly the pages and the files they read, byte for byte;
every other path (traversal in many spellings, symlinks out, listings, the manifest, the store,
markers, the icon cache, dot files, other extensions, other methods) refused with the status
that says why (400 malformed, 404 not served, 405 method)."""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import time

import pytest

from tests.server.conftest import SLUG, request

log = logging.getLogger(__name__)

SERVED = [
    "/viewer/index.html",
    "/viewer/viewer.js",
    "/viewer/viewer.css",
    "/viewer/lib/leaflet/leaflet.js",
    "/viewer/lib/leaflet/leaflet.css",
    "/viewer/lib/leaflet/images/layers.png",
    "/viewer/data/atlas.js",
    "/viewer/data/level-4.js",
    "/viewer/data/alias.js",  # a symlink inside its own folder
    "/viewer/tiles/4/0/0/0.jpg",
    "/viewer/levels/4/icons-0.png",
    "/exemplars/blocks.2/patches-0.jpg",
    "/exemplars/blocks.2/sources-0.jpg",
    f"/views/{SLUG}/viewer/index.html",
    f"/views/{SLUG}/viewer/data/atlas.js",
    f"/views/{SLUG}/exemplars/blocks.2/sources-0.jpg",
    f"/views/{SLUG}/patches/index.html",
    f"/views/{SLUG}/patches/report.css",
    f"/views/{SLUG}/patches/patch-0.png",
]

REFUSED = {
    # traversal, in the spellings a client can send
    "/viewer/../manifest.json": 400,
    "/viewer/%2e%2e/manifest.json": 400,
    "/viewer/%2E%2E/manifest.json": 400,
    "/viewer/.%2e/manifest.json": 400,
    "/viewer/%2e./manifest.json": 400,
    "/viewer/..%2fmanifest.json": 400,
    "/viewer/%2e%2e%2fmanifest.json": 400,
    "/viewer/data/..%2f..%2fmanifest.json": 400,
    "/viewer/..%5cmanifest.json": 400,
    "/viewer/..\\manifest.json": 400,
    "/viewer/%5c..%5cmanifest.json": 400,
    "/viewer/./index.html": 400,
    "/viewer//index.html": 400,
    "//etc/passwd": 400,
    "/%2fetc%2fpasswd": 400,
    "/viewer/%00.js": 400,
    "/viewer/index.html%00.png": 400,
    "/viewer/%0aindex.html": 400,
    "/viewer/%252e%252e/manifest.json": 404,  # decoded once: a name, not a step up
    "/viewer/..%252fmanifest.json": 404,
    "/etc/passwd": 404,
    "/viewer/" + "a/" * 20 + "x.js": 400,  # too deep
    "/viewer/" + "a" * 1100 + ".js": 400,  # too long
    # symlinks out of their folder, and what is not a regular file
    "/viewer/data/passwd.js": 404,
    "/viewer/data/manifest.js": 404,
    "/viewer/tiles/out/secret.png": 404,
    "/views/evil/viewer/secret.js": 404,
    "/viewer/data/fifo.js": 404,
    # what holds source paths and error texts
    "/manifest.json": 404,
    "/atlas.zarr/zarr.json": 404,
    "/markers/stage-compose.json": 404,
    "/icon-cache/ab/abcdef.npz": 404,
    "/atlas.png": 404,
    f"/views/{SLUG}/manifest.json": 404,
    # listings
    "/viewer/": 404,
    "/viewer": 404,
    "/viewer/data/": 404,
    "/exemplars/": 404,
    "/views/": 404,
    f"/views/{SLUG}/viewer/": 404,
    "/atlas.zarr/": 404,
    # dot files, extensions the folder's pages never read, missing files
    "/viewer/.hidden.js": 404,
    "/viewer/.git/config": 404,
    "/viewer/lib/leaflet/LICENSE": 404,
    "/exemplars/blocks.2/index.html": 404,
    "/viewer/data/atlas.js.bak": 404,
    "/viewer/missing.js": 404,
    "/api/": 404,
}


def test_the_page_and_its_files_are_served_byte_for_byte(server, run_dir) -> None:
    for path in SERVED:
        r = request(server.port, "GET", path)
        assert r.status == 200, (path, r.status, r.body[:200])
        assert r.body == (run_dir / path.lstrip("/")).read_bytes(), path
    kinds = {p.rsplit(".", 1)[1]: request(server.port, "HEAD", p) for p in SERVED}
    assert kinds["html"].headers["content-type"] == "text/html; charset=utf-8"
    assert kinds["js"].headers["content-type"].startswith("text/javascript")
    assert kinds["jpg"].headers["content-type"] == "image/jpeg"
    assert all(r.body == b"" and int(r.headers["content-length"]) > 0 for r in kinds.values())
    log.info("paths: %d files of the pages served byte for byte", len(SERVED))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_every_other_path_is_refused_with_its_status(server, method) -> None:
    wrong = {}
    for path, want in REFUSED.items():
        r = request(server.port, method, path)
        if r.status != want:
            wrong[path] = r.status
        if method == "GET":
            assert b"someone" not in r.body and b"root:" not in r.body and b"secret" not in r.body
    assert wrong == {}
    log.info(
        "paths (%s): %d hostile or unserved paths tried, %d refused with the expected status "
        "(%d x 400, %d x 404), 0 served",
        method,
        len(REFUSED),
        len(REFUSED) - len(wrong),
        sum(v == 400 for v in REFUSED.values()),
        sum(v == 404 for v in REFUSED.values()),
    )


def test_other_methods_and_request_forms(server) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        r = request(
            server.port, method, "/viewer/index.html", body=b"x" if method != "TRACE" else b""
        )
        assert r.status == 405, (method, r.status)
    r = request(server.port, "GET", "/")
    assert r.status == 307 and r.headers["location"] == "/viewer/index.html"
    absolute = request(server.port, "GET", f"http://127.0.0.1:{server.port}/manifest.json")
    assert absolute.status == 404
    first = request(server.port, "GET", "/viewer/data/atlas.js")
    again = request(
        server.port, "GET", "/viewer/data/atlas.js", {"If-None-Match": first.headers["etag"]}
    )
    assert again.status == 304 and again.body == b""


def test_the_files_the_page_asks_for_are_all_served(server) -> None:
    """The page's own references, followed as the browser would: its scripts and styles, the
    data script's run record, the first level's tiles, icon sheet and exemplar sheets."""
    page = request(server.port, "GET", "/viewer/index.html").body.decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    wanted = [f"/viewer/{r}" for r in refs if not r.startswith("data:")]
    wanted += [
        "/viewer/data/level-4.js",
        "/viewer/data/cards-4-0.js",
        "/viewer/data/sources-0.js",
        "/viewer/tiles/4/0/0/0.jpg",
        "/viewer/levels/4/icons-0.png",
        "/exemplars/blocks.2/patches-0.jpg",  # viewer/../exemplars/<layer>/ from the page
    ]
    statuses = {p: request(server.port, "GET", p).status for p in wanted}
    assert set(statuses.values()) == {200}, statuses
    assert len(wanted) >= 10


def test_no_file_stays_open(server) -> None:
    """Files opened for responses are closed: read, HEAD, 304, and clients that leave early."""
    before = len(os.listdir("/proc/self/fd"))
    etag = request(server.port, "HEAD", "/viewer/viewer.js").headers["etag"]
    for _ in range(30):
        request(server.port, "GET", "/viewer/viewer.js")
        request(server.port, "HEAD", "/viewer/tiles/4/0/0/0.jpg")
        request(server.port, "GET", "/viewer/viewer.js", {"If-None-Match": etag})
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # gone before the answer
            s.sendall(b"GET /viewer/viewer.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    time.sleep(0.5)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before <= 3
