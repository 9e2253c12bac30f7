"""Render faults and reuse: an actor killed mid-run is replaced and every work item is committed
exactly once, with the bytes of a run that was not killed; a group rendered before comes from
the content-addressed cache."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from atlas_core.data import InputManifest, plan_shards
from atlas_core.featvis import IconRecipe, IconSettings
from atlas_core.models import ModelSpec
from atlas_core.store import CachedGroup, IconCache, RunLocation, RunStore, group_key
from atlas_core.store.run_store import StoreLayout
from pipelines.core import ray_ops
from pipelines.stages.render import IconWorker, RenderActor, RenderItem, RenderSetup

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)
N, GROUP, ITEM = 24, 4, 8


@pytest.fixture(scope="module")
def ray_session(local_ray):
    return local_ray


def _store(path: Path) -> RunLocation:
    """A run holding one empty level of N icons (32 px, groups of 4, items of 8)."""
    man = InputManifest(uris=np.array(["/x.jpg"], dtype=object), crops=np.full((1, 4), -1))
    loc = RunLocation.of(str(path))
    store = RunStore.create(
        loc.store_url,
        man,
        plan_shards(1, chunk_images=1),
        np.zeros((1, 2), np.int16),
        StoreLayout(k=1, seed=0, layers={"blocks.2": (32, 8, 8)}, topk=1),
    )
    store.level("blocks.2", 4).create(
        ["icons", "icon_objective", "icon_cosine"], {"M": N, "px": 32, "group": GROUP, "item": ITEM}
    )
    return loc


def _setup(loc: RunLocation, cache: bool = False) -> RenderSetup:
    recipe = IconRecipe.from_settings(IconSettings(icon_px=32, steps=6, attempts=2, whiten=False))
    return RenderSetup(ModelSpec(name="tiny"), "blocks.2", recipe, "cpu", loc, cache)


def _items() -> list[RenderItem]:
    dirs = np.random.default_rng(0).normal(size=(N, 32)).astype(np.float32)
    return [
        RenderItem(4, a, dirs[a : a + ITEM], tuple(range(a, a + ITEM)), ())
        for a in range(0, N, ITEM)
    ]


def _render(tmp: Path, fault: str) -> tuple[int, Counter[int], dict[str, np.ndarray]]:
    items, loc = _items(), _store(tmp)
    pool = ray_ops.ActorPool(RenderActor, (_setup(loc), fault), size=1, num_cpus=1)
    commits: Counter[int] = Counter()
    try:
        restarts = pool.map(
            "render",
            items,
            desc="render",
            extra=(GROUP,),
            on_result=lambda item, out: commits.update([item.start]),
        )
    finally:
        pool.close()
    level = loc.open_store().level("blocks.2", 4)
    return (
        restarts,
        commits,
        dict(zip(("icons", "objective", "cosine"), level.icons(), strict=True)),
    )


def test_a_killed_actor_is_replaced_and_every_item_is_committed_once(ray_session, tmp_path):
    """The actor kills itself at a known point: at the end of its second item, after writing
    it and before returning (the test hook of RenderActor), so the kill never races."""
    flag = tmp_path / "killed"
    restarts, commits, killed = _render(tmp_path / "a", f"sigkill_once:render:{flag}")
    _, clean_commits, clean = _render(tmp_path / "b", "")
    log.info(
        "faults injected 1, actor restarts %d, items expected 3, committed %d, icons "
        "written %d of %d",
        restarts,
        len(commits),
        int((~np.isnan(killed["objective"])).sum()),
        N,
    )
    assert flag.exists() and restarts == 1
    assert sorted(commits) == [0, 8, 16] and set(commits.values()) == {1}  # each exactly once
    assert clean_commits == commits and not np.isnan(killed["objective"]).any()
    assert np.array_equal(killed["icons"], clean["icons"])  # the re-run wrote the same bytes
    assert np.array_equal(killed["objective"], clean["objective"])


def test_icon_cache_keys_and_round_trip(tmp_path: Path) -> None:
    dirs = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    ctx = {"model": "tiny", "layer": "blocks.2", "steps": 4}
    key = group_key(dirs, [1, 2, 3], ctx)
    assert key == group_key(dirs.copy(), [1, 2, 3], dict(ctx))
    assert key != group_key(dirs, [1, 2, 3], {**ctx, "steps": 5})
    assert key != group_key(dirs, [1, 2, 3], {**ctx, "recipe": {"whiten": "ab12"}})
    assert key != group_key(dirs, [1, 2, 4], ctx)  # an icon's seed is part of the key
    assert key != group_key(dirs[::-1].copy(), [3, 2, 1], ctx)  # so is the order
    dirs2 = dirs.copy()
    dirs2[1, 0] += 1e-6
    assert group_key(dirs2, [1, 2, 3], ctx) != key
    cache = IconCache(str(tmp_path / "cache"))
    icons = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    cache.put_many({key: CachedGroup(icons, np.array([1.5, 2, 3]), np.array([0.25, 0, 1]))})
    torn = "ab" + "0" * 62
    (tmp_path / "cache" / "ab").mkdir()
    (tmp_path / "cache" / "ab" / f"{torn}.npz").write_bytes(b"torn")
    got = cache.get_many([key, torn, "cd" + "1" * 62])
    assert list(got) == [key] and np.array_equal(got[key].icons, icons)
    assert got[key].objective.tolist() == [1.5, 2.0, 3.0]
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_worker_computes_without_ray_and_takes_whole_groups_from_the_cache(tmp_path):
    """The stateful-transform shape: the worker is set up once and called per item, without
    Ray; a second worker sharing the cache takes every group from it, with the same bytes."""
    loc = _store(tmp_path)
    item = _items()[0]
    keys = tuple(f"{g:02d}" + "0" * 62 for g in range(ITEM // GROUP))
    item = RenderItem(item.size, item.start, item.directions, item.seeds, keys)
    first = IconWorker(_setup(loc, cache=True))
    done, new = first(item, GROUP)
    assert sorted(new) == sorted(keys) and done.icons.shape == (ITEM, 32, 32, 3)
    first.cache.put_many(new)
    again, none = IconWorker(_setup(loc, cache=True))(item, GROUP)
    assert none == {} and np.array_equal(again.icons, done.icons)
    assert np.array_equal(again.objective, done.objective)
