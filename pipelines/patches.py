"""Patches stage: failure-mode patches for every two-class comparison of ``classes.pairs``.

For a pair [a, b]: the ``patches.icons`` icons of the comparison view whose cells have the
largest mean attribution to b are pasted into images the model classifies as a (the run's own
images whose stored top-1 is a, or a folder given as ``patches.images``; each is checked by a
fresh forward pass), at every size and corner, and against a random-noise patch of the same size
and place. Ray tasks over batches of images count, per patch, size and corner, the images whose
top-1 becomes b. The report (flip rates and their controls) goes into the run store
(``patches/<view>`` attributes), the manifest and ``<run_dir>/patches/<view>/index.html``.
Noise patches are seeded from the run's seed, the pair and the size: deterministic for a seed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from atlas_core.classes import count_flips, paste, resized
from atlas_core.compose.report import CSS, report_html
from atlas_core.compose.viewer import source_name
from atlas_core.data import folder_manifest
from atlas_core.data.decode import DecodePolicy, decode
from atlas_core.models.registry import ModelSpec
from atlas_core.store import RunStore
from pipelines import ray_ops
from pipelines.common import StageResult, cached_model, resolve_device
from pipelines.settings import Settings, store_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlipJob:
    spec: ModelSpec
    device: str
    uris: tuple[str, ...]
    crops: tuple[tuple[int, int, int, int], ...]
    root: str | None
    policy: DecodePolicy
    a: int
    b: int
    patches: np.ndarray  # (P, px, px, 3) uint8, at their rendered size
    sizes: tuple[int, ...]
    corners: tuple[str, ...]
    margin: int
    noise_seeds: tuple[int, ...]  # one per size
    examples: int


def _top(model: Any, arrays: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(top-k classes (B, k), their probabilities) of input arrays (B, S, S, 3) uint8."""
    device = next(model.module.parameters()).device
    with torch.no_grad():
        p = torch.softmax(model.module(model.preprocess.batch(arrays, device)).float(), dim=1)
    v, i = p.topk(k, dim=1)
    return i.cpu().numpy(), v.cpu().numpy()


def flip_task(job: FlipJob) -> dict[str, Any]:
    """Task body: flips per (patch, size, corner); the last patch row is the noise control."""
    model = cached_model(job.spec, resolve_device(job.device))
    arrays, names = [], []
    for uri, crop in zip(job.uris, job.crops, strict=True):
        d = decode(uri, np.array(crop) if crop[0] >= 0 else None, policy=job.policy, root=job.root)
        if d.image is not None:
            arrays.append(model.preprocess.to_array(d.image))
            names.append(source_name(uri))
    empty = np.zeros((len(job.patches) + 1, len(job.sizes), len(job.corners)), np.int64)
    if not arrays:
        return {"counts": empty, "images": 0, "unreadable": len(job.uris), "examples": []}
    base = np.stack(arrays)
    keep = _top(model, base)[0][:, 0] == job.a
    base, names = base[keep], [n for n, k in zip(names, keep, strict=True) if k]
    counts = count_flips(
        lambda x: _top(model, x)[0][:, 0],
        base,
        list(job.patches),
        job.sizes,
        job.corners,
        job.b,
        job.noise_seeds,
        job.margin,
    )
    examples = _examples(model, job, base[: job.examples], names)
    return {
        "counts": counts,
        "images": len(base),
        "examples": examples,
        "unreadable": len(job.uris) - len(arrays),
        "not_a": int((~keep).sum()),
    }


def _examples(model: Any, job: FlipJob, base: np.ndarray, names: list[str]) -> list[Any]:
    """Before/after arrays and top-3 of a few images (patch 0, largest size, first corner)."""
    if not len(base):
        return []
    side, corner = max(job.sizes), job.corners[0]
    after = paste(base, resized(job.patches[0], side), corner, job.margin)
    out = []
    for i in range(len(base)):
        c0, p0 = _top(model, base[i : i + 1], 3)
        c1, p1 = _top(model, after[i : i + 1], 3)
        out.append(
            {
                "source": names[i],
                "before": base[i],
                "after": after[i],
                "size": side,
                "corner": corner,
                "before_top3": list(zip(c0[0].tolist(), p0[0].tolist(), strict=True)),
                "after_top3": list(zip(c1[0].tolist(), p1[0].tolist(), strict=True)),
            }
        )
    return out


