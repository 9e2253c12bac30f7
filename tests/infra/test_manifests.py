"""Every Kubernetes object under infra/k8s, checked offline: the core kinds against Kubernetes'
published schemas (kubernetes-validate, strict), the RayCluster and RayJob against the fields of
KubeRay's v1 API (their pod templates against the core PodTemplateSpec schema), and every name
one object references (secret, config map, service account, claim, volume, role, cluster,
image) defined in the same files."""

from __future__ import annotations

import importlib.util
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
CLUSTER_SPEC = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
}
HEAD = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "idleTimeoutSeconds",
    "suspend",
}
AUTOSCALER = {
    "resources",
    "image",
    "imagePullPolicy",
    "env",
    "envFrom",
    "volumeMounts",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "version",
}
JOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
    "schedule",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# rayservice_types.go at KubeRay v1.4.0
SERVICE_SPEC = {
    "serveConfigV2",
    "rayClusterConfig",
    "upgradeStrategy",
    "serveService",
    "excludeHeadPodFromServeSvc",
    "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
}
SERVICE_UPGRADES = {"NewCluster", "None"}
UPSCALING = {"Default", "Aggressive", "Conservative"}


DATE = "2026-12-06"


def _objects(applied_only: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Every object of infra/k8s (``kubectl apply -f infra/k8s/`` applies the folder's own
    files) and, unless ``applied_only``, of its templates (the schedule's date filled in)."""
    out = []
    paths = sorted(K8S.glob("*.yaml")) + (
        [] if applied_only else sorted((K8S / "templates").glob("*.yaml"))
    )
    for path in paths:
        text = path.read_text()
        text = text.replace("__DATE__", DATE) if path.parent.name == "templates" else text
        out += [(path.name, d) for d in yaml.safe_load_all(text) if d]
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


def _ray_service_spec(spec: dict[str, Any], where: str) -> int:
    _keys(spec, SERVICE_SPEC, where, ("rayClusterConfig", "serveConfigV2"))
    assert spec.get("upgradeStrategy", {}).get("type", "NewCluster") in SERVICE_UPGRADES, where
    if "serveService" in spec:
        kv.validate({"apiVersion": "v1", "kind": "Service", **spec["serveService"]}, KUBERNETES)
    return _ray_cluster_spec(spec["rayClusterConfig"], f"{where}.rayClusterConfig")


def test_every_object_validates_offline() -> None:
    objs = _objects()
    counted = {"core": 0, "kuberay": 0, "pod_templates": 0}
    for name, doc in objs:
        where = f"{name}:{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "ray.io/v1":
            spec = doc["spec"]
            if doc["kind"] == "RayCluster":
                counted["pod_templates"] += _ray_cluster_spec(spec, where)
            elif doc["kind"] == "RayService":
                counted["pod_templates"] += _ray_service_spec(spec, where)
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
    log.info(
        "manifests: %d objects validated (%s), %d pod templates; kinds %s",
        len(objs),
        counted,
        counted["pod_templates"],
        kinds,
    )
    for want in (
        "RayCluster",
        "RayJob",
        "RayService",
        "CronJob",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Secret",
        "ConfigMap",
        "PersistentVolume",
        "PersistentVolumeClaim",
    ):
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
    return [
        t["spec"]
        for t in _walk(node, "template")
        if isinstance(t, dict) and "spec" in t and "containers" in t["spec"]
    ]


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
    assert not any(i.startswith("bitnami/") for i in images)  # unversioned or withdrawn tags
    images.append(
        yaml.safe_load((ROOT / "infra" / "ray-cluster.yaml").read_text())["docker"]["image"]
    )
    assert ours in images
    for image in images:
        assert image == ours or re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), image
        assert not image.endswith(":latest"), image


def test_the_schedule_creates_a_dated_run_and_never_ends_one() -> None:
    cm = next(d for _, d in _objects(True) if d["kind"] == "ConfigMap")
    template = (K8S / "templates" / "rayjob.yaml").read_text()
    assert cm["data"]["rayjob.yaml"] == template  # a copy
    cron = next(d for _, d in _objects(True) if d["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    command = " ".join(pod["containers"][0]["command"])
    assert "delete" not in command and "kubectl create" in command  # never ends a run
    assert 'get rayjob "atlas-$day"' in command and "s/__DATE__/$day/g" in command
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timeZone"] == "Etc/UTC"
    role = next(d for _, d in _objects(True) if d["kind"] == "Role")
    assert set(role["rules"][0]["verbs"]) == {"get", "list", "create"}
    job = yaml.safe_load(template.replace("__DATE__", DATE))
    spec = job["spec"]
    assert job["metadata"]["name"] == f"atlas-{DATE}"
    assert f"date={DATE}" in spec["entrypoint"] and "run_root=" in spec["entrypoint"]  # resumes
    assert "keep_runs=" in spec["entrypoint"]
    assert 0 < spec["activeDeadlineSeconds"] <= 7 * 86400 and 0 < spec["backoffLimit"] <= 5


def test_secrets_are_templates_kubectl_apply_never_overwrites() -> None:
    applied = {d["kind"] for _, d in _objects(True)}
    assert "Secret" not in applied and "RayJob" not in applied  # templates only
    secrets = [d for _, d in _objects() if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "atlas-ray-token",
        "atlas-object-store",
        "atlas-serve-token",
    }
    assert all("REPLACE" in str(s["stringData"]) for s in secrets)


def _containers(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = [c for pod in _pod_specs(d) for c in pod["containers"]]
    if d["kind"] == "RayCluster":
        out.append({"name": "autoscaler", **d["spec"]["autoscalerOptions"]})
    return out


def test_the_cluster_is_sized_and_placed_for_the_run() -> None:
    objs = {d["kind"]: d for _, d in _objects()}
    rc = objs["RayCluster"]["spec"]
    head = rc["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    checked = 0
    for kind in ("RayCluster", "RayJob", "CronJob"):
        for c in _containers(objs[kind]):  # Guaranteed pods: requests equal limits
            assert c["resources"]["requests"] == c["resources"]["limits"], (kind, c["name"])
            checked += 1
            if kind != "CronJob":  # every container that talks to the head carries the token
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["RAY_AUTH_MODE"]["value"] == "token", c["name"]
                ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "atlas-ray-token", c["name"]
    head_mem = head["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert int(head_mem.removesuffix("Gi")) >= 16  # the driver's reads of per-row scalars
    for group in [head, *rc["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"].endswith("Gi")
        assert "/dev/shm" in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    gpu = rc["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["nodeSelector"]
    assert rc["autoscalerOptions"]["idleTimeoutSeconds"] >= 1200  # longer than driver phases
    pvc, pv = objs["PersistentVolumeClaim"]["spec"], objs["PersistentVolume"]["spec"]
    assert pvc["volumeName"] == objs["PersistentVolume"]["metadata"]["name"]
    assert pvc["storageClassName"] == pv["storageClassName"] == "" and "nfs" in pv
    log.info(
        "manifests: %d containers with requests = limits, the token in every one that "
        "talks to the head; head num-cpus 0, /dev/shm sized, idle timeout %d s, GPU "
        "nodeSelector, the claim bound to an NFS volume",
        checked,
        rc["autoscalerOptions"]["idleTimeoutSeconds"],
    )


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
    service = copy.deepcopy(objs["RayService"]["spec"])
    service["serveConfig"] = service.pop("serveConfigV2")  # the v1alpha1 name
    with pytest.raises(AssertionError, match="unknown fields"):
        _ray_service_spec(service, "broken")
    if importlib.util.find_spec("ray.serve") is not None:
        config = yaml.safe_load(objs["RayService"]["spec"]["serveConfigV2"])
        config["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpu"] = 1
        with pytest.raises(AssertionError, match="unknown fields"):
            _serve_config(config, "broken")


def _serve_config(config: dict[str, Any], where: str) -> None:
    """serveConfigV2's keys at every level against the fields of Ray Serve's own schemas (the
    schemas themselves accept unknown keys), then the values by those schemas."""
    from ray.serve import config as serve_config
    from ray.serve import schema

    def fields(model: Any) -> set[str]:
        return set(model.model_fields)

    _keys(config, fields(schema.ServeDeploySchema), where, ("applications",))
    _keys(config.get("http_options", {}), fields(schema.HTTPOptionsSchema), f"{where}.http")
    for app in config["applications"]:
        _keys(app, fields(schema.ServeApplicationSchema), f"{where}.app", ("import_path",))
        for dep in app.get("deployments", []):
            w = f"{where}.{dep.get('name')}"
            _keys(dep, fields(schema.DeploymentSchema), w, ("name",))
            _keys(dep.get("ray_actor_options", {}), fields(schema.RayActorOptionsSchema), w)
            _keys(dep.get("autoscaling_config", {}), fields(serve_config.AutoscalingConfig), w)
    schema.ServeDeploySchema.model_validate(config)


def test_the_rayservice_runs_the_server_app_with_its_token() -> None:
    """The RayService's serveConfigV2 against Ray Serve's own schema, its import path and
    args against the code, its replicas' GPUs against the worker group, and the serve token
    in every container."""
    schema = pytest.importorskip("ray.serve.schema")
    service = next(d for _, d in _objects() if d["kind"] == "RayService")
    spec, config = service["spec"], yaml.safe_load(service["spec"]["serveConfigV2"])
    _serve_config(config, "rayservice.serveConfigV2")
    deploy = schema.ServeDeploySchema.model_validate(config)
    (app,) = deploy.applications
    assert app.import_path == "pipelines.server.ray_serve:build" and app.route_prefix == "/"
    from pipelines.server import ray_serve

    assert ray_serve.build(app.args) is not None  # every arg is one build() takes
    (dep,) = app.deployments
    assert dep.name == ray_serve.AtlasServer.name
    auto, actor = dep.autoscaling_config, dep.ray_actor_options.model_dump()
    cluster = spec["rayClusterConfig"]
    (gpu,) = cluster["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert actor["num_gpus"] == 1 == int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert actor["num_cpus"] <= int(worker["resources"]["limits"]["cpu"])
    assert 1 <= auto["min_replicas"] <= auto["max_replicas"] <= gpu["maxReplicas"]
    assert gpu["minReplicas"] == 0 and gpu["template"]["spec"]["nodeSelector"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert config["http_options"]["host"] == "0.0.0.0"
    port = config["http_options"]["port"]
    for c in [head["template"]["spec"]["containers"][0], worker]:
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
        assert {"containerPort": port, "name": "serve"} in c["ports"], c["name"]
        env = {e["name"]: e for e in c["env"]}
        assert env["ATLAS_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "atlas-serve-token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "atlas-ray-token"
        assert env["ATLAS_SERVE_ALLOWED_HOSTS"]["value"]
    log.info(
        "rayservice: serveConfigV2 valid under Ray's schema; %s with %d..%d replicas of %s GPU",
        app.import_path,
        auto["min_replicas"],
        auto["max_replicas"],
        actor["num_gpus"],
    )
