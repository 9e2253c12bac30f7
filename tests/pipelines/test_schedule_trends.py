"""A schedule over time: two dated runs of a model that changed between them (the toy network's
two checkpoints) under one run root. The later run diffs itself against the earlier one into
``<date>/diff-prev/`` with no command of its own, links it, and the root's index holds each
figure per date (``trends``), the diff's figures among them, drawn as inline SVG lines."""

from __future__ import annotations

import json
import logging

import pytest
from safetensors.torch import save_file

from atlas_core.models.tiny import TinyNet
from pipelines.commands.sweep import run_one
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray
log = logging.getLogger(__name__)
DATES = ("2026-12-01", "2026-12-08")


def test_a_scheduled_run_diffs_itself_against_the_previous_date(tmp_path, local_ray) -> None:
    make_images(tmp_path / "imgs", 24, size=64, seed=5)
    root = tmp_path / "root"
    manifests = []
    for seed, date in enumerate(DATES):
        weights = tmp_path / f"w{seed}.safetensors"
        save_file(TinyNet(seed=seed).state_dict(), str(weights))
        s, resolved = debug_settings(
            "data=folder",
            f"data.path={tmp_path / 'imgs'}",
            "extract.samples_per_image=2",
            "grid.sizes=[4]",
            "grid.min_count=1",
            f"model.weights={weights}",
            f"run_root={root}",
            f"date={date}",
        )
        manifests.append(run_one(s, resolved)[1])
    first, second = (root / d for d in DATES)
    assert not (first / "diff-prev").exists() and not (first / "compare.json").exists()
    diff = json.loads((second / "diff-prev" / "diff.json").read_text())
    record = json.loads((second / "compare.json").read_text())
    assert record["against"] == DATES[0] and record["diff"] == "diff-prev/diff.html"
    assert (second / "diff-prev" / "diff.html").is_file()
    assert 0 <= diff["neighbourhood_preservation"] < 1 and diff["kept_both"] == 48

    index = json.loads((root / "index.json").read_text())
    trends = index["trends"]
    for key in ("flip_rate", "neighbourhood_preservation"):
        assert [p["date"] for p in trends[key]] == list(DATES)
        assert trends[key][0]["value"] is None  # the first date has nothing before it
        assert trends[key][1]["value"] == diff[key] == record[key]
    for key, stage, detail in (
        ("trustworthiness", "reduce", "trustworthiness_k10"),
        ("fidelity", "render", "fidelity_cosine_mean"),
    ):
        want = [m["stages"][stage]["details"][detail] for m in manifests]
        assert [p["value"] for p in trends[key]] == want
    rows = {r["run"]: r for r in index["runs"]}
    assert rows[DATES[1]]["flip_rate"] == diff["flip_rate"]
    page = (root / "index.html").read_text()
    assert page.count('<svg class="trend"') == 5
    assert f'href="{DATES[1]}/diff-prev/diff.html"' in page
    log.info(
        "schedule: %s against %s: neighbourhood preservation %.3f, flip rate %.3f",
        DATES[1],
        DATES[0],
        diff["neighbourhood_preservation"],
        diff["flip_rate"],
    )
