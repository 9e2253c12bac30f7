"""Issue 26, markers and records written atomically: a write that fails part-way (here a real
EFBIG from a file-size limit, as a full disk would) leaves the previous record intact and no
temporary file; an object store gets one PUT of the whole object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np

from atlas_core.store import CachedGroup, IconCache, Markers
from atlas_core.store.markers import write_bytes_atomic, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]

# Runs a snippet with writes limited to LIMIT bytes per file (SIGXFSZ ignored, so the write
# fails with EFBIG, "File too large", part-way through, as ENOSPC would on a full disk).
_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
{code}
"""


def _under_file_limit(code: str, limit: int = 4096) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-B", "-c", _LIMITED.format(limit=limit, code=code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".partial" in p.name]


def test_a_marker_write_that_fails_part_way_keeps_the_previous_record(tmp_path: Path) -> None:
    before = {"fingerprint": "abc", "counts": {"ok": 3}}
    Markers(str(tmp_path)).write("stage-extract", before)
    big = "{'counts': {'ok': 4}, 'pad': 'x' * 100_000}"
    markers = f"Markers({str(tmp_path)!r})"
    out = _under_file_limit(
        f"from atlas_core.store import Markers\n{markers}.write('stage-extract', {big})"
    )
    assert out.returncode != 0 and "File too large" in out.stderr
    assert Markers(str(tmp_path)).read("stage-extract") == before
    assert _leftovers(tmp_path) == []


def test_a_json_record_write_that_fails_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_json_atomic(fsspec.filesystem("file"), str(path), {"status": "done"})
    out = _under_file_limit(
        "import fsspec\nfrom atlas_core.store.markers import write_json_atomic\n"
        f"write_json_atomic(fsspec.filesystem('file'), {str(path)!r}, {{'pad': 'x' * 100_000}})"
    )
    assert out.returncode != 0
    assert json.loads(path.read_text()) == {"status": "done"} and _leftovers(tmp_path) == []


def test_an_icon_cache_write_that_fails_keeps_the_previous_entry(tmp_path: Path) -> None:
    small = CachedGroup(np.zeros((1, 4, 4, 3), np.uint8), np.ones(1), np.ones(1))
    IconCache(str(tmp_path)).put_many({"ab" * 32: small})
    code = (
        "import numpy as np\nfrom atlas_core.store import CachedGroup, IconCache\n"
        "icons = np.random.default_rng(1).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)\n"
        f"IconCache({str(tmp_path)!r}).put_many("
        "{'ab' * 32: CachedGroup(icons, np.ones(4), np.ones(4))})"
    )
    out = _under_file_limit(code)
    assert out.returncode != 0 and "File too large" in out.stderr
    got = IconCache(str(tmp_path)).get_many(["ab" * 32])
    assert np.array_equal(got["ab" * 32].icons, small.icons) and _leftovers(tmp_path) == []


def test_local_writes_replace_whole_and_object_stores_get_one_put(tmp_path: Path, monkeypatch):
    local = fsspec.filesystem("file")
    write_bytes_atomic(local, str(tmp_path / "d" / "x.bin"), b"one")
    write_bytes_atomic(local, str(tmp_path / "d" / "x.bin"), b"two")
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x.bin"]
    mem = fsspec.filesystem("memory")
    calls: list[str] = []
    real = mem.pipe_file

    def put(path: str, data: bytes, **kw) -> None:  # one PUT of the whole object
        calls.append(path)
        real(path, data, **kw)

    monkeypatch.setattr(mem, "pipe_file", put)
    try:
        Markers("memory://run26").write("stage-a", {"n": 1})
        assert calls == ["/run26/markers/stage-a.json"]
        assert json.loads(mem.cat_file("/run26/markers/stage-a.json")) == {"n": 1}
        assert mem.find("/run26") == ["/run26/markers/stage-a.json"]
    finally:
        monkeypatch.undo()
        mem.rm("/run26", recursive=True)
