"""A Hydra sweep through the real ``atlas -m`` command: two models (the toy net with two weight
sets) x two layers, one job made to fail. Each job gets its own run directory named by its
overrides; the failure is recorded and the others finish; the jobs of one model share one
extraction; the sweep's index page shows three atlases and one failure; the exit code is 1."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file

from atlas_core.models.tiny import TinyNet
from pipelines.core.common import FAULT_ENV

log = logging.getLogger(__name__)
pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_a_sweep_of_two_models_by_two_layers_with_one_failure(tmp_path: Path) -> None:
    for seed in (0, 1):
        save_file(TinyNet(seed=seed).state_dict(), str(tmp_path / f"w{seed}.safetensors"))
    sweep = tmp_path / "sweep"
    env = {**os.environ, FAULT_ENV: "raise:run:layer=blocks.1,model.weights=w1"}
    cmd = [
        sys.executable,
        "-c",
        "from pipelines.commands.cli import main; main()",
        "-m",
        "debug=fast",
        "model.weights=w0.safetensors,w1.safetensors",
        "layer=blocks.1,blocks.2",
        "extract.layers=[blocks.1,blocks.2]",
        "data.n_images=48",
        "cluster.num_cpus=2",
        f"hydra.sweep.dir={sweep}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - t0
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    index = json.loads((sweep / "index.json").read_text())
    runs = {r["run"]: r for r in index["runs"]}
    assert len(runs) == 4 and index["failed"] == 1
    failed = [n for n, r in runs.items() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0].endswith("layer=blocks.1,model.weights=w1.safetensors")
    assert "injected fault" in runs[failed[0]]["error"]
    for name, r in runs.items():
        if name in failed:
            continue
        assert r["status"] == "done" and r["icons"] > 0 and r["trustworthiness"] > 0.5
        assert (sweep / name / "atlas.png").is_file()
        assert (sweep / name / "viewer" / "index.html").is_file()
        overrides = dict(o.split("=", 1) for o in name.split(",") if "=" in o)
        assert r["layer"] == overrides["layer"]
    # one extraction per model, shared by its layers: two, not four
    extractions = [p for p in (sweep / "extractions").iterdir() if p.is_dir()]
    assert len(extractions) == 2
    page = (sweep / "index.html").read_text()
    assert page.count("<img ") == 3 and "failed: RuntimeError" in page
    log.info(
        "sweep: 4 jobs (2 models x 2 layers), 3 atlases, 1 failure recorded; 2 extractions for "
        "4 jobs; exit code %d; %.0f s",
        out.returncode,
        seconds,
    )
