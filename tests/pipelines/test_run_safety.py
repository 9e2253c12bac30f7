"""Issue 26, a finished run stays intact whatever is run against it: a typo against it leaves its
manifest byte for byte and goes to ``failed.json`` (``atlas verify`` still passes); a second run
on a run directory another run owns refuses, naming the owner, and touches nothing; a killed
owner's lease is taken over (at once on this host, after the lease's timeout from another host);
an icon cache with torn entries is a miss, counted in the render manifest."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from atlas_core.store.lease import LEASE_FILE, LeaseHeld
from pipelines.commands import verify
from pipelines.commands.run import run
from tests.conftest import debug_settings

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]

_OWNER = """
import sys, time
from atlas_core.store.lease import Lease
Lease.acquire(sys.argv[1], owner_info={"cmd": "owner"}, timeout_s=60).heartbeat()
print("held", flush=True)
time.sleep(300)
"""


def _settings(run_dir: Path, cache: Path, *extra: str):
    return debug_settings(
        f"run_dir={run_dir}", "data.n_images=48", f"render.cache_dir={cache}", *extra
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("safety")
    s, resolved = _settings(base / "run", base / "cache")
    manifest = run(s, resolved)
    assert manifest["status"] == "done" and not (base / "run" / LEASE_FILE).exists()
    return base


def _copy(base: Path, name: str) -> Path:
    shutil.copytree(base / "run", base / name)
    return base / name


def test_a_typo_against_a_finished_run_leaves_its_manifest(finished, capsys) -> None:
    run_dir = _copy(finished, "typo")
    before = (run_dir / "manifest.json").read_bytes()
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "debug=fast", f"run_dir={run_dir}", "layer=blocks.9"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "blocks.9" in out.stdout + out.stderr
    assert (run_dir / "manifest.json").read_bytes() == before
    failed = json.loads((run_dir / "failed.json").read_text())
    assert "blocks.9" in failed["error"] and failed["started"] is False
    assert not (run_dir / LEASE_FILE).exists()
    assert verify.main([str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{run_dir}: ok"


def test_a_second_run_refuses_naming_the_owner_and_a_killed_owner_is_taken_over(
    finished,
) -> None:
    run_dir = _copy(finished, "owned")
    before = (run_dir / "manifest.json").read_bytes()
    s, resolved = _settings(run_dir, finished / "cache")
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(run_dir)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld) as refused:
            run(s, resolved)
        assert f"pid {owner.pid}" in str(refused.value)
        assert socket.gethostname() in str(refused.value)
        # the refused run touched nothing: no failure recorded in a directory it does not own
        assert (run_dir / "manifest.json").read_bytes() == before
        assert not (run_dir / "failed.json").exists()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    t = time.perf_counter()
    again = run(s, resolved)  # its owner is gone from this host: taken over at once
    assert again["status"] == "done" and time.perf_counter() - t < 30
    assert all(v["status"].startswith("skipped") for v in again["stages"].values())
    assert not (run_dir / LEASE_FILE).exists()
    # an owner on another host is known only by its heartbeat: refused until the timeout
    beat = time.time()
    (run_dir / LEASE_FILE).write_text(
        json.dumps(
            {"id": "x", "host": "elsewhere", "pid": 4242, "heartbeat": beat, "timeout_s": 2.0}
        )
    )
    with pytest.raises(LeaseHeld, match="pid 4242 on host elsewhere"):
        run(s, resolved)
    while time.time() - beat <= 2.0:
        time.sleep(0.2)
    assert run(s, resolved)["status"] == "done"
    log.info("lease: refused while owned (pid %d), taken over once killed", owner.pid)


def test_torn_icon_cache_entries_are_misses_counted_in_the_manifest(finished) -> None:
    run_dir = _copy(finished, "torn-cache")
    cache = finished / "cache"
    entries = sorted(cache.rglob("*.npz"))
    assert entries
    for i, p in enumerate(entries):  # torn, or not a zip at all
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2] if i % 2 else b"garbage")
    icons = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r+")["layers/blocks.2/grid/4/icons"]
    icons.attrs["fingerprint"] = "stale"  # the render stage must run again, from the cache
    (run_dir / "markers" / "stage-render.json").unlink()
    s, resolved = _settings(run_dir, cache)
    manifest = run(s, resolved)
    counts = manifest["stages"]["render"]["counts"]
    assert counts["cache_entries_unreadable"] == len(entries)
    assert counts["groups_rendered"] == len(entries) and counts["groups_from_cache"] == 0
    on_disk = json.loads((run_dir / "manifest.json").read_text())
    assert on_disk["stages"]["render"]["counts"]["cache_entries_unreadable"] == len(entries)
    from atlas_core.store.icon_cache import IconCache

    keys = [p.stem for p in sorted(cache.rglob("*.npz"))]
    healed = IconCache(str(cache))
    assert len(healed.get_many(keys)) == len(entries) and healed.bad == 0
    log.info("icon cache: %d torn entries counted, removed and rendered again", len(entries))
