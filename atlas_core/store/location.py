"""Where a run lives, as one value: its root and the storage options that reach it.

A :class:`RunLocation` names every path of a run (the store, the markers, the manifest, the
failure record, the lease, the viewer and its files, the exemplar sheets, the icon cache, the
views' folders, the shared extractions) and opens them. Nothing else joins a run's paths, so the
layout of a run directory is written down here once:

    <root>/atlas.zarr/            the run store (views write under its views/<slug>/ group)
    <root>/markers/               commit markers (views' under markers/views/<slug>/)
    <root>/manifest.json          written last by the driver; failed.json beside it on failure
    <root>/.lease.json            the run's owner while it runs
    <root>/icon-cache/            the default icon cache
    <root>/viewer/, atlas.png     the main view's files; a view's under <root>/views/<slug>/
    <extractions>/<fingerprint>/  a shared extraction: a run location of its own
    <root>/diffs/<run A>/         the diff of run A against this run (``atlas diff``), a folder
                                  of its own: diff.zarr/, diff.json, diff.html and its files

The root is a local path or an fsspec URL; ``storage_options`` are fsspec's options for it
(kept as a sorted tuple so the value is frozen and hashable; secrets in it are redacted by
whoever writes a record).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import fsspec

from atlas_core.store.markers import Markers, is_local, write_bytes_atomic

if TYPE_CHECKING:
    from atlas_core.store.diff_store import DiffStore
    from atlas_core.store.icon_cache import IconCache
    from atlas_core.store.run_store import RunStore

Mode = Literal["r", "r+", "a", "w", "w-"]
STORE = "atlas.zarr"
DIFF_STORE = "diff.zarr"


def view_prefix(slug: str) -> str:
    """A view's prefix inside the store and the markers folder (``""``: the main view)."""
    return f"views/{slug}/" if slug else ""


def _clean(part: str) -> str:
    """One relative path part: no empty part, no ``..``, no leading slash."""
    text = str(part).strip("/")
    if not text or any(p in ("", "..") for p in text.split("/")):
        raise ValueError(f"{part!r} is not a relative path inside a run")
    return text


