"""What a run waits for on a cluster, without a cluster: the autoscaler's verdicts as Ray 2.60
reports them (autoscaler v2's state in the GCS, autoscaler v1's status JSON) read into one view;
a request no node type can hold refused with the settings, the shape and the node types; the
progress line; and the preflight asking only for the shapes of the stages that will run.

The same against Ray's fake multi-node autoscaler: tests/pipelines/test_autoscaling.py."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from atlas_core.errors import ConfigError
from pipelines.commands import run as runner
from pipelines.core import ray_ops
from pipelines.core.ray_ops import AutoscalerView, NodeType, _Wait
from pipelines.stages import REGISTRY
from tests.conftest import debug_settings, make_images

GPU4 = {"CPU": 4.0, "GPU": 1.0}
TYPES = (
    NodeType("ray.head.default", {"CPU": 1.0}, 0, 1),
    NodeType("gpu", {"CPU": 2.0, "GPU": 1.0}),
)


def _v1(stamp: float, asked=(GPU4,), growing: bool = False) -> AutoscalerView:
    return AutoscalerView("autoscaler v1", stamp, tuple(asked), (), growing, TYPES)


def test_autoscaler_v1_declining_a_request_for_three_updates_is_a_refusal() -> None:
    wait = _Wait("cluster.plausibility", GPU4, 900.0)
    assert wait.refusal(_v1(1.0)) is None
    assert wait.refusal(_v1(1.0)) is None  # the same update read twice counts once
    assert wait.refusal(_v1(2.0, growing=True)) is None  # a node launching: start again
    assert wait.refusal(_v1(3.0)) is None
    assert wait.refusal(_v1(4.0, asked=({"CPU": 2.0},))) is None  # another request replaced ours
    assert wait.refusal(_v1(5.0)) is None and wait.refusal(_v1(6.0)) is None
    why = wait.refusal(_v1(7.0))
    assert why is not None and "3 updates" in why and "could not find a node type" in why


def test_an_infeasible_report_or_a_config_without_the_shape_refuses_at_once() -> None:
    v2 = AutoscalerView("autoscaler v2", 1.0, (GPU4,), ({"GPU": 1, "CPU": 4},), False, TYPES)
    assert "autoscaler v2 reports the request infeasible" in str(_Wait("x", GPU4, 9).refusal(v2))
    config = AutoscalerView("autoscaler v2", 1.0, (), (), True, TYPES, complete=True)
    assert "config" in str(_Wait("x", GPU4, 9).refusal(config))  # even while growing
    holds = (*TYPES, NodeType("big", {"CPU": 8.0, "GPU": 1.0}, 2))
    at_max = AutoscalerView("autoscaler v1", 1.0, (GPU4,), (), False, holds, complete=True)
    wait = _Wait("x", GPU4, 9)
    assert all(wait.refusal(replace_stamp(at_max, t)) is None for t in range(10))  # it may come
    assert _Wait("x", {"CPU": 1.0}, 9).refusal(replace_stamp(at_max, 1)) is None


def replace_stamp(view: AutoscalerView, stamp: float) -> AutoscalerView:
    import dataclasses

    return dataclasses.replace(view, stamp=float(stamp))


class _Gcs:
    """The two GCS reads the view makes, answering as Ray 2.60's GCS does."""

    def __init__(self, status: bytes, kv: bytes | None) -> None:
        self.status, self.kv = status, kv

    def get_cluster_status(self, timeout_s: int) -> bytes:
        return self.status

    def internal_kv_get(self, key: bytes, namespace: object, timeout: int) -> bytes | None:
        assert key == b"__autoscaling_status"
        return self.kv


