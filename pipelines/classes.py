"""Classes stage: the run's class views, each a run of its own that reads this run's extraction.

A class activation atlas of class c (``classes.atlases``) and a two-class comparison of a and b
(``classes.pairs``) are views: ``<run_dir>/classes/<view>/`` holds a store linked to this run's
(images, samples, activations and attribution are read from it, never copied), its own layout of
the view's samples (``reduce.rows``, :mod:`pipelines.views`), grid (``classes.grid`` cells a side,
at least ``classes.min_count`` each; the comparison's grid writes both classes' per-cell
attribution), icons, exemplars and viewer. Views are independent runs with their own markers, so
a re-run resumes each where it stopped; ``classes.parallel`` of them run at once and share the
cluster (a view's render waits for none of the others). The run's viewer then links every view.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from atlas_core.compose.tiles import zoom_ranges
from atlas_core.store import Markers, RunStore
from pipelines.common import StageResult, cached_model
from pipelines.settings import STAGES, ClassesConf, Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    slug: str
    kind: str  # atlas | compare
    classes: tuple[int, ...]
    names: tuple[str, ...]
    settings: Settings

    @property
    def title(self) -> str:
        if self.kind == "atlas":
            return f"class activation atlas: {self.names[0]}"
        return f"{self.names[0]} vs {self.names[1]}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "class"


def view_settings(s: Settings, rows: str, heat: tuple[int, ...], slug: str) -> Settings:
    """The settings of one view: this run's extraction, the view's rows, grid and heat."""
    c = s.classes
    return replace(
        s,
        run_dir=f"{s.run_dir.rstrip('/')}/classes/{slug}",
        extraction_from=s.run_dir,
        extractions=None,
        run_root=None,
        date=None,
        layers=(),
        stages=STAGES[: STAGES.index("compose") + 1],
        preset_name=f"{s.preset_name}/{slug}",
        reduce=replace(
            s.reduce,
            rows=rows,
            view_top_n=c.top_n,
            method=c.method,
            n_neighbors=c.n_neighbors,
            min_dist=c.min_dist,
            metric=c.metric,
            align_with=(),
            joint_layers=(),
        ),
        grid=replace(
            s.grid, sizes=(c.grid,), min_count=c.min_count, heatmap=tuple(str(h) for h in heat)
        ),
        classes=ClassesConf(),
    )


def plan_views(s: Settings) -> list[View]:
    """Every view the settings ask for, its classes resolved against the model's names."""
    model = cached_model(s.model.spec, "cpu")
    views = []
    with setting("classes", {"class": "atlases"}):
        for name in s.classes.atlases:
            c = model.class_index(name)
            slug = f"atlas-{c}-{_slug(model.class_name(c))}"
            views.append(
                View(
                    slug,
                    "atlas",
                    (c,),
                    (model.class_name(c),),
                    view_settings(s, f"class:{c}", (c,), slug),
                )
            )
    with setting("classes", {"class": "pairs"}):
        for a_name, b_name in s.classes.pairs:
            a, b = model.class_index(a_name), model.class_index(b_name)
            slug = f"compare-{a}-{b}-{_slug(model.class_name(a))}-vs-{_slug(model.class_name(b))}"
            views.append(
                View(
                    slug[:80],
                    "compare",
                    (a, b),
                    (model.class_name(a), model.class_name(b)),
                    view_settings(s, f"compare:{a}:{b}", (a, b), slug[:80]),
                )
            )
    return views


def _build(view: View) -> dict[str, Any]:
    from pipelines.run import run

    manifest = run(view.settings, asdict(view.settings))
    st = manifest["stages"]
    return {
        "slug": view.slug,
        "kind": view.kind,
        "classes": list(view.classes),
        "names": list(view.names),
        "title": view.title,
        "rows": st["reduce"]["counts"].get("rows"),
        "cells": st["grid"]["counts"]["cells_kept"],
        "icons": st["render"]["counts"].get("icons"),
        "seconds": manifest["seconds_total"],
        "viewer": f"classes/{view.slug}/viewer/index.html",
    }


def run(s: Settings, fp: str) -> StageResult:
    views = plan_views(s)
    if not views:
        return StageResult(counts={"views": 0}, details={"views": []})
    store = RunStore.open(s.store_url, mode="r", storage_options=s.storage_options)
    if store.attribution(s.layer) is None:
        from atlas_core.errors import ConfigError

        raise ConfigError(
            "extract.attr_classes",
            s.extract.attr_classes,
            fix="class views need attribution: extract.attr_classes=5 (the "
            "images' top 5 classes) or -1 (every class).",
        )
    with ThreadPoolExecutor(max_workers=s.classes.parallel) as pool:
        done = list(pool.map(_build, views))
    for d in done:
        log.info(
            "classes: %s: %s samples, cells %s, %.1f s",
            d["title"],
            d["rows"],
            d["cells"],
            d["seconds"],
        )
    from pipelines.viewer import view_links

    reports = [x for x in view_links(s) if x["href"].startswith("../patches/")]
    _link(s, store, [{"href": f"../{v['viewer']}", "text": v["title"]} for v in done] + reports)
    return StageResult(counts={"views": len(done)}, details={"views": done})


def _link(s: Settings, store: RunStore, links: list[dict[str, str]]) -> None:
    """Rewrite the run's viewer data so its page links every view (when it has a viewer)."""
    from pipelines import compose, viewer

    if Markers(s.run_dir, s.storage_options).read("stage-compose") is None:
        return
    levels = zoom_ranges(s.grid.sizes, s.render.icon_px, s.compose.tile_px)
    viewer.write_viewer(s, store, levels, compose._write, extra_links=links)