@dataclass(frozen=True)
class RunLocation:
    """A run directory (``root``, local or fsspec URL) seen from one of its views (``view``:
    ``""`` is the atlas of every activation, else a view's slug)."""

    root: str
    options: tuple[tuple[str, Any], ...] = ()
    view: str = ""

    @classmethod
    def of(cls, root: str, storage_options: Mapping[str, Any] | None = None) -> RunLocation:
        base = root.rstrip("/") or "/"
        return cls(base, tuple(sorted((storage_options or {}).items())))

    # ------------------------------------------------------------------ derived locations
    @property
    def storage_options(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def is_local(self) -> bool:
        return "://" not in self.root or self.root.startswith("file://")

    def child(self, *parts: str) -> RunLocation:
        """Another run under this folder (a sweep's job, a layer's atlas, a scheduled date)."""
        return RunLocation(self.url(*parts), self.options)

    def in_view(self, slug: str) -> RunLocation:
        """The same run seen from view ``slug`` (``""``: the main view)."""
        return replace(self, view=slug)

    @property
    def main(self) -> RunLocation:
        return self.in_view("")

    def extraction(self, extractions: str, fingerprint: str) -> RunLocation:
        """The shared extraction of ``fingerprint`` under the folder ``extractions``."""
        return RunLocation.of(extractions, self.storage_options).child(fingerprint)

    # ------------------------------------------------------------------ paths
    def url(self, *parts: str) -> str:
        """A path under the run's root."""
        return "/".join([self.root, *(_clean(p) for p in parts)])

    @property
    def directory(self) -> str:
        """The view's folder: the root, or ``<root>/views/<slug>``."""
        return self.url("views", self.view) if self.view else self.root

    def file(self, *parts: str) -> str:
        """A path under the view's folder (its viewer, overviews, exemplar sheets)."""
        return "/".join([self.directory, *(_clean(p) for p in parts)])

    @property
    def store_url(self) -> str:
        return self.url(STORE)

    @property
    def store_prefix(self) -> str:
        """The view's group inside the store (``""``: the store's root)."""
        return view_prefix(self.view)

    @property
    def marker_prefix(self) -> str:
        """The view's markers' prefix (``markers/views/<slug>/stage-*.json``)."""
        return view_prefix(self.view)

    @property
    def manifest_url(self) -> str:
        return self.url("manifest.json")

    @property
    def failed_url(self) -> str:
        return self.url("failed.json")

    @property
    def lease_url(self) -> str:
        return self.url(".lease.json")

    def icon_cache_url(self, cache_dir: str | None = None) -> str:
        """The icon cache: ``cache_dir`` when given (shared by several runs), else the run's."""
        return cache_dir.rstrip("/") if cache_dir else self.url("icon-cache")

    def exemplars_dir(self, layer: str) -> str:
        """The view's exemplar sheets of ``layer`` (patches-<n>.jpg, sources-<n>.jpg)."""
        return self.file("exemplars", layer)

    # ------------------------------------------------------------------ a diff's folder
    def diff_of(self, name: str) -> RunLocation:
        """The default folder of the diff of the run named ``name`` (run A, a folder's name)
        against this run (run B): ``<root>/diffs/<name>``. A diff folder is a location of its
        own: the paths below are under its root."""
        return self.child("diffs", name)

    @property
    def diff_store_url(self) -> str:
        """The diff's Zarr group (format ``activation-atlas-diff``)."""
        return self.url(DIFF_STORE)

    @property
    def diff_json_url(self) -> str:
        """The diff's overall figures and per-level summaries."""
        return self.url("diff.json")

    @property
    def diff_page_url(self) -> str:
        """The diff's page (opens from disk)."""
        return self.url("diff.html")

    def diff_asset(self, *parts: str) -> str:
        """A file of the diff's page: its script and style, ``data/<file>.js``, ``lib/...``."""
        return self.url(*parts)

    def open_diff_store(self, mode: Mode = "r") -> DiffStore:
        """The diff's Zarr group at :attr:`diff_store_url`."""
        from atlas_core.store.diff_store import DiffStore

        return DiffStore.open(self.diff_store_url, mode, self.storage_options)

    # ------------------------------------------------------------------ opening
    def fs(self) -> tuple[Any, str]:
        """(fsspec filesystem, the root's path on it)."""
        fs, path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        return fs, path.rstrip("/")

    def open_store(self, mode: Mode = "r") -> RunStore:
        """The run store, scoped to this view (its layouts, levels and exemplars)."""
        from atlas_core.store.run_store import RunStore

        store = RunStore.open(self.store_url, mode=mode, storage_options=self.storage_options)
        return store.in_view(self.store_prefix)

    def markers(self) -> Markers:
        return Markers(self.root, self.storage_options)

    def icon_cache(self, cache_dir: str | None = None) -> IconCache:
        from atlas_core.store.icon_cache import IconCache

        return IconCache(self.icon_cache_url(cache_dir), self.storage_options)

    # ------------------------------------------------------------------ small files
    def exists(self, url: str) -> bool:
        fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
        return bool(fs.exists(path))

    def read_json(self, url: str) -> dict[str, Any] | None:
        """A JSON object at ``url`` (a path this value named), or None if missing or torn."""
        fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
        try:
            with fs.open(path, "r") as f:
                value = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        return value if isinstance(value, dict) else None

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write a whole file, creating its folder, atomically (:func:`write_bytes_atomic`:
        locally a temporary file renamed over the target, on an object store one PUT)."""
        fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
        if not is_local(fs):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        write_bytes_atomic(fs, path, data)

    def write_json(self, url: str, value: Any) -> None:
        data = json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")
        self.write_bytes(url, data)
