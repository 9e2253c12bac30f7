"""The plausibility stage at work: a level judged in tasks of a few cells against a sampled pool
equals the library's computation on the stored icons and patches with the same pool; the
figures reach the manifest, the level's attributes and the viewer's card data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from atlas_core.models import ModelSpec, load_model
from atlas_core.quality import (
    choose_pool,
    exemplar_reference,
    plausibility,
    pooled_features,
    prototypes,
)
from atlas_core.store import RunLocation, RunStore
from pipelines.commands.run import run
from pipelines.stages.plausibility import places, read_patches
from tests.conftest import debug_settings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def judged(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("plaus")
    s, _ = debug_settings(
        f"run_dir={base / 'run'}",
        "grid.sizes=[4,6]",
        "exemplars.k=3",
        "exemplars.rows_per_task=8",
        "plausibility.pool=5",
        "plausibility.cells_per_task=3",
        "plausibility.sheets_per_task=2",
        "plausibility.input_px=32",
    )
    return s, run(s, {}), base / "run"


def test_a_level_in_tasks_against_a_pool_equals_the_library(judged) -> None:
    s, manifest, run_dir = judged
    store = RunStore.open(str(run_dir / "atlas.zarr"))
    judge = load_model(ModelSpec(name="tiny"))
    attrs = dict(store.exemplars(s.layer).attrs)
    for size in (4, 6):
        level = store.level(s.layer, size)
        place, ok = places(store, s.layer, size, store.exemplars(s.layer).index())
        pool = choose_pool(np.flatnonzero(ok.any(1)), 5, seed=s.seed + size)
        patches = read_patches(RunLocation.of(str(run_dir)), s.layer, attrs, place.reshape(-1))
        feats = pooled_features(judge.module, judge.preprocess, patches, input_px=32)
        stored = store.exemplars(s.layer).take("judge", place.reshape(-1))
        assert np.allclose(stored[ok.reshape(-1)], feats[ok.reshape(-1)], atol=2e-3)  # float16
        ex = stored.reshape(*ok.shape, -1)
        icons = pooled_features(judge.module, judge.preprocess, level.drawn(), input_px=32)
        ex = np.nan_to_num(ex)
        want = plausibility(icons, ex, ok, pool=pool)
        assert np.allclose(level.read("icon_margin"), want.margin, atol=1e-5, equal_nan=True)
        assert np.array_equal(level.read("icon_rank"), want.rank)
        got = manifest["stages"]["plausibility"]["counts"]["levels"][str(size)]
        assert got["icons"] == want.summary() and got["pool"] == len(pool)
        ref = exemplar_reference(ex, ok, pool, prototypes(ex, ok)[0][pool])
        assert got["exemplar"] == ref.summary()
        assert level.attrs["plausibility"] == got
    assert np.flatnonzero(ok.any(1)).size > 5  # the 6 x 6 level really sampled its pool


def test_the_cards_and_the_index_carry_the_figures(judged) -> None:
    s, manifest, run_dir = judged
    store = RunStore.open(str(run_dir / "atlas.zarr"))
    level = store.level(s.layer, 6)
    card = (run_dir / "viewer" / "data" / "cards-6-0.js").read_text()
    assert '"margin"' in card and '"rank"' in card and '"fid"' in card
    from atlas_core.compose.index import run_row

    row = run_row("r", json.loads((run_dir / "manifest.json").read_text()))
    finest = manifest["stages"]["plausibility"]["counts"]["levels"]["6"]["icons"]
    assert row["plausibility"] == finest["margin_mean"]
    assert re.fullmatch(r"[0-9.]+ \([0-9.]+\)", row["top5"])
    assert len(level.read("icon_margin")) == len(level.read("count"))
