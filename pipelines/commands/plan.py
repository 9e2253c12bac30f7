"""``atlas plan [overrides] [--json] [--device cpu|h100|a100] [--workers N]``: what a run will cost
before anything is written.

It resolves the config exactly as ``atlas`` would (the same overrides), lists the inputs (a
folder or file list is listed, tar members counted; nothing is decoded; ``--images N`` instead
plans N distinct files without listing them, for data that only the cluster can reach), reads
the model's layer shapes and FLOPs (its architecture only, without its weights: one forward
pass of one blank image on the CPU), then estimates per
stage the tasks, rows, cells and icons, the run directory's bytes and storage objects, and each
stage's hours on ``workers`` nodes of the named device (:mod:`atlas_core.plan`: a calibration
measured here for the CPU and recorded from published figures for GPUs). ``--json`` prints the
same as one JSON document (``store_bytes``, ``objects``, ``stages``, ``hours``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from atlas_core.compose.tiles import zoom_ranges
from atlas_core.models import ModelSpec, load_model
from atlas_core.models.layers import layer_shapes, run_until, stop_at
from atlas_core.models.registry import LoadedModel
from atlas_core.models.weights import ARCHITECTURE_ONLY
from atlas_core.plan import CALIBRATION, RunShape, estimate, hours
from atlas_core.quality import feature_dim
from pipelines.core.settings import Settings

log = logging.getLogger("atlas.plan")


def _settings(overrides: list[str], data_here: bool = True) -> Settings:
    from contextlib import nullcontext

    from hydra import compose, initialize_config_dir

    from pipelines.commands.main import CONF_DIR, to_settings
    from pipelines.core.settings import data_not_here

    with (
        initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"),
        nullcontext() if data_here else data_not_here(),
    ):
        return to_settings(compose("config", overrides=overrides))[0]


def gflops(model: LoadedModel, layer: str | None) -> tuple[float, float]:
    """(a whole forward pass, the pass stopped at ``layer``; None: the whole again) in GFLOPs
    per image."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, model.preprocess.size, model.preprocess.size)
    out = []
    for stop in (False, True) if layer else (False,):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            if stop and layer:
                with stop_at(model.module, [layer]):
                    run_until(model.module, x)
            else:
                model.module(x)
        out.append(fc.get_total_flops() / 1e9)
    return out[0], out[-1]


