"""A finished run as a value you open and question (DESIGN.md section 10).

:class:`Atlas` opens a run directory (local or object store) read-only: its samples as a table,
its levels' cells, icons and exemplars, and the questions: select a polygon (and filters),
export rows, nearest neighbours in activation space, locate a new image in the layout, render
an icon for any direction. The command line (``atlas export``, ``atlas neighbours``,
``atlas locate``), the server's endpoints and the notebook are thin over it.

Layout coordinates are the normalized layout the store holds: x and y in [0, 1], x to the
right, y up; level G's cell (ix, iy) covers [ix / G, (ix + 1) / G) x [iy / G, (iy + 1) / G).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas_core.errors import ConfigError, StoreError
from atlas_core.explore.columns import Columns
from atlas_core.explore.geometry import Where, points_in_polygon
from atlas_core.explore.opened import OpenRun
from atlas_core.models.card import ModelCard
from atlas_core.store import RunLocation, RunStore

if TYPE_CHECKING:
    import pyarrow as pa

    from atlas_core.explore.locate import Located, Locator
    from atlas_core.explore.ondemand import Painter
    from atlas_core.neighbours import NeighbourIndex

log = logging.getLogger(__name__)
FORMATS = ("csv", "parquet", "json")


class Atlas:
    """One view of a finished run, opened read-only. ``Atlas.open(run_dir)``."""

    def __init__(
        self,
        loc: RunLocation,
        store: RunStore,
        layer: str,
        card: ModelCard | None,
        manifest: dict[str, Any],
    ) -> None:
        self.run = OpenRun(loc, store, layer, card, manifest)
        self.loc, self.store, self.layer, self.card = loc, store, layer, card
        self.manifest = manifest
        self._locator: Locator | None = None
        self._painter: Painter | None = None
        self._index: NeighbourIndex | None = None

    @classmethod
    def open(
        cls,
        run_dir: str,
        *,
        storage_options: dict[str, Any] | None = None,
        view: str = "",
        layer: str | None = None,
    ) -> Atlas:
        """The run at ``run_dir`` (its main view, or ``view``), at its atlas's layer."""
        loc = RunLocation.of(run_dir, storage_options).in_view(view)
        try:
            store = loc.open_store("r")
        except StoreError as exc:
            raise ConfigError(
                "run_dir", run_dir, fix=f"point at a finished run directory ({exc})."
            ) from exc
        manifest = loc.read_json(loc.manifest_url) or {}
        name = layer or manifest.get("layer") or next(iter(store.layers), "")
        if not store.layout_node(name).has("layout"):
            raise ConfigError(
                "layer",
                name,
                choices=[L for L in store.layers if store.layout_node(L).has("layout")],
                fix="name a layer this run laid out (its reduce stage ran for it).",
            )
        card = ModelCard.from_json(store.attrs.get("model_card") or {})
        return cls(loc, store, name, card, manifest)

    # ------------------------------------------------------------------ facts
    @property
    def levels(self) -> list[int]:
        """The grid sizes of this view, ascending (each a zoom level)."""
        return self.run.levels

    @property
    def n_samples(self) -> int:
        return self.store.n_images * self.store.k

    def class_name(self, c: int) -> str:
        return self.run.class_name(c)

    @cached_property
    def columns(self) -> Columns:
        """Every per-sample column, read once (no activations)."""
        return Columns.read(self.store, self.layer, self.levels)

    def layout(self) -> np.ndarray:
        """(N * k, 2) float32: each sample's place in the normalized layout, NaN for holes."""
        c = self.columns
        return np.stack([c.x, c.y], axis=1)

    # ------------------------------------------------------------------ tables
    def samples(self, rows: np.ndarray | None = None) -> pa.Table:
        """The samples as an Arrow table (``.to_pandas()`` for pandas): row, image, uri,
        pos_y and pos_x (on the coarsest layer's grid), x and y (layout), the cell
        ``ix_<G>``/``iy_<G>`` at every level, pred and pred_name, prob, top_classes and
        top_probs, label and label_name (where the data has labels), correct, source, ok.
        ``rows``: only these sample rows (default: every one). Names are dictionary-encoded
        columns, lists fixed-size: built column by column, never row by row."""
        import pyarrow as pa

        c = self.columns
        r = np.arange(self.n_samples) if rows is None else np.asarray(rows, np.int64)
        image = c.image[r]
        uris = c.uris
        data: dict[str, Any] = {
            "row": r,
            "image": image,
            "uri": pa.array(np.where(image >= 0, uris[np.maximum(image, 0)], ""), pa.string()),
            "pos_y": c.pos[r, 0],
            "pos_x": c.pos[r, 1],
            "x": c.x[r],
            "y": c.y[r],
        }
        for g, cell in c.cells.items():
            data[f"ix_{g}"], data[f"iy_{g}"] = cell[r, 0], cell[r, 1]
        t = c.top.shape[1]
        data |= {
            "pred": c.pred[r],
            "pred_name": self._names(c.pred[r]),
            "prob": c.prob[r],
            "top_classes": pa.FixedSizeListArray.from_arrays(pa.array(c.top[r].ravel()), t),
            "top_probs": pa.FixedSizeListArray.from_arrays(pa.array(c.top_prob[r].ravel()), t),
            "label": c.label[r],
            "label_name": self._names(c.label[r]),
            "correct": c.correct[r],
            "source": pa.DictionaryArray.from_arrays(
                pa.array(c.source[r]), pa.array(c.source_names, pa.string())
            ),
            "ok": c.ok[r],
        }
        return pa.table(data)

    def _names(self, classes: np.ndarray) -> Any:
        """Class names of ``classes`` (-1: null) as a dictionary-encoded Arrow column."""
        import pyarrow as pa

        n = max(int(classes.max(initial=-1)) + 1, self.card.num_classes if self.card else 0)
        names = pa.array([self.class_name(i) for i in range(n)], pa.string())
        idx = pa.array(classes.astype(np.int32), mask=classes < 0)
        return pa.DictionaryArray.from_arrays(idx, names)

    def cells(self, size: int) -> pa.Table:
        """Level ``size``'s kept cells as an Arrow table: ix, iy, count, label (the cell's top
        class: attribution's where extracted, else its images' predictions) and label_name,
        fidelity (the icon's cosine), plausibility margin, and the error rate of its samples
        where the data has labels. Reads no activations."""
        import pyarrow as pa

        level = self._level(size)
        cell, count = level.cells()
        label = level.optional("attr_top_class")
        label = level.read("top_class") if label is None else label
        top = label[:, 0] if label.ndim == 2 and label.shape[1] else np.full(len(cell), -1)
        fid = level.optional("icon_cosine")
        margin = level.optional("icon_margin")
        nan = np.full(len(cell), np.nan, np.float32)
        return pa.table(
            {
                "ix": cell[:, 0],
                "iy": cell[:, 1],
                "count": count,
                "label": top,
                "label_name": [self.class_name(x) for x in top],
                "fidelity": nan if fid is None else fid,
                "margin": nan if margin is None else margin,
                "error_rate": self.error_rates(size)[0],
            }
        )

    def error_rates(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Per kept cell of level ``size``: (the share of its labelled samples the model got
        wrong (NaN without one), how many labelled samples it has)."""
        cell = self._level(size).cells()[0]
        c = self.columns
        flat = c.cells[size][:, 1].astype(np.int64) * size + c.cells[size][:, 0]
        has = np.isfinite(c.correct) & c.ok
        wrong = np.bincount(flat[has], weights=1.0 - c.correct[has], minlength=size * size)
        n = np.bincount(flat[has], minlength=size * size)
        kept = cell[:, 1].astype(np.int64) * size + cell[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(n[kept] > 0, wrong[kept] / n[kept], np.nan)
        return rate.astype(np.float32), n[kept].astype(np.int64)

    def confusions(self, top: int = 20) -> list[dict[str, Any]]:
        """The most frequent label -> prediction confusions, most first: label, pred, their
        names, and how many samples."""
        c = self.columns
        wrong = c.ok & (c.correct == 0)
        pairs = c.label[wrong].astype(np.int64) * 1_000_000 + c.pred[wrong]
        uniq, n = np.unique(pairs, return_counts=True)
        order = np.lexsort((uniq, -n))[:top]
        out = []
        for u, count in zip(uniq[order], n[order], strict=True):
            a, b = int(u // 1_000_000), int(u % 1_000_000)
            out.append(
                {
                    "label": a,
                    "pred": b,
                    "label_name": self.class_name(a),
                    "pred_name": self.class_name(b),
                    "count": int(count),
                }
            )
        return out

    def icon(self, size: int, ix: int, iy: int) -> np.ndarray:
        """The icon of cell (ix, iy) of level ``size`` as drawn (uint8 (px, px, 3))."""
        i = self._cell(size, ix, iy)
        return self._level(size).drawn(i, i + 1)[0]

    def exemplar_rows(self, size: int, ix: int, iy: int) -> np.ndarray:
        """The sample rows of cell (ix, iy)'s exemplars (closest to its mean first)."""
        rows = self._level(size).read("exemplar_row")[self._cell(size, ix, iy)]
        return rows[rows >= 0]

    # ------------------------------------------------------------------ selections
    def select(
        self,
        polygon: np.ndarray | None = None,
        *,
        where: Iterable[str | Where] = (),
        level: int | None = None,
    ) -> np.ndarray:
        """Sample rows (ascending) inside ``polygon`` (V, 2) in layout coordinates (None: the
        whole layout), that pass every filter of ``where`` (``pred=285``, ``correct=false``,
        ``conf>=0.5``, ...), and, with ``level``, fall in a cell that level keeps."""
        c = self.columns
        keep = c.ok.copy()
        if polygon is not None:
            keep &= points_in_polygon(self.layout(), np.asarray(polygon, np.float64))
        for w in where:
            f = w if isinstance(w, Where) else Where.parse(w)
            keep &= f.mask(c.field(f.field))
        if level is not None:
            cell = self._level(level).cells()[0]
            kept = np.zeros(level * level, bool)
            kept[cell[:, 1].astype(np.int64) * level + cell[:, 0]] = True
            flat = c.cells[level][:, 1].astype(np.int64) * level + c.cells[level][:, 0]
            keep &= kept[np.maximum(flat, 0)] & (flat >= 0)
        return np.flatnonzero(keep)

    def export(self, rows: np.ndarray, path: str | Path | None = None, fmt: str = "csv") -> bytes:
        """The samples ``rows`` as ``csv``, ``parquet`` or ``json`` (records): the bytes, also
        written to ``path`` when given. Lists (top classes) become ``;``-joined text in CSV."""
        if fmt not in FORMATS:
            raise ConfigError("format", fmt, choices=FORMATS, fix="pick one of the formats.")
        table = self.samples(rows)
        buf = io.BytesIO()
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, buf)
        elif fmt == "json":
            import json

            buf.write(json.dumps(table.to_pylist(), default=_plain).encode())
        else:
            _write_csv(table, buf)
        data = buf.getvalue()
        if path is not None:
            Path(path).write_bytes(data)
        return data

    # ------------------------------------------------------------------ activations
    def direction(
        self,
        *,
        rows: Sequence[int] | np.ndarray | None = None,
        cell: tuple[int, int, int] | None = None,
    ) -> np.ndarray:
        """A direction in activation space (C,) float32: the mean of the samples ``rows``
        (a selection, a neighbourhood), or a cell's mean ``(size, ix, iy)``."""
        if cell is not None:
            size, ix, iy = cell
            return self._level(size).read("mean")[self._cell(size, ix, iy)].astype(np.float32)
        if rows is None or not len(rows):
            raise ConfigError("rows", rows, fix="give some sample rows (a non-empty selection).")
        acts = self.store.extraction(self.layer).take("acts", np.sort(np.asarray(rows)))
        return np.nanmean(acts.astype(np.float32), axis=0)

    def neighbours(
        self,
        *,
        row: int | None = None,
        rows: Sequence[int] | None = None,
        cell: tuple[int, int, int] | None = None,
        direction: np.ndarray | None = None,
        k: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` samples nearest (cosine, on the stored activations) to one sample, the
        mean of ``rows``, a cell's mean or a ``direction``: (rows (k,), cosines (k,)), nearest
        first; a query sample is never its own neighbour."""
        if sum(x is not None for x in (row, rows, cell, direction)) != 1:
            raise ConfigError(
                "neighbours", "query", fix="give exactly one of row, rows, cell or direction."
            )
        exclude: list[int] = []
        if row is not None:
            exclude = [int(row)]
            q = self.direction(rows=[int(row)])
        elif direction is None:
            q = self.direction(rows=rows, cell=cell)
        else:
            q = np.asarray(direction, np.float32)
        index = self.index()
        if index is None:  # no index stored: the exact search over the activations
            from atlas_core.explore.search import nearest

            return nearest(self.store, self.layer, q, k, exclude=exclude)
        found, cos = index.search(q, k, exclude=np.array(exclude or [-1], np.int64))
        keep = found[0] >= 0
        return found[0][keep], cos[0][keep]

    def index(self) -> NeighbourIndex | None:
        """The layer's stored neighbour index (the neighbours stage's), loaded once with the
        activations it was built from; None when the run has none."""
        if self._index is None:
            from atlas_core.neighbours import NeighbourIndex

            node = self.store.neighbours(self.layer)
            if not node.has("index"):
                return None
            from atlas_core.explore.search import blocks

            self._index = NeighbourIndex.from_bytes(
                node.read("index"), blocks(self.store, self.layer)
            )
        return self._index

    def locate(self, images: Iterable[Any]) -> list[Located]:
        """Where new images land: per image its top classes and, per position of the layer's
        feature map, its layout place and cell at every level (:mod:`.locate`). The model is
        loaded once, on first use."""
        from atlas_core.explore.locate import Locator

        if self._locator is None:
            self._locator = Locator(self.run)
        return [self._locator(im) for im in images]

    def render(self, direction: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """An icon (uint8 (px, px, 3)) for any ``direction`` (C,), with the run's own render
        recipe, cached in the run's icon cache by its direction and recipe."""
        from atlas_core.explore.ondemand import Painter

        if self._painter is None:
            self._painter = Painter(self.run)
        return self._painter(np.asarray(direction, np.float32), seed=seed)

    def show(self, height: int = 640) -> Any:
        """The run's viewer embedded in a notebook (an IFrame of its page, opened from disk)."""
        from IPython.display import IFrame

        page = self.loc.file("viewer", "index.html")
        return IFrame(src=page, width="100%", height=height)

    # ------------------------------------------------------------------ helpers
    def _level(self, size: int) -> Any:
        if size not in self.levels:
            raise ConfigError("level", size, choices=self.levels, fix="pick a level of this run.")
        return self.store.level(self.layer, size)

    def _cell(self, size: int, ix: int, iy: int) -> int:
        cell = self._level(size).cells()[0]
        hit = np.flatnonzero((cell[:, 0] == ix) & (cell[:, 1] == iy))
        if not len(hit):
            raise ConfigError(
                "cell", (ix, iy), fix=f"pick a kept cell of level {size} (it has {len(cell)})."
            )
        return int(hit[0])


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _write_csv(table: pa.Table, buf: io.BytesIO) -> None:
    import csv

    text = io.StringIO()
    w = csv.writer(text)
    cols = table.column_names
    w.writerow(cols)
    data = {c: table.column(c).to_pylist() for c in cols}
    for i in range(table.num_rows):
        w.writerow(
            [
                ";".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in x)
                if isinstance(x, list)
                else ("" if x is None or (isinstance(x, float) and np.isnan(x)) else x)
                for x in (data[c][i] for c in cols)
            ]
        )
    buf.write(text.getvalue().encode("utf-8"))
