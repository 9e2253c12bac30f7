"""A real multi-process Ray cluster on 127.0.0.1, as on separate machines: a head started with
``ray start --head`` (no CPUs, no GPUs) and two workers with ``ray start --address`` that
advertise GPUs the head lacks; token authentication on, every port on loopback. The atlas is
submitted with ``ray job submit`` (the Jobs API) with ``cluster=ray_cluster``; one worker node is
killed in the middle of extraction. The job finishes, the store equals a local single-process
reference, and the markers show extraction work on both workers."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from tests.conftest import make_images

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).parent / "ray")
ARRAYS = ("images/status", "images/top_class", "layers/blocks.2/acts", "layers/blocks.2/layout")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_TEST")}
    return {
        **env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def _ray(args: list[str], env: dict[str, str]) -> None:
    out = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a limit
    env = _env(secrets.token_hex(32))
    gcs, dash = _port(), _port()
    _ray(
        [
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--num-cpus=0",
            "--num-gpus=0",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env,
    )
    ports = {}
    for name in ("a", "b"):
        ports[name] = _port()
        _ray(
            [
                "start",
                f"--address=127.0.0.1:{gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=4",
                "--num-gpus=1",
                f"--node-manager-port={ports[name]}",
                f"--resources={json.dumps({f'worker_{name}': 1})}",
            ],
            env,
        )
    yield {"env": env, "gcs": gcs, "dash": dash, "ports": ports, "temp": temp}
    for p in psutil.process_iter(["cmdline"]):  # this cluster's processes only, never `ray stop`
        if any(temp in c or f"127.0.0.1:{gcs}" in c for c in p.info["cmdline"] or []):
            p.kill()
    shutil.rmtree(temp, ignore_errors=True)


def _nodes(cluster: dict) -> dict[str, str]:  # type: ignore[type-arg]
    """worker name -> Ray node id, from the state API (as an operator would look it up)."""
    out = subprocess.run(
        [
            RAY,
            "list",
            "nodes",
            "--format=json",
            "--detail",
            f"--address=http://127.0.0.1:{cluster['dash']}",
        ],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    nodes = json.loads(out.stdout)
    return {
        k.removeprefix("worker_"): n["node_id"]
        for n in nodes
        for k in n.get("resources_total", {})
        if k.startswith("worker_")
    }


def _kill_node(port: int) -> None:
    """SIGKILL the raylet that serves ``--node-manager-port`` and every worker under it."""
    for p in psutil.process_iter(["cmdline"]):
        if any(f"--node_manager_port={port}" in c for c in p.info["cmdline"] or []):
            for child in p.children(recursive=True):
                child.send_signal(signal.SIGKILL)
            p.send_signal(signal.SIGKILL)


def _args(images: Path, run_dir: Path) -> list[str]:
    return [
        "debug=fast",
        "data=folder",
        f"data.path={images}",
        f"run_dir={run_dir}",
        "extract.chunk_images=8",
        "extract.batch_size=4",
        "stages=[extract,reduce]",
        "reduce.n_neighbors=8",
    ]


def test_a_submitted_job_survives_a_lost_worker(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_images(tmp_path / "imgs", 48, size=64, seed=11)
    traces = tmp_path / "traces"
    traces.mkdir()
    run_dir = tmp_path / "run"
    runtime = {"env_vars": {"ATLAS_TEST_FAULT": f"sleep:mid:0.3;trace:start:{traces}"}}
    cmd = [
        RAY,
        "job",
        "submit",
        f"--address=http://127.0.0.1:{cluster['dash']}",
        f"--runtime-env-json={json.dumps(runtime)}",
        "--",
        sys.executable,
        "-c",
        "from pipelines.cli import main; main()",
        "cluster=ray_cluster",
        "cluster.address=auto",
        *_args(tmp_path / "imgs", run_dir),
    ]
    nodes = _nodes(cluster)
    assert set(nodes) == {"a", "b"}
    t0 = time.perf_counter()
    job = subprocess.Popen(
        cmd, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not any(nodes["b"] in p.name for p in traces.iterdir()):
        time.sleep(0.2)
    started_on_b = sorted(
        {int(p.name.split("-")[1]) for p in traces.iterdir() if nodes["b"] in p.name}
    )
    _kill_node(cluster["ports"]["b"])  # worker b dies while shards are in flight
    output, _ = job.communicate(timeout=600)
    seconds = time.perf_counter() - t0
    assert job.returncode == 0, output[-4000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ex = manifest["stages"]["extract"]["counts"]
    assert (ex["images_expected"], ex["images_ok"], ex["images_failed"], ex["images_lost"]) == (
        48,
        48,
        0,
        0,
    )
    # work ran on both workers: committed shards name each; b's unfinished shards went to a
    done = {
        int(p.stem.split("-")[1]): json.loads(p.read_text())["where"]
        for p in (run_dir / "markers" / "extract").glob("shard-*.json")
    }
    committed_by = {w["node"] for w in done.values()}
    assert started_on_b and nodes["a"] in committed_by
    retried = [i for i in started_on_b if done[i]["node"] == nodes["a"]]
    assert retried, (started_on_b, done)
    assert manifest["stages"]["reduce"]["details"]["where"]["node"] in nodes.values()
    # the reference: the same run in one local process
    from pipelines import ray_ops
    from pipelines.run import run
    from tests.conftest import debug_settings

    ref_dir = tmp_path / "ref"
    s, resolved = debug_settings(*_args(tmp_path / "imgs", ref_dir), "cluster.num_cpus=2")
    try:
        run(s, resolved)
    finally:
        ray_ops.shutdown()
    a = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    b = zarr.open_group(str(ref_dir / "atlas.zarr"), mode="r")
    for name in ARRAYS:
        assert np.array_equal(a[name][:], b[name][:], equal_nan=True), name
    log.info(
        "ray job on a 3-process cluster (head + 2 GPU-advertising workers, token auth, loopback): "
        "worker b killed after starting shards %s; retried on a: %s; nodes that committed %d; "
        "faults injected 1, survived 1; rows 48 = ok 48 + failed 0 + lost 0; store equal to the "
        "local reference (%s); %.0f s",
        started_on_b,
        retried,
        len(committed_by),
        ", ".join(ARRAYS),
        seconds,
    )