def class_images(s: Settings, store: RunStore, a: int) -> tuple[list[str], list[Any], str | None]:
    """(uris, crops, root) of up to ``patches.max_images`` images to paste into: the run's own
    images predicted as a, or every image of ``patches.images`` (checked in the task)."""
    n = s.patches.max_images
    if s.patches.images:
        man = folder_manifest(s.patches.images)
        return [str(u) for u in man.uris[:n]], [tuple(c) for c in man.crops[:n]], man.root
    ok = (store.status() == 1) & (store.top_class()[:, 0] == a)
    rows = np.flatnonzero(ok)[:n]
    uris, crops = store.uris(), store.crops()
    return (
        [str(uris[i]) for i in rows],
        [tuple(int(v) for v in crops[i]) for i in rows],
        store.attrs.get("root"),
    )


def strongest_icons(view_dir: str, s: Settings, b: int, n: int) -> tuple[np.ndarray, list[Any]]:
    """The n rendered icons of a comparison view with the largest mean attribution to b."""
    store = RunStore.open(store_url(view_dir), mode="r", storage_options=s.storage_options)
    g = s.classes.grid
    heat = store.grid_extra(s.layer, g, "heat")
    heat_class = store.grid_extra(s.layer, g, "heat_class")
    assert heat is not None and heat_class is not None
    col = heat[:, list(heat_class).index(b)]
    icons, objective, _ = store.icons(s.layer, g)
    cells = store.grid_cells(s.layer, g)[0]
    order = [i for i in np.argsort(-col, kind="stable") if not np.isnan(objective[i])][:n]
    meta = [{"cell": cells[i].tolist(), "attribution": float(col[i])} for i in order]
    return icons[order], meta


def _noise_seeds(s: Settings, a: int, b: int) -> tuple[int, ...]:
    return tuple(
        int(np.random.SeedSequence([s.seed, a, b, side]).generate_state(1)[0])
        for side in s.patches.sizes
    )


def _jobs(s: Settings, store: RunStore, a: int, b: int, icons: np.ndarray) -> list[FlipJob]:
    uris, crops, root = class_images(s, store, a)
    p, bs = s.patches, s.patches.batch_size
    return [
        FlipJob(
            s.model.spec,
            s.cluster.extract.device,
            tuple(uris[i : i + bs]),
            tuple(crops[i : i + bs]),
            root,
            s.data.decode,
            a,
            b,
            icons,
            p.sizes,
            p.corners,
            p.margin,
            _noise_seeds(s, a, b),
            p.examples if i == 0 else 0,
        )
        for i in range(0, len(uris), bs)
    ]


def summarize(
    counts: np.ndarray, images: int, sizes: tuple[int, ...], corners: tuple[str, ...]
) -> dict[str, Any]:
    """Flip rates per patch, size and corner with the noise control's (the last patch row)."""
    n, table = max(images, 1), []
    for pi in range(counts.shape[0] - 1):
        for si, side in enumerate(sizes):
            for ci, corner in enumerate(corners):
                f, c = int(counts[pi, si, ci]), int(counts[-1, si, ci])
                table.append(
                    {
                        "patch": pi,
                        "size": side,
                        "corner": corner,
                        "flips": f,
                        "flip_rate": f / n,
                        "control_flips": c,
                        "control_rate": c / n,
                    }
                )
    best: dict[str, Any] = {}
    for r in table:  # the highest flip rate; the first such row on ties
        if not best or r["flip_rate"] > best["flip_rate"]:
            best = r
    total = counts[:-1].sum() / (n * max(1, counts[:-1].size))
    control = counts[-1].sum() / (n * max(1, counts[-1].size))
    return {
        "images": images,
        "table": table,
        "best": best,
        "flip_rate": float(total),
        "control_rate": float(control),
    }


