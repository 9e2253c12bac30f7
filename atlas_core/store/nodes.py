"""The run store's nodes, each declaring its arrays once (docs/run-store.md lists them all).

Dimension keys: ``n`` images, ``ns`` sample rows (n * k), ``ci``/``co`` images per chunk and per
storage object (``cs``/``os`` the same in sample rows), ``C`` channels, ``A`` attribution
columns, ``t`` top classes, ``S`` extraction shards; for a level ``M`` kept cells, ``H`` heatmap
classes, ``k`` exemplars per cell, ``px`` icon side, ``group`` icons optimized together (a chunk),
``item`` icons per render work item (a storage object); for exemplars ``R`` rows, ``rc`` rows per
task, ``slots`` thumbnail slots, ``tb`` bytes per thumbnail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from atlas_core.errors import StoreError
from atlas_core.store.spec import ArraySpec, Node

NAN = float("nan")
CELL_ROWS = 16384  # kept cells per storage object of a level's per-cell arrays


def _img(dtype: Any, fill: Any, *tail: Any) -> ArraySpec:
    return ArraySpec(dtype, fill, ("n", *tail), chunk="ci", obj="co")


def _smp(dtype: Any, fill: Any, *tail: Any) -> ArraySpec:
    return ArraySpec(dtype, fill, ("ns", *tail), chunk="cs", obj="os")


def _cells(dtype: Any, fill: Any, *tail: Any) -> ArraySpec:
    return ArraySpec(dtype, fill, ("M", *tail), chunk="cells", obj="cells")


class Images(Node):
    """``images``: one row per input of the frozen manifest."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "uri": _img(str, ""),
        "crop": _img("int32", -1, 4),
        "status": _img("uint8", 0),
        "error": _img(str, ""),
        "content_hash": _img("uint64", 0),
        "top_class": _img("int32", -1, "t"),
        "top_prob": _img("float16", NAN, "t"),
        "label": _img("int32", -1),
        # the mean rfft2 magnitude of the model-sized inputs, decorrelated colours (MACO icons)
        "spectrum": ArraySpec("float32", 0.0, (3, "sh", "sw")),
    }

    def spectrum(self) -> np.ndarray | None:
        """(3, H, W // 2 + 1) the images' mean amplitude spectrum, or None (an older store)."""
        return self.read("spectrum") if self.has("spectrum") else None

    def status(self) -> np.ndarray:
        return self.read("status")

    def uris(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self.read("uri", start, stop), dtype=object)

    def crops(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.read("crop", start, stop)

    def top_class(self) -> np.ndarray:
        return self.read("top_class")


class Samples(Node):
    """``samples``: one row per sample (``k`` per image, image-major)."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "image": _smp("int64", -1),
        "pos": _smp("int16", -1, 2),
    }


class Extraction(Node):
    """``layers/<L>``, what the extraction writes of a layer: activations, attribution, and the
    uncentred second moment summed over every position of every shard (one sum per layer,
    reduced by the driver as shards finish; ``moment_shards`` says which shards it holds)."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "acts": _smp("float16", NAN, "C"),
        "attr": _smp("float16", NAN, "A"),
        "moment": ArraySpec("float64", 0.0, ("C", "C")),
        "moment_count": ArraySpec("int64", 0, (1,)),
        "moment_shards": ArraySpec("uint8", 0, ("S",)),
    }

    def acts(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 activations of sample rows [start, stop) (NaN rows are holes)."""
        return np.asarray(self.read("acts", start, stop), dtype=np.float32)

    def second_moment(self) -> np.ndarray:
        """E[x x^T] over every position the extraction saw: (C, C) float64."""
        count = int(self.read("moment_count")[0]) if self.has("moment_count") else 0
        if not count:
            raise StoreError(f"no second moment for {self.path}: the extraction is empty")
        return self.read("moment") / float(count)

    def attribution(self) -> tuple[np.ndarray, bool] | None:
        """(attribution (N * k, A) float32, whether its columns are every class in order), or
        None when attribution was not extracted (columns: the images' top classes)."""
        if not self.has("attr"):
            return None
        every = self.array("attr").attrs.get("classes") == "all"
        return self.read("attr").astype(np.float32), every


class Layout(Node):
    """``[views/<v>/]layers/<L>``: the 2-D layout of a view's samples."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "layout": _smp("float32", NAN, 2),
        "layout_raw": _smp("float32", NAN, 2),
        # the sample rows UMAP was fitted on (ascending): every other row, and any new input,
        # is placed by its nearest ones (atlas_core.reduce.Landmarks)
        "landmark_rows": ArraySpec("int64", -1, ("L",)),
    }


class Neighbours(Node):
    """``layers/<L>/neighbours``: the layer's nearest-neighbour index in activation space
    (atlas_core.neighbours: its bytes, without the vectors, which are the store's activations)
    and every sample's k nearest other samples with their cosines (-1 / NaN for holes)."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "index": ArraySpec("uint8", 0, ("B",)),
        "rows": _smp("int64", -1, "k"),
        "cos": _smp("float32", NAN, "k"),
    }


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


class Level(Node):
    """``[views/<v>/]layers/<L>/grid/<G>``: a grid level's kept cells (flat order, iy major),
    their icons and exemplar rows. Icons are chunked by ``group`` (the icons optimized together)
    and stored ``item`` to a storage object (one render work item each)."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "cell": _cells("int32", -1, 2),
        "count": _cells("int32", 0),
        "mean": _cells("float32", NAN, "C"),
        "top_class": _cells("int32", -1, "t"),
        "top_count": _cells("int32", 0, "t"),
        "attr_top_class": _cells("int32", -1, "t"),
        "attr_top_value": _cells("float32", NAN, "t"),
        "heat": _cells("float32", NAN, "H"),
        "heat_class": ArraySpec("int64", -1, ("H",)),
        "icons": ArraySpec("uint8", 0, ("M", "px", "px", 3), chunk="group", obj="item"),
        "icon_objective": ArraySpec("float32", NAN, ("M",), chunk="item"),
        "icon_cosine": ArraySpec("float32", NAN, ("M",), chunk="item"),
        "icon_alpha": ArraySpec("uint8", 0, ("M", "px", "px"), chunk="group", obj="item"),
        "icon_margin": _cells("float32", NAN),
        "icon_rank": _cells("int32", 0),
        "exemplar_row": _cells("int64", -1, "k"),
        "exemplar_score": _cells("float32", NAN, "k"),
    }

    def write_grid(self, grid: GridArrays, attrs: dict[str, Any]) -> None:
        """The grid stage's arrays of this level (recreated), and the level's attributes."""
        for name in ("cell", "count", "mean", "top_class", "top_count"):
            self.put(name, getattr(grid, name), {"cells": CELL_ROWS})
        self.set_attrs({"size": grid.size, **attrs})

    def put_cells(self, name: str, data: np.ndarray) -> None:
        """A per-cell array of this level (M, ...) written whole by the driver."""
        self.put(name, data, {"cells": CELL_ROWS})

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """(cell (M, 2), count (M,)): what drawing needs, without the means."""
        return self.read("cell"), self.read("count")

    def grid(self) -> GridArrays:
        names = ("cell", "mean", "count", "top_class", "top_count")
        size = int(self.attrs["size"])
        return GridArrays(size, *(self.read(n) for n in names))

    def optional(self, name: str) -> np.ndarray | None:
        return self.read(name) if self.has(name) else None

    def alpha(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """(n, px, px) uint8 alpha of icons [start, stop) where the render made one, else None."""
        if not self.has("icons") or self.array("icons").attrs.get("alpha", "none") == "none":
            return None
        return self.read("icon_alpha", start, stop) if self.has("icon_alpha") else None

    def drawn(self, start: int = 0, stop: int | None = None, background: int = 255) -> np.ndarray:
        """Icons [start, stop) as drawn on ``background``: (n, px, px, 3) uint8, each over the
        background by its alpha where the render made one."""
        icons = self.read("icons", start, stop)
        a = self.alpha(start, stop)
        if a is None:
            return icons
        w = a[..., None].astype(np.float32) / 255.0
        return np.round(icons * w + background * (1.0 - w)).astype(np.uint8)

    def icons(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(icons (M, px, px, 3) uint8, objective (M,), cosine (M,)); NaN objective: missing."""
        return self.read("icons"), self.read("icon_objective"), self.read("icon_cosine")

    def icon_layout(self) -> tuple[int, int]:
        """(icons per chunk: the optimization group, icons per storage object: a work item)."""
        arr = self.array("icons")
        return int(arr.chunks[0]), int((arr.shards or arr.chunks)[0])


class Exemplars(Node):
    """``[views/<v>/]layers/<L>/exemplars``: every sample row that is an exemplar of some cell,
    in sheet order (close in the layout, so one cell's exemplars share a sheet); where its patch
    is (the layer's receptive field around the sample, cut from its source image) and which
    thumbnail slot its source has. The pixels are JPEG sheets beside the store
    (``exemplars/<L>/patches-<n>.jpg``, ``sources-<n>.jpg``: ``rc`` cells each, see
    :mod:`atlas_core.exemplars.sheets`), one source image stored once however many cells use it."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "row": ArraySpec("int64", -1, ("R",)),
        "box": ArraySpec("float32", NAN, ("R", 4)),
        "ok": ArraySpec("uint8", 0, ("R",)),
        "slot": ArraySpec("int32", -1, ("R",)),
        # the plausibility judge's unit features of every patch (NaN where the patch is
        # missing), one chunk per sheet: written by the plausibility stage's sheet tasks
        "judge": ArraySpec("float16", NAN, ("R", "D"), chunk="sheet"),
        "source": ArraySpec("int64", -1, ("slots",)),
        "thumb_size": ArraySpec("int32", 0, ("slots", 2)),
    }

    def index(self) -> dict[str, np.ndarray] | None:
        """The index's arrays (not the judge's features), or None before the exemplars stage
        ran."""
        if not self.has("ok"):
            return None
        return {n: self.read(n) for n in self.ARRAYS if n != "judge"}


# ---------------------------------------------------------------------- the diff of two runs
# A diff's own Zarr group (atlas_core.store.diff_store.DiffStore; docs/run-store.md, "The diff of
# two runs"). Dims: ``ns`` sample rows, ``cs`` rows per chunk (the diff's block), ``k`` the kNN
# graphs' width; per level and side ``M`` kept cells and ``top`` destinations listed per cell.


def _dsmp(dtype: Any, fill: Any, *tail: Any) -> ArraySpec:
    return ArraySpec(dtype, fill, ("ns", *tail), chunk="cs")


class DiffRows(Node):
    """``samples``: the diff's per-sample arrays, row for row with both runs' sample rows.
    kept: 1 where both runs kept the sample; preservation: its p_i (NaN: undefined); flip: 1/0,
    -1 not counted; transition: a code of atlas_core.compare.TRANSITIONS, -1 not counted;
    knn_a, knn_b: each run's k nearest sample rows in its own activation space, -1 padded."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "kept": _dsmp("uint8", 0),
        "preservation": _dsmp("float32", NAN),
        "flip": _dsmp("int8", -1),
        "transition": _dsmp("int8", -1),
        "knn_a": _dsmp("int32", -1, "k"),
        "knn_b": _dsmp("int32", -1, "k"),
    }


