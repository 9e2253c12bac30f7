"""Every Kubernetes object under infra/k8s, checked offline: the core kinds against Kubernetes'
published schemas (kubernetes-validate, strict), the RayCluster and RayJob against the fields of
KubeRay's v1 API (their pod templates against the core PodTemplateSpec schema), and every name
one object references (secret, config map, service account, claim, volume, role, cluster,
image) defined in the same files."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

kv = pytest.importorskip("kubernetes_validate")
log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES = "1.32.0"
# KubeRay v1 (ray.io/v1) fields, from the project's Go API types (raycluster_types.go,
# rayjob_types.go): allowed keys per object, required keys, enums.
CLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                "gcsFaultToleranceOptions"}  # fmt: skip
HEAD = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
          "template", "scaleStrategy", "idleTimeoutSeconds", "suspend"}  # fmt: skip
AUTOSCALER = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts",
              "securityContext", "idleTimeoutSeconds", "upscalingMode", "version"}  # fmt: skip
JOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
            "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
            "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
            "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
            "shutdownAfterJobFinishes", "suspend", "schedule"}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPSCALING = {"Default", "Aggressive", "Conservative"}


def _objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _keys(obj: dict[str, Any], allowed: set[str], where: str, required: tuple[str, ...] = ()):
    extra = set(obj) - allowed
    assert not extra, f"{where}: unknown fields {sorted(extra)}"
    missing = [k for k in required if k not in obj]
    assert not missing, f"{where}: missing required {missing}"


def _pod_template(template: dict[str, Any], where: str) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }
    kv.validate(doc, KUBERNETES, strict=True)


def _ray_cluster_spec(spec: dict[str, Any], where: str) -> int:
    _keys(spec, CLUSTER_SPEC, where, ("headGroupSpec",))
    _keys(spec["headGroupSpec"], HEAD, f"{where}.headGroupSpec", ("rayStartParams", "template"))
    _pod_template(spec["headGroupSpec"]["template"], f"{where}.headGroupSpec")
    if "autoscalerOptions" in spec:
        _keys(spec["autoscalerOptions"], AUTOSCALER, f"{where}.autoscalerOptions")
        assert spec["autoscalerOptions"].get("upscalingMode", "Default") in UPSCALING
    for g in spec.get("workerGroupSpecs", []):
        w = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        _keys(g, WORKER, w, ("groupName", "rayStartParams", "template"))
        assert g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 2**31)
        _pod_template(g["template"], w)
    return 1 + len(spec.get("workerGroupSpecs", []))


def test_every_object_validates_offline() -> None:
    objs = _objects()
    counted = {"core": 0, "kuberay": 0, "pod_templates": 0}
    for name, doc in objs:
        where = f"{name}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "ray.io/v1":
            spec = doc["spec"]
            if doc["kind"] == "RayCluster":
                counted["pod_templates"] += _ray_cluster_spec(spec, where)
            else:
                assert doc["kind"] == "RayJob", where
                _keys(spec, JOB_SPEC, where)
                assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
                assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), where
                if "rayClusterSpec" in spec:
                    counted["pod_templates"] += _ray_cluster_spec(spec["rayClusterSpec"], where)
                if "submitterPodTemplate" in spec:
                    _pod_template(spec["submitterPodTemplate"], where)
                    counted["pod_templates"] += 1
            counted["kuberay"] += 1
        else:
            kv.validate(doc, KUBERNETES, strict=True)
            counted["core"] += 1
    kinds = sorted({d["kind"] for _, d in objs})
    log.info("manifests: %d objects validated (%s), %d pod templates; kinds %s",
             len(objs), counted, counted["pod_templates"], kinds)  # fmt: skip
    for want in ("RayCluster", "RayJob", "CronJob", "ServiceAccount", "Role", "RoleBinding",
                 "Secret", "ConfigMap"):  # fmt: skip
        assert want in kinds, want


def _walk(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in ``node``."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += [v] if k == key else []
            found += _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            found += _walk(v, key)
    return found


def _pod_specs(node: Any) -> list[dict[str, Any]]:
    return [t["spec"] for t in _walk(node, "template") if isinstance(t, dict) and "spec" in t
            and "containers" in t["spec"]]  # fmt: skip


def test_every_reference_is_defined_in_the_same_files() -> None:
    objs = [d for _, d in _objects()]
    defined: dict[str, set[str]] = {}
    for d in objs:
        defined.setdefault(d["kind"], set()).add(d["metadata"]["name"])
    refs = 0
    for d in objs:
        for ref in _walk(d, "secretKeyRef") + _walk(d, "secretRef"):
            assert ref["name"] in defined["Secret"], ref
            refs += 1
        for sa in _walk(d, "serviceAccountName"):
            assert sa in defined["ServiceAccount"], sa
            refs += 1
        for vol in _walk(d, "volumes"):
            for v in vol:
                if "configMap" in v:
                    assert v["configMap"]["name"] in defined["ConfigMap"], v
                if "persistentVolumeClaim" in v:
                    assert (
                        v["persistentVolumeClaim"]["claimName"] in defined["PersistentVolumeClaim"]
                    )
                refs += 1
        for pod in _pod_specs(d):  # every volume a container mounts is one of its pod's volumes
            names = {v["name"] for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in names, (d["metadata"]["name"], m)
                    refs += 1
        if d["kind"] == "RoleBinding":
            assert d["roleRef"]["name"] in defined["Role"]
            assert all(s["name"] in defined["ServiceAccount"] for s in d["subjects"])
            refs += 1 + len(d["subjects"])
        if d["kind"] == "RayJob" and "clusterSelector" in d["spec"]:
            assert d["spec"]["clusterSelector"]["ray.io/cluster"] in defined["RayCluster"]
            refs += 1
    log.info("manifests: %d references, every one defined in infra/k8s", refs)
    assert refs >= 15


def test_images_are_pinned_and_ours_is_the_one_the_dockerfile_builds() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    ours = f"activation-atlas:{version.group(1)}"
    assert f"-t {ours}" in (ROOT / "infra" / "Dockerfile").read_text()
    images = [i for _, d in _objects() for i in _walk(d, "image")]
    images.append(
        yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())["docker"]["image"]
    )
    assert ours in images
    for image in images:
        assert image == ours or re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), image
        assert not image.endswith(":latest"), image


def test_the_schedule_applies_exactly_rayjob_yaml() -> None:
    cm = next(d for _, d in _objects() if d["kind"] == "ConfigMap")
    assert cm["data"]["rayjob.yaml"] == (K8S / "rayjob.yaml").read_text()
    cron = next(d for _, d in _objects() if d["kind"] == "CronJob")
    job = yaml.safe_load((K8S / "rayjob.yaml").read_text())
    command = " ".join(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    assert f"delete rayjob {job['metadata']['name']}" in command
    assert "run_root=" in job["spec"]["entrypoint"]  # dated, resumable, indexed runs


def test_the_checks_reject_broken_objects() -> None:
    """The same checks on damaged copies: a misspelled core field, a bad type, an unknown
    KubeRay field and a worker group without its template all fail."""
    import copy

    objs = {d["kind"]: d for _, d in _objects()}
    cron = copy.deepcopy(objs["CronJob"])
    cron["spec"]["schedul"] = cron["spec"].pop("schedule")
    bad_type = copy.deepcopy(objs["Secret"])
    bad_type["stringData"] = ["not", "a", "map"]
    for doc in (cron, bad_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(doc, KUBERNETES, strict=True)
    cluster = copy.deepcopy(objs["RayCluster"]["spec"])
    cluster["enableInTreeAutoscalling"] = True
    with pytest.raises(AssertionError, match="unknown fields"):
        _ray_cluster_spec(cluster, "broken")
    cluster = copy.deepcopy(objs["RayCluster"]["spec"])
    del cluster["workerGroupSpecs"][0]["template"]
    with pytest.raises(AssertionError, match="missing required"):
        _ray_cluster_spec(cluster, "broken")
