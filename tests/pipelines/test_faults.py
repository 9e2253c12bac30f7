"""Extraction faults: each test ends with the store equal to a clean reference run and reports
faults injected and survived, and rows expected = ok + failed + lost with lost = 0."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.commands.run import run
from tests.conftest import assert_same_store, folder_settings, make_images

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)
ARRAYS = ("images/status", "images/top_class", "layers/blocks.2/acts", "layers/blocks.2/attr")


def _settings(images: Path, run_dir: Path, *extra: str):
    return folder_settings(
        images, run_dir, "extract.chunk_images=16", "extract.attr_classes=3", *extra
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, local_ray):
    base = tmp_path_factory.mktemp("faults")
    make_images(base / "imgs", 60, size=70, seed=3)
    (base / "imgs" / "sub2" / "zz_bad.png").write_bytes(b"GIF89a-but-not-really")
    ref = base / "reference"
    manifest = run(_settings(base / "imgs", ref), {})
    return base, ref, manifest


def _equal_to_reference(run_dir: Path, ref: Path) -> None:
    assert_same_store(run_dir, ref, ARRAYS)


def _rows(manifest: dict) -> dict:
    c = manifest["stages"]["extract"]["counts"]
    assert c["images_expected"] == c["images_ok"] + c["images_failed"] + c["images_lost"]
    return c


def test_reference_counts(corpus) -> None:
    _, _, manifest = corpus
    c = _rows(manifest)
    assert (c["images_expected"], c["images_ok"], c["images_failed"], c["images_lost"]) == (
        61,
        60,
        1,
        0,
    )
    assert c["shards"] == 4
    d = manifest["stages"]["extract"]["details"]
    assert d["shard_seconds"]["max"] >= d["shard_seconds"]["min"] > 0


def test_a_task_that_dies_after_its_write_is_redone_on_resume(corpus, inject, monkeypatch) -> None:
    base, ref, _ = corpus
    run_dir = base / "died"
    inject("raise:after_write:1")
    named = r"(?s)failed \(shard 1 \(images 16\.\.32\)\).*injected fault"
    with pytest.raises(RuntimeError, match=named):
        run(_settings(base / "imgs", run_dir), {})
    inject("")
    done = sorted(p.name for p in (run_dir / "markers" / "extract").glob("*.json"))
    assert len(done) == 3  # the failing shard never committed; the others did
    resumed = run(_settings(base / "imgs", run_dir), {})
    c = _rows(resumed)
    assert c["shards_skipped"] == len(done) and c["shards_run"] == 4 - len(done)
    assert c["images_lost"] == 0
    _equal_to_reference(run_dir, ref)
    log.info("fault 'task dies after a partial write': injected 1, survived 1, lost rows 0")


def test_a_worker_killed_with_sigkill_is_retried(corpus, inject) -> None:
    base, ref, _ = corpus
    run_dir = base / "sigkill"
    flag = base / "killed-once"
    inject(f"sigkill_once:mid:{flag}")
    manifest = run(_settings(base / "imgs", run_dir), {})
    assert flag.exists()  # the kill happened
    assert _rows(manifest)["images_lost"] == 0
    _equal_to_reference(run_dir, ref)
    log.info("fault 'worker SIGKILL mid-extraction': injected 1, survived 1, lost rows 0")


def test_a_rerun_is_a_no_op_and_a_redo_writes_identical_bytes(corpus) -> None:
    base, ref, _ = corpus
    chunk = ref / "atlas.zarr" / "layers" / "blocks.2" / "acts" / "c" / "1" / "0"
    before = chunk.read_bytes()
    again = run(_settings(base / "imgs", ref), {})
    assert again["stages"]["extract"]["status"] == "skipped (complete)"
    (ref / "markers" / "extract" / "shard-000001.json").unlink()
    (ref / "markers" / "stage-extract.json").unlink()
    redo = run(_settings(base / "imgs", ref), {})
    assert redo["stages"]["extract"]["counts"]["shards_run"] == 1
    assert chunk.read_bytes() == before


def test_the_sharding_codec_gives_the_same_store(corpus) -> None:
    """zarr's sharding codec on: tasks own whole shards (2 chunks of 8), same data as chunks."""
    import zarr

    base, ref, _ = corpus
    run_dir = base / "sharded"
    manifest = run(
        _settings(base / "imgs", run_dir, "extract.chunk_images=8", "extract.zarr_shard_chunks=2"),
        {},
    )
    assert _rows(manifest)["shards"] == 4
    acts = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")["layers/blocks.2/acts"]
    assert acts.shards == (16, 32) and acts.chunks == (8, 32)
    _equal_to_reference(run_dir, ref)


