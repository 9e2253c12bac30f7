"""The driver killed (SIGKILL, with its whole process group) in the middle of extraction, then the
same command run again: it resumes at the uncommitted shards, and the store equals a reference.
The driver alone SIGKILLed (as the OOM killer does): no process of its local Ray outlives it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import zarr

from pipelines.commands.main import CONF_DIR
from pipelines.core.common import FAULT_ENV
from tests.conftest import assert_same_store, make_images

pytestmark = pytest.mark.ray

log = logging.getLogger(__name__)
ROOT = Path(CONF_DIR).parent


def _cmd(images: Path, run_dir: Path, *extra: str, stages: str = "[extract]") -> list[str]:
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
        f"stages={stages}",
        "cluster.num_cpus=1",
        *extra,
    ]


def _atlas(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


@contextmanager
def _reference(cmd: list[str], env: dict[str, str], log_path: Path) -> Iterator[Callable[[], None]]:
    """The uninterrupted reference run, started in the background beside the scenario (its own
    run directory and its own local Ray, so the two overlap their imports and Ray's start);
    yields the function that waits for it to succeed. Never outlives the test."""
    with open(log_path, "w") as ref_log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=ref_log, stderr=ref_log)

    def finish() -> None:
        assert proc.wait(timeout=300) == 0, log_path.read_text()[-3000:]

    try:
        yield finish
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_killed_driver_resumes_where_it_stopped(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 48, size=64, seed=9)
    run_dir, ref_dir = tmp_path / "run", tmp_path / "ref"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", FAULT_ENV: "sleep:mid:0.5"}
    plain = {k: v for k, v in env.items() if k != FAULT_ENV}  # the reference has no fault
    with _reference(
        _cmd(tmp_path / "imgs", ref_dir), plain, tmp_path / "ref.log"
    ) as finish_reference:
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
        resumed = _atlas(_cmd(tmp_path / "imgs", run_dir), plain)  # the resumed run has no fault
        assert f"{6 - committed} shards to run, {committed} already committed" in (
            resumed.stdout + resumed.stderr
        )
        finish_reference()
    assert_same_store(
        run_dir, ref_dir, ("images/status", "layers/blocks.2/acts", "images/top_class")
    )
    assert (zarr.open_group(str(run_dir / "atlas.zarr"), mode="r")["images/status"][:] == 1).all()
    log.info(
        "fault 'driver killed': injected 1, survived 1; %d of 6 shards kept, rows lost 0", committed
    )


def test_a_driver_killed_in_the_exemplars_stage_resumes_to_the_same_store(tmp_path: Path) -> None:
    """The driver killed while the exemplars stage's patch tasks run (the first sheet written):
    the same command again finishes, and the exemplars (index arrays, every patch and source
    sheet, byte for byte) and the viewer's data equal an uninterrupted run's."""
    make_images(tmp_path / "imgs", 48, size=64, seed=5)
    run_dir, ref_dir = tmp_path / "run", tmp_path / "ref"
    every = "[extract,reduce,grid,exemplars,render,plausibility,compose]"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with _reference(
        _cmd(tmp_path / "imgs", ref_dir, "exemplars.rows_per_task=8", stages=every),
        env,
        tmp_path / "ref.log",
    ) as finish_reference:
        _atlas(
            _cmd(
                tmp_path / "imgs",
                run_dir,
                "exemplars.rows_per_task=8",
                stages="[extract,reduce,grid]",
            ),
            env,
        )
        env_slow = {**env, FAULT_ENV: "sleep:patch:0.7"}
        with open(tmp_path / "driver.log", "w") as driver_log:
            proc = subprocess.Popen(
                _cmd(tmp_path / "imgs", run_dir, "exemplars.rows_per_task=8", stages=every),
                cwd=ROOT,
                env=env_slow,
                start_new_session=True,
                stdout=driver_log,
                stderr=driver_log,
            )
        sheets = run_dir / "exemplars" / "blocks.2"
        deadline = time.time() + 180
        while time.time() < deadline and not (sheets.exists() and any(sheets.glob("patches-*"))):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(2)
        assert not (run_dir / "markers" / "stage-exemplars.json").exists()  # killed mid-stage
        resumed = _atlas(
            _cmd(tmp_path / "imgs", run_dir, "exemplars.rows_per_task=8", stages=every), env
        )
        assert "reduce: complete, skipped" in resumed.stdout + resumed.stderr
        finish_reference()
    ex = "layers/blocks.2/exemplars"
    assert_same_store(
        run_dir,
        ref_dir,
        tuple(f"{ex}/{a}" for a in ("row", "box", "ok", "slot", "source", "thumb_size")),
    )
    assert_same_store(run_dir, ref_dir, ("layers/blocks.2/grid/4/exemplar_row",))
    files = sorted(p.name for p in (ref_dir / "exemplars" / "blocks.2").iterdir())
    assert files == sorted(p.name for p in sheets.iterdir()) and len(files) > 2
    ref_sheets = ref_dir / "exemplars" / "blocks.2"
    for name in files:
        assert (sheets / name).read_bytes() == (ref_sheets / name).read_bytes(), name
    for name in ("level-4.js", "cards-4-0.js"):
        a, b = (d / "viewer" / "data" / name for d in (run_dir, ref_dir))
        assert a.read_bytes() == b.read_bytes(), name
    log.info(
        "fault 'driver killed mid-exemplars': injected 1, survived 1; %d sheets equal", len(files)
    )


def _tree(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _running(p: psutil.Process) -> bool:
    try:  # matched by pid and start time; a zombie has ended
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_sigkilled_driver_leaves_no_process_of_its_ray(tmp_path: Path) -> None:
    """SIGKILL to the driver alone, mid-extraction (not its process group, unlike above): Ray
    gives the processes it starts the parent-death signal, but its dashboard and runtime-env
    agents are the raylet's and lingered 60-90 s (trying to tell the dead GCS); the driver's
    watchdog ends every one of them within seconds."""
    make_images(tmp_path / "imgs", 48, size=64, seed=9)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", FAULT_ENV: "sleep:mid:0.5"}
    with open(tmp_path / "driver.log", "w") as driver_log:
        proc = subprocess.Popen(
            _cmd(tmp_path / "imgs", tmp_path / "run"),
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=driver_log,
            stderr=driver_log,
        )
    tree: dict[int, psutil.Process] = {}
    try:
        markers = tmp_path / "run" / "markers" / "extract"
        deadline = time.time() + 180
        while time.time() < deadline and not (markers.exists() and any(markers.glob("*.json"))):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.1)
        for _ in range(5):  # the driver's processes mid-run (workers come and go)
            tree |= _tree(proc.pid)
            time.sleep(0.2)
        names = [" ".join(p.cmdline()) for p in tree.values() if _running(p)]
        agents = [n for n in names if n.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]
        assert len(agents) == 2 and any("raylet" in n for n in names), names
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        t0 = time.monotonic()
        left = list(tree.values())
        while left and time.monotonic() - t0 < 30:
            time.sleep(0.2)
            left = [p for p in left if _running(p)]
        seconds = time.monotonic() - t0
        assert not left, [" ".join(p.cmdline())[:80] for p in left]
        assert seconds < 15
    finally:
        for p in tree.values():  # whatever the outcome, nothing of this test stays behind
            if _running(p):
                p.kill()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log.info(
        "driver SIGKILLed mid-extraction: %d processes of its local Ray (%d agents) before, "
        "0 left %.1f s after",
        len(tree),
        len(agents),
        seconds,
    )
