"""Render faults and reuse: an actor killed mid-batch is replaced and every icon is written exactly
once; a re-render with the same inputs comes from the content-addressed cache."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from atlas_core.featvis import RenderSettings
from atlas_core.models import ModelSpec
from atlas_core.store import IconCache, icon_keys
from pipelines import ray_ops
from pipelines.render import RenderBatch, RenderWorker

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def ray_session(local_ray):
    return local_ray


def test_a_killed_actor_is_replaced_and_every_icon_is_written_once(ray_session, tmp_path) -> None:
    """The actor kills itself at a known point: at the end of its second batch, before returning
    it (the test hook of RenderWorker), so the kill never races the batches."""
    settings = RenderSettings(icon_px=32, steps=10, attempts=1, whiten=False)
    dirs = np.random.default_rng(0).normal(size=(24, 32)).astype(np.float32)
    batches = [
        RenderBatch(4, np.arange(i, i + 4), dirs[i : i + 4], tuple(range(i, i + 4)))
        for i in range(0, 24, 4)
    ]
    flag = tmp_path / "killed"
    pool = ray_ops.ActorPool(
        RenderWorker,
        (
            ModelSpec(name="tiny"),
            "blocks.2",
            settings,
            "cpu",
            None,
            1,
            f"sigkill_once:render:{flag}",
        ),
        size=1,
        num_cpus=1,
    )
    writes: Counter[int] = Counter()
    order: list[int] = []

    def commit(batch: RenderBatch, out) -> None:
        icons, objective, _cosine = out
        assert icons.shape == (4, 32, 32, 3) and np.isfinite(objective).all()
        writes.update(batch.rows.tolist())
        order.append(int(batch.rows[0]))

    try:
        restarts = pool.map("render", batches, desc="render", on_result=commit)
    finally:
        pool.close()
    log.info(
        "faults injected 1, actor restarts %d, icons expected 24, written %d, lost %d",
        restarts,
        len(writes),
        24 - len(writes),
    )
    assert flag.exists() and restarts == 1
    assert order == [0, 4, 8, 12, 16, 20]  # the second batch was lost once, re-run, in order
    assert sorted(writes) == list(range(24)) and set(writes.values()) == {1}


def test_icon_cache_keys_and_round_trip(tmp_path: Path) -> None:
    dirs = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    ctx = {"model": "tiny", "layer": "blocks.2", "steps": 4}
    keys = icon_keys(dirs, ctx, None)
    assert len(set(keys)) == 3 and keys == icon_keys(dirs.copy(), dict(ctx), None)
    assert keys != icon_keys(dirs, {**ctx, "steps": 5}, None)
    assert keys != icon_keys(dirs, ctx, np.eye(8))
    dirs2 = dirs.copy()
    dirs2[1, 0] += 1e-6
    assert icon_keys(dirs2, ctx, None)[1] != keys[1] and icon_keys(dirs2, ctx, None)[0] == keys[0]
    cache = IconCache(str(tmp_path / "cache"))
    icon = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    cache.put(keys[0], icon, 1.5, 0.25)
    got = cache.get(keys[0])
    assert got is not None and np.array_equal(got[0], icon) and got[1:] == (1.5, 0.25)
    (tmp_path / "cache" / keys[1][:2]).mkdir(exist_ok=True)
    (tmp_path / "cache" / keys[1][:2] / f"{keys[1]}.npz").write_bytes(b"torn")
    assert cache.get(keys[1]) is None and cache.get(keys[2]) is None
    assert (cache.hits, cache.misses) == (1, 2)