NODES = [
    {"NodeID": "aa" * 28, "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 1}},
    {"NodeID": "bb" * 28, "NodeManagerAddress": "10.0.0.2", "Alive": True, "Resources": GPU4},
]


def test_autoscaler_v2_state_is_read_from_ray_s_own_messages() -> None:
    from ray.core.generated import autoscaler_pb2 as pb

    reply = pb.GetClusterStatusReply()
    state = reply.autoscaling_state
    state.autoscaler_state_version = 7
    bad = state.infeasible_cluster_resource_constraints.add().resource_requests.add()
    bad.request.resources_bundle.update({"CPU": 8.0, "GPU": 1.0})
    bad.count = 1
    state.pending_instance_requests.add(ray_node_type_name="gpu", count=1)
    asked = reply.cluster_resource_state.cluster_resource_constraints.add().resource_requests.add()
    asked.request.resources_bundle.update({"CPU": 8.0, "GPU": 1.0})
    node = reply.cluster_resource_state.node_states.add()
    node.node_id, node.ray_node_type_name = bytes.fromhex("bb" * 28), "gpu"
    view = ray_ops._v2_view(_Gcs(reply.SerializeToString(), None), NODES)
    assert view is not None and view.source == "autoscaler v2" and view.stamp == 7.0
    assert view.infeasible == ({"CPU": 8.0, "GPU": 1.0},) and view.asked == view.infeasible
    assert view.growing
    assert [(t.name, t.up) for t in view.node_types] == [("node", 1), ("gpu", 1)]
    empty = ray_ops._v2_view(_Gcs(pb.GetClusterStatusReply().SerializeToString(), None), NODES)
    assert empty is None  # no v2 autoscaler reports: the v1 status is read instead


def test_autoscaler_v1_status_is_read_as_ray_status_prints_it() -> None:
    status = {  # the shape of the status Ray 2.60's v1 monitor writes (fake multi-node cluster)
        "time": 1796610748.02,
        "autoscaler_report": {
            "active_nodes": {"ray.head.default": 1},
            "pending_nodes": [],
            "pending_launches": {},
            "node_type_mapping": {"aa" * 28: "ray.head.default", "10.0.0.2": "gpu"},
        },
        "load_metrics_report": {"request_demand": [[{"CPU": 4, "GPU": 1}, 1]]},
    }
    gcs = _Gcs(b"", json.dumps(status).encode())
    view = ray_ops._v1_view(gcs, NODES)
    assert (
        view is not None and view.stamp == status["time"] and view.asked == ({"CPU": 4, "GPU": 1},)
    )
    assert view.growing  # two typed nodes, one active: the gpu node is still starting
    assert [str(t) for t in view.node_types] == [
        "ray.head.default (1 CPU, 0 GPU, 1 up)",
        "gpu (4 CPU, 1 GPU, 1 up)",
    ]
    status["autoscaler_report"]["active_nodes"] = {"ray.head.default": 1, "gpu": 1}
    assert not ray_ops._v1_view(_Gcs(b"", json.dumps(status).encode()), NODES).growing
    assert ray_ops._v1_view(_Gcs(b"", None), NODES) is None


def test_a_refused_request_names_the_settings_the_shape_and_the_node_types() -> None:
    err = ray_ops._no_node(
        "cluster.reduce_fit, cluster.plausibility",
        GPU4,
        AutoscalerView("autoscaler v1", 1.0, node_types=TYPES),
        "the autoscaler v1 saw the request in 3 updates and launched no node for it",
    )
    assert isinstance(err, ConfigError) and err.what == "cluster.reduce_fit, cluster.plausibility"
    text = str(err)
    assert "{'num_cpus': 4.0, 'num_gpus': 1.0}" in text and "hold 4 CPU, 1 GPU" in text
    assert "ray.head.default (1 CPU, 0 GPU, at most 0, 1 up); gpu (2 CPU, 1 GPU, 0 up)" in text


def test_the_progress_line_says_what_the_run_waits_for(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    gauges: list[tuple[str, float, dict]] = []
    monkeypatch.setattr(ray_ops, "gauge", lambda name, v, tags: gauges.append((name, v, tags)))
    now = time.monotonic()
    wait = _Wait("cluster.plausibility", GPU4, 900.0, t0=now - 25.0, logged=now - 11.0)
    with caplog.at_level(logging.INFO, logger="pipelines.core.ray_ops"):
        wait.progress(_v1(1.0, growing=True))
        wait.progress(_v1(2.0))  # within PROGRESS_EVERY of the last line: none
    wait.done()
    tags = {"setting": "cluster.plausibility", "shape": "4 CPU, 1 GPU"}
    assert [(n, t) for n, _, t in gauges] == [("atlas_waiting_seconds", tags)] * 3
    assert 25 <= gauges[0][1] <= gauges[1][1] < 60 and gauges[2][1] == 0.0  # seconds, then done
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "cluster.plausibility: waiting for a node with 4 CPU, 1 GPU: 25 s so far"
    )
    assert "giving up in 875 s (cluster.wait_s=900)" in line and "autoscaler v1: growing" in line
    assert "gpu (2 CPU, 1 GPU, 0 up)" in line


# ------------------------------------------------------------------ the shapes the preflight asks
@pytest.fixture()
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The settings each of the preflight's requests names (the cluster's answers faked)."""
    names: list[str] = []
    monkeypatch.setattr(ray_ops, "init", lambda cluster: None)
    monkeypatch.setattr(ray_ops, "release", lambda: None)
    monkeypatch.setattr(ray_ops, "require", lambda what, cpus, gpus: names.append(what))
    monkeypatch.setattr(ray_ops, "submit", lambda fn, **kw: kw)
    report = {"cuda": True, "node": "n", "host": "h", "cuda_error": None}
    monkeypatch.setattr(ray_ops, "gather", lambda handles, desc: [report])
    return names


def _cluster_run(tmp_path: Path, *extra: str):
    make_images(tmp_path / "imgs", 8, size=64, seed=1)
    s, _ = debug_settings(
        "data=folder",
        f"data.path={tmp_path / 'imgs'}",
        f"run_dir={tmp_path / 'run'}",
        "cluster=ray_cluster",
        "cluster.address=127.0.0.1:1",
        *extra,
    )
    plan = runner.plan_run(s, runner.check(s))
    return s, plan, s.location.markers()


def _keys(asked: list[str]) -> list[str]:
    return sorted(k for what in asked for k in what.split(", "))


def test_the_preflight_asks_only_for_the_stages_that_will_run(tmp_path: Path, asked) -> None:
    s, plan, markers = _cluster_run(tmp_path)
    todo = plan.to_run(markers)
    runner.preflight(s, [st for st, _ in todo])
    every = {f"cluster.{k}" for st, _ in todo for k in st.resources}
    assert "cluster.patches" not in every and "cluster.extract" in every  # no class pair
    assert _keys(asked) == sorted(every)
    assert asked[0].startswith("cluster.extract")  # the largest shape first (4 CPU, 1 GPU)
    for st, view in todo:  # a finished stage is not asked for again
        if st.name in ("extract", "reduce"):
            name = f"{s.location.in_view(view.slug).marker_prefix}stage-{st.name}"
            markers.write(name, {"fingerprint": plan.fp(st, view)})
    asked.clear()
    rest = plan.to_run(markers)
    runner.preflight(s, [st for st, _ in rest])
    assert {st.name for st, _ in rest} == {st.name for st, _ in todo} - {"extract", "reduce"}
    assert not {"cluster.extract", "cluster.reduce_fit", "cluster.reduce_search"} & set(
        _keys(asked)
    )


def test_the_patches_stage_when_it_runs_is_asked_for(tmp_path: Path, asked) -> None:
    """The control of the test above: given the patches stage (a class pair's comparison
    view runs it), the preflight asks for ``cluster.patches``."""
    s, _, _ = _cluster_run(tmp_path)
    runner.preflight(s, [REGISTRY["patches"]])
    assert asked == ["cluster.patches"]
