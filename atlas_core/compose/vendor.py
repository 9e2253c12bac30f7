"""Install the viewer's pinned Leaflet from the npm registry (``make`` runs this once).

The package tarball is checked against the registry's published sha512 integrity pinned here
before anything is unpacked; only Leaflet's ``dist`` files and its licence are kept, under
``atlas_core/compose/static/vendor/leaflet-<version>/``. Nothing is fetched when an atlas is
built or viewed: compose copies these files next to each run's page. Building a wheel runs this
too (setup.py), so the installed package carries Leaflet. Standard library only: setup.py runs
this file on its own, before anything is installed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

LEAFLET_VERSION = "1.9.4"
log = logging.getLogger(__name__)
TARBALL = f"https://registry.npmjs.org/leaflet/-/leaflet-{LEAFLET_VERSION}.tgz"
INTEGRITY = (  # the registry's dist.integrity of leaflet 1.9.4
    "sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA=="
)
KEEP = ("package/dist/leaflet.js", "package/dist/leaflet.css", "package/LICENSE")


def verify(data: bytes, integrity: str = INTEGRITY) -> None:
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise RuntimeError(
            f"leaflet {LEAFLET_VERSION}: tarball hash {algo}-{got} is not the "
            f"pinned {integrity}; refusing to install it"
        )


def install(data: bytes | None = None) -> str:
    """Unpack the pinned Leaflet (fetched unless ``data`` is the tarball); returns its folder."""
    dest = Path(__file__).resolve().parent / "static" / "vendor" / f"leaflet-{LEAFLET_VERSION}"
    if (dest / "leaflet.js").is_file() and data is None:
        return str(dest)
    if data is None:
        url = os.environ.get("ATLAS_LEAFLET_TARBALL", TARBALL)
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    verify(data)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            name = m.name
            keep = name in KEEP or (name.startswith("package/dist/images/") and m.isfile())
            if not keep or ".." in name:
                continue
            f = tar.extractfile(m)
            if f is None:
                continue
            rel = name.removeprefix("package/dist/").removeprefix("package/")
            (dest / rel).write_bytes(f.read())
    return str(dest)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("leaflet %s at %s", LEAFLET_VERSION, install())
    sys.exit(0)