class DiffCells(Node):
    """``levels/<G>/<a|b>``: one run's kept cells at grid size G and the diff's figures over
    them (the columns of atlas_core.compare.CellTable, ``cell`` as (ix, iy))."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "cell": _cells("int32", -1, 2),
        "count": _cells("int64", 0),
        "both": _cells("int64", 0),
        "flow_cell": _cells("int64", -1, "top"),
        "flow_count": _cells("int64", 0, "top"),
        "flow_frac": _cells("float32", NAN, "top"),
        "destinations": _cells("int64", 0),
        "spread": _cells("float32", NAN),
        "stay": _cells("float32", NAN),
        "preservation": _cells("float32", NAN),
        "preservation_n": _cells("int64", 0),
        "preservation_sum": _cells("float64", NAN),
        "flips": _cells("int64", 0),
        "flip_n": _cells("int64", 0),
        "flip_rate": _cells("float32", NAN),
        "transitions": _cells("int64", 0, 5),
    }


class DiffLevel(Node):
    """``levels/<G>``: cells kept in one run only, and A's cells that changed most.
    appeared (K, 2) int32 (ix, iy) kept in B only; emptied kept in A only; largest (L,) int64
    rows of ``a``'s table, largest change first; largest_score (L,) float64 their scores."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "appeared": ArraySpec("int32", -1, ("K", 2)),
        "emptied": ArraySpec("int32", -1, ("K", 2)),
        "largest": ArraySpec("int64", -1, ("L",)),
        "largest_score": ArraySpec("float64", NAN, ("L",)),
    }


class DiffTotals(Node):
    """The diff's root arrays: every (label, pred_a, pred_b) that occurred (T, 3) int64 (label
    -1 where none) and how many samples each (T,) int64."""

    ARRAYS: ClassVar[dict[str, ArraySpec]] = {
        "triples": ArraySpec("int64", -1, ("T", 3)),
        "triple_count": ArraySpec("int64", 0, ("T",)),
    }
