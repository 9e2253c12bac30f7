"""Patches stage: failure-mode patches, in every two-class comparison view.

For a comparison of [a, b]: the ``patches.icons`` icons of the view whose cells have the largest
mean attribution to b are pasted into images the model classifies as a (the run's own images
whose stored top-1 is a, or a folder given as ``patches.images``; each is checked by a fresh
forward pass), at every size and corner, and against a random-noise patch of the same size and
place. Ray tasks over batches of images count, per patch, size and corner, the images whose
top-1 becomes b. The report (flip rates and their controls) goes into the view's group of the
run store (``views/<view>/patches`` attributes), the manifest and
``<run_dir>/views/<view>/patches/index.html``. Noise patches are seeded from the run's seed, the
pair and the size: deterministic for a seed.
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
from atlas_core.errors import StoreError
from atlas_core.models.registry import ModelSpec
from atlas_core.store import RunStore
from pipelines.core import ray_ops
from pipelines.core.common import cached_model, resolve_device
from pipelines.core.settings import GridConf, PatchesConf, Resources
from pipelines.core.stage import Stage, StageResult, StageRun

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
    model = cached_model(job.spec, resolve_device(job.device), role="patches")
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


def class_images(
    p: PatchesConf, store: RunStore, a: int
) -> tuple[list[str], list[Any], str | None]:
    """(uris, crops, root) of up to ``patches.max_images`` images to paste into: the run's own
    images predicted as a, or every image of ``patches.images`` (checked in the task)."""
    n = p.max_images
    if p.images:
        man = folder_manifest(p.images)
        return [str(u) for u in man.uris[:n]], [tuple(c) for c in man.crops[:n]], man.root
    ok = (store.status() == 1) & (store.images.top_class()[:, 0] == a)
    rows = np.flatnonzero(ok)[:n]
    uris, crops = store.images.uris(), store.images.crops()
    return (
        [str(uris[i]) for i in rows],
        [tuple(int(v) for v in crops[i]) for i in rows],
        store.attrs.get("root"),
    )


def strongest_icons(ctx: StageRun, store: RunStore, b: int, n: int) -> tuple[np.ndarray, list[Any]]:
    """The n rendered icons of the comparison view with the largest mean attribution to b."""
    g = ctx.conf(GridConf).sizes[0]
    level = store.level(ctx.s.layer, g)
    heat, heat_class = level.optional("heat"), level.optional("heat_class")
    if heat is None or heat_class is None or b not in list(heat_class):
        raise StoreError(
            f"{level.path} holds no heat for class {b}: run the view's grid "
            "stage again (it needs attribution, extract.attr_classes)"
        )
    col = heat[:, list(heat_class).index(b)]
    icons, objective, _ = level.icons()
    cells = level.read("cell")
    order = [i for i in np.argsort(-col, kind="stable") if not np.isnan(objective[i])][:n]
    meta = [{"cell": cells[i].tolist(), "attribution": float(col[i])} for i in order]
    return icons[order], meta


def _noise_seeds(ctx: StageRun, a: int, b: int) -> tuple[int, ...]:
    return tuple(
        int(np.random.SeedSequence([ctx.s.seed, a, b, side]).generate_state(1)[0])
        for side in ctx.conf(PatchesConf).sizes
    )


def _jobs(ctx: StageRun, store: RunStore, a: int, b: int, icons: np.ndarray) -> list[FlipJob]:
    p = ctx.conf(PatchesConf)
    uris, crops, root = class_images(p, store, a)
    bs, seeds = p.batch_size, _noise_seeds(ctx, a, b)
    return [
        FlipJob(
            ctx.s.model.spec,
            ctx.device(),
            tuple(uris[i : i + bs]),
            tuple(crops[i : i + bs]),
            root,
            ctx.s.data.decode,
            a,
            b,
            icons,
            p.sizes,
            p.corners,
            p.margin,
            seeds,
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


def _report(ctx: StageRun, store: RunStore) -> tuple[dict[str, Any], np.ndarray, list[Any]]:
    """The view's report, the patches and the before/after examples."""
    a, b = ctx.view.classes
    p = ctx.conf(PatchesConf)
    icons, meta = strongest_icons(ctx, store, b, p.icons)
    jobs = _jobs(ctx, store, a, b, icons)
    res = ctx.resources()
    out = ray_ops.map_tasks(
        flip_task,
        jobs,
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        desc=f"patches {ctx.view.slug}",
        labels=[f"images {i}" for i in range(len(jobs))],
    )
    counts = sum(
        (o["counts"] for o in out),
        np.zeros((len(icons) + 1, len(p.sizes), len(p.corners)), np.int64),
    )
    report = summarize(counts, sum(o["images"] for o in out), p.sizes, p.corners)
    report |= {
        "a": a,
        "b": b,
        "a_name": ctx.card.class_name(a),
        "b_name": ctx.card.class_name(b),
        "view": ctx.view.slug,
        "unreadable": sum(o["unreadable"] for o in out),
        "patches": meta,
    }
    return report, icons, [x for o in out for x in o["examples"]]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _write_page(
    ctx: StageRun, report: dict[str, Any], icons: np.ndarray, examples: list[Any]
) -> None:
    loc = ctx.loc
    out = loc.file("patches")
    for i, (icon, m) in enumerate(zip(icons, report["patches"], strict=True)):
        loc.write_bytes(f"{out}/patch-{i}.png", _png(icon))
        m["file"] = f"patch-{i}.png"
    shown = []
    for i, x in enumerate(examples):
        loc.write_bytes(f"{out}/before-{i}.png", _png(x["before"]))
        loc.write_bytes(f"{out}/after-{i}.png", _png(x["after"]))
        name = ctx.card.class_name
        shown.append(
            {
                **x,
                "before": f"before-{i}.png",
                "after": f"after-{i}.png",
                "before_top3": [[name(c), p] for c, p in x["before_top3"]],
                "after_top3": [[name(c), p] for c, p in x["after_top3"]],
            }
        )
    loc.write_bytes(f"{out}/report.css", CSS.encode())
    loc.write_bytes(f"{out}/index.html", report_html({**report, "examples": shown}).encode("utf-8"))


def run(ctx: StageRun) -> StageResult:
    store = ctx.open_store("r+")
    ray_ops.init(ctx.s.cluster)
    report, icons, examples = _report(ctx, store)
    best = report["best"]
    log.info(
        "patches %s -> %s: %d images, flip rate %.3f (control %.3f), best %.3f (control %.3f)",
        report["a_name"],
        report["b_name"],
        report["images"],
        report["flip_rate"],
        report["control_rate"],
        best.get("flip_rate", 0),
        best.get("control_rate", 0),
    )
    _write_page(ctx, report, icons, examples)
    store.write_report("patches", report)
    return StageResult(counts={"images": report["images"]}, details={"report": report})


def outputs(ctx: StageRun, store: RunStore) -> list[str]:
    gone = [] if ctx.loc.exists(ctx.loc.file("patches", "index.html")) else ["patches/index.html"]
    return gone + ([] if store.report("patches") else [f"{store.prefix}patches (report)"])


STAGE = Stage(
    name="patches",
    run=run,
    needs=("render",),
    settings=PatchesConf,
    resources={"patches": Resources()},
    outputs=outputs,
    kinds=("compare",),
    reads="the comparison view's `grid/<G>/{heat,icons}`, `images/{uri,crop,top_class,status}`",
    writes="`views/<v>/patches` report attributes, `<run_dir>/views/<v>/patches/` page",
    ray="one task per batch of class-a images (`map_tasks`), each pasting every patch and its "
    "noise control at every size and corner",
)
