"""The run store: one Zarr v3 group per run, position-addressed, readable with plain zarr.

Its nodes (``atlas_core/store/nodes.py``) declare their arrays once; every write goes through
:meth:`RunStore.write_region`, which refuses a region that is not whole storage objects and
retries transient errors. Write rules (zarr-python has no locking and rewrites whole objects):
- only the driver creates arrays and writes metadata (:meth:`create_array`, ``Node.create``);
- workers open existing arrays and write whole storage objects of their own rows;
- arrays use NaN (or 0 for status) as the fill value and store empty chunks, so holes show.
A view of the run (a class atlas) writes its layouts, levels and exemplars under
``views/<slug>/`` (:meth:`in_view`); a run that shares another's extraction (a sweep job) reads
images, samples and activations from that store (:attr:`source`). See docs/run-store.md.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.array_spec import ArrayConfigParams

from atlas_core.data.decode import Status
from atlas_core.data.plan import ShardPlan
from atlas_core.data.sources import InputManifest
from atlas_core.errors import PlanError, StoreError
from atlas_core.store.markers import fingerprint
from atlas_core.store.nodes import (
    Exemplars,
    Extraction,
    Images,
    Layout,
    Level,
    Neighbours,
    Samples,
)
from atlas_core.store.spec import ArraySpec, Node

OpenMode = Literal["r", "r+", "a", "w", "w-"]
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
FORMAT = "activation-atlas-run"
FORMAT_VERSION = 2
_CFG: ArrayConfigParams = {"write_empty_chunks": True}
ATTR_TOP_COLUMNS = "images/top_class columns"


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
    moment: dict[str, np.ndarray]  # layer -> (C, C) float64 (returned to the driver)
    moment_count: dict[str, int]
    attr: dict[str, np.ndarray] | None = None  # layer -> (n * k, A) float, NaN rows where not ok
    seconds: float = 0.0


def sample_rows(images: np.ndarray, k: int) -> np.ndarray:
    """Sample rows (n * k,) of images ``images`` (n,): image-major, ``image * k + j``."""
    return (np.asarray(images, np.int64)[:, None] * k + np.arange(k)[None, :]).ravel()


@dataclass(frozen=True)
class StoreLayout:
    """The shape of a run's extraction arrays.

    k: samples per image; layers: layer -> (C, H, W); topk: top classes kept per image;
    attr_classes: 0 (no attribution), n (the image's top n classes) or -1 (every class);
    inner: chunks per storage object (1: a chunk is an object; > 1: zarr's sharding codec).
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

    def dims(self, n: int, plan: ShardPlan) -> dict[str, int]:
        """The extraction nodes' dims: storage objects of ``plan.chunk_images`` images, each
        ``inner`` chunks."""
        co = plan.chunk_images
        ci = co // self.inner if self.inner > 1 and co % self.inner == 0 else co
        k = self.k
        return {
            "n": n,
            "ns": n * k,
            "ci": ci,
            "co": co,
            "cs": ci * k,
            "os": co * k,
            "t": self.topk,
            "A": self.attr_width,
            "S": len(plan),
        }


class RunStore:
    """Typed access to one run's ``atlas.zarr`` group: facts, nodes, and the one write path."""

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
        self.prefix = ""  # a view's group ("views/<slug>/"), see in_view
        attrs: dict[str, Any] = dict(group.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{url} is not a run store (format attribute {attrs.get('format')!r})")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{url} has store format version {attrs.get('format_version')}, "
                f"this code reads {FORMAT_VERSION}: re-extract (a new run_dir)"
            )
        # a run that shares another's extraction reads the extraction nodes from that store
        self.source: RunStore = self
        if attrs.get("extraction"):
            mode: OpenMode = "r" if group.store.read_only else "r+"  # as this store was opened
            self.source = RunStore.open(str(attrs["extraction"]), mode, storage_options)
            attrs = {**self.source.attrs, **attrs}
        self.attrs: dict[str, Any] = attrs

    @property
    def parent(self) -> RunStore | None:
        """The store this run's extraction lives in, when it is another run's."""
        return None if self.source is self else self.source

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls, url: str, mode: OpenMode = "r", storage_options: dict[str, Any] | None = None
    ) -> RunStore:
        try:
            g = zarr.open_group(url, mode=mode, **_opts(url, storage_options))
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(f"no run store at {url}: run the extract stage first") from exc
        return cls(g, url, storage_options=storage_options)

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
        n = len(manifest)
        g.attrs.update({**layout.attrs(n, plan, manifest.root), **(attrs or {})})
        store = cls(g, url, storage_options=storage_options)
        dims = layout.dims(n, plan)
        img = store.images
        img.create(
            ["uri", "crop", "status", "error", "content_hash", "top_class", "top_prob"], dims
        )
        img.write("uri", 0, np.asarray(manifest.uris, dtype=object))
        img.write("crop", 0, manifest.crops)
        if manifest.labels is not None:
            img.create(["label"], dims)
            img.write("label", 0, manifest.labels)
            store.array("images/label").attrs["names"] = list(manifest.label_names)
        smp = store.samples
        smp.create(None, dims)
        smp.write("image", 0, np.repeat(np.arange(n), layout.k))
        smp.write("pos", 0, positions)
        for name, (c, _, _) in layout.layers.items():
            ex = store.extraction(name)
            ex.create(
                ["acts", "moment", "moment_count", "moment_shards"],
                {**dims, "C": c},
                dtypes={"acts": layout.act_dtype},
            )
            if layout.attr_width:
                ex.create(["attr"], dims)
                kind = "all" if layout.attr_classes < 0 else ATTR_TOP_COLUMNS
                store.array(f"layers/{name}/attr").attrs["classes"] = kind
        return store

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
        g.attrs.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "extraction": parent_url,
                **(attrs or {}),
            }
        )
        for name in parent.layers:
            g.require_group(f"layers/{name}")
        return cls(g, url, storage_options=storage_options)

    def in_view(self, prefix: str) -> RunStore:
        """The same store, whose layouts, levels, exemplars and reports are those of the view
        whose group is ``prefix`` (``""``: the run's main view)."""
        out = copy.copy(self)
        out.prefix = prefix
        if self.source is self:  # its own extraction stays its own (parent stays None)
            out.source = out
        return out

    # ------------------------------------------------------------------ nodes
    @property
    def images(self) -> Images:
        return Images(self.source, "images")

    @property
    def samples(self) -> Samples:
        return Samples(self.source, "samples")

    def extraction(self, layer: str) -> Extraction:
        return Extraction(self.source, f"layers/{layer}")

    def layout_node(self, layer: str) -> Layout:
        return Layout(self, f"{self.prefix}layers/{layer}")

    def level(self, layer: str, size: int) -> Level:
        return Level(self, f"{self.prefix}layers/{layer}/grid/{size}")

    def neighbours(self, layer: str) -> Neighbours:
        """The layer's neighbour index and kNN graph (the run's own group, like the layout)."""
        return Neighbours(self, f"layers/{layer}/neighbours")

    def sample_dims(self) -> dict[str, int]:
        """The per-sample arrays' dims: rows, rows per chunk and per storage object, as the
        activations are stored (an array of the run's own sized like them)."""
        acts = self.extraction(next(iter(self.layers))).array("acts")
        obj, chunk = int((acts.shards or acts.chunks)[0]), int(acts.chunks[0])
        return {"ns": self.n_images * self.k, "cs": chunk, "os": obj}

    def exemplars(self, layer: str) -> Exemplars:
        return Exemplars(self, f"{self.prefix}layers/{layer}/exemplars")

    def report(self, name: str) -> dict[str, Any] | None:
        """A JSON report stored as the attributes of this view's group ``name``."""
        path = f"{self.prefix}{name}"
        return self.group_attrs(path) if self.has(path) else None

    def write_report(self, name: str, report: Mapping[str, Any]) -> None:
        self.set_group_attrs(f"{self.prefix}{name}", json.loads(json.dumps(report, default=_plain)))

    # ------------------------------------------------------------------ facts
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
        return np.dtype(str(self.source.array(f"layers/{first}/acts").dtype))

    @property
    def shards(self) -> list[tuple[int, int]]:
        """Image-row ranges ``[start, stop)`` of the extraction plan, one per shard."""
        return [(int(a), int(b)) for a, b in self.attrs["shards"]]

    def sample_ranges(self) -> list[tuple[int, int]]:
        """Sample-row ranges of the extraction plan: whole storage objects, one per shard."""
        return [(a * self.k, b * self.k) for a, b in self.shards]

    def status(self) -> np.ndarray:
        return self.images.status()

    def ok_samples(self) -> np.ndarray:
        """(N * k,) bool: sample rows whose image decoded and was extracted."""
        return np.repeat(self.status() == int(Status.OK), self.k)

    def image_of_sample(self) -> np.ndarray:
        return self.samples.read("image")

    def positions(self, start: int, stop: int) -> np.ndarray:
        """(y, x) sample positions of images [start, stop), shape ((stop - start) * k, 2)."""
        return self.samples.read("pos", start * self.k, stop * self.k)

    def manifest(self) -> InputManifest:
        img = self.images
        return InputManifest(uris=img.uris(), crops=img.crops(), root=self.attrs.get("root"))

    # ------------------------------------------------------------------ the one write path
    def create_array(
        self,
        key: str,
        spec: ArraySpec,
        dims: Mapping[str, int],
        *,
        shape: tuple[int, ...] | None = None,
        dtype: Any = None,
    ) -> zarr.Array:
        """The driver creates (or recreates, empty) one array of a node, as ``spec`` declares
        it for ``dims`` (``shape``: the data's shape, where the node's dims do not give it)."""
        full, chunks, shards = spec.resolve({**dims, **_rows(spec, shape)})
        parent, _, name = key.rpartition("/")
        group = self.group.require_group(parent) if parent else self.group
        return group.create_array(
            name,
            shape=shape or full,
            chunks=chunks,
            shards=shards,
            dtype=dtype or spec.dtype,
            fill_value=spec.fill,
            config=_CFG,
            overwrite=True,
            compressors="auto" if spec.compress else None,
        )

    def write_region(self, key: str, start: int, data: np.ndarray) -> None:
        """Write rows [start, start + len(data)) of array ``key``: every write of the project
        goes through here. The region must be whole storage objects (a chunk, or a zarr shard):
        two writers of one object would lose each other's rows. Transient errors (OSError,
        timeouts) are retried with exponential backoff; permanent ones (permissions, missing
        paths) and exhausted retries raise. Rewriting a region is idempotent."""
        if not len(data):
            return
        arr = self.array(key).with_config(_CFG)
        stop, rows = start + len(data), arr.shape[0]
        step = int((arr.shards or arr.chunks)[0])
        if start % step or (stop % step and stop != rows) or stop > rows:
            raise PlanError(
                f"{self.url}/{key}: rows [{start}, {stop}) of {rows} are not whole storage "
                f"objects of {step} rows: another writer would rewrite them. Align the work "
                "to the array's objects."
            )
        for attempt in range(self.retries + 1):
            try:
                arr[start:stop] = data
                return
            except _PERMANENT:
                raise
            except (OSError, TimeoutError) as exc:
                if attempt == self.retries:
                    raise StoreError(
                        f"{self.url}/{key}: write failed {attempt + 1} times: {exc}"
                    ) from exc
                self.transient_errors += 1
                time.sleep(self.backoff * 2**attempt)

    def rewrite_rows(self, key: str, rows: np.ndarray, value: Any) -> None:
        """The driver sets rows ``rows`` of ``key`` to ``value``: each storage object they
        touch is read, changed and written back whole (after every task has finished)."""
        arr = self.array(key)
        step = int((arr.shards or arr.chunks)[0])
        for obj in np.unique(np.asarray(rows, np.int64) // step):
            a, b = int(obj) * step, min(int(obj + 1) * step, arr.shape[0])
            block = self.read(key, a, b)
            block[rows[(rows >= a) & (rows < b)] - a] = value
            self.write_region(key, a, block)

    # ------------------------------------------------------------------ reading
    def array(self, key: str) -> zarr.Array:
        """The array at ``key`` of this store's group (a StoreError if it is a group)."""
        try:
            arr = self.group[key]
        except KeyError as exc:
            raise StoreError(f"{self.url} has no array {key}") from exc
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.url}/{key} is a group, not an array")
        return arr

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self.array(key)[start:stop])

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order) of ``key`` as float32 or the array's dtype, read one chunk
        at a time in row order: memory holds the result plus one chunk, never the array."""
        arr = self.array(key)
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        dtype = np.float32 if arr.dtype.kind == "f" else arr.dtype
        out = np.empty((len(rows), *arr.shape[1:]), dtype=dtype)
        step = int(arr.chunks[0])
        chunk_of = srt // step
        bounds = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True])
        for a, b in itertools.pairwise(bounds):
            c = int(chunk_of[a])
            block = np.asarray(arr[c * step : (c + 1) * step])
            out[order[a:b]] = block[srt[a:b] - c * step]
        return out

    def has(self, key: str) -> bool:
        try:
            self.group[key]
        except KeyError:
            return False
        return True

    def level_sizes(self, layer: str) -> list[int]:
        """The grid sizes this view holds for ``layer`` (its levels), ascending."""
        path = f"{self.prefix}layers/{layer}/grid"
        node = self.group.get(path)
        if not isinstance(node, zarr.Group):
            return []
        return sorted(int(name) for name in node.group_keys() if name.isdigit())

    def group_attrs(self, path: str) -> dict[str, Any]:
        return dict(self.group[path].attrs)

    def set_group_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        self.group.require_group(path).attrs.update(dict(attrs))

    # ------------------------------------------------------------------ the extraction
    def write_extract_shard(self, r: ShardResult) -> None:
        """Write one shard's rows (whole storage objects by construction of the plan); the
        statuses last, so an image with status 0 was never finished."""
        k, s, e = self.k, r.start, r.stop
        img = self.images
        try:
            img.write("error", s, r.error)
            img.write("content_hash", s, r.content_hash)
            img.write("top_class", s, r.top_class)
            img.write("top_prob", s, r.top_prob)
            for name, a in r.acts.items():
                self.extraction(name).write("acts", s * k, a)
                if r.attr is not None:
                    self.extraction(name).write("attr", s * k, r.attr[name])
            img.write("status", s, r.status)  # last: 0 = never finished
        except (StoreError, *_PERMANENT) as exc:
            raise StoreError(
                f"extraction shard {r.shard} (images {s}..{e}) could not be "
                f"written to {self.url}: {exc}"
            ) from exc

    def write_moments(
        self, sums: Mapping[str, np.ndarray], counts: Mapping[str, int], shards: np.ndarray
    ) -> None:
        """The driver's reduced second moments, one (C, C) sum per layer, and which shards
        they hold (``shards``: (S,) uint8)."""
        for name, total in sums.items():
            ex = self.extraction(name)
            ex.write("moment", 0, np.asarray(total, np.float64))
            ex.write("moment_count", 0, np.array([counts[name]], np.int64))
            ex.write("moment_shards", 0, np.asarray(shards, np.uint8))

    def mark_duplicates(self, rows: np.ndarray, originals: np.ndarray) -> None:
        """Driver, after every shard finished: classify ``rows`` as duplicates of ``originals``
        and turn their samples into holes (idempotent)."""
        if not len(rows):
            return
        img = self.images
        status = img.status()
        status[rows] = int(Status.DUPLICATE)
        error = np.asarray(img.read("error"), dtype=object)
        error[rows] = [f"same bytes and crop as image {int(o)}" for o in originals]
        samples = sample_rows(rows, self.k)
        for name in self.layers:
            for what in ("acts", "attr"):
                if self.extraction(name).has(what):
                    self.source.rewrite_rows(f"layers/{name}/{what}", samples, np.nan)
        img.write("error", 0, error)
        img.write("status", 0, status)

    def missing_objects(self, start: int, stop: int) -> list[str]:
        """Storage objects (chunks, or zarr shards) of images [start, stop) that are absent,
        over every per-image and per-sample array the extraction writes."""
        from zarr.core.sync import sync

        nodes: list[tuple[Node, str]] = [
            (self.images, n) for n in ("status", "error", "content_hash", "top_class")
        ]
        nodes += [(self.extraction(L), w) for L in self.layers for w in ("acts", "attr")]
        gone = []
        for node, name in nodes:
            if not node.has(name):
                continue
            arr = node.array(name)
            step = (arr.shards or arr.chunks)[0]
            k = self.k if isinstance(node, Extraction) else 1
            for i in range(start * k // step, (stop * k - 1) // step + 1):
                key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
                if not sync(arr.store.exists(f"{arr.path}/{key}")):
                    gone.append(f"{arr.path}/{key}")
        return gone

    def acts_hash(self, start: int, stop: int) -> str:
        """Checksum of the stored activations of images [start, stop), every layer."""
        k = self.k
        sums = [
            float(np.nansum(self.extraction(L).read("acts", start * k, stop * k), dtype=np.float64))
            for L in self.layers
        ]
        return fingerprint(sums)


def _rows(spec: ArraySpec, shape: tuple[int, ...] | None) -> dict[str, int]:
    """When a node writes data whose shape it knows, its dims come from that shape."""
    if shape is None:
        return {}
    return {d: s for d, s in zip(spec.shape, shape, strict=False) if isinstance(d, str)}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _opts(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """zarr accepts storage_options only with an fsspec URL, never with a local path."""
    if "://" in url and not url.startswith("file://") and storage_options:
        return {"storage_options": storage_options}
    return {}
