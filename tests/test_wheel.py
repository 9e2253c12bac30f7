"""The installed package builds an atlas: the wheel carries the config tree (``atlas_conf``) and
the viewer's pinned Leaflet; installed into a fresh virtual environment (its dependencies taken
from this one's site-packages, so nothing is downloaded), ``atlas`` run from an unrelated folder
builds an atlas whose viewer has everything it loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def test_the_wheel_installed_elsewhere_builds_an_atlas(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = dist.glob("activation_atlas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "atlas_conf/config.yaml",
        "atlas_conf/model/tiny.yaml",
        "pipelines/stages/render.py",
        "atlas_core/compose/static/viewer.js",
        "atlas_core/compose/static/common.js",
        "atlas_core/compose/static/vendor/leaflet-1.9.4/leaflet.js",
    } <= names
    venv = tmp_path / "venv"
    # no pip of its own (ensurepip takes seconds): this environment's pip installs into it
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, ray, ...
    py = venv / "bin" / "python"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(py)),
            *("install", "-q", "--no-deps", "--no-index", str(wheel)),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import pipelines, atlas_conf; print(pipelines.__file__, atlas_conf.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(ROOT) not in where.stdout and str(venv) in where.stdout  # the wheel's copy
    out = subprocess.run(
        [
            str(venv / "bin" / "atlas"),
            "debug=fast",
            "data.n_images=32",
            "run_dir=run",
            "cluster.num_cpus=2",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = elsewhere / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["stages"]["compose"]["status"] == "done"
    for f in (
        "viewer/index.html",
        "viewer/lib/leaflet/leaflet.js",
        "viewer/data/atlas.js",
        "viewer/data/links.js",
        "viewer/viewer.js",
        "viewer/common.js",
        "atlas.png",
    ):
        assert (run / f).is_file(), f
