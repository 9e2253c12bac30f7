"""The diff of two runs as a Zarr group of its own (format ``activation-atlas-diff``).

A :class:`DiffStore` is written by one process (the ``atlas diff`` driver) into the diff's folder
(``RunLocation.diff_store_url``) and read by anyone with plain ``zarr.open_group``. Its arrays are
declared once, as the run store's are (nodes.py: DiffRows, DiffCells, DiffLevel, DiffTotals),
and every write goes through the run store's one region write (whole storage objects, retried
transient errors). Layout and meaning: docs/run-store.md, "The diff of two runs".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import zarr

from atlas_core.errors import StoreError
from atlas_core.store.nodes import DiffCells, DiffLevel, DiffRows, DiffTotals
from atlas_core.store.run_store import OpenMode, RunStore, _opts

DIFF_FORMAT = "activation-atlas-diff"
DIFF_FORMAT_VERSION = 1
SIDES = ("a", "b")


class DiffStore(RunStore):
    """A diff's group: the run store's write path and readers over a group that is no run (it
    has no images, samples or layers of its own; its rows are both runs' sample rows)."""

    def __init__(
        self,
        group: zarr.Group,
        url: str,
        *,
        retries: int = 4,
        backoff: float = 0.2,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        # not RunStore.__init__: that one checks for a run store's format
        self.group = group
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.transient_errors = 0
        self.prefix = ""
        self.source = self
        self.attrs = dict(group.attrs)
        if self.attrs.get("format") != DIFF_FORMAT:
            raise StoreError(
                f"{url} is not a diff of two runs (format attribute {self.attrs.get('format')!r})"
            )
        if self.attrs.get("format_version") != DIFF_FORMAT_VERSION:
            raise StoreError(
                f"{url} has diff format version {self.attrs.get('format_version')}, this code "
                f"reads {DIFF_FORMAT_VERSION}: run `atlas diff` again"
            )

    @classmethod
    def open(
        cls, url: str, mode: OpenMode = "r", storage_options: dict[str, Any] | None = None
    ) -> DiffStore:
        try:
            g = zarr.open_group(url, mode=mode, **_opts(url, storage_options))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(f"no diff at {url}: run `atlas diff RUN_A RUN_B` first") from exc
        return cls(g, url, storage_options=storage_options)

    @classmethod
    def create_diff(
        cls, url: str, attrs: Mapping[str, Any], storage_options: dict[str, Any] | None = None
    ) -> DiffStore:
        """An empty diff group (any previous one at ``url`` replaced) with ``attrs``."""
        g = zarr.open_group(url, mode="w", **_opts(url, storage_options))
        g.attrs.update(
            {"format": DIFF_FORMAT, "format_version": DIFF_FORMAT_VERSION, **dict(attrs)}
        )
        return cls(g, url, storage_options=storage_options)

    # ------------------------------------------------------------------ nodes
    @property
    def rows(self) -> DiffRows:
        """``samples/*``: per sample row."""
        return DiffRows(self, "samples")

    def cells(self, size: int, side: str) -> DiffCells:
        """``levels/<G>/<a|b>``: one run's kept cells at grid size ``size``."""
        if side not in SIDES:
            raise StoreError(f"a diff's side is one of {SIDES}, not {side!r}")
        return DiffCells(self, f"levels/{int(size)}/{side}")

    def diff_level(self, size: int) -> DiffLevel:
        """``levels/<G>``: appeared and emptied cells, the largest changes."""
        return DiffLevel(self, f"levels/{int(size)}")

    @property
    def totals(self) -> DiffTotals:
        """``predictions/*``: every prediction transition that occurred."""
        return DiffTotals(self, "predictions")
