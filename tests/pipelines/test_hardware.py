"""Hardware is decided where the work runs, loudly on a cluster: a stage given GPUs with
``device: auto`` asks for CUDA there, and a node where CUDA does not work fails naming itself
and why, instead of computing on its CPU; locally ``auto`` falls back to the CPU."""

from __future__ import annotations

import pytest
import torch

from atlas_core.errors import ConfigError
from pipelines.core.common import hardware, resolve_device
from pipelines.core.stage import StageRun
from pipelines.stages.reduce import _backend
from tests.conftest import debug_settings, stage_run


def _run(*overrides: str, stage: str = "extract") -> StageRun:
    s, _ = debug_settings(*overrides)
    return stage_run(s, stage)


def test_a_gpu_stage_on_a_cluster_asks_for_cuda_and_locally_takes_what_is_there() -> None:
    assert _run("cluster.extract.num_gpus=1").device() == "auto"  # local: auto stays
    on = _run("cluster.address=127.0.0.1:1", "cluster.extract.num_gpus=1")
    assert on.device() == "cuda" and on.device("grid") == "auto"  # no GPU asked: no demand
    knowingly = _run(
        "cluster.address=127.0.0.1:1", "cluster.extract.num_gpus=1", "cluster.extract.device=cpu"
    )
    assert knowingly.device() == "cpu"
    gpu_fit = _run("cluster.address=x", "cluster.reduce_fit.num_gpus=1", stage="reduce")
    assert _backend(gpu_fit) == "cuml"
    assert _backend(_run("cluster.address=127.0.0.1:1", stage="reduce")) == "auto"  # no GPU
    cpu_fit = _run(
        "cluster.address=127.0.0.1:1",
        "cluster.reduce_fit.num_gpus=1",
        "cluster.reduce_fit.device=cpu",
        stage="reduce",
    )
    assert _backend(cpu_fit) == "auto"  # a CPU fit, knowingly


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none_fails_naming_the_node_and_the_reason() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError) as e:
        resolve_device("cuda")
    msg = str(e.value)
    hw = hardware()
    assert hw["host"] in msg and "no usable CUDA" in msg and "NVIDIA driver" in msg
    assert f"torch {torch.__version__}" in msg and "device=cpu knowingly" in msg
    assert hw["cuda"] is False and hw["device"] == "cpu" and isinstance(hw["cuml"], bool)
