"""Issue 26, a run directory is owned by one run at a time: a second run refuses naming the
owner; an owner killed with SIGKILL is taken over once its heartbeat is older than the timeout
(at once when it ran on this host);
release removes the lease; racing acquirers get one winner."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from atlas_core.store.lease import LEASE_FILE, Lease, LeaseHeld

ROOT = Path(__file__).resolve().parents[2]

_OWNER = """
import sys, time
from atlas_core.store.lease import Lease
Lease.acquire(sys.argv[1], owner_info={"cmd": "owner"}, timeout_s=float(sys.argv[2])).heartbeat()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_acquire_refuses_naming_the_owner(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    lease = Lease.acquire(run, owner_info={"cmd": "atlas run"}, timeout_s=30)
    record = json.loads((tmp_path / "run" / LEASE_FILE).read_text())
    assert record["pid"] == os.getpid() and record["info"] == {"cmd": "atlas run"}
    with pytest.raises(LeaseHeld) as e:
        Lease.acquire(run, timeout_s=30)
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    assert record["started_at"] in msg and "run_dir" in msg
    lease.release()
    assert not (tmp_path / "run" / LEASE_FILE).exists()
    Lease.acquire(run, timeout_s=30).release()  # free again at once


def test_a_killed_owner_is_taken_over_after_the_timeout(tmp_path: Path, caplog) -> None:
    run, timeout = str(tmp_path / "run"), 2.0
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, run, str(timeout)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "held"
        first = json.loads((tmp_path / "run" / LEASE_FILE).read_text())
        time.sleep(timeout)  # four heartbeats
        beat = json.loads((tmp_path / "run" / LEASE_FILE).read_text())
        assert beat["pid"] == owner.pid and beat["heartbeat"] > first["heartbeat"]
        with pytest.raises(LeaseHeld, match=f"pid {owner.pid}"):
            Lease.acquire(run, timeout_s=timeout)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    killed = time.time()
    # a dead owner on this host is taken over at once (tests/pipelines/test_run_safety.py); as
    # if it had run on another host, only its heartbeat's age can tell
    path = tmp_path / "run" / LEASE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "host": "elsewhere"}))
    with pytest.raises(LeaseHeld):  # its last heartbeat is still fresh
        Lease.acquire(run, timeout_s=timeout)
    with caplog.at_level(logging.WARNING, logger="atlas_core.store.lease"):
        while True:
            try:
                lease = Lease.acquire(run, timeout_s=timeout)
                break
            except LeaseHeld:
                assert time.time() - killed < timeout + 3
                time.sleep(0.1)
    assert time.time() - beat["heartbeat"] >= timeout
    assert any("taking over" in r.message and str(owner.pid) in r.message for r in caplog.records)
    assert json.loads((tmp_path / "run" / LEASE_FILE).read_text())["id"] == lease.id
    lease.release()


def _race(run: str, n: int = 8) -> tuple[list[Lease], list[LeaseHeld]]:
    """``n`` threads acquiring the lease of ``run`` at the same moment."""
    barrier = threading.Barrier(n)
    won: list[Lease] = []
    refused: list[LeaseHeld] = []

    def contend() -> None:
        barrier.wait()
        try:
            won.append(Lease.acquire(run, timeout_s=30))
        except LeaseHeld as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_racing_acquirers_get_one_winner(tmp_path: Path) -> None:
    for stale in (False, True):
        run = str(tmp_path / f"run{stale}")
        if stale:
            os.makedirs(run)
            dead = {"id": "dead", "pid": 1, "host": "gone", "heartbeat": 0, "timeout_s": 1}
            Path(run, LEASE_FILE).write_text(json.dumps(dead))
        won, refused = _race(run)
        assert len(won) == 1 and len(refused) == 7
        assert json.loads(Path(run, LEASE_FILE).read_text())["id"] == won[0].id
        won[0].release()


def test_a_stalled_owner_finds_its_lease_lost_and_leaves_the_new_one(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    stalled = Lease.acquire(run, timeout_s=0.2)  # no heartbeat thread: it stalls
    time.sleep(0.4)
    new = Lease.acquire(run, timeout_s=30)
    assert stalled.refresh() is False and stalled.lost
    stalled.release()  # not its lease any more: left alone
    assert json.loads(Path(run, LEASE_FILE).read_text())["id"] == new.id
    with new:  # heartbeats inside, releases at the end
        time.sleep(0.05)
    assert not Path(run, LEASE_FILE).exists()


def test_on_an_object_store() -> None:
    import fsspec

    run = "memory://lease26/run"
    try:
        lease = Lease.acquire(run, timeout_s=30, settle_s=0)
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            Lease.acquire(run, timeout_s=30, settle_s=0)
        lease.release()
        Lease.acquire(run, timeout_s=30, settle_s=0).release()
    finally:
        fsspec.filesystem("memory").rm("/lease26", recursive=True)
