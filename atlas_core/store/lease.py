"""A run directory's lease: one run owns a run directory at a time.

``<run_dir>/.lease.json`` names its owner (host, pid, a random id, when it started, its last
heartbeat and what the owner said about itself). A second run refuses with the owner named;
a lease whose heartbeat is older than its timeout belongs to a run that died, and is taken over
(logged). Pure fsspec: local paths and object stores alike.

Race safety. Locally, every read-decide-write of the lease happens under an exclusive
``flock`` of ``<run_dir>/.lease.lock`` (released by the kernel when a holder dies, so it never
goes stale), and the lease itself is replaced whole (temporary file + ``os.replace``): two runs
racing for one directory get one winner. On an object store (no locks, no rename) a run writes
its lease, waits ``settle_s`` and reads it back: if another run's id is there, that run won.
This is best effort (two writers more than ``settle_s`` apart in their read and write could
both win); stores with conditional writes would make it exact.

Times are wall-clock seconds (``time.time()``): hosts sharing a run directory must have clocks
within a small fraction of the timeout of each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import fsspec

from atlas_core.errors import AtlasError
from atlas_core.store.markers import is_local, write_json_atomic

log = logging.getLogger(__name__)

LEASE_FILE = ".lease.json"
LOCK_FILE = ".lease.lock"


class LeaseHeld(AtlasError):
    """Another live run holds the run directory's lease; ``owner`` is its lease record."""

    def __init__(self, run_dir: str, owner: dict[str, Any], timeout_s: float) -> None:
        self.run_dir = run_dir
        self.owner = owner
        age = time.time() - float(owner.get("heartbeat", 0))
        super().__init__(
            f"run directory {run_dir} is in use by pid {owner.get('pid')} on host "
            f"{owner.get('host')} since {owner.get('started_at')} (last heartbeat {age:.0f} s "
            f"ago; lease {run_dir.rstrip('/')}/{LEASE_FILE}). Fix: wait for that run to end, or "
            f"give another run_dir; a lease whose owner died is taken over once it has had no "
            f"heartbeat for {owner.get('timeout_s', timeout_s):g} s."
        )


