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
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the tests' single-node loopback mode) makes
    # `ray start --address` refuse to join: these processes run as real cluster nodes, in a
    # network namespace whose only interface is loopback
    drop = ("ATLAS_TEST", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {
        **env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _ray(args: list[str], env: dict[str, str]) -> None:
    out = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def start_cluster() -> dict:
    """Head + two workers, each from `ray start`, in this process's network namespace."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a limit
    # the GCS checks each node's health every second instead of every 3 s: a killed worker is
    # declared dead after 5 refused checks (~5 s, not ~15 s); a slow one still has Ray's default
    # 10 s to answer each check, so a busy machine marks nothing dead by mistake
    env = {**_env(secrets.token_hex(32)), "RAY_health_check_period_ms": "1000"}
    gcs, dash = _port(), _port()
    ports: dict[str, int] = {}
    cluster = {"env": env, "gcs": gcs, "dash": dash, "ports": ports, "temp": temp}
    try:
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
    except BaseException:  # a node that failed to start: the others do not outlive the test
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: dict) -> None:
    """This cluster's processes only (never `ray stop`, which would end every Ray here)."""
    temp, gcs = cluster["temp"], cluster["gcs"]
    for p in psutil.process_iter(["cmdline"]):
        if any(temp in c or f"127.0.0.1:{gcs}" in c for c in p.info["cmdline"] or []):
            p.kill()
    shutil.rmtree(temp, ignore_errors=True)


def _nodes(cluster: dict) -> dict[str, str]:
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


# the workers advertise GPUs but have no CUDA: a stage given a GPU fails loudly there unless its
# device is set to cpu knowingly (the first job of the scenario checks the refusal)
CPU_KNOWINGLY = [f"cluster.{k}.device=cpu" for k in ("extract", "reduce_fit", "reduce_search")]


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


def _committed(run_dir: Path) -> dict[int, str]:
    """shard -> the node whose task committed it, from the shard markers."""
    out = {}
    for p in (run_dir / "markers" / "extract").glob("shard-*.json"):
        try:
            out[int(p.stem.split("-")[1])] = json.loads(p.read_text())["where"]["node"]
        except (json.JSONDecodeError, KeyError):  # being written
            continue
    return out


def scenario(tmp: Path) -> dict:
    """The whole run, inside the test's network namespace; returns what the test checks."""
    make_images(tmp / "imgs", 48, size=64, seed=11)
    traces, run_dir, ref_dir = tmp / "traces", tmp / "run", tmp / "ref"
    traces.mkdir()
    cluster = start_cluster()
    ref = None
    try:
        nodes = _nodes(cluster)
        submit = [RAY, "job", "submit", f"--address=http://127.0.0.1:{cluster['dash']}"]
        atlas = [
            sys.executable,
            "-c",
            "from pipelines.commands.cli import main; main()",
            "cluster=ray_cluster",
            "cluster.address=auto",
        ]
        # the local single-process reference, in its own process and local Ray, runs while the
        # cluster refuses the first job; it has ended before the timed job starts
        # (RAY_ADDRESS=local: its ray.init starts a Ray of its own, never joins the cluster)
        ref_env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_TEST")}
        ref_cmd = [sys.executable, "-m", "pipelines", *_args(tmp / "imgs", ref_dir)]
        with open(tmp / "ref.log", "w") as ref_log:
            ref = subprocess.Popen(
                [*ref_cmd, "cluster.num_cpus=2"],
                env={**ref_env, "RAY_ADDRESS": "local"},
                stdout=ref_log,
                stderr=subprocess.STDOUT,
            )
        refused = subprocess.run(
            [*submit, "--", *atlas, *_args(tmp / "imgs", tmp / "gpu")],
            env=cluster["env"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ref.wait(timeout=600) == 0, (tmp / "ref.log").read_text()[-3000:]
        runtime = {"env_vars": {"ATLAS_TEST_FAULT": f"sleep:mid:0.5;trace:start:{traces}"}}
        cmd = [
            *submit,
            f"--runtime-env-json={json.dumps(runtime)}",
            "--",
            *atlas,
            *_args(tmp / "imgs", run_dir),
            *CPU_KNOWINGLY,
        ]
        t0 = time.perf_counter()
        job = subprocess.Popen(
            cmd, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline, started_b = time.time() + 240, []
        while time.time() < deadline:  # b has committed a shard and is in the middle of another
            started_b = sorted(
                {int(p.name.split("-")[1]) for p in traces.iterdir() if nodes["b"] in p.name}
            )
            done_b = [i for i, node in _committed(run_dir).items() if node == nodes["b"]]
            if done_b and set(started_b) - set(done_b):
                break
            time.sleep(0.05)
        _kill_node(cluster["ports"]["b"])  # worker b dies while shards are in flight
        output, _ = job.communicate(timeout=600)
        seconds = time.perf_counter() - t0
        interfaces = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    finally:
        stop_cluster(cluster)
        if ref is not None and ref.poll() is None:  # the scenario failed before it ended
            ref.kill()
            ref.wait()
    gpu_refusal = {
        "returncode": refused.returncode,
        "output": refused.stdout[-6000:],
        "wrote_store": (tmp / "gpu" / "atlas.zarr").exists(),
    }
    if job.returncode != 0:  # the test reports the job's own output
        return {"returncode": job.returncode, "output": output[-4000:], "gpu": gpu_refusal}
    a = zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")
    b = zarr.open_group(str(ref_dir / "atlas.zarr"), mode="r")
    return {
        "returncode": job.returncode,
        "output": output[-4000:],
        "seconds": seconds,
        "nodes": nodes,
        "started_on_b": started_b,
        "gpu": gpu_refusal,
        "committed_by": _committed(run_dir),
        "equal": {n: bool(np.array_equal(a[n][:], b[n][:], equal_nan=True)) for n in ARRAYS},
        "interfaces": sorted(line.split(":")[0].strip() for line in interfaces),
    }


def test_a_submitted_job_survives_a_lost_worker(tmp_path: Path) -> None:
    """Runs :func:`scenario` in a fresh network namespace that has only the loopback interface
    (``unshare --net``): Ray's cluster mode binds some servers to every interface, and in there
    every interface is loopback."""
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode
    ):
        pytest.skip("needs `unshare --net` (root, or user namespaces) to keep Ray on loopback")
    root = Path(__file__).resolve().parents[2]
    module = "tests.pipelines.test_ray_jobs"
    script = f"ip link set lo up && exec {sys.executable} -m {module} {tmp_path}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["returncode"] == 0, r["output"]
    assert r["interfaces"] == ["lo"]
    gpu = r["gpu"]  # GPUs asked where CUDA does not work: refused before any work, naming why
    assert gpu["returncode"] != 0 and not gpu["wrote_store"], gpu
    assert "where CUDA does not work" in gpu["output"] and "device=cpu knowingly" in gpu["output"]
    # refused before any work: failed.json, and no manifest (none to replace, none written)
    assert not (tmp_path / "gpu" / "manifest.json").exists()
    failed = json.loads((tmp_path / "gpu" / "failed.json").read_text())
    assert "CUDA" in failed["error"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    ex = manifest["stages"]["extract"]["counts"]
    assert (ex["images_expected"], ex["images_ok"], ex["images_failed"], ex["images_lost"]) == (
        48,
        48,
        0,
        0,
    )
    nodes, committed = r["nodes"], {int(k): v for k, v in r["committed_by"].items()}
    assert set(nodes) == {"a", "b"} and r["started_on_b"]
    retried = [i for i in r["started_on_b"] if committed[i] == nodes["a"]]
    assert retried, r  # b's unfinished shards were retried on a
    assert set(committed.values()) == {nodes["a"], nodes["b"]}  # work committed on both
    assert manifest["stages"]["reduce"]["details"]["where"]["node"] in nodes.values()
    assert all(r["equal"].values()), r["equal"]
    log.info(
        "ray job submit on a 3-process cluster (head + 2 workers advertising GPUs, token auth, "
        "a network namespace with only lo): worker b killed after it had started shards %s "
        "(%s retried on a); nodes that committed shards: %d of 2; faults injected 1, survived "
        "1; rows 48 = ok 48 + "
        "failed 0 + lost 0; store equal to the local reference (%s); %.0f s",
        r["started_on_b"],
        retried,
        len(set(committed.values())),
        ", ".join(ARRAYS),
        r["seconds"],
    )


if __name__ == "__main__":
    target = Path(sys.argv[1])
    (target / "result.json").write_text(json.dumps(scenario(target)))
