"""An icon depends only on its cell: the render stage at work items of 4, of 16 and of 3 icons
(rounded up to whole groups), with one and two actors, ``actors=auto``, and with its actor
killed at a known point (the end of its second item) writes byte-identical icons and objectives.

Icons are optimized in fixed groups (``render.group``, 2 here): the same group always holds the
same icons in the same order, so every kernel sees the same shapes and bytes however the work is
split or scheduled, and each CPU actor computes on one thread. That is what makes the promise hold
on any CPU (its kernels may block by batch shape; here the shape never changes)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipelines.commands.run import run
from tests.conftest import debug_settings

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray
STAGES = "stages=[extract,reduce,grid,render]"
ICONS = ("icons", "icon_objective")


def _settings(run_dir: Path, *extra: str):
    return debug_settings(
        f"run_dir={run_dir}",
        "data.n_images=64",
        "grid.sizes=[4,5]",
        "render.steps=6",
        "render.attempts=2",
        "render.cache=false",
        "render.group=2",
        *extra,
    )[0]


@pytest.fixture(scope="module")
def gridded(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("identity")
    run(_settings(base / "grid", "stages=[extract,reduce,grid]"), {})
    return base


def _render(base: Path, name: str, *extra: str) -> tuple[dict, dict[str, np.ndarray]]:
    run_dir = base / name
    shutil.copytree(base / "grid", run_dir)  # extract, reduce and grid are committed: skipped
    manifest = run(_settings(run_dir, STAGES, *extra), {})
    assert manifest["stages"]["grid"]["status"].startswith("skipped")
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    grid = "layers/blocks.2/grid"
    out = {f"{size}/{a}": g[f"{grid}/{size}/{a}"][:] for size in (4, 5) for a in ICONS}
    return manifest["stages"]["render"], out


def test_icons_do_not_depend_on_batch_size_actors_or_an_actor_kill(gridded, inject) -> None:
    small, a = _render(gridded, "b4", "render.batch_size=4", "cluster.render.actors=1")
    n = small["counts"]["icons"]
    assert n == small["counts"]["icons_rendered_now"] and n > 8
    variants = {
        "batch 16": ("render.batch_size=16", "cluster.render.actors=1"),
        "batch 3, two actors": ("render.batch_size=3", "cluster.render.actors=2"),
        "batch 4, actors auto": ("render.batch_size=4", "cluster.render.actors=auto"),
    }
    for name, extra in variants.items():
        rec, b = _render(gridded, name.replace(" ", "-").replace(",", ""), *extra)
        _same(a, b, name)
        if name.endswith("auto"):  # local Ray with 2 CPUs, 1 CPU per actor: two actors
            assert rec["details"]["where"]["actors"] == 2
    flag = gridded / "kill-flag"
    inject(f"sigkill_once:render:{flag}")
    killed, c = _render(gridded, "killed", "render.batch_size=4", "cluster.render.actors=1")
    assert flag.exists() and killed["counts"]["actor_restarts"] == 1
    same = _same(a, c, "killed")
    log.info(
        "render identity: %d icons; batch 4 = batch 16 = batch 3 x 2 actors byte for byte; "
        "actor killed after its second batch: faults injected 1, restarts %d, identical %s",
        n,
        killed["counts"]["actor_restarts"],
        same,
    )
    assert same


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], name: str) -> bool:
    for key in a:
        assert np.array_equal(a[key], b[key]), (name, key)  # to the bit, objectives too
    assert a["5/icons"].dtype == np.uint8 and not np.isnan(a["5/icon_objective"]).any()
    return True
