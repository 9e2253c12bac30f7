"""Shared fixtures: small generated images and one local Ray per test module that asks for it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")  # see pipelines/ray_ops.py
# Every Ray address resolves to 127.0.0.1 (else Ray picks the machine's interface address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_images(folder: Path, n: int, *, size: int = 72, seed: int = 0) -> list[Path]:
    """``n`` random-texture RGB images (PNG and JPEG alternately) in ``folder``/sub*/."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"sub{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (1, 1, 3))
        noise = rng.integers(0, 80, (size, size, 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        p = sub / f"img{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    make_images(tmp_path / "images", 40)
    return tmp_path / "images"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module, bound to 127.0.0.1, dashboard off."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def inject(monkeypatch):
    """``inject("raise:after_write:1")``: the fault the next run's tasks see (the test hook
    ``ATLAS_TEST_FAULT``, read by the driver; no config key)."""
    from pipelines.core.common import FAULT_ENV

    def set_fault(fault: str) -> None:
        monkeypatch.setenv(FAULT_ENV, fault)

    yield set_fault
    monkeypatch.delenv(FAULT_ENV, raising=False)


def debug_settings(*overrides: str):
    """(Settings, resolved config) of the ``debug=fast`` configuration plus ``overrides``."""
    from hydra import compose, initialize_config_dir

    from pipelines.commands.main import CONF_DIR, to_settings

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return to_settings(compose("config", overrides=["debug=fast", *overrides]))


def folder_settings(images: Path, run_dir: Path | str, *overrides: str):
    """Settings of an extraction-only debug run over a folder of images."""
    return debug_settings(
        "data=folder", f"data.path={images}", f"run_dir={run_dir}", "stages=[extract]", *overrides
    )[0]


def assert_same_store(a_dir: Path, b_dir: Path, arrays: tuple[str, ...]) -> None:
    """The named arrays of two runs' stores are equal (NaN holes included)."""
    import zarr

    a = zarr.open_group(str(a_dir / "atlas.zarr"), mode="r")
    b = zarr.open_group(str(b_dir / "atlas.zarr"), mode="r")
    for name in arrays:
        assert np.array_equal(a[name][:], b[name][:], equal_nan=True), name


def stage_run(s, name: str):
    """The ``StageRun`` the runner would hand stage ``name`` in the main view of ``s``."""
    from pipelines.commands.run import stage_run as runner_stage_run

    return runner_stage_run(s, name)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say what was skipped and why, with the command that brings it: a quiet ``s`` for the
    browser tests hides that the viewer went untested."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return
    fixes = {
        "chromium": "install Debian's chromium (sudo apt-get install chromium); `make test` "
        "does when it runs as root with apt-get",
        "CUDA": "run them on a GPU machine: `make gpu-check`",
    }
    terminalreporter.section("skipped tests")
    for reason, n in sorted(reasons.items(), key=lambda x: -x[1]):
        fix = next((f for k, f in fixes.items() if k in reason), "")
        terminalreporter.write_line(
            f"{n} skipped: {reason}" + (f". To run them: {fix}" if fix else "")
        )
