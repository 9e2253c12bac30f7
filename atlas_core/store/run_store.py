"""The run store: one Zarr v3 group per run, position-addressed, readable with plain zarr.

Write rules (zarr-python has no locking and rewrites whole chunks):
- only the driver creates arrays and writes metadata (:meth:`RunStore.create`, ``create_*``);
- workers open existing arrays and write whole chunks of their own rows (``write_extract_shard``);
- arrays use NaN (or 0 for status) as the fill value and store empty chunks, so holes show.
See docs/run-store.md for every array.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

from atlas_core.data.decode import Status
from atlas_core.data.plan import ShardPlan
from atlas_core.data.sources import InputManifest
from atlas_core.errors import StoreError
from atlas_core.store.markers import fingerprint

OpenMode = Literal["r", "r+", "a", "w", "w-"]
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
FORMAT = "activation-atlas-run"
FORMAT_VERSION = 1
_CFG: ArrayConfigParams = {"write_empty_chunks": True}


@dataclass(frozen=True)
class ShardResult:
    """What one extraction task writes: rows ``[start, stop)`` of images and their samples."""

    shard: int
    start: int
    stop: int
    status: np.ndarray  # (n,) uint8
    error: np.ndarray  # (n,) object (str)
    content_hash: np.ndarray  # (n,) uint64
    top_class: np.ndarray  # (n, topk) int32, -1 where not ok
    top_prob: np.ndarray  # (n, topk) float16, NaN where not ok
    acts: dict[str, np.ndarray]  # layer -> (n * k, C) float, NaN rows where not ok
    moment: dict[str, np.ndarray]  # layer -> (C, C) float64
    moment_count: dict[str, int]
    attr: dict[str, np.ndarray] | None = None  # layer -> (n * k, A) float, NaN rows where not ok
    seconds: float = 0.0


@dataclass(frozen=True)
class GridArrays:
    """One grid level's kept cells. cell: (M, 2) int32 (ix, iy); mean: (M, C) float32;
    count: (M,) int32; top_class / top_count: (M, t) int32 (top classes of its samples' images)."""

    size: int
    cell: np.ndarray
    mean: np.ndarray
    count: np.ndarray
    top_class: np.ndarray
    top_count: np.ndarray


ATTR_TOP_COLUMNS = "images/top_class columns"


def sample_rows(images: np.ndarray, k: int) -> np.ndarray:
    """Sample rows (n * k,) of images ``images`` (n,): image-major, ``image * k + j``."""
    return (np.asarray(images, np.int64)[:, None] * k + np.arange(k)[None, :]).ravel()


@dataclass(frozen=True)
class StoreLayout:
    """The shape of a run's extraction arrays.

    k: samples per image; layers: layer -> (C, H, W); topk: top classes kept per image;
    attr_classes: 0 (no attribution), n (the image's top n classes) or -1 (every class);
    inner: chunks per zarr shard (1: no sharding codec).
    """

    k: int
    seed: int
    layers: dict[str, tuple[int, int, int]]
    topk: int
    act_dtype: str = "float16"
    attr_classes: int = 0
    n_classes: int = 0
    inner: int = 1

    @property
    def attr_width(self) -> int:
        return self.n_classes if self.attr_classes < 0 else self.attr_classes

    def attrs(self, n: int, plan: ShardPlan, root: str | None) -> dict[str, Any]:
        coarse = min(self.layers, key=lambda name: self.layers[name][1] * self.layers[name][2])
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "n_images": n,
            "k": self.k,
            "seed": self.seed,
            "chunk_images": plan.chunk_images,
            "topk": self.topk,
            "root": root,
            "layers": {name: list(shape) for name, shape in self.layers.items()},
            "position_grid": list(self.layers[coarse][1:]),
            "status_codes": Status.table(),
            "shards": [list(b) for b in plan.bounds],
            "n_classes": self.n_classes,
            "zarr_shard_chunks": self.inner,
        }


