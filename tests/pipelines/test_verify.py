"""``atlas verify``: a clean run passes; a deleted chunk, a corrupted marker and a removed stage
output are each found and named, and the exit code says so. The run is never changed."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from pipelines.commands import verify
from pipelines.commands.run import run
from tests.conftest import debug_settings

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("verify")
    s, resolved = debug_settings(
        f"run_dir={base / 'clean'}", "data.n_images=48", "extract.chunk_images=16"
    )
    run(s, resolved)
    return base


def _copy(base: Path, name: str) -> Path:
    shutil.copytree(base / "clean", base / name)
    return base / name


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_a_clean_run_verifies_and_is_not_changed(clean_run, capsys) -> None:
    run_dir = clean_run / "clean"
    before = _tree_hash(run_dir)
    assert verify.main([str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()  # one fact a line
    assert lines[0].startswith("rows: expected ") and lines[0].endswith("lost 0, failed 0")
    assert len(lines) == 2 and lines[1] == f"{run_dir}: ok"
    assert _tree_hash(run_dir) == before


def test_a_deleted_chunk_is_named_by_shard(clean_run, capsys) -> None:
    run_dir = _copy(clean_run, "no-chunk")
    (run_dir / "atlas.zarr" / "layers" / "blocks.2" / "acts" / "c" / "1" / "0").unlink()
    assert verify.main([str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL shard 1 (images 16..32): 1 storage objects missing" in out
    assert "shard 0 " not in out and "shard 2 " not in out


def test_a_corrupted_marker_is_named(clean_run, capsys) -> None:
    run_dir = _copy(clean_run, "bad-marker")
    marker = run_dir / "markers" / "extract" / "shard-000002.json"
    rec = json.loads(marker.read_text())
    rec["status_counts"] = {"ok": 15, "truncated": 1}
    rec["acts_hash"] = "0" * 16
    marker.write_text(json.dumps(rec))
    (run_dir / "markers" / "stage-grid.json").write_text("{not json")
    assert verify.main([str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL shard 2 (images 32..48): statuses in the store" in out
    assert "FAIL shard 2 (images 32..48): activations differ" in out
    assert "FAIL stage render: marked done but stage grid is not" in out


def test_a_removed_stage_output_is_named(clean_run, capsys) -> None:
    run_dir = _copy(clean_run, "no-layout")
    shutil.rmtree(run_dir / "atlas.zarr" / "layers" / "blocks.2" / "layout")
    (run_dir / "atlas-4.png").unlink()
    assert verify.main([str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL stage reduce: output missing: layers/blocks.2/layout" in out
    assert "FAIL stage compose: output missing: atlas-4.png" in out
    problems = out.count("FAIL")
    log.info(
        "verify: 3 kinds of damage injected (chunk, marker, stage output), all found; "
        "%d problems named in the last run",
        problems,
    )
