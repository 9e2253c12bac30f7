"""Compose stage: atlas.png (first grid size), one PNG per grid level, and the viewer page."""

from __future__ import annotations

import io
import logging
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from atlas_core.compose import compose_canvas, viewer_html
from atlas_core.store import RunStore
from pipelines.common import StageResult, cached_model
from pipelines.settings import BACKGROUNDS, Settings

log = logging.getLogger(__name__)


def _save_png(url: str, array: np.ndarray, storage_options: dict[str, Any]) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    _write(url, buf.getvalue(), storage_options)


def _write(url: str, data: bytes, storage_options: dict[str, Any]) -> None:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def run(s: Settings, fp: str) -> StageResult:
    store = RunStore.open(s.store_url, mode="r", storage_options=s.storage_options)
    model = cached_model(s.model.spec, "cpu")
    out = s.run_dir.rstrip("/")
    files, drawn = [], {}
    for level, size in enumerate(s.grid.sizes):
        grid = store.grid(s.layer, size)
        icons, objective, _ = store.icons(s.layer, size)
        present = ~np.isnan(objective)
        canvas = compose_canvas(
            grid.cell, icons, size, present=present, background=BACKGROUNDS[s.compose.background]
        )
        _save_png(f"{out}/atlas-{size}.png", canvas, s.storage_options)
        files.append(f"atlas-{size}.png")
        drawn[str(size)] = int(present.sum())
        labels = store.grid_extra(s.layer, size, "attr_top_class")
        if level == 0:
            _save_png(f"{out}/atlas.png", canvas, s.storage_options)
            files.append("atlas.png")
            cells = [
                {
                    "ix": int(c[0]),
                    "iy": int(c[1]),
                    "count": int(n),
                    "label": model.class_name(int(lab[0])) if lab is not None else None,
                    "top": [
                        [model.class_name(int(k)), int(v)]
                        for k, v in zip(tc, tn, strict=False)
                        if k >= 0
                    ],
                }
                for c, n, tc, tn, ok, lab in zip(
                    grid.cell,
                    grid.count,
                    grid.top_class,
                    grid.top_count,
                    present,
                    labels if labels is not None else [None] * len(present),
                    strict=False,
                )
                if ok
            ]
            meta = (
                f"model {s.model.name}, layer {s.layer}, grid {size}x{size}, "
                f"{len(cells)} cells, {store.n_images} images"
            )
            page = viewer_html(
                image_src="../atlas.png",
                size=size,
                cells=cells,
                title=f"{s.model.name} {s.layer}",
                meta=meta,
            )
            _write(f"{out}/viewer/index.html", page.encode("utf-8"), s.storage_options)
            files.append("viewer/index.html")
    log.info("compose: wrote %s under %s", ", ".join(files), out)
    return StageResult(counts={"icons_drawn": drawn}, details={"files": files})
