"""Which files of a run the server hands out: the pages and exactly the files they read.

A request path names a file under one of :data:`ROOTS` (the viewer folders, the exemplar sheets,
the patch reports), with an extension that folder's pages read. Everything else is refused:
``manifest.json``, ``atlas.zarr/`` and ``markers/`` (absolute source paths, error texts), the icon
cache, directories (never listed), dot files, and any path whose real location (symlinks
followed) is not inside its folder. The file is opened without following a final symlink and
must be a regular file.

What the viewer reads (``atlas_core/compose/static/viewer.js``): ``viewer/index.html`` and
``compare-<i>.html``, its ``common.js``, ``viewer.js``, ``viewer.css`` and ``lib/leaflet/``, the
data scripts ``viewer/data/*.js``, tiles ``viewer/tiles/<G>/<z>/<x>/<y>.<ext>``, icon sheets
``viewer/levels/<G>/icons-<n>.png``, exemplar sheets ``exemplars/<layer>/{patches,sources}-<n>.jpg``
(``../exemplars/`` from the page); a class view has the same under ``views/<slug>/``, and its
patch report is ``views/<slug>/patches/`` (a page, its style sheet and PNGs).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from atlas_core.compose import report, viewer

FRAME = "frame-ancestors 'none'"  # a meta CSP cannot say it; the header does
VIEWER_CSP = f"{viewer.CSP}; {FRAME}"
REPORT_CSP = f"{report.CSP}; {FRAME}"
API_CSP = f"default-src 'none'; {FRAME}"

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".bin": "application/octet-stream",  # typed columns (little-endian arrays) a page fetches
}
_PAGE = frozenset(TYPES)
_IMAGES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
MAX_PATH_CHARS = 1024
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class Root:
    """A folder served to pages: its segments under the run (``*``: any one view slug), the
    extensions its pages read, and the Content-Security-Policy its responses carry."""

    pattern: tuple[str, ...]
    types: frozenset[str]
    csp: str

    def match(self, segments: list[str]) -> bool:
        n = len(self.pattern)
        return len(segments) > n and all(
            p == s or p == "*" for p, s in zip(self.pattern, segments[:n], strict=False)
        )


ROOTS = (
    Root(("viewer",), _PAGE, VIEWER_CSP),
    Root(("exemplars",), _IMAGES, VIEWER_CSP),
    Root(("views", "*", "viewer"), _PAGE, VIEWER_CSP),
    Root(("views", "*", "exemplars"), _IMAGES, VIEWER_CSP),
    Root(("views", "*", "patches"), frozenset({".html", ".css", ".png"}), REPORT_CSP),
)


class Refused(Exception):
    """A path the server does not serve: the HTTP status (400 malformed, 404 not served) and
    the reason, safe to show (it never names a real path)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    """An open regular file (the caller closes it; garbage collection does otherwise): size in
    bytes, mtime in ns, its media type and the CSP of its folder."""

    file: BinaryIO
    size: int
    mtime_ns: int
    media_type: str
    csp: str

    @property
    def etag(self) -> str:
        return f'"{self.size:x}-{self.mtime_ns:x}"'


def segments(path: str) -> list[str]:
    """The segments of a decoded request path; raises Refused(400) for a path no page asks for:
    ``.`` or ``..``, empty segments (``//``), NUL and control characters, backslashes, too long."""
    if len(path) > MAX_PATH_CHARS or not path.startswith("/"):
        raise Refused(400, "malformed path")
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in path):
        raise Refused(400, "control character or backslash in path")
    parts = path[1:].split("/")
    if parts and parts[-1] == "":  # a folder: never listed
        raise Refused(404, "folders are not listed")
    if len(parts) > MAX_SEGMENTS or any(p in ("", ".", "..") for p in parts):
        raise Refused(400, "relative or empty path segment")
    return parts


def csp_for(path: str) -> str:
    """The CSP header of a response to ``path`` (its folder's; the API's for anything else)."""
    parts = path[1:].split("/")
    return next((r.csp for r in ROOTS if r.match(parts)), API_CSP)


class RunFiles:
    """The files of one run directory that pages may read (see the module docstring)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = os.path.realpath(run_dir)

    def open(self, path: str) -> Opened:
        """Open the file a decoded request path names, or raise Refused."""
        parts = segments(path)
        if any(p.startswith(".") for p in parts):
            raise Refused(404, "not served")
        root = next((r for r in ROOTS if r.match(parts)), None)
        ext = os.path.splitext(parts[-1])[1].lower()
        if root is None or ext not in root.types:
            raise Refused(404, "not a file the viewer reads")
        folder = os.path.realpath(os.path.join(self.run_dir, *parts[: len(root.pattern)]))
        real = os.path.realpath(os.path.join(self.run_dir, *parts))
        if not (_inside(folder, self.run_dir) and _inside(real, folder)):
            raise Refused(404, "not served")  # a symlink out of its folder
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            raise Refused(404, "no such file") from None
        file = os.fdopen(fd, "rb", buffering=0)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            file.close()
            raise Refused(404, "not a regular file")
        return Opened(file, st.st_size, st.st_mtime_ns, TYPES[ext], root.csp)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def chunks(file: BinaryIO, size: int = 1 << 18) -> Iterator[bytes]:
    """The file's bytes in chunks of ``size``; closes it when done or abandoned."""
    with file:
        while data := file.read(size):
            yield data
