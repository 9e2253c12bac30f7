"""Commit markers: small JSON records written after the data they describe.

Object stores have no rename, so data keys are deterministic and the marker is the commit: a
shard or stage without a valid marker is unfinished, whatever data exists. Markers live in
``<run_dir>/markers/`` and are read and written through fsspec (local paths or URLs).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import fsspec

_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able value (sorted keys): the identity of a configuration."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
        path = self._path(name)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "w") as f:
            json.dump(record, f, sort_keys=True, default=str)

    def read(self, name: str) -> dict[str, Any] | None:
        """The marker's record, or None if it is missing or unreadable (a torn write)."""
        path = self._path(name)
        try:
            with self.fs.open(path, "r") as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        return record if isinstance(record, dict) else None

    def remove_prefix(self, prefix: str) -> None:
        """Drop every marker under ``prefix`` (a stage that must be redone)."""
        path = self._path(prefix).removesuffix(".json")
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        if self.fs.exists(path + ".json"):
            self.fs.rm(path + ".json")
