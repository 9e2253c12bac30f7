"""Icon quality at equal compute: Lucid's parameterization, the magnitude-constrained one (MACO),
and torch-lucent one icon at a time with our transforms, on the same cells of the demo atlas.

The cells are the finest demo level's (EfficientNet-Lite0 ``blocks.4``, 32 x 32 grid) that have
at least ``--min-exemplars`` exemplar patches; every method renders the same directions with the
demo's icon size, steps and objective (whitened, cosine power 4). Per method: seconds per icon,
fidelity (the icon's activation at the layer's centre against its direction), and plausibility
(:mod:`atlas_core.quality`: the icon against its cell's exemplar patches in a judge network's
pooled features: margin over the other cells, own cell in the top 5) with two judges, the
atlas's own model and a second, independently trained network (EfficientNet-Lite2), beside the
ceiling a real exemplar reaches in the icon's place.

    python -m benchmarks.quality_bench [--run runs/demo] [--cells 64] [--lucent 16]

``--run``: a finished demo run to take the cells from (default: build one with the demo's
settings up to the exemplars stage in a scratch folder, untimed). Untimed: model loading, the
fresh model copy per lucent call, the judges.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Timer, write

log = logging.getLogger("benchmarks.quality")
LAYER = "blocks.4"
JUDGES = ("efficientnet_lite0", "efficientnet_lite2")


def demo_run(run: str | None) -> str:
    """A demo-configured run with its exemplars: ``run`` as given, or one built now (untimed)."""
    if run:
        return run
    from benchmarks.common import settings
    from pipelines.commands.run import run as run_atlas
    from pipelines.core import ray_ops

    run_dir = os.path.join(tempfile.mkdtemp(prefix="quality-"), "demo")
    s = settings(f"run_dir={run_dir}", "stages=[extract,reduce,grid,exemplars]")
    try:
        run_atlas(s, {})
    finally:
        ray_ops.shutdown()
    return run_dir


def cells(run_dir: str, n: int, min_exemplars: int, size: int = 32) -> dict[str, Any]:
    """Up to ``n`` cells of level ``size`` (the demo's finest) with enough exemplars, evenly
    spread over the level's order; their directions, exemplar patches, the run's whitening and
    its images' amplitude spectrum."""
    from atlas_core.featvis import whitening_matrix
    from atlas_core.store import RunStore
    from pipelines.stages.plausibility import read_patches

    store = RunStore.open(os.path.join(run_dir, "atlas.zarr"))
    level = store.level(LAYER, size)
    grid, rows = level.grid(), level.read("exemplar_row")
    ex = store.exemplars(LAYER)
    index = ex.index()
    assert index is not None, "the run has no exemplars: run its exemplars stage"
    place = {int(r): i for i, r in enumerate(index["row"]) if index["ok"][i]}
    have = np.array([[place.get(int(r), -1) for r in cell] for cell in rows])
    good = np.flatnonzero((have >= 0).sum(1) >= min_exemplars)
    pick = good[np.linspace(0, len(good) - 1, min(n, len(good))).round().astype(int)]
    k = have.shape[1]
    flat = have[pick].reshape(-1)
    patches = read_patches(run_dir, {}, dict(ex.attrs), np.maximum(flat, 0))
    return {
        "size": size,
        "cells": pick,
        "directions": grid.mean[pick].astype(np.float32),
        "patches": patches.reshape(len(pick), k, *patches.shape[1:]),
        "ok": (have[pick] >= 0),
        "spectrum": store.images.spectrum(),
        "whiten": whitening_matrix(store.extraction(LAYER).second_moment()),
    }


def ours(model: Any, c: dict[str, Any], settings: Any) -> tuple[float, np.ndarray]:
    """Our renderer in its groups (16 on a CPU), as the render stage runs it."""
    from atlas_core.featvis import IconRecipe, IconRenderer
    from atlas_core.featvis.streams import icon_seed

    recipe = IconRecipe.from_settings(settings, spectrum=c["spectrum"], whiten=c["whiten"])
    r = IconRenderer(model, LAYER, recipe)
    seeds = [icon_seed(0, LAYER, c["size"], int(i)) for i in c["cells"]]
    with Timer() as t:
        out = r.render_groups(c["directions"], seeds=seeds, group=r.suggest_group())
    icons = out.icons
    if out.alpha is not None:  # judged as drawn on the atlas's white background
        w = out.alpha[..., None] / 255.0
        icons = np.round(icons * w + 255 * (1 - w)).astype(np.uint8)
    return t.seconds / len(icons), icons


def judge(icons: np.ndarray, c: dict[str, Any], judges: dict[str, Any]) -> dict[str, Any]:
    """Plausibility of ``icons`` against the cells' exemplars, per judge."""
    from atlas_core.quality import plausibility, pooled_features

    out = {}
    for name, (m, px) in judges.items():
        pf = pooled_features(
            m.module, m.preprocess, c["patches"].reshape(-1, *c["patches"].shape[2:]), input_px=px
        )
        ex = pf.reshape(*c["ok"].shape, -1)
        out[name] = plausibility(
            pooled_features(m.module, m.preprocess, icons, input_px=px), ex, c["ok"]
        ).summary()
    return out


def reference(c: dict[str, Any], judges: dict[str, Any]) -> dict[str, Any]:
    from atlas_core.quality import exemplar_reference, pooled_features

    out = {}
    for name, (m, px) in judges.items():
        pf = pooled_features(
            m.module, m.preprocess, c["patches"].reshape(-1, *c["patches"].shape[2:]), input_px=px
        )
        out[name] = exemplar_reference(pf.reshape(*c["ok"].shape, -1), c["ok"]).summary()
    return out


def variants(base: Any) -> dict[str, Any]:
    """The methods compared, at the demo's steps and icon size (96 steps, 64 px, one attempt):
    each parameterization with Lucid's objective and with the plain cosine (the demo's now)."""
    maco = {"param": "maco", "optimizer": "nadam", "lr": 0.5, "noise": 0.05}  # MACO's optimizer
    return {
        "lucid_fft": replace(base, objective="lucid", lr=0.05),  # the demo before
        "maco": replace(base, objective="lucid", **maco),
        "lucid_fft_cosine_centre": replace(base, objective="cosine", lr=0.1, fill=0.0),
        "lucid_fft_cosine": replace(base, objective="cosine", lr=0.1, fill=0.5),  # the demo now
        "maco_cosine": replace(base, objective="cosine", fill=0.5, **{**maco, "lr": 1.0}),
    }


def before_after(
    c: dict[str, Any], before: np.ndarray, after: np.ndarray, path: Path, rows: int = 8
) -> None:
    """A PNG: per row (cells evenly spread over the level) two of the cell's exemplar patches,
    its icon with Lucid's objective (the demo before) and with the cosine (the demo now)."""
    from PIL import Image

    blank = np.full_like(before[0], 255)
    out = []
    for i in np.linspace(0, len(before) - 1, rows).round().astype(int):
        ex = [c["patches"][i, j] if c["ok"][i, j] else blank for j in range(2)]
        out.append(np.concatenate([*ex, blank[:, :8], before[i], after[i]], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(out, axis=0)).save(path)
    log.info("wrote %s", path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None, help="a finished demo run (default: build one)")
    ap.add_argument("--cells", type=int, default=10_000, help="at most (default: every cell)")
    ap.add_argument("--min-exemplars", type=int, default=1)
    ap.add_argument("--lucent", type=int, default=16, help="cells rendered by torch-lucent")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--steps", type=int, default=0, help="default: the demo's 96")
    ap.add_argument(
        "--sheet",
        default="docs/icons-before-after.png",
        help="8 cells: two exemplars, the icon before and after, per row",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from atlas_core.featvis import IconSettings
    from atlas_core.models import ModelSpec, load_model
    from benchmarks.render_bench import fidelity, lucent_one_at_a_time

    torch.manual_seed(0)
    c = cells(demo_run(args.run), args.cells, args.min_exemplars)
    model = load_model(ModelSpec())
    demo = IconSettings(icon_px=64, steps=96, attempts=1, cos_power=4, whiten=True)
    if args.steps:
        demo = replace(demo, steps=args.steps)
    judges = {n: (load_model(ModelSpec(name=n)), 112) for n in JUDGES}
    results: dict[str, Any] = {"exemplar_in_the_icons_place": reference(c, judges)}
    wanted = [v for v in args.only.split(",") if v]
    drawn: dict[str, np.ndarray] = {}
    for name, st in variants(demo).items():
        if wanted and name not in wanted:
            continue
        per, icons = ours(model, c, st)
        fid = fidelity(model, icons, c["directions"])
        results[name] = {
            "seconds_per_icon": round(per, 3),
            "icon_steps_per_second": round(st.steps / per, 1),
            "fidelity": round(float(fid.mean()), 4),
            "plausibility": judge(icons, c, judges),
            "settings": repr(st),
        }
        log.info("%s: %s", name, results[name])
        drawn[name] = icons
    if args.lucent and (not wanted or "lucent_our_transforms" in wanted):
        k = min(args.lucent, len(c["directions"]))
        sub = {
            **c,
            "directions": c["directions"][:k],
            "ok": c["ok"][:k],
            "patches": c["patches"][:k],
        }
        t, icons = lucent_one_at_a_time(
            model, sub["directions"], c["whiten"], 64, demo.steps, 64, 64, ours_tf=True
        )
        results["lucent_our_transforms"] = {
            "cells": k,
            "seconds_per_icon": round(t / k, 3),
            "fidelity": round(float(fidelity(model, icons, sub["directions"]).mean()), 4),
            "plausibility": judge(icons, sub, judges),
            "note": f"the first {k} cells only (one icon a call), judged among those {k}",
            "ours_on_the_same_cells": {n: judge(i[:k], sub, judges) for n, i in drawn.items()},
        }
        log.info("lucent: %s", results["lucent_our_transforms"])
    if args.sheet and {"lucid_fft", "lucid_fft_cosine"} <= set(drawn):
        before_after(c, drawn["lucid_fft"], drawn["lucid_fft_cosine"], Path(args.sheet))
    write(
        "quality",
        {
            "layer": LAYER,
            "level": c["size"],
            "cells": len(c["cells"]),
            "judge_input_px": 112,
            "judges": list(JUDGES),
            **results,
            "untimed": "model loading, the fresh model copy per lucent call, the judges",
        },
    )


if __name__ == "__main__":
    main()
