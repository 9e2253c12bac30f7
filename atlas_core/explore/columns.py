"""A run's per-sample columns, read in bulk from its store: what the samples table, the filters,
the page's points and an export are made of.

Every column has one row per sample row of the run (``N * k``): a failed image's samples are
holes (layout NaN, predictions -1, ``ok`` False). The layout is the normalized one the store
holds (x and y in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas_core.compose.points import Sources
from atlas_core.grid import cell_index
from atlas_core.store import RunStore


@dataclass(frozen=True)
class Columns:
    """Per sample row (N * k): image (int64), pos (N * k, 2) int16 (y, x) on the coarsest
    layer's grid, x and y (float32), ok (bool), pred and prob (the image's top class and its
    probability; -1 / NaN without), top (N * k, t) classes and top_prob, label (-1: none),
    correct (float32: 1, 0, NaN without a label or prediction), source (int32, into
    ``source_names``: :func:`atlas_core.compose.points.source_of`, as the page has them), and
    per grid size the cell (ix, iy) of every row (-1 for holes)."""

    image: np.ndarray
    pos: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ok: np.ndarray
    pred: np.ndarray
    prob: np.ndarray
    top: np.ndarray
    top_prob: np.ndarray
    label: np.ndarray
    correct: np.ndarray
    source: np.ndarray
    source_names: list[str]
    cells: dict[int, np.ndarray]
    uris: np.ndarray  # (n_images,) object: each image's URI

    @classmethod
    def read(cls, store: RunStore, layer: str, sizes: list[int]) -> Columns:
        """Every column of ``layer``'s main layout (the store's view) in bulk reads."""
        image = store.samples.read("image").astype(np.int64)
        xy = store.layout_node(layer).read("layout").astype(np.float32)
        ok = np.isfinite(xy).all(axis=1) & (image >= 0)
        img = store.images
        top = img.top_class()
        top_prob = img.read("top_prob").astype(np.float32) if img.has("top_prob") else None
        t = top.shape[1] if top.ndim == 2 else 0
        at = np.maximum(image, 0)
        top_s = top[at] if t else np.full((len(image), 0), -1, np.int32)
        prob_s = top_prob[at] if t and top_prob is not None else np.full(top_s.shape, np.nan)
        labels = img.read("label").astype(np.int32)[at] if img.has("label") else None
        label = labels if labels is not None else np.full(len(image), -1, np.int32)
        pred = top_s[:, 0] if t else np.full(len(image), -1, np.int32)
        correct = np.where((label >= 0) & (pred >= 0), (label == pred).astype(np.float32), np.nan)
        uris = np.asarray(img.uris(), dtype=object)
        sources = Sources()
        codes = sources(uris, img.crops()).astype(np.int32)
        names = sources.names()
        cells = {}
        for g in sizes:
            flat = cell_index(xy, g)
            cells[g] = np.where(ok[:, None], np.stack([flat % g, flat // g], 1), -1).astype(
                np.int32
            )
        return cls(
            image=image,
            pos=store.samples.read("pos"),
            x=xy[:, 0],
            y=xy[:, 1],
            ok=ok,
            pred=np.where(ok, pred, -1).astype(np.int32),
            prob=np.where(ok, prob_s[:, 0] if t else np.nan, np.nan).astype(np.float32),
            top=top_s.astype(np.int32),
            top_prob=prob_s.astype(np.float32),
            label=label.astype(np.int32),
            correct=np.where(ok, correct, np.nan).astype(np.float32),
            source=codes[at].astype(np.int32),
            source_names=names,
            cells=cells,
            uris=uris,
        )

    def field(self, name: str) -> np.ndarray:
        """A filter's column: pred, label, correct, conf (the top probability) or source."""
        return {
            "pred": self.pred,
            "label": self.label,
            "correct": self.correct,
            "conf": self.prob,
            "source": self.source,
        }[name]