def _create_images(g: zarr.Group, manifest: InputManifest, ci: int, layout: StoreLayout) -> None:
    """The per-image arrays; the manifest's uris, crops and labels are written now."""
    n, t, inner = len(manifest), layout.topk, layout.inner
    img = g.require_group("images")
    _arr(img, "uri", (n,), (ci,), str, "", inner=inner)[:] = manifest.uris
    _arr(img, "crop", (n, 4), (ci, 4), "int32", -1, inner=inner)[:] = manifest.crops
    _arr(img, "status", (n,), (ci,), "uint8", 0, inner=inner)
    _arr(img, "error", (n,), (ci,), str, "", inner=inner)
    _arr(img, "content_hash", (n,), (ci,), "uint64", 0, inner=inner)
    _arr(img, "top_class", (n, t), (ci, t), "int32", -1, inner=inner)
    _arr(img, "top_prob", (n, t), (ci, t), "float16", np.nan, inner=inner)
    if manifest.labels is not None:
        lab = _arr(img, "label", (n,), (ci,), "int32", -1, inner=inner)
        lab[:] = manifest.labels
        lab.attrs["names"] = list(manifest.label_names)


class RunStore:
    """Typed access to one run's ``atlas.zarr`` group."""

    def __init__(
        self,
        group: zarr.Group,
        url: str,
        *,
        retries: int = 4,
        backoff: float = 0.2,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.group = group
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.transient_errors = 0
        attrs: dict[str, Any] = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{url} is not a run store (format attribute {attrs.get('format')!r})")
        # a run that shares another's extraction reads the extraction arrays from that store
        self.parent: RunStore | None = None
        if attrs.get("extraction"):
            mode: OpenMode = "r" if group.store.read_only else "r+"  # as this store was opened
            parent = RunStore.open(str(attrs["extraction"]), mode, storage_options)
            attrs = {**parent.attrs, **attrs}
            self.parent = parent
        self.attrs: dict[str, Any] = attrs

    @classmethod
    def create_child(
        cls,
        url: str,
        parent_url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        attrs: dict[str, Any] | None = None,
    ) -> RunStore:
        """A run store that reads its extraction (images, samples, activations, moments) from
        the store at ``parent_url`` and writes its own layouts, grids and icons (sweeps and
        runs that share one extraction)."""
        parent = cls.open(parent_url, "r", storage_options)
        g = zarr.open_group(url, mode="w", **_opts(url, storage_options))
        g.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                        "extraction": parent_url, **(attrs or {})})  # fmt: skip
        for name in parent.layers:
            g.require_group(f"layers/{name}")
        return cls(g, url, storage_options=storage_options)

    # ------------------------------------------------------------------ creation (driver)
    @classmethod
    def create(
        cls,
        url: str,
        manifest: InputManifest,
        plan: ShardPlan,
        positions: np.ndarray,
        layout: StoreLayout,
        storage_options: dict[str, Any] | None = None,
        *,
        attrs: dict[str, Any] | None = None,
    ) -> RunStore:
        """Create every extraction array; write the frozen input manifest and the positions
        ((n_images * k, 2) int16 (y, x) on the coarsest layer's grid)."""
        plan.validate()
        g = zarr.open_group(url, mode="w", **_opts(url, storage_options))
        g.attrs.update({**layout.attrs(len(manifest), plan, manifest.root), **(attrs or {})})
        _create_images(g, manifest, plan.chunk_images, layout)
        n, ci, k, inner = len(manifest), plan.chunk_images, layout.k, layout.inner
        smp = g.require_group("samples")
        image = _arr(smp, "image", (n * k,), (ci * k,), "int64", -1, inner=inner)
        image[:] = np.repeat(np.arange(n), k)
        _arr(smp, "pos", (n * k, 2), (ci * k, 2), "int16", -1, inner=inner)[:] = positions
        for name, (c, _, _) in layout.layers.items():
            lg = g.require_group(f"layers/{name}")
            _arr(lg, "acts", (n * k, c), (ci * k, c), layout.act_dtype, np.nan, inner=inner)
            _arr(lg, "moment_partial", (len(plan), c, c), (1, c, c), "float64", np.nan)
            _arr(lg, "moment_count", (len(plan),), (1,), "int64", 0)
            if layout.attr_width:
                a = layout.attr_width
                arr = _arr(lg, "attr", (n * k, a), (ci * k, a), "float16", np.nan, inner=inner)
                arr.attrs["classes"] = "all" if layout.attr_classes < 0 else ATTR_TOP_COLUMNS
        return cls(g, url, storage_options=storage_options)

    @classmethod
    def open(
        cls, url: str, mode: OpenMode = "r", storage_options: dict[str, Any] | None = None
    ) -> RunStore:
        try:
            g = zarr.open_group(url, mode=mode, **_opts(url, storage_options))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(f"no run store at {url}: run the extract stage first") from exc
        return cls(g, url, storage_options=storage_options)

    # ------------------------------------------------------------------ basic facts
    @property
    def n_images(self) -> int:
        return int(self.attrs["n_images"])

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    @property
    def layers(self) -> dict[str, tuple[int, int, int]]:
        return {n: (int(s[0]), int(s[1]), int(s[2])) for n, s in self.attrs["layers"].items()}

    @property
    def act_dtype(self) -> np.dtype[Any]:
        """The dtype activations are stored in (the first layer's)."""
        first = next(iter(self.layers))
        return np.dtype(str(self._array(f"layers/{first}/acts").dtype))

    @property
    def shards(self) -> list[tuple[int, int]]:
        """Image-row ranges ``[start, stop)`` of the extraction plan, one per shard."""
        return [(int(a), int(b)) for a, b in self.attrs["shards"]]

    def uris(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self._array("images/uri")[start:stop], dtype=object)

    def crops(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self._array("images/crop")[start:stop])

    def missing_objects(self, start: int, stop: int) -> list[str]:
        """Storage objects (chunks, or zarr shards) of images [start, stop) that are absent,
        over every per-image and per-sample array the extraction writes."""
        from zarr.core.sync import sync

        paths = ["images/status", "images/error", "images/content_hash", "images/top_class"]
        paths += [f"layers/{L}/{w}" for L in self.layers for w in ("acts", "attr")]
        gone = []
        for path in filter(self.has, paths):
            arr = self._array(path)
            step = (arr.shards or arr.chunks)[0]
            k = self.k if path.startswith("layers/") else 1
            for i in range(start * k // step, (stop * k - 1) // step + 1):
                key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
                if not sync(arr.store.exists(f"{arr.path}/{key}")):
                    gone.append(f"{arr.path}/{key}")
        return gone

    def acts_hash(self, start: int, stop: int) -> str:
        """Checksum of the stored activations of images [start, stop), every layer."""
        k = self.k
        sums = [float(np.nansum(self._array(f"layers/{L}/acts")[start * k : stop * k],
                                dtype=np.float64)) for L in self.layers]  # fmt: skip
        return fingerprint(sums)

    def content_hashes(self) -> np.ndarray:
        return np.asarray(self._array("images/content_hash")[:])

    def manifest(self) -> InputManifest:
        return InputManifest(
            uris=self.uris(),
            crops=self.crops(),
            root=self.attrs.get("root"),
        )

    def positions(self, start: int, stop: int) -> np.ndarray:
        """(y, x) sample positions of images [start, stop), shape ((stop - start) * k, 2)."""
        return np.asarray(self._array("samples/pos")[start * self.k : stop * self.k])

    # ------------------------------------------------------------------ extraction (workers)
    def _array(self, path: str) -> zarr.Array:
        """The array at ``path`` (a StoreError if it is a group); extraction arrays of a child
        store come from its parent."""
        if self.parent is not None and _extraction_path(path):
            return self.parent._array(path)
        arr = self.group[path]
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.url}/{path} is a group, not an array")
        return arr

    def _group(self, path: str) -> zarr.Group:
        """The group at ``path`` (a StoreError if it is an array)."""
        grp = self.group[path]
        if not isinstance(grp, zarr.Group):
            raise StoreError(f"{self.url}/{path} is an array, not a group")
        return grp

    def _w(self, path: str) -> zarr.Array:
        """An existing array opened for writing, storing chunks even when they equal the fill."""
        return self._array(path).with_config(_CFG)

    def _put(self, path: str, sel: Any, data: np.ndarray) -> None:
        """Write ``data`` at ``sel`` of array ``path``, retrying transient errors (OSError,
        timeouts) with exponential backoff; permanent ones (permissions, missing paths) and
        exhausted retries raise. Rewriting a region is idempotent, so a retry is always safe."""
        for attempt in range(self.retries + 1):
            try:
                self._w(path)[sel] = data
                return
            except _PERMANENT:
                raise
            except (OSError, TimeoutError) as exc:
                if attempt == self.retries:
                    raise StoreError(
                        f"{self.url}/{path}: write failed {attempt + 1} times: {exc}"
                    ) from exc
                self.transient_errors += 1
                time.sleep(self.backoff * 2**attempt)

    def write_extract_shard(self, r: ShardResult) -> None:
        """Write one shard's rows; the rows are whole chunks by construction of the plan."""
        k, s, e = self.k, r.start, r.stop
        try:
            self._put("images/error", slice(s, e), r.error)
            self._put("images/content_hash", slice(s, e), r.content_hash)
            self._put("images/top_class", slice(s, e), r.top_class)
            self._put("images/top_prob", slice(s, e), r.top_prob)
            for name, a in r.acts.items():
                self._put(f"layers/{name}/acts", slice(s * k, e * k), a)
                self._put(f"layers/{name}/moment_partial", r.shard, r.moment[name])
                self._put(
                    f"layers/{name}/moment_count",
                    slice(r.shard, r.shard + 1),
                    np.array([r.moment_count[name]]),
                )
                if r.attr is not None:
                    self._put(f"layers/{name}/attr", slice(s * k, e * k), r.attr[name])
            self._put("images/status", slice(s, e), r.status)  # last: 0 = never finished
        except (StoreError, *_PERMANENT) as exc:
            raise StoreError(
                f"extraction shard {r.shard} (images {s}..{e}) could not be "
                f"written to {self.url}: {exc}"
            ) from exc

    def mark_duplicates(self, rows: np.ndarray, originals: np.ndarray) -> None:
        """Driver, after every shard finished: classify ``rows`` as duplicates of ``originals``
        and turn their samples into holes (idempotent)."""
        if not len(rows):
            return
        status = self.status()
        status[rows] = int(Status.DUPLICATE)
        error = np.asarray(self._array("images/error")[:], dtype=object)
        error[rows] = [f"same bytes and crop as image {int(o)}" for o in originals]
        samples = sample_rows(rows, self.k)
        for name in self.layers:
            for what in ("acts", "attr"):
                if self.has(f"layers/{name}/{what}"):
                    arr = self._w(f"layers/{name}/{what}")
                    arr.set_orthogonal_selection((samples, slice(None)), np.nan)
        self._put("images/error", slice(None), error)
        self._put("images/status", slice(None), status)

    # ------------------------------------------------------------------ reading
    def status(self) -> np.ndarray:
        return np.asarray(self._array("images/status")[:])

    def image_of_sample(self) -> np.ndarray:
        return np.asarray(self._array("samples/image")[:])

    def acts(self, layer: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 activations of sample rows [start, stop) of ``layer`` (NaN rows are holes)."""
        return np.asarray(self._array(f"layers/{layer}/acts")[start:stop], dtype=np.float32)

    def ok_samples(self) -> np.ndarray:
        """(N * k,) bool: sample rows whose image decoded and was extracted."""
        return np.repeat(self.status() == 1, self.k)

    def gather(self, layer: str, rows: np.ndarray, what: str = "acts") -> np.ndarray:
        """float32 rows ``rows`` (sorted ints) of ``layers/<layer>/<what>``, read one chunk at a
        time, so memory holds the result plus one chunk, never the whole array."""
        arr = self._array(f"layers/{layer}/{what}")
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *arr.shape[1:]), dtype=np.float32)
        step = int(arr.chunks[0])
        chunk_of = rows // step
        bounds = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True])
        for a, b in itertools.pairwise(bounds):
            c = int(chunk_of[a])
            block = np.asarray(arr[c * step : (c + 1) * step], dtype=np.float32)
            out[a:b] = block[rows[a:b] - c * step]
        return out

    def sample_ranges(self) -> list[tuple[int, int]]:
        """Sample-row ranges of the extraction plan: chunk-aligned, one per shard."""
        return [(a * self.k, b * self.k) for a, b in self.attrs["shards"]]

    def create_rows(self, layer: str, name: str, width: int, attrs: dict[str, Any]) -> None:
        """A per-sample float32 array (N * k, width) of NaN, chunked like the activations."""
        n = self.n_images * self.k
        ci = int(self.attrs["chunk_images"]) * self.k
        lg = self._group(f"layers/{layer}")
        _arr(lg, name, (n, width), (ci, width), "float32", np.nan, overwrite=True).attrs.update(
            attrs
        )

    def write_rows(self, layer: str, name: str, start: int, stop: int, data: np.ndarray) -> None:
        """Rows [start, stop) of a per-sample array; the range must be whole chunks."""
        self._w(f"layers/{layer}/{name}")[start:stop] = data

    def rows(self, layer: str, name: str) -> np.ndarray:
        return np.asarray(self._array(f"layers/{layer}/{name}")[:])

    def top_class(self) -> np.ndarray:
        return np.asarray(self._array("images/top_class")[:])

    def second_moment(self, layer: str) -> np.ndarray:
        """Merge the per-shard partial sums into E[x x^T] over every position seen: (C, C)."""
        part = np.asarray(self._array(f"layers/{layer}/moment_partial")[:])
        count = np.asarray(self._array(f"layers/{layer}/moment_count")[:])
        done = count > 0
        if not done.any():
            raise StoreError(f"no second-moment partials for layer {layer}: extraction is empty")
        return part[done].sum(axis=0) / float(count[done].sum())

    # ------------------------------------------------------------------ later stages (driver)
    def write_layout(self, layer: str, layout: np.ndarray, attrs: dict[str, Any]) -> None:
        """Write the normalized 2-D layout (n_samples, 2) float32; NaN rows for holes."""
        lg = self._group(f"layers/{layer}")
        ci = int(self.attrs["chunk_images"]) * self.k
        arr = _arr(lg, "layout", layout.shape, (ci, 2), "float32", np.nan, overwrite=True)
        arr[:] = layout
        arr.attrs.update(attrs)

    def layout(self, layer: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Normalized layout of sample rows [start, stop): (n, 2) float32, NaN for holes."""
        return np.asarray(self._array(f"layers/{layer}/layout")[start:stop])

    def attribution(self, layer: str) -> tuple[np.ndarray, bool] | None:
        """(attribution (N * k, A) float32, whether its columns are every class in order) of
        ``layer``, or None when attribution was not extracted. Otherwise column j is the
        image's j-th top class (``images/top_class``)."""
        path = f"layers/{layer}/attr"
        if not self.has(path):
            return None
        every = self._array(path).attrs.get("classes") == "all"
        return self.rows(layer, "attr").astype(np.float32), every

    def icons_fingerprint(self, layer: str, size: int) -> str | None:
        """The render fingerprint a grid level's icon arrays were created for (None: none)."""
        path = f"layers/{layer}/grid/{size}/icons"
        return str(self._array(path).attrs.get("fingerprint")) if self.has(path) else None

    def write_grid(self, layer: str, grid: GridArrays, attrs: dict[str, Any]) -> None:
        gg = self.group.require_group(f"layers/{layer}/grid/{grid.size}")
        m, c = grid.mean.shape
        t = grid.top_class.shape[1]
        for name, arr, chunks, dt, fill in (
            ("cell", grid.cell, (max(m, 1), 2), "int32", -1),
            ("count", grid.count, (max(m, 1),), "int32", 0),
            ("mean", grid.mean, (max(m, 1), c), "float32", np.nan),
            ("top_class", grid.top_class, (max(m, 1), t), "int32", -1),
            ("top_count", grid.top_count, (max(m, 1), t), "int32", 0),
        ):
            _arr(gg, name, arr.shape, chunks, dt, fill, overwrite=True)[:] = arr
        gg.attrs.update({"size": grid.size, **attrs})

    def write_grid_extra(self, layer: str, size: int, name: str, arr: np.ndarray) -> None:
        """An extra per-cell array of a grid level (e.g. attribution labels), shape (M, ...)."""
        gg = self._group(f"layers/{layer}/grid/{size}")
        fill = -1 if arr.dtype.kind == "i" else np.nan
        _arr(gg, name, arr.shape, arr.shape, arr.dtype, fill, overwrite=True)[:] = arr

    def grid_extra(self, layer: str, size: int, name: str) -> np.ndarray | None:
        path = f"layers/{layer}/grid/{size}/{name}"
        return np.asarray(self._array(path)[:]) if self.has(path) else None

    def grid_cells(self, layer: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell (M, 2), count (M,)) of a level: what drawing needs, without the means."""
        base = f"layers/{layer}/grid/{size}"
        cell, count = (np.asarray(self._array(f"{base}/{n}")[:]) for n in ("cell", "count"))
        return cell, count

    def grid(self, layer: str, size: int) -> GridArrays:
        base = f"layers/{layer}/grid/{size}"
        names = ("cell", "mean", "count", "top_class", "top_count")
        return GridArrays(size, *(np.asarray(self._array(f"{base}/{n}")[:]) for n in names))

    def create_icons(self, layer: str, size: int, n: int, px: int, attrs: dict[str, Any]) -> None:
        """Icon arrays of a grid level, one chunk per icon so any batch owns whole chunks."""
        gg = self._group(f"layers/{layer}/grid/{size}")
        _arr(gg, "icons", (n, px, px, 3), (1, px, px, 3), "uint8", 0, overwrite=True)
        _arr(gg, "icon_objective", (n,), (1,), "float32", np.nan, overwrite=True)
        _arr(gg, "icon_cosine", (n,), (1,), "float32", np.nan, overwrite=True)
        gg["icons"].attrs.update(attrs)

    def write_icons(
        self,
        layer: str,
        size: int,
        rows: np.ndarray,
        icons: np.ndarray,
        objective: np.ndarray,
        cosine: np.ndarray,
    ) -> None:
        """Icons for cell rows ``rows``; the objective is written last (it marks an icon done)."""
        base = f"layers/{layer}/grid/{size}"
        rows = np.asarray(rows)
        self._w(f"{base}/icons").set_orthogonal_selection((rows,), icons)
        self._w(f"{base}/icon_cosine").set_orthogonal_selection((rows,), cosine)
        self._w(f"{base}/icon_objective").set_orthogonal_selection((rows,), objective)

    def icons(self, layer: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(icons (M, px, px, 3) uint8, objective (M,), cosine (M,)); NaN objective = missing."""
        base = f"layers/{layer}/grid/{size}"
        names = ("icons", "icon_objective", "icon_cosine")
        icons, objective, cosine = (np.asarray(self._array(f"{base}/{n}")[:]) for n in names)
        return icons, objective, cosine

    def icon_rows(self, layer: str, size: int, start: int, stop: int) -> np.ndarray:
        """Icons of kept cells [start, stop) of a level (cells are in flat order, iy major)."""
        return np.asarray(self._array(f"layers/{layer}/grid/{size}/icons")[start:stop])

    # ------------------------------------------------------------------ exemplars
    def create_exemplars(
        self, layer: str, rows: np.ndarray, images: np.ndarray, shapes: tuple[int, int, int],
        attrs: dict[str, Any],
    ) -> None:  # fmt: skip
        """Arrays of the exemplar samples ``rows`` (sorted) of ``layer`` and of their source
        ``images`` (sorted, unique). shapes: (patch px, thumbnail px, rows per chunk)."""
        px, tp, chunk = shapes
        eg = self.group.require_group(f"layers/{layer}/exemplars")
        r, u = len(rows), len(images)
        _arr(eg, "row", (r,), (max(r, 1),), "int64", -1, overwrite=True)[:] = rows
        _arr(eg, "patch", (r, px, px, 3), (chunk, px, px, 3), "uint8", 255, overwrite=True)
        _arr(eg, "box", (r, 4), (chunk, 4), "float32", np.nan, overwrite=True)
        _arr(eg, "ok", (r,), (chunk,), "uint8", 0, overwrite=True)
        _arr(eg, "image", (u,), (max(u, 1),), "int64", -1, overwrite=True)[:] = images
        _arr(eg, "thumb", (u, tp, tp, 3), (1, tp, tp, 3), "uint8", 255, overwrite=True)
        _arr(eg, "thumb_size", (u, 2), (max(u, 1), 2), "int32", 0, overwrite=True)
        eg.attrs.update(attrs)

    def write_exemplar_patches(
        self, layer: str, start: int, patch: np.ndarray, box: np.ndarray, ok: np.ndarray
    ) -> None:
        """Patches of exemplar rows [start, start + n): whole chunks, ``ok`` written last."""
        base, stop = f"layers/{layer}/exemplars", start + len(patch)
        self._w(f"{base}/patch")[start:stop] = patch
        self._w(f"{base}/box")[start:stop] = box
        self._w(f"{base}/ok")[start:stop] = ok

    def write_thumbs(self, layer: str, index: np.ndarray, thumbs: np.ndarray) -> None:
        if len(index):
            self._w(f"layers/{layer}/exemplars/thumb").set_orthogonal_selection((index,), thumbs)

    def write_thumb_sizes(self, layer: str, sizes: np.ndarray) -> None:
        self._w(f"layers/{layer}/exemplars/thumb_size")[:] = sizes

    def exemplar_index(self, layer: str) -> dict[str, np.ndarray] | None:
        """The small exemplar arrays (row, box, ok, image, thumb_size), or None before the
        exemplars stage ran."""
        base = f"layers/{layer}/exemplars"
        if not self.has(f"{base}/row"):
            return None
        names = ("row", "box", "ok", "image", "thumb_size")
        return {n: np.asarray(self._array(f"{base}/{n}")[:]) for n in names}

    def exemplar_patches(self, layer: str, index: np.ndarray) -> np.ndarray:
        """Patches of exemplar rows at positions ``index`` of ``row``: (n, px, px, 3)."""
        arr = self._array(f"layers/{layer}/exemplars/patch")
        return np.asarray(arr.get_orthogonal_selection((np.asarray(index, np.int64),)))

    def thumbs(self, layer: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array(f"layers/{layer}/exemplars/thumb")[start:stop])

    def write_report(self, path: str, report: dict[str, Any]) -> None:
        """A JSON report as the attributes of group ``path`` (e.g. ``patches/<view>``)."""
        self.group.require_group(path).attrs.update(json.loads(json.dumps(report, default=_plain)))

    def report(self, path: str) -> dict[str, Any] | None:
        return dict(self.group[path].attrs) if self.has(path) else None

    def has(self, path: str) -> bool:
        if self.parent is not None and _extraction_path(path):
            return self.parent.has(path)
        try:
            self.group[path]
        except KeyError:
            return False
        return True


_EXTRACTION_ARRAYS = ("acts", "attr", "moment_partial", "moment_count")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _extraction_path(path: str) -> bool:
    """Whether ``path`` names an array the extraction writes (shared with child stores)."""
    parts = path.split("/")
    if parts[0] in ("images", "samples"):
        return True
    return len(parts) == 3 and parts[0] == "layers" and parts[2] in _EXTRACTION_ARRAYS


def _opts(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """zarr accepts storage_options only with an fsspec URL, never with a local path."""
    if "://" in url and not url.startswith("file://") and storage_options:
        return {"storage_options": storage_options}
    return {}


def _arr(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    fill: Any,
    overwrite: bool = False,
    inner: int = 1,
) -> zarr.Array:
    """An array whose storage objects are ``chunks``; with ``inner`` > 1 each storage object is a
    shard (zarr's sharding codec) of ``inner`` chunks along the rows."""
    chunks = tuple(max(1, min(c, s)) if s else 1 for c, s in zip(chunks, shape, strict=False))
    shards = None
    if inner > 1 and chunks[0] % inner == 0 and chunks[0] >= inner:
        shards, chunks = chunks, (chunks[0] // inner, *chunks[1:])
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        fill_value=fill,
        config=_CFG,
        overwrite=overwrite,
    )