def shape_of(
    s: Settings, device: str, images: int | None = None
) -> tuple[RunShape, tuple[float, float], int]:
    """(the run's shape, its model's GFLOPs, the model's input px). ``images``: plan that many
    distinct files (up to ``data.limit``) instead of listing the data."""
    from pipelines.stages.extract import build_manifest

    if images is None:
        uris = [str(u) for u in build_manifest(s.data, s.seed).uris]
        n, distinct = len(uris), len(set(uris))
        uri_bytes = int(np.mean([len(u) for u in uris])) if uris else 60
    else:
        n = min(images, s.data.limit) if s.data.source != "photos" and s.data.limit else images
        distinct, uri_bytes = n, 60
    model = load_model(replace(s.model.spec, weights=ARCHITECTURE_ONLY), "cpu")
    shapes = layer_shapes(model.module, s.extracted_layers, model.preprocess.size)
    e, r, x = s.extract, s.render, s.exemplars
    co = e.chunk_images * e.zarr_shard_chunks
    group = int(r.group) if r.group != "auto" else (16 if device == "cpu" else 256)
    sizes = s.grid.sizes
    lv = zoom_ranges(sizes, r.icon_px, s.compose.tile_px)
    nres = s.cluster.of("neighbours")
    shape = RunShape(
        n_images=n,
        k=e.samples_per_image,
        channels={k: v[0] for k, v in shapes.items()},
        layer=s.layer,
        act_bytes=2 if e.act_dtype == "float16" else 4,
        attr=model.num_classes if e.attr_classes < 0 else e.attr_classes,
        topk=e.kept_classes,
        chunk_images=co,
        shards=-(-n // (co * e.chunks_per_shard)),
        levels=sizes,
        min_count=s.grid.min_count,
        icon_px=r.icon_px,
        steps=r.steps,
        attempts=r.attempts,
        group=group,
        item=max(group, 64 if r.batch_size == "auto" else int(r.batch_size)),
        exemplars_k=x.k,
        patch_px=x.patch_px,
        thumb_px=x.thumb_px,
        rows_per_task=x.rows_per_task,
        tile_px=s.compose.tile_px,
        zooms={v.size: (v.zmin, v.zmax) for v in lv},
        distinct_sources=distinct,
        uri_bytes=uri_bytes,
        neighbours=s.neighbours.params(),
        neighbours_k=s.neighbours.k,
        neighbour_threads=s.neighbours.threads_for(nres),
        neighbour_gpu=device != "cpu" and nres.num_gpus > 0 and nres.device != "cpu",
        **_judge(s, model),
    )
    return shape, gflops(model, s.layer), model.preprocess.size


def _judge(s: Settings, model: LoadedModel) -> dict[str, Any]:
    """The plausibility judge's shape: its pooled feature size and whole-pass GFLOPs (the
    atlas's own model unless ``plausibility.judge`` names another; architecture only)."""
    p = s.plausibility
    judge = model if not p.judge else load_model(ModelSpec(p.judge, ARCHITECTURE_ONLY), "cpu")
    return {
        "judge_dim": feature_dim(judge.module, judge.preprocess, p.input_px),
        "judge_px": p.input_px,
        "judge_input_px": judge.preprocess.size,
        "judge_gflops": gflops(judge, None)[0] if p.judge else 0.0,
        "cells_per_task": p.cells_per_task,
        "sheets_per_task": p.sheets_per_task,
    }


def plan(
    overrides: list[str], device: str = "cpu", workers: int = 1, images: int | None = None
) -> dict[str, Any]:
    s = _settings(overrides, data_here=images is None)
    if device not in CALIBRATION:
        raise SystemExit(
            f"atlas plan: --device {device} is not calibrated; choose one of "
            f"{', '.join(CALIBRATION)}"
        )
    shape, flops, input_px = shape_of(s, device, images)
    p = estimate(shape)
    h = hours(p, shape, CALIBRATION[device], flops, input_px, workers)
    return {
        **p.as_dict(),
        "hours": h,
        "hours_total": float(f"{sum(h.values()):.3g}"),
        "device": device,
        "workers": workers,
        "calibration": CALIBRATION[device].note,
        "gflops": {"forward": round(flops[0], 3), "to_layer": round(flops[1], 3)},
        "run_dir": s.run_dir,
        "model": s.model.name,
        "layer": s.layer,
    }


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="atlas plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--device", default="cpu", help=f"one of {', '.join(CALIBRATION)}")
    ap.add_argument("--workers", type=int, default=1, help="worker nodes of that device")
    ap.add_argument(
        "--images",
        type=int,
        default=None,
        help="plan this many distinct image files instead of listing the data",
    )
    args, overrides = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = plan(overrides, args.device, args.workers, args.images)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(
        f"plan of {out['model']} {out['layer']} -> {out['run_dir']} on {args.workers} x "
        f"{args.device} ({out['calibration']})"
    )
    width = max(len(name) for name in [*out["stages"], "total"])
    for name, st in out["stages"].items():
        print(
            f"  {name:<{width}} {out['hours'].get(name, 0):>9.3g} h  "
            + ", ".join(f"{k} {v}" for k, v in st.items())
        )
    print(f"  {'total':<{width}} {out['hours_total']:>9.3g} h")
    print(f"  run directory: {_human(out['store_bytes'])} in {out['objects']} storage objects")
    for group, b in out["bytes_by_group"].items():
        print(f"    {group:<38} {_human(b):>10}  {out['objects_by_group'][group]:>8} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
