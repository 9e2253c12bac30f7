"""Autoscaling from zero: Ray's fake multi-node autoscaler (``RAY_FAKE_CLUSTER=1 ray start
--head --autoscaling-config=...``, provider ``fake_multinode``), whose GPU worker type starts at
zero nodes, as KubeRay's GPU group does. The atlas joins it with ``cluster=ray_cluster``: each
stage asks the autoscaler for what it needs and waits; GPU nodes come up, the run finishes, and
its markers name the nodes that came up. The head exports Ray metrics: the atlas's own are on
its Prometheus endpoint. Then, on the same cluster, a run whose ``cluster.plausibility`` asks for
more than any node type has fails within a minute instead of waiting ``cluster.wait_s``. All in
a network namespace whose only interface is loopback.

The fake GPUs have no CUDA: the test sets the GPU stages' device to ``cpu`` knowingly (with
``auto`` a GPU task on a cluster fails loudly where CUDA does not work; tested on its own).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.stages import REGISTRY
from tests.conftest import make_images
from tests.pipelines.test_ray_jobs import RAY, _env, _port, stop_cluster

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray


def _config(gcs: int) -> dict:
    return {
        "cluster_name": "atlas-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 30,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu": {
                "resources": {"CPU": 4, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _gpu_nodes(dash: int, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [RAY, "list", "nodes", "--format=json", "--detail", f"--address=http://127.0.0.1:{dash}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return sorted(
        n["node_id"]
        for n in json.loads(out.stdout or "[]")
        if n.get("resources_total", {}).get("GPU") and n.get("state") == "ALIVE"
    )


def _atlas(tmp: Path, gcs: int, env: dict[str, str], run_dir: str, *extra: str) -> dict:
    """One ``atlas`` run joining the fake cluster, every GPU stage on the CPU knowingly."""
    cpu = [f"cluster.{k}.device=cpu" for k in REGISTRY.resources()]  # every stage's entry
    cmd = [
        sys.executable,
        "-m",
        "pipelines",
        "debug=fast",
        "data=folder",
        f"data.path={tmp / 'imgs'}",
        f"run_dir={tmp / run_dir}",
        "cluster=ray_cluster",
        f"cluster.address=127.0.0.1:{gcs}",
        "cluster.wait_s=240",
        "extract.chunk_images=8",
        "reduce.n_neighbors=8",
        "cluster.extract.num_cpus=2",  # every GPU stage follows extract (ray_cluster.yaml)
        "reduce.backend=umap-learn",
        *cpu,
        *extra,
    ]
    t0 = time.perf_counter()
    job = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2]
    )
    out = job.stdout + job.stderr
    return {"returncode": job.returncode, "output": out, "seconds": time.perf_counter() - t0}


def scenario(tmp: Path) -> dict:
    """One fake cluster: a run that grows the GPU group from zero and finishes; then a run
    whose ``cluster.plausibility`` asks for more CPUs than the GPU node type has."""
    make_images(tmp / "imgs", 32, size=64, seed=3)
    temp = tempfile.mkdtemp(prefix="as", dir="/tmp")
    env = {
        **_env(secrets.token_hex(32)),
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    }
    gcs, dash, metrics = _port(), _port(), _port()
    (tmp / "autoscaling.json").write_text(json.dumps(_config(gcs)))
    start = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--autoscaling-config={tmp / 'autoscaling.json'}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--metrics-export-port={metrics}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    cluster = {"temp": temp, "gcs": gcs}
    try:
        out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        before = _gpu_nodes(dash, env)
        job = _atlas(tmp, gcs, env, "run")
        # at once: a gauge leaves the endpoint ~20 s after its driver stops reporting it
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30).read()
        after = _gpu_nodes(dash, env)
        interfaces = Path("/proc/self/net/dev").read_text().splitlines()[2:]
        too_big = _atlas(tmp, gcs, env, "too-big", "cluster.plausibility.num_cpus=8")
    finally:
        stop_cluster(cluster)
    return {
        "returncode": job["returncode"],
        "output": job["output"][-5000:],
        "seconds": job["seconds"],
        "gpu_nodes_before": before,
        "gpu_nodes_after": after,
        "metrics": [ln for ln in scraped.decode().splitlines() if "atlas" in ln][:60],
        "interfaces": sorted(line.split(":")[0].strip() for line in interfaces),
        "too_big": {**too_big, "output": too_big["output"][-5000:]},
    }


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The scenario's results (one fake cluster for the module), run in a network namespace."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("needs `unshare --net` (root, or user namespaces) to keep Ray on loopback")
    tmp = tmp_path_factory.mktemp("fake")
    root = Path(__file__).resolve().parents[2]
    script = f"ip link set lo up && exec {sys.executable} -m tests.pipelines.test_autoscaling {tmp}"
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {**json.loads((tmp / "result.json").read_text()), "tmp": tmp}


def test_a_gpu_group_that_starts_at_zero_grows_and_the_run_finishes(fake: dict) -> None:
    r = fake
    assert r["interfaces"] == ["lo"]
    assert r["returncode"] == 0, r["output"]
    assert r["gpu_nodes_before"] == [] and r["gpu_nodes_after"], r  # grown from zero
    manifest = json.loads((r["tmp"] / "run" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    nodes = set(manifest["stages"]["extract"]["details"]["nodes"])
    assert nodes and nodes <= set(r["gpu_nodes_after"])  # extraction ran on nodes that came up
    assert manifest["hardware"] and all(h["node"] for h in manifest["hardware"].values())
    asked = [k for h in manifest["hardware"].values() for k in h["for"]]
    assert "plausibility" in asked and "patches" not in asked  # no class pair: no patches stage
    series = {ln.split("{")[0] for ln in r["metrics"] if not ln.startswith("#")}
    assert "ray_atlas_stage_done" in series, r["metrics"]
    log.info(
        "fake autoscaler: GPU nodes 0 -> %d, extraction on %d of them, %.0f s; %d waiting lines; "
        "metrics scraped from the head: %d atlas series (%s)",
        len(r["gpu_nodes_after"]),
        len(nodes),
        r["seconds"],
        r["output"].count("waiting for a node with"),
        len(r["metrics"]),
        ", ".join(sorted(series)),
    )


def test_a_shape_no_node_type_holds_fails_within_a_minute(fake: dict) -> None:
    """``cluster.plausibility`` asks for 8 CPUs, the GPU node type has 4: the autoscaler launches
    nothing for it (v1 logs "could not find a node type to satisfy the request"); the run fails
    long before ``cluster.wait_s=240``, naming the setting, the shape and the node types, and
    records the failure in the run directory."""
    r = fake["too_big"]
    assert r["returncode"] == 2, r["output"]
    out = r["output"]
    assert "cluster.plausibility: {'num_cpus': 8.0, 'num_gpus': 1.0} is not valid" in out, out
    assert "no node of this cluster can hold 8 CPU, 1 GPU" in out
    assert "ray.head.default (1 CPU, 0 GPU, 1 up)" in out and "gpu (4 CPU, 1 GPU, " in out
    found = re.search(r"\((\d+) s after asking\)", out)
    assert found, out
    seconds = int(found.group(1))
    assert seconds <= 60
    failed = json.loads((fake["tmp"] / "too-big" / "failed.json").read_text())
    assert "cluster.plausibility" in failed["error"] and "8 CPU, 1 GPU" in failed["error"]
    assert not (fake["tmp"] / "too-big" / "manifest.json").exists()
    log.info(
        "a shape no node type holds (8 CPU, 1 GPU; GPU nodes of 4 CPU): refused %d s after "
        "asking the autoscaler (the run %.0f s in all, cluster.wait_s=240)",
        seconds,
        r["seconds"],
    )


if __name__ == "__main__":
    target = Path(sys.argv[1])
    (target / "result.json").write_text(json.dumps(scenario(target)))