def _pair(s: Settings, store: RunStore, view: Any) -> dict[str, Any]:
    a, b = view.classes
    icons, meta = strongest_icons(view.settings.run_dir, s, b, s.patches.icons)
    jobs = _jobs(s, store, a, b, icons)
    res = s.cluster.extract
    out = ray_ops.map_tasks(
        flip_task,
        jobs,
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        desc=f"patches {view.slug}",
        labels=[f"images {i}" for i in range(len(jobs))],
    )
    counts = sum(
        (o["counts"] for o in out),
        np.zeros((len(icons) + 1, len(s.patches.sizes), len(s.patches.corners)), np.int64),
    )
    report = summarize(counts, sum(o["images"] for o in out), s.patches.sizes, s.patches.corners)
    model = cached_model(s.model.spec, "cpu")
    report |= {
        "a": a,
        "b": b,
        "a_name": model.class_name(a),
        "b_name": model.class_name(b),
        "view": view.slug,
        "unreadable": sum(o["unreadable"] for o in out),
        "patches": meta,
    }
    examples = [x for o in out for x in o["examples"]]
    _write_page(s, view.slug, report, icons, examples, model)
    store_report = {k: v for k, v in report.items() if k != "examples"}
    RunStore.open(s.store_url, mode="r+", storage_options=s.storage_options).write_report(
        f"patches/{view.slug}", store_report
    )
    return store_report


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _write_page(
    s: Settings,
    slug: str,
    report: dict[str, Any],
    icons: np.ndarray,
    examples: list[Any],
    model: Any,
) -> None:
    from pipelines.compose import _write

    out, so = f"{s.run_dir.rstrip('/')}/patches/{slug}", s.storage_options
    for i, (icon, m) in enumerate(zip(icons, report["patches"], strict=True)):
        _write(f"{out}/patch-{i}.png", _png(icon), so)
        m["file"] = f"patch-{i}.png"
    shown = []
    for i, x in enumerate(examples):
        _write(f"{out}/before-{i}.png", _png(x["before"]), so)
        _write(f"{out}/after-{i}.png", _png(x["after"]), so)
        name = model.class_name
        shown.append(
            {
                **x,
                "before": f"before-{i}.png",
                "after": f"after-{i}.png",
                "before_top3": [[name(c), p] for c, p in x["before_top3"]],
                "after_top3": [[name(c), p] for c, p in x["after_top3"]],
            }
        )
    _write(f"{out}/report.css", CSS.encode(), so)
    _write(f"{out}/index.html", report_html({**report, "examples": shown}).encode("utf-8"), so)


def run(s: Settings, fp: str) -> StageResult:
    from pipelines.classes import _link, plan_views

    views = [v for v in plan_views(s) if v.kind == "compare"]
    if not views:
        return StageResult(counts={"pairs": 0}, details={"reports": []})
    store = RunStore.open(s.store_url, mode="r", storage_options=s.storage_options)
    ray_ops.init(s.cluster)
    reports = [_pair(s, store, v) for v in views]
    for r in reports:
        log.info(
            "patches %s -> %s: %d images, flip rate %.3f (control %.3f), best %.3f (control %.3f)",
            r["a_name"],
            r["b_name"],
            r["images"],
            r["flip_rate"],
            r["control_rate"],
            r["best"].get("flip_rate", 0),
            r["best"].get("control_rate", 0),
        )
    from pipelines.viewer import view_links

    links = [x for x in view_links(s) if not x["href"].startswith("../patches/")]
    links += [
        {"href": f"../patches/{r['view']}/index.html",
         "text": f"patches: {r['b_name']} pasted into {r['a_name']}"}
        for r in reports
    ]  # fmt: skip
    _link(s, store, links)
    return StageResult(
        counts={"pairs": len(reports), "images": {r["view"]: r["images"] for r in reports}},
        details={"reports": reports},
    )
