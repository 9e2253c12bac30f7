"""Scheduled runs as an operator keeps them: a week that changed nothing re-extracts and
re-renders nothing (the extraction and the icon cache are shared under the run root), a run that
fails leaves ``failed.json`` and a failed manifest and shows in the root's index beside the good
ones, a retry of the same date resumes, and ``keep_runs`` expires the oldest dated runs."""

from __future__ import annotations

import json
import logging

import pytest

from pipelines.commands.sweep import run_one
from tests.conftest import debug_settings, make_images

pytestmark = pytest.mark.ray
log = logging.getLogger(__name__)


def test_weekly_runs_share_work_record_failures_and_expire(tmp_path, local_ray, inject) -> None:
    make_images(tmp_path / "imgs", 32, size=64, seed=8)
    root = tmp_path / "root"

    def week(date: str, *extra: str):
        s, resolved = debug_settings(
            "data=folder",
            f"data.path={tmp_path / 'imgs'}",
            f"run_root={root}",
            f"date={date}",
            "keep_runs=2",
            *extra,
        )
        return run_one(s, resolved)[1]

    first = week("2026-11-01")
    second = week("2026-11-08")  # nothing changed: nothing redone
    ex, rd = second["stages"]["extract"], second["stages"]["render"]
    assert ex["details"]["extraction"] == str(root / "extractions" / ex["fingerprint"])
    assert rd["counts"]["icons"] == first["stages"]["render"]["counts"]["icons"] > 0
    assert rd["counts"]["icons_rendered_now"] == rd["counts"]["groups_rendered"] == 0
    assert rd["counts"]["groups_from_cache"] > 0
    inject("raise:start")  # every extraction task fails: a stage error
    with pytest.raises(RuntimeError, match="injected fault"):
        week("2026-11-15", "extract.edge=0")  # a changed extraction, so it must run
    inject("")
    failed = json.loads((root / "2026-11-15" / "failed.json").read_text())
    manifest = json.loads((root / "2026-11-15" / "manifest.json").read_text())
    assert "injected fault" in failed["error"] and manifest["status"] == "failed"
    assert "injected fault" in manifest["error"]
    index = json.loads((root / "index.json").read_text())
    rows = {r["run"]: r for r in index["runs"]}
    assert rows["2026-11-15"]["status"] == "failed" and index["failed"] == 1
    assert "injected fault" in rows["2026-11-15"]["error"]
    assert "failed" in (root / "index.html").read_text()
    going = root / "2026-10-25"  # an older run still going (no manifest yet): never expired
    (going / "markers").mkdir(parents=True)
    retry = week("2026-11-15", "extract.edge=0")  # the same date again: it resumes, and ends
    assert retry["status"] == "done"
    index = json.loads((root / "index.json").read_text())
    assert [r["run"] for r in index["runs"]] == ["2026-11-08", "2026-11-15"]  # keep_runs=2
    assert not (root / "2026-11-01").exists() and (root / "extractions").is_dir()
    assert going.is_dir()
    log.info(
        "schedule: week 2 rendered 0 groups (%d from the cache); a failed date recorded "
        "in failed.json, its manifest and the index, then resumed; 1 run expired",
        rd["counts"]["groups_from_cache"],
    )