def _gone(held: dict[str, Any]) -> bool:
    """The lease's owner ran on this host and its process no longer exists (killed, crashed):
    no need to wait for the timeout. (Hosts are told apart by name: containers sharing a host
    name must not share a run directory's file system with separate process namespaces.)"""
    if held.get("host") != socket.gethostname():
        return False
    try:
        pid = int(held.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's process)
        return False
    return False


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class Lease:
    """The lease this process holds on a run directory (made by :meth:`acquire`).

    ``heartbeat()`` starts a daemon thread that refreshes the lease every ``interval_s``;
    ``release()`` stops it and removes the lease. A context manager: ``with Lease.acquire(...)
    as lease:`` heartbeats inside and releases at the end. ``lost`` is set if another run took
    the lease over (this process stalled past the timeout); the heartbeat then stops.
    """

    def __init__(
        self, fs: Any, path: str, run_dir: str, record: dict[str, Any], timeout_s: float
    ) -> None:
        self.fs, self.path, self.run_dir = fs, path, run_dir
        self.record = record
        self.timeout_s = timeout_s
        self.interval_s = max(0.05, timeout_s / 4)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return str(self.record["id"])

    # ------------------------------------------------------------------ acquire
    @classmethod
    def acquire(
        cls,
        run_dir: str,
        storage_options: dict[str, Any] | None = None,
        owner_info: dict[str, Any] | None = None,
        *,
        timeout_s: float = 60.0,
        settle_s: float = 1.0,
    ) -> Lease:
        """Take the lease of ``run_dir`` (created if missing) for this process.

        owner_info: JSON-able facts a refused run should see (the command line, the config's
        fingerprint). timeout_s: a lease without heartbeat for this long is stale and taken over.
        settle_s: object stores only: how long to wait before reading a written lease back.
        Raises :class:`LeaseHeld` (naming the owner's host, pid and start) if a live lease exists.
        """
        fs, root = fsspec.core.url_to_fs(run_dir, **(storage_options or {}))
        root = root.rstrip("/")
        fs.makedirs(root, exist_ok=True)
        now = time.time()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "id": uuid.uuid4().hex,
            "started": now,
            "started_at": _now_iso(now),
            "heartbeat": now,
            "heartbeat_at": _now_iso(now),
            "timeout_s": timeout_s,
            "info": owner_info or {},
        }
        lease = cls(fs, f"{root}/{LEASE_FILE}", run_dir, record, timeout_s)
        with lease._locked():
            lease._claim()
        if not is_local(fs):
            time.sleep(settle_s)
            held = lease._read()
            if held is None or held.get("id") != lease.id:
                raise LeaseHeld(run_dir, held or {}, timeout_s)
        log.info("lease of %s taken (id %s)", run_dir, lease.id[:8])
        return lease

    def _claim(self) -> None:
        """Under the lock: refuse a live lease of another run, take over a stale one."""
        held = self._read()
        if held is not None and held.get("id") != self.id:
            age = time.time() - float(held.get("heartbeat", 0))
            if _gone(held):
                log.warning(
                    "taking over the lease of %s: its owner (pid %s on this host) no longer runs",
                    self.run_dir,
                    held.get("pid"),
                )
            elif age <= float(held.get("timeout_s", self.timeout_s)):
                raise LeaseHeld(self.run_dir, held, self.timeout_s)
            else:
                log.warning(
                    "taking over the lease of %s: its owner (pid %s on %s, since %s) has had no "
                    "heartbeat for %.0f s",
                    self.run_dir,
                    held.get("pid"),
                    held.get("host"),
                    held.get("started_at"),
                    age,
                )
        write_json_atomic(self.fs, self.path, self.record)

    # ------------------------------------------------------------------ heartbeat
    def refresh(self) -> bool:
        """Write a new heartbeat now; False (and ``lost`` set) if another run holds the lease."""
        with self._locked():
            held = self._read()
            if held is not None and held.get("id") != self.id:
                if not self.lost:
                    log.error(
                        "lease of %s lost to pid %s on %s: this run stalled past the timeout",
                        self.run_dir,
                        held.get("pid"),
                        held.get("host"),
                    )
                self.lost = True
                return False
            now = time.time()
            self.record = {**self.record, "heartbeat": now, "heartbeat_at": _now_iso(now)}
            write_json_atomic(self.fs, self.path, self.record)
            return True

    def heartbeat(self) -> Lease:
        """Refresh the lease every ``interval_s`` in a daemon thread until released."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._beat, name="atlas-lease-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.refresh():
                    return
            except Exception as exc:  # a transient store error: the next beat tries again
                log.warning("lease heartbeat of %s failed: %s", self.run_dir, exc)

    # ------------------------------------------------------------------ release
    def release(self) -> None:
        """Stop the heartbeat and remove the lease (if it is still this run's)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._locked():
            held = self._read()
            if held is not None and held.get("id") == self.id:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(self.path)
                log.info("lease of %s released", self.run_dir)

    def __enter__(self) -> Lease:
        return self.heartbeat()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ plumbing
    def _read(self) -> dict[str, Any] | None:
        """The lease record, or None if there is none. An unreadable one (torn by a crash
        mid-write, which the atomic writes rule out locally) counts as stale."""
        try:
            record = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return {"id": "", "heartbeat": 0, "pid": "?", "host": "?", "started_at": "?"}
        return record if isinstance(record, dict) else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock of the run directory's lease (local file systems; a no-op on
        object stores, which have none)."""
        if not is_local(self.fs):
            yield
            return
        import fcntl

        lock = self.path.rsplit("/", 1)[0] + "/" + LOCK_FILE
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
