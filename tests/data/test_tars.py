"""Tar shards: listed, streamed once, a truncated archive and path-escaping members classified."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from atlas_core.data import DecodePolicy, Status
from atlas_core.data.tars import member_uri, stream_members, tar_manifest


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tars_are_listed_streamed_and_classified(tmp_path: Path) -> None:
    _tar(
        tmp_path / "a.tar",
        {
            "000.png": _png(0),
            "001.png": _png(1),
            "notes.txt": b"x",
            "../../escape.png": _png(2),
            "/abs.png": _png(3),
        },
    )
    _tar(tmp_path / "b.tar", {f"{i:03d}.png": _png(10 + i) for i in range(4)})
    raw = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(raw[: int(len(raw) * 0.6)])  # cut inside a later member
    man = tar_manifest([str(tmp_path / "b.tar"), str(tmp_path / "a.tar")])
    names = [u.split("::")[0].removeprefix("tar://") for u in man.uris]
    assert names[:4] == ["000.png", "001.png", "../../escape.png", "/abs.png"]
    assert "notes.txt" not in names and names[4:6] == ["000.png", "001.png"]
    assert 6 <= len(names) <= 8  # b.tar lists the members whose headers survived the cut
    uris = [*man.uris, member_uri("gone.png", str(tmp_path / "a.tar"))]
    got = dict(stream_members(uris, DecodePolicy()))
    status = [got[i].status for i in range(len(uris))]
    assert status[:4] == [Status.OK, Status.OK, Status.OUTSIDE_ROOT, Status.OUTSIDE_ROOT]
    b = status[4:-1]
    n_ok = b.count(Status.OK)
    assert n_ok >= 1 and b[:n_ok] == [Status.OK] * n_ok
    assert b[n_ok:] and all(s == Status.TRUNCATED for s in b[n_ok:])  # the cut member onwards
    assert status[-1] == Status.MISSING
    ok = got[0].image
    assert ok is not None and np.array_equal(
        np.asarray(ok), np.asarray(Image.open(io.BytesIO(_png(0))))
    )
