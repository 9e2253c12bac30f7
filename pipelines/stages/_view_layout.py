"""The layout of a class view (:class:`pipelines.core.views.ViewLayout`): the reduce stage of a
class activation atlas or a two-class comparison.

``class``: the samples whose top attribution class is c, plus the ``top_n`` with the largest
positive attribution to c, laid out whole by UMAP (20 / 0.01 / cosine by default) or t-SNE in
one Ray task. ``compare``: the samples either class keeps; x is the attribution difference
(b - a) over its 99th percentile of absolute value, clipped to [-1, 1] and mapped to [0, 1];
y is a 1-D layout of their activations. Every other row of the layout is a hole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from atlas_core.classes import attribution_to, class_rows, comparison_x
from atlas_core.errors import ConfigError
from atlas_core.reduce import normalize_layout
from atlas_core.reduce.small import embed_small
from atlas_core.store import RunStore
from pipelines.core import ray_ops
from pipelines.core.stage import StageResult, StageRun

log = logging.getLogger(__name__)


def sample_attribution(store: RunStore, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(class of each attribution column (S, A), values (S, A)) of every sample."""
    found = store.extraction(layer).attribution()
    if found is None:
        raise ConfigError(
            "extract.attr_classes",
            0,
            fix="class views need attribution: "
            "extract.attr_classes=5 (the top 5 classes) or -1 (every class).",
        )
    values, every = found
    if every:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape), values
    top = store.images.top_class()[store.image_of_sample()]
    return top[:, : values.shape[1]], values


def view_rows(
    kind: str, cs: tuple[int, ...], classes: np.ndarray, values: np.ndarray, top_n: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the samples a view keeps, sorted; the comparison's x of each, or None)."""
    if kind == "class":
        return class_rows(classes, values, cs[0], top_n), None
    rows = np.union1d(
        class_rows(classes, values, cs[0], top_n), class_rows(classes, values, cs[1], top_n)
    )
    a = attribution_to(classes[rows], values[rows], cs[0])
    b = attribution_to(classes[rows], values[rows], cs[1])
    return rows, comparison_x(a, b)


def fit_task(acts: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Task body: the view's layout (n, 2) or (n, 1)."""
    return embed_small(acts, **params)


def layout(
    ctx: StageRun, write: Callable[[RunStore, str, np.ndarray, dict[str, Any]], None]
) -> StageResult:
    """The reduce stage in a class view: its rows, laid out whole in one Ray task."""
    r, s = ctx.view.layout, ctx.s
    if r is None:
        raise ValueError(f"view {ctx.view.slug!r} has no class layout: it is the main view")
    store = ctx.open_store("r+")
    classes, values = sample_attribution(store, s.layer)
    rows, x = view_rows(r.rows, r.classes, classes, values, r.top_n)
    if len(rows) < 2:
        raise ConfigError(
            "classes",
            ctx.view.title,
            fix="fewer than 2 samples are attributed to that class: pick a class the images "
            "show, or raise classes.top_n.",
        )
    acts = store.extraction(s.layer).take("acts", rows)
    params = {
        "method": r.method,
        "n_components": 1 if x is not None else 2,
        "n_neighbors": r.n_neighbors,
        "min_dist": r.min_dist,
        "metric": r.metric,
        "seed": s.seed,
    }
    ray_ops.init(s.cluster)
    res = ctx.resources("reduce_fit")
    handle = ray_ops.submit(fit_task, acts, params, num_cpus=res.num_cpus, num_gpus=res.num_gpus)
    (emb,) = ray_ops.gather([handle], desc="view layout", labels=[ctx.view.slug])
    norm = np.full((store.n_images * store.k, 2), np.nan, np.float32)
    if x is None:
        norm[rows] = emb
        norm, bounds = normalize_layout(norm)
    else:  # x: the attribution difference, b to the right; y: the 1-D layout
        norm[rows, 0] = (x + 1.0) / 2.0
        norm[rows, 1] = _unit(emb[:, 0])
        bounds = np.array([[0.0, 0.0], [1.0, 1.0]])
    write(
        store,
        s.layer,
        norm,
        {
            "backend": r.method,
            "view": ctx.view.slug,
            "fingerprint": ctx.fp,
            "bounds": bounds.tolist(),
        },
    )
    log.info("reduce: view %s: %d samples laid out by %s", ctx.view.slug, len(rows), r.method)
    return StageResult(
        counts={"rows": len(rows)},
        details={"view": ctx.view.slug, "method": r.method, "backend": r.method},
    )


def _unit(v: np.ndarray) -> np.ndarray:
    """Values mapped to [0.05, 0.95] by rank-free min-max (1-D layout's y)."""
    lo, hi = float(np.min(v)), float(np.max(v))
    if hi <= lo:
        return np.full(len(v), 0.5, np.float32)
    return (0.05 + 0.9 * (v - lo) / (hi - lo)).astype(np.float32)