def test_reduce_tasks_killed_with_sigkill_are_retried_to_the_same_layout(corpus, inject) -> None:
    """The sampled reduce is a Ray task graph (fit, searches, placements): a worker killed in the
    fit or in a search is retried by Ray and the layout equals the clean run's."""
    import shutil

    import numpy as np
    import zarr

    base, ref, _ = corpus
    stages = ("stages=[extract,reduce]", "reduce.fit_rows=30")
    layouts, injected = {}, 0
    for name, fault in (("clean", ""), ("fit", "fit"), ("search", "search")):
        run_dir = base / f"reduce-{name}"
        shutil.copytree(ref, run_dir)  # extraction done: its markers match, so it is skipped
        inject(f"sigkill_once:{fault}:{base / f'killed-{name}'}" if fault else "")
        manifest = run(_settings(base / "imgs", run_dir, *stages), {})
        assert manifest["stages"]["extract"]["status"].startswith("skipped")
        assert manifest["stages"]["reduce"]["details"]["sampled_fit"] is True
        if fault:
            assert (base / f"killed-{name}").exists()  # the kill happened
            injected += 1
        layouts[name] = zarr.open_group(str(run_dir / "atlas.zarr"))["layers/blocks.2/layout"][:]
    clean = layouts.pop("clean")
    assert np.isnan(clean).any(axis=1).sum() == 1  # the one bad image
    survived = [n for n, lay in layouts.items() if np.array_equal(lay, clean, equal_nan=True)]
    log.info(
        "fault 'reduce worker SIGKILL (fit, search)': injected %d, survived %d",
        injected,
        len(survived),
    )
    assert injected == 2 and sorted(survived) == ["fit", "search"]


def test_attribution_wider_than_topk_labels_every_cell(corpus) -> None:
    """extract.attr_classes=4 with topk=2 used to fail in the grid stage: the store now keeps four
    top classes per image, one per attribution column."""
    import zarr

    base, _, _ = corpus
    run_dir = base / "wide-attr"
    stages = ("stages=[extract,reduce,grid]", "extract.topk=2", "extract.attr_classes=4")
    manifest = run(_settings(base / "imgs", run_dir, *stages), {})
    assert manifest["stages"]["grid"]["details"]["labels"] == "attribution"
    g = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    assert g["images/top_class"].shape[1] == 4 and g["layers/blocks.2/attr"].shape[1] == 4
    labels = g["layers/blocks.2/grid/4/attr_top_class"][:]
    assert len(labels) == len(g["layers/blocks.2/grid/4/cell"][:]) and (labels[:, 0] >= 0).all()


def test_cuml_on_a_cluster_without_gpus_is_a_config_error(corpus) -> None:
    """On a cluster the fit task decides; cuML needs a GPU for it, and a cluster with none is
    refused at once, naming the setting and what the nodes have (Ray would wait forever)."""
    import shutil

    from atlas_core.errors import ConfigError

    pytest.importorskip("torch")
    try:
        import cuml  # noqa: F401

        pytest.skip("cuML is installed here")
    except ImportError:
        pass
    base, ref, _ = corpus
    run_dir = base / "cuml"
    shutil.copytree(ref, run_dir)
    # cluster.address set: the driver skips its own check and the fit task (Ray already running
    # in this module) finds no cuML
    s = _settings(
        base / "imgs",
        run_dir,
        "stages=[extract,reduce]",
        "reduce.backend=cuml",
        "cluster.address=auto",
    )
    with pytest.raises(ConfigError, match=r"reduce\.backend=cuml: cluster\.reduce_fit.*0 GPU"):
        run(s, {})


def test_a_request_no_node_can_run_fails_at_once(corpus) -> None:
    """Extraction tasks asking for a GPU on a cluster without one: refused before any task is
    submitted (Ray would wait forever), naming the setting and what the nodes have."""
    import time

    from atlas_core.errors import ConfigError

    base, _, _ = corpus
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"cluster\.extract: .*'num_gpus': 1.*0 GPU"):
        run(_settings(base / "imgs", base / "no-gpu", "cluster.extract.num_gpus=1"), {})
    assert time.perf_counter() - t0 < 60
    assert not list((base / "no-gpu" / "markers").glob("extract/*.json"))
