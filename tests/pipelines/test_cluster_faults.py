"""A node removed from a real multi-node Ray cluster (ray.cluster_utils.Cluster: a head and two
workers on 127.0.0.1) in the middle of extraction: its tasks are retried elsewhere and the store
equals a clean single-process reference."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from pipelines.commands.run import run
from pipelines.core import ray_ops
from tests.conftest import assert_same_store, folder_settings, make_images

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)


def _settings(images: Path, run_dir: Path, *extra: str):
    return folder_settings(
        images, run_dir, "extract.chunk_images=8", "extract.batch_size=4", *extra
    )


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    workers = [c.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray_ops.shutdown()
    c.shutdown()


def test_removing_a_node_mid_run_loses_nothing(cluster, tmp_path: Path, inject) -> None:
    c, workers = cluster
    traces = tmp_path / "traces"
    traces.mkdir()
    inject(f"sleep:mid:0.4;trace:start:{traces}")
    make_images(tmp_path / "imgs", 48, size=64, seed=5)
    ref_dir = tmp_path / "ref"
    s = _settings(
        tmp_path / "imgs",
        tmp_path / "run",
        f"cluster.address={c.address}",
    )
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(run(s, {})))
    t.start()
    markers = tmp_path / "run" / "markers" / "extract"
    deadline = time.time() + 120
    while time.time() < deadline and not (markers.exists() and any(markers.iterdir())):
        time.sleep(0.1)
    removed = workers[1].node_id
    started_there = lambda: [p.name for p in traces.iterdir() if removed in p.name]  # noqa: E731
    while time.time() < deadline and not started_there():
        time.sleep(0.1)
    c.remove_node(workers[1])  # a worker node dies while shards are in flight
    t.join(timeout=300)
    assert not t.is_alive() and "stages" in result
    ex = result["stages"]["extract"]["counts"]
    assert ex["images_expected"] == ex["images_ok"] + ex["images_failed"] + ex["images_lost"]
    assert ex["images_lost"] == 0 and ex["images_ok"] == 48 and ex["shards"] == 6
    # work was running on the removed node, and every shard it started and did not commit
    # was retried on the node that is left (the markers name the node that committed)
    done = {
        int(p.stem.split("-")[1]): json.loads(p.read_text())["where"]["node"]
        for p in markers.glob("shard-*.json")
    }
    on_removed = {int(name.split("-")[1]) for name in started_there()}
    retried = {i for i in on_removed if done[i] != removed}
    assert on_removed and retried and all(done[i] == workers[0].node_id for i in retried)
    # the reference: the same inputs with no fault, on the node that is left
    inject("")
    ref = run(_settings(tmp_path / "imgs", ref_dir, f"cluster.address={c.address}"), {})
    assert ref["stages"]["extract"]["counts"]["images_ok"] == 48
    assert_same_store(
        tmp_path / "run", ref_dir, ("images/status", "layers/blocks.2/acts", "images/top_class")
    )
    log.info(
        "fault 'node removed mid-run': injected 1, survived 1 (shards started on it %s, "
        "retried on the other node %s); rows 48 = ok 48 + 0 + 0",
        sorted(on_removed),
        sorted(retried),
    )
