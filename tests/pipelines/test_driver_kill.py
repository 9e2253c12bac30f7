"""The driver killed (SIGKILL, with its whole process group) in the middle of extraction, then the
same command run again: it resumes at the uncommitted shards, and the store equals a reference."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from pipelines.commands.main import CONF_DIR
from pipelines.core.common import FAULT_ENV
from tests.conftest import assert_same_store, make_images

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)
ROOT = Path(CONF_DIR).parent


def _cmd(images: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines",
        "debug=fast",
        "data=folder",
        f"data.path={images}",
        f"run_dir={run_dir}",
        "extract.chunk_images=8",
        "extract.batch_size=4",
        "stages=[extract]",
        "cluster.num_cpus=1",
        *extra,
    ]


def _atlas(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def test_a_killed_driver_resumes_where_it_stopped(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 48, size=64, seed=9)
    run_dir, ref_dir = tmp_path / "run", tmp_path / "ref"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", FAULT_ENV: "sleep:mid:0.5"}
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as driver_log:
        proc = subprocess.Popen(
            _cmd(tmp_path / "imgs", run_dir),
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=driver_log,
            stderr=driver_log,
        )
    markers = run_dir / "markers" / "extract"
    deadline = time.time() + 180
    while time.time() < deadline and not (markers.exists() and any(markers.glob("*.json"))):
        assert proc.poll() is None, log_path.read_text()[-3000:]  # the driver must still run
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=30)
    # a worker busy at the kill may still finish its shard: identical bytes, then its marker
    time.sleep(3)
    committed = len(list(markers.glob("*.json")))
    assert 1 <= committed < 6
    env.pop(FAULT_ENV)  # the resumed and reference runs have no fault
    resumed = _atlas(_cmd(tmp_path / "imgs", run_dir), env)
    assert f"{6 - committed} shards to run, {committed} already committed" in (
        resumed.stdout + resumed.stderr
    )
    _atlas(_cmd(tmp_path / "imgs", ref_dir), env)
    assert_same_store(
        run_dir, ref_dir, ("images/status", "layers/blocks.2/acts", "images/top_class")
    )
    assert (zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")["images/status"][:] == 1).all()
    log.info(
        "fault 'driver killed': injected 1, survived 1; %d of 6 shards kept, rows lost 0", committed
    )
