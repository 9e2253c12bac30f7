"""Where a new image lands in a finished atlas: the layout's own out-of-sample placement.

The image's activations at every position of the layer's feature map (every patch token of a
transformer) are placed exactly as the reduce stage placed the rows it did not fit on: by the
membership-weighted mean position of their ``place_neighbors`` nearest landmarks (the rows UMAP
was fitted on, rebuilt from the store with the run's own metric, PCA and seed), then normalized
with the layout's stored bounds. Each position also gets its cell at every level and the
attribution of the image's top class there (activation x gradient of its logit, as extraction
computes it). The model is loaded once per :class:`Locator`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from atlas_core.data.decode import DecodePolicy, Status, decode, decode_bytes
from atlas_core.errors import ConfigError
from atlas_core.extract import ActivationExtractor
from atlas_core.grid import cell_index
from atlas_core.models import Preprocess, load_model
from atlas_core.reduce import Landmarks, apply_bounds, place

if TYPE_CHECKING:
    from atlas_core.explore.opened import OpenRun


@dataclass(frozen=True)
class Position:
    """One position of the image's feature map: its grid place (row, col), its layout place
    (x, y in [0, 1]), its cell (ix, iy) at every level, and the attribution of the image's top
    class there."""

    row: int
    col: int
    x: float
    y: float
    cells: dict[int, tuple[int, int]]
    attribution: float


@dataclass(frozen=True)
class Located:
    """An image placed in the atlas: its top classes (class, name, probability), the layer's
    grid (H, W), one :class:`Position` per cell of that grid (row-major), and the seconds spent
    decoding, in the forward pass (with attribution) and placing. ``box``: the part of the
    image the model saw (x0, y0, x1, y1 as fractions of its width and height; the grid covers
    it); ``acts``: (H * W, C) float32, each position's activation (row-major), a direction an
    icon can be rendered for."""

    top: list[tuple[int, str, float]]
    grid: tuple[int, int]
    positions: list[Position]
    seconds: dict[str, float] = field(default_factory=dict)
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    acts: np.ndarray | None = None

    def to_json(self, *, acts: bool = False) -> dict[str, Any]:
        """JSON-ready: top, grid, box, positions, seconds; with ``acts``, each position's
        activation too (``acts``: C floats, each the shortest text that reads back as the
        same float32, so a direction sent back is the activation itself)."""
        out: dict[str, Any] = {
            "top": [{"class": c, "name": n, "prob": round(p, 6)} for c, n, p in self.top],
            "grid": list(self.grid),
            "box": [round(v, 6) for v in self.box],
            "positions": [
                {
                    "row": p.row,
                    "col": p.col,
                    "x": round(p.x, 6),
                    "y": round(p.y, 6),
                    "cells": {str(g): list(c) for g, c in p.cells.items()},
                    "attribution": round(p.attribution, 6),
                }
                for p in self.positions
            ],
            "seconds": self.seconds,
        }
        if acts and self.acts is not None:
            for row, a in zip(out["positions"], self.acts, strict=True):
                row["acts"] = [float(str(v)) for v in a.astype(np.float32)]
        return out


class Placement:
    """The layout's out-of-sample placement, rebuilt from a run's store: the landmarks' index
    (metric, PCA, seed and neighbours as the reduce stage recorded them), their raw positions,
    and the bounds that normalize the layout."""

    def __init__(self, atlas: OpenRun) -> None:
        node = atlas.store.layout_node(atlas.layer)
        attrs: dict[str, Any] = dict(node.array("layout").attrs)
        joint = attrs.get("joint_layers") or [atlas.layer]
        if joint != [atlas.layer]:
            raise ConfigError(
                "layout",
                joint,
                fix="this layout was fitted on several layers or runs together; locating an "
                "image in it is not supported (open a run whose layout is its own layer's).",
            )
        how: dict[str, Any] = attrs.get("placement") or {}
        if not how or not node.has("landmark_rows"):
            raise ConfigError(
                "layout",
                atlas.loc.root,
                fix="this run's layout predates recorded landmarks: rerun its reduce stage "
                "(atlas run_dir=... stages=[reduce,grid,render,exemplars,plausibility,compose]).",
            )
        rows = node.read("landmark_rows")
        feats = atlas.store.extraction(atlas.layer).take("acts", rows)
        self.landmarks = Landmarks.build(
            feats,
            how["metric"],
            pca_dim=how["pca_dim"],
            seed=how["seed"],
            n_place=int(how["place_neighbors"]),
        )
        self.embedding = node.take("layout_raw", rows).astype(np.float32)
        self.bounds = np.asarray(attrs["bounds"], np.float64)

    def __call__(self, acts: np.ndarray) -> np.ndarray:
        """Activations (n, C) -> their places in the normalized layout (n, 2) float32."""
        idx, dist = self.landmarks.neighbors(np.asarray(acts, np.float32), device="cpu")
        return apply_bounds(place(idx, dist, self.embedding), self.bounds)


class Locator:
    """Set up once per atlas (the model, the extractor at every position, the placement);
    each call locates one image: a path, bytes, or a PIL image."""

    def __init__(self, atlas: OpenRun, *, policy: DecodePolicy | None = None) -> None:
        if atlas.card is None:
            raise ConfigError("run", atlas.loc.root, fix="this run records no model card.")
        self.atlas = atlas
        self.policy = policy or DecodePolicy()
        self.model = load_model(atlas.card.spec)
        _, h, w = atlas.card.layers[atlas.layer]
        self.grid = (h, w)
        classes = 1 if self.model.num_classes else 0
        self.extractor = ActivationExtractor(
            self.model,
            [atlas.layer],
            {atlas.layer: self.grid},
            topk=max(5, classes),
            attr_classes=classes,
            amp_dtype=None,
            micro=1,
        )
        self.placement = Placement(atlas)
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        self.positions = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.int16)

    def image(self, source: Any) -> Image.Image:
        """An RGB image from a path, bytes or a PIL image, through the decoding policy (a bad
        input is a ConfigError naming its status)."""
        if isinstance(source, Image.Image):
            return source.convert("RGB")
        d = (
            decode_bytes(source, self.policy)
            if isinstance(source, bytes)
            else decode(str(source), policy=self.policy)
        )
        if d.status != Status.OK or d.image is None:
            raise ConfigError(
                "image", d.status.name.lower(), fix=f"give a readable image ({d.detail})."
            )
        return d.image

    def __call__(self, source: Any) -> Located:
        t0 = time.perf_counter()
        im = self.image(source)
        t1 = time.perf_counter()
        x = self.model.preprocess.batch(self.model.preprocess.to_array(im)[None])
        out = self.extractor(x, self.positions)
        t2 = time.perf_counter()
        acts = out.acts[self.atlas.layer]
        xy = self.placement(acts)
        t3 = time.perf_counter()
        attr = out.attr[self.atlas.layer][:, 0] if out.attr else np.zeros(len(acts))
        cells = {g: cell_index(xy, g) for g in self.atlas.levels}
        positions = [
            Position(
                int(y),
                int(x_),
                float(xy[i, 0]),
                float(xy[i, 1]),
                {g: (int(c[i] % g), int(c[i] // g)) for g, c in cells.items()},
                float(attr[i]),
            )
            for i, (y, x_) in enumerate(self.positions)
        ]
        top = [
            (int(c), self.atlas.class_name(int(c)), float(p))
            for c, p in zip(out.top_class[0], out.top_prob[0], strict=True)
            if c >= 0
        ]
        secs = {"decode": t1 - t0, "forward": t2 - t1, "placement": t3 - t2}
        box = seen_box(self.model.preprocess, im.size)
        seconds = {k: round(v, 4) for k, v in secs.items()}
        return Located(top, self.grid, positions, seconds, box, acts.astype(np.float32))


def seen_box(pre: Preprocess, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of an image of ``size`` (w, h) that ``pre`` keeps:
    (x0, y0, x1, y1) as fractions of the width and height, the same arithmetic as its
    ``to_array`` (a squash keeps all of it; a crop, the centre square of the resized image)."""
    if pre.mode == "squash":
        return (0.0, 0.0, 1.0, 1.0)
    w, h = size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.size, round(w * scale)), max(pre.size, round(h * scale))
    left, top = (nw - pre.size) // 2, (nh - pre.size) // 2
    return (left / nw, top / nh, (left + pre.size) / nw, (top + pre.size) / nh)
