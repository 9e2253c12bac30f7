"""The suite's last lines say what was skipped, how many, and the command that brings them (a
quiet ``s`` hid that the viewer went untested on a machine without chromium)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run here")
def test_the_summary_counts_the_skipped_gpu_tests_and_names_the_command() -> None:
    gpu_tests = ROOT / "tests" / "test_gpu.py"
    n = gpu_tests.read_text().count("\ndef test_")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(gpu_tests)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.splitlines()
    assert out[-1].startswith(f"{n} skipped"), out[-5:]
    line = f"{n} skipped: needs a CUDA device. To run them: run them on a GPU machine: "
    assert out[-2] == line + "`make gpu-check`", out[-5:]
