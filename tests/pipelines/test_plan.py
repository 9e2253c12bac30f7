"""``atlas plan``: resolves the same overrides as a run, writes nothing, and its estimate of
the run directory's bytes and storage objects is within 35% of what the run then writes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.commands.plan import plan
from pipelines.commands.run import run
from tests.conftest import debug_settings

pytestmark = pytest.mark.ray
log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def _disk(run_dir: Path) -> tuple[int, int]:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def test_the_plan_writes_nothing_and_prints_json(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines",
            "plan",
            "--json",
            "model=tiny",
            f"run_dir={tmp_path / 'never'}",
            "preset=r3",
            "data.n_images=1000",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["store_bytes"] > 0 and doc["objects"] > 0 and not (tmp_path / "never").exists()
    assert doc["stages"]["extract"]["images"] == 1000 and doc["hours"]["render"] > 0
    assert set(doc["stages"]["grid"]["cells"]) == {"20", "40", "80", "160"}  # R3's levels


def test_the_estimate_is_within_35_percent_of_a_real_run(tmp_path: Path, local_ray) -> None:
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "debug=fast",
        "data.n_images=256",
        "grid.sizes=[4,8]",
        "extract.chunk_images=64",
    ]
    want = plan(overrides)
    s, resolved = debug_settings(*overrides)
    run(s, resolved)
    got_bytes, got_files = _disk(tmp_path / "run")
    log.info(
        "plan: %d bytes in %d objects estimated, %d bytes in %d files written",
        want["store_bytes"],
        want["objects"],
        got_bytes,
        got_files,
    )
    assert abs(want["store_bytes"] - got_bytes) <= 0.35 * got_bytes
    assert abs(want["objects"] - got_files) <= 0.35 * got_files
    # the neighbours node: its objects follow the samples' chunking exactly
    (node,) = (tmp_path / "run" / "atlas.zarr" / "layers").glob("*/neighbours")
    node_files = [f for f in node.rglob("*") if f.is_file()]
    assert want["objects_by_group"]["neighbours"] == len(node_files)
    node_bytes = sum(f.stat().st_size for f in node_files)
    assert abs(want["bytes_by_group"]["neighbours"] - node_bytes) <= 0.5 * node_bytes


def test_a_plan_for_data_only_the_cluster_reaches_needs_no_weights(tmp_path: Path) -> None:
    """``--images N`` plans N files of a folder this machine cannot see, and the model's
    architecture is enough (GoogLeNet's weights are not here): R3 on ImageNet, 16 H100s."""
    missing = tmp_path / "imagenet" / "train"
    out = plan(
        ["experiment=googlenet_mixed4c", "data=imagenet", f"data.path={missing}"],
        device="h100",
        workers=16,
        images=1_281_167,
    )
    assert out["stages"]["extract"]["images"] == 1_281_167 and out["model"] == "googlenet"
    assert out["layer"] == "inception4c" and set(out["stages"]["grid"]["cells"]) == {
        20,
        40,
        80,
        160,
    }
    raw = 1_281_167 * 512 * 2  # one sample an image, 512 float16 channels at inception4c
    assert 0.7 * raw < out["bytes_by_group"]["extraction: activations and moments"] < 1.2 * raw
    assert 1.0 < out["gflops"]["forward"] < 4.0 and out["hours"]["render"] > 0
    assert not missing.exists()


@pytest.mark.parametrize("rows,within", [(100_000, 3.0), (1_000_000, 1.35)])
def test_the_neighbour_index_hours_follow_the_measured_benchmark(rows: int, within: float) -> None:
    """The plan's CPU seconds for the neighbour index (build and every row's 10 nearest) against
    what ``benchmarks/neighbours_bench.py`` measured here on 2 threads: within 35% at 1M x 112
    (the rate's calibration); at 100k, whose rows sit in the CPU's caches, within a factor 3."""
    from atlas_core.plan import CALIBRATION, Plan, RunShape, hours

    measured = json.loads((ROOT / "benchmarks" / "results" / "neighbours.json").read_text())
    (size,) = [s for s in measured["sizes"] if s["rows"] == rows and s["dim"] == 112]
    ours = size["results"]["ours"]
    assert (ours["build_threads"], ours["graph_threads"]) == (2, 2)
    seconds = ours["build_s"] + ours["graph_s"]
    shape = RunShape(
        n_images=rows,
        k=1,
        channels={"L": 112},
        layer="L",
        act_bytes=2,
        attr=0,
        topk=1,
        chunk_images=4096,
        shards=1,
        levels=(20,),
        min_count=5,
        icon_px=64,
        steps=1,
        attempts=1,
        group=16,
        item=64,
        exemplars_k=1,
        patch_px=64,
        thumb_px=64,
        rows_per_task=1024,
        tile_px=256,
        zooms={20: (0, 1)},
        distinct_sources=1,
        neighbour_threads=2,
    )
    stages = {"extract": {"images": 1, "samples": 1}, "reduce": {"rows": 1, "fit_rows": 1}}
    stages |= {"render": {"icon_steps": 0}, "exemplars": {"sources": 0, "rows": 0}}
    stages |= {"compose": {"tiles": 0}, "plausibility": {"patches": 0, "icons": 0}}
    planned = hours(Plan(stages=stages), shape, CALIBRATION["cpu"], (1.0, 1.0), 224, 1)
    got = planned["neighbours"] * 3600
    log.info("neighbours at %d x 112: %.0f s planned, %.0f s measured", rows, got, seconds)
    assert seconds / within <= got <= seconds * within
