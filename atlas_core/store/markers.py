"""Commit markers: small JSON records written after the data they describe.

Object stores have no rename, so data keys are deterministic and the marker is the commit: a
shard or stage without a valid marker is unfinished, whatever data exists. Markers live in
``<run_dir>/markers/`` and are read and written through fsspec (local paths or URLs), each
written whole (:func:`write_json_atomic`: a temporary file renamed over it locally, one PUT on an
object store), so a failed write never leaves a torn marker or destroys the previous one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from typing import Any

import fsspec

_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able value (sorted keys): the identity of a configuration."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local file system (rename is atomic there; not on object stores)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def write_bytes_atomic(fs: Any, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: a reader sees the old content or the new, never a
    part, and a write that fails (a full disk, a killed process) leaves the old content.

    Locally: a temporary file in the same folder, written, fsynced, then ``os.replace``d over
    ``path`` (the folder is fsynced too, so the rename survives a crash). On an object store,
    where rename is a copy: one PUT of the whole object, which stores publish atomically.
    """
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # durability of the rename; some file systems refuse
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_json_atomic(fs: Any, path: str, obj: Any) -> None:
    """``obj`` as JSON (sorted keys; anything else as ``str``), written by
    :func:`write_bytes_atomic`: serialized whole before the first byte is written."""
    write_bytes_atomic(fs, path, json.dumps(obj, sort_keys=True, default=str).encode())


def read_many(fs: Any, paths: list[str]) -> list[bytes | Exception]:
    """The bytes of every path (an exception in place of one that cannot be read), fetched
    concurrently on an object store. Paths are taken literally (a folder named ``[a,b]`` is
    no glob pattern)."""
    if not paths:
        return []
    return list(fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="return"))


class Markers:
    """Read and write JSON markers under ``<run_dir>/markers``; names may not leave that folder."""

    def __init__(self, run_dir: str, storage_options: dict[str, Any] | None = None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(run_dir, **(storage_options or {}))
        self.root = self.root.rstrip("/") + "/markers"

    def _path(self, name: str) -> str:
        if not _SAFE.match(name) or ".." in name.split("/"):
            raise ValueError(
                f"marker name {name!r} must be a relative path of [A-Za-z0-9_.-] parts"
            )
        return f"{self.root}/{name}.json"

    def write(self, name: str, record: dict[str, Any]) -> None:
        """Write (or replace) a marker whole (:func:`write_json_atomic`)."""
        path = self._path(name)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        write_json_atomic(self.fs, path, record)

    def read(self, name: str) -> dict[str, Any] | None:
        """The marker's record, or None if it is missing or unreadable (a torn write)."""
        path = self._path(name)
        try:
            with self.fs.open(path, "r") as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        return record if isinstance(record, dict) else None

    def write_blob(self, name: str, data: bytes) -> None:
        """A binary checkpoint beside the markers (``<name>`` keeps its extension), replaced
        whole: a temporary file renamed over it locally, one PUT on an object store."""
        path = self._path(name).removesuffix(".json")
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        write_bytes_atomic(self.fs, path, data)

    def read_blob(self, name: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._path(name).removesuffix(".json")))
        except (FileNotFoundError, OSError):
            return None

    def remove_blobs(self, names: list[str]) -> None:
        """Delete binary checkpoints by name (those already gone are fine)."""
        paths = [self._path(n).removesuffix(".json") for n in names]
        if paths:
            try:
                self.fs.rm(paths)
            except FileNotFoundError:
                for p in paths:
                    if self.fs.exists(p):
                        self.fs.rm(p)

    def read_all(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every readable marker under ``prefix``, by name, listed and fetched in bulk (one
        listing and one batched read: on an object store, not a round trip per marker)."""
        folder = self._path(prefix).removesuffix(".json") if prefix else self.root
        try:
            paths = [p for p in self.fs.find(folder) if p.endswith(".json")]
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for path, blob in zip(paths, read_many(self.fs, paths), strict=True):
            if not isinstance(blob, bytes):
                continue  # gone since the listing
            try:
                record = json.loads(blob)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a torn write: not a commit
            if isinstance(record, dict):
                name = path.rstrip("/")[len(self.root.rstrip("/")) + 1 :].removesuffix(".json")
                out[name] = record
        return out

    def remove_prefix(self, prefix: str) -> None:
        """Drop every marker under ``prefix`` (a stage that must be redone)."""
        path = self._path(prefix).removesuffix(".json")
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        if self.fs.exists(path + ".json"):
            self.fs.rm(path + ".json")
