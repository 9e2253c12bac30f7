"""Every Ray call of the project, in one place.

Local runs bind to 127.0.0.1 with the dashboard off and usage stats disabled; a cluster run joins
``cluster.address`` (token authentication is Ray's default from 2.60: the cluster's token must be
in ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``, see infra/README.md).

A stage whose tasks fit no live node asks the autoscaler and waits (``require``), failing within
a minute when the autoscaler will not grow for them (:func:`autoscaler`). A local Ray's processes
end with the driver, however it ends (:func:`_reap_when_gone`).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from tqdm.auto import tqdm

from atlas_core.errors import AtlasError, ConfigError
from pipelines.core.settings import ClusterConf

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def _ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's driver replaces builtins.print once worker logs arrive (tqdm_ray); numba then cannot
    # compile pynndescent's kernels ("Untyped global name 'print'"), which breaks UMAP in the
    # driver above 4096 rows. Keep the real print.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    import ray

    return ray


def check_token_auth() -> None:
    """A cluster run needs Ray's token authentication (the default from Ray 2.60) and a token
    to present: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    mode = os.environ.get("RAY_AUTH_MODE")
    fix = (
        "cluster runs use Ray's token authentication: unset RAY_AUTH_MODE (or set it to token) "
        "and give the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token (infra/README.md)."
    )
    if mode is not None and mode.lower() != "token":
        raise ConfigError("RAY_AUTH_MODE", mode, choices=("token",), fix=fix)
    token_file = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    if not (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or os.path.exists(token_file)
    ):
        raise ConfigError("RAY_AUTH_TOKEN", None, fix=fix)


def init(cluster: ClusterConf) -> None:
    """Start (or join) Ray once per process; a second call is a no-op. Joining a cluster
    (``cluster.address``) refuses to start without token authentication."""
    if cluster.address:
        check_token_auth()
    if not cluster.address:
        # Local runs stay on loopback: with this, Ray resolves every node address to 127.0.0.1
        # instead of the machine's interface (read when ray is first imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    _WAIT["seconds"] = float(cluster.wait_s)
    _WAIT["settle"] = min(20.0, float(cluster.wait_s))
    ray = _ray()
    if ray.is_initialized():
        return
    if cluster.address:
        log.info("joining Ray cluster at %s", cluster.address)
        ray.init(address=cluster.address, namespace=cluster.namespace, log_to_driver=True)
        return
    log.info("starting local Ray on 127.0.0.1 (%s CPUs)", cluster.num_cpus or "all")
    before = _children()
    ray.init(
        num_cpus=cluster.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace=cluster.namespace,
        log_to_driver=True,
        configure_logging=False,
    )
    _watch(sorted(_children() - before))


def shutdown() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()
    watchdog = _WATCHDOG.pop("proc", None)
    if watchdog is not None and watchdog.stdin is not None:  # it ends what is left, then itself
        watchdog.stdin.close()


# ------------------------------------------------------------------ a local Ray ends with us
_WATCHDOG: dict[str, subprocess.Popen[bytes]] = {}


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def _watch(roots: Sequence[int]) -> None:
    """Start the watchdog of the local Ray this process just started (``roots``: the processes
    ``ray.init`` started: GCS, raylet, monitors; the agents and workers are the raylet's).

    Ray gives the processes it starts the kernel's parent-death signal, but not the raylet's
    dashboard and runtime-env agents: when the driver is SIGKILLed, they try to tell the dead
    GCS and linger for a minute or more. The watchdog is a small interpreter (no Ray, no torch:
    ~15 MB) running :func:`_reap_when_gone`, holding the read end of a pipe only this process
    writes to: the kernel closes it however this process ends."""
    try:
        code = f"# atlas: local Ray watchdog\n{inspect.getsource(_reap_when_gone)}\n"
    except OSError:  # installed without sources: the agents may outlive a killed driver
        log.warning("no watchdog for the local Ray: this module's source is not installed")
        return
    code += f"_reap_when_gone({list(roots)!r})\n"
    _WATCHDOG["proc"] = subprocess.Popen(
        [sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, close_fds=True
    )
    log.debug("local Ray watchdog %d over %s", _WATCHDOG["proc"].pid, list(roots))


def _reap_when_gone(roots: list[int], every: float = 1.0, grace: float = 2.0) -> None:
    """The watchdog's loop (run in its own interpreter: self-contained). Every ``every`` s it
    notes the ``roots`` and their descendants; once its stdin closes (the driver ended, or
    called ``shutdown``) or it is sent SIGTERM, it ends those still running: SIGTERM, then
    SIGKILL after ``grace`` s. A process is matched by pid and start time, never by name."""
    import os
    import select
    import signal
    import sys

    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal ends the driver: reap then
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    tops = []
    for pid in roots:  # now, while they run: a pid used again later is not theirs
        try:
            tops.append(psutil.Process(pid))
        except psutil.Error:
            continue
    seen: dict[int, psutil.Process] = {}
    while not stop[0]:
        found = []
        for top in tops:
            try:
                found += [top, *top.children(recursive=True)] if top.is_running() else []
            except psutil.Error:
                continue
        seen = {p.pid: p for p in seen.values() if p.is_running()} | {p.pid: p for p in found}
        ready = select.select([sys.stdin], [], [], every)[0]
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # end of file: no writer is left
    left = [p for p in seen.values() if p.pid != os.getpid() and p.is_running()]
    for p in left:
        try:
            p.terminate()
        except psutil.Error:
            pass
    for p in psutil.wait_procs(left, timeout=grace)[1]:
        try:
            p.kill()
        except psutil.Error:
            pass


def cluster_resources() -> dict[str, float]:
    return dict(_ray().cluster_resources())


_WAIT = {"seconds": 0.0, "settle": 20.0}  # set by init() from cluster.wait_s


Shape = dict[str, float]  # a task's resources: {"CPU": 4.0, "GPU": 1.0}
# autoscaler updates (each ~5 s; AUTOSCALER_UPDATE_INTERVAL_S) that saw a request and launched
# nothing, and no node fits: it will not grow for it
DECLINED_UPDATES = 3
PROGRESS_EVERY = 10.0  # seconds between the lines saying what a wait is for


def _shape(num_cpus: float, num_gpus: float) -> Shape:
    return {"CPU": float(num_cpus), **({"GPU": float(num_gpus)} if num_gpus else {})}


def _holds(resources: Mapping[str, float], shape: Mapping[str, float]) -> bool:
    return all(resources.get(k, 0) >= v for k, v in shape.items() if v)


def _same(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return {k: float(v) for k, v in a.items() if v} == {k: float(v) for k, v in b.items() if v}


def _fmt(resources: Mapping[str, float]) -> str:
    """``4 CPU, 1 GPU``: CPUs and GPUs always, other resources when there are some (memory,
    object store and node labels left out)."""
    skip = ("memory", "object_store_memory", "node:", "accelerator_type:")
    shown = {"CPU": 0.0, "GPU": 0.0}
    shown |= {k: v for k, v in resources.items() if v and not k.startswith(skip)}
    order = sorted(shown, key=lambda k: (k != "CPU", k != "GPU", k))
    return ", ".join(f"{shown[k]:g} {k}" for k in order)


def _fitting(shape: Shape) -> bool:
    return any(_holds(n.get("Resources", {}), shape) for n in _ray().nodes() if n.get("Alive"))


@dataclass(frozen=True)
class NodeType:
    """A node type of the cluster: its resources, how many nodes of it may run (``None``: not
    known, ``-1``: no limit) and how many are up."""

    name: str
    resources: Mapping[str, float]
    max_count: int | None = None
    up: int = 0

    def holds(self, shape: Shape) -> bool:
        return self.max_count != 0 and _holds(self.resources, shape)

    def __str__(self) -> str:
        most = {None: "", -1: ", no limit"}.get(self.max_count, f", at most {self.max_count}")
        return f"{self.name} ({_fmt(self.resources)}{most}, {self.up} up)"


@dataclass(frozen=True)
class AutoscalerView:
    """What the cluster's autoscaler has said, read once from the GCS.

    source: ``autoscaler v2``, ``autoscaler v1``, or ``""`` when none reports.
    stamp: changes with every autoscaler update (v2: its state version; v1: its status time).
    asked: the ``request_resources`` shapes it has seen.
    infeasible: the shapes it reports no node type can hold (autoscaler v2; v1 only logs it).
    growing: nodes are being launched or starting.
    node_types: every type with its limit when the autoscaler published the cluster's config
    (``complete``), else the types of the live nodes.
    """

    source: str = ""
    stamp: float = 0.0
    asked: tuple[Shape, ...] = ()
    infeasible: tuple[Shape, ...] = ()
    growing: bool = False
    node_types: tuple[NodeType, ...] = ()
    complete: bool = False


_UNREADABLE: dict[str, int] = {}  # the errors met reading the autoscaler's state, counted


def autoscaler() -> AutoscalerView:
    """What the autoscaler says now. Ray 2.60 has no public call for it; this reads what ``ray
    status`` reads: the GCS's autoscaler state (``GetClusterStatus``, where autoscaler v2
    reports the requests no node type can hold) and autoscaler v1's status in the GCS's
    key-value store. Node types come from the cluster config the autoscaler publishes in the
    GCS (``ray._private.state.state.get_cluster_config``, Ray Data's source; Ray 2.60's own
    autoscalers do not publish it yet), else from the live nodes."""
    from ray._private.state import state
    from ray.experimental.internal_kv import internal_kv_get_gcs_client

    nodes = [n for n in _ray().nodes() if n.get("Alive")]
    try:
        gcs = internal_kv_get_gcs_client()
        view = _v2_view(gcs, nodes) or _v1_view(gcs, nodes) or AutoscalerView()
        config = state.get_cluster_config()
    except Exception as exc:  # Ray's internals moved, or the GCS is slow: no verdict this time
        level = logging.DEBUG if _UNREADABLE else logging.WARNING  # said once per process
        _UNREADABLE[type(exc).__name__] = _UNREADABLE.get(type(exc).__name__, 0) + 1
        log.log(level, "could not read the autoscaler's state (%s: %s)", type(exc).__name__, exc)
        view, config = AutoscalerView(), None
    live = view.node_types or _live_types(nodes, {})
    if config is None or not config.node_group_configs:
        return replace(view, node_types=live)
    up = {t.name: t.up for t in live}
    types = tuple(
        NodeType(g.name, dict(g.resources), int(g.max_count), up.get(g.name, 0))
        for g in config.node_group_configs
    )
    return replace(view, node_types=types, complete=True)


def _v2_view(gcs: Any, nodes: list[dict[str, Any]]) -> AutoscalerView | None:
    """Autoscaler v2's last report to the GCS (None when no v2 autoscaler reports)."""
    from ray.core.generated import autoscaler_pb2

    reply_type = autoscaler_pb2.GetClusterStatusReply  # type: ignore[attr-defined]  # generated
    reply = reply_type.FromString(gcs.get_cluster_status(timeout_s=10))
    state = reply.autoscaling_state
    if not state.autoscaler_state_version:
        return None
    infeasible = [dict(r.resources_bundle) for r in state.infeasible_resource_requests]
    for constraint in state.infeasible_cluster_resource_constraints:
        infeasible += [dict(r.request.resources_bundle) for r in constraint.resource_requests]
    cluster = reply.cluster_resource_state
    asked = [
        dict(r.request.resources_bundle)
        for constraint in cluster.cluster_resource_constraints
        for r in constraint.resource_requests
    ]
    types = {n.node_id.hex(): n.ray_node_type_name for n in cluster.node_states}
    return AutoscalerView(
        source="autoscaler v2",
        stamp=float(state.autoscaler_state_version),
        asked=tuple(asked),
        infeasible=tuple(infeasible),
        growing=bool(state.pending_instance_requests or state.pending_instances),
        node_types=_live_types(nodes, types),
    )


def _v1_view(gcs: Any, nodes: list[dict[str, Any]]) -> AutoscalerView | None:
    """Autoscaler v1's status (what ``ray status`` prints; None when there is none)."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS

    raw = gcs.internal_kv_get(DEBUG_AUTOSCALING_STATUS.encode(), None, timeout=10)
    if not raw:
        return None
    status = json.loads(raw)
    report = status.get("autoscaler_report") or {}
    demand = (status.get("load_metrics_report") or {}).get("request_demand") or []
    types = report.get("node_type_mapping") or {}
    starting = len(types) > sum((report.get("active_nodes") or {}).values())
    return AutoscalerView(
        source="autoscaler v1",
        stamp=float(status.get("time") or 0.0),
        asked=tuple(dict(bundle) for bundle, _ in demand),
        growing=bool(report.get("pending_launches") or report.get("pending_nodes") or starting),
        node_types=_live_types(nodes, types),
    )


def _live_types(nodes: list[dict[str, Any]], types: Mapping[str, str]) -> tuple[NodeType, ...]:
    """The live nodes by type (``types``: node id or address -> type name; a node without one
    is typed by its resources)."""
    out: dict[tuple[str, str], NodeType] = {}
    for n in nodes:
        name = types.get(n["NodeID"]) or types.get(n.get("NodeManagerAddress", "")) or "node"
        resources = n.get("Resources", {})
        key = (name, _fmt(resources))
        prior = out.get(key)
        out[key] = NodeType(name, resources, None, (prior.up if prior else 0) + 1)
    return tuple(out.values())


@dataclass
class _Wait:
    """One wait for a node that holds ``shape`` (for ``what``: the settings asking for it): the
    autoscaler updates that declined it so far, and the progress line and metric."""

    what: str
    shape: Shape
    seconds: float
    t0: float = field(default_factory=time.monotonic)
    declined: set[float] = field(default_factory=set)
    logged: float = field(default_factory=time.monotonic)

    def refusal(self, view: AutoscalerView) -> str | None:
        """Why the autoscaler will not grow for the shape, or None while it may."""
        if any(_same(b, self.shape) for b in view.infeasible):
            return f"the {view.source} reports the request infeasible"
        if view.complete and not any(t.holds(self.shape) for t in view.node_types):
            return "no node type in the cluster's config has that much"
        if view.growing or view.complete or not any(_same(b, self.shape) for b in view.asked):
            self.declined.clear()
            return None
        self.declined.add(view.stamp)
        if len(self.declined) < DECLINED_UPDATES:
            return None
        return (
            f"the {view.source} saw the request in {len(self.declined)} updates and launched "
            "no node for it (it logs 'could not find a node type to satisfy the request' when "
            "no node type has that much, or the cluster is at its max_workers)"
        )

    def progress(self, view: AutoscalerView) -> None:
        """A log line every PROGRESS_EVERY s, and the gauge ``atlas_waiting_seconds``."""
        now = time.monotonic()
        waited, tags = now - self.t0, {"setting": self.what, "shape": _fmt(self.shape)}
        gauge("atlas_waiting_seconds", waited, tags)
        if now - self.logged < PROGRESS_EVERY:
            return
        self.logged = now
        log.info(
            "%s: waiting for a node with %s: %.0f s so far, giving up in %.0f s "
            "(cluster.wait_s=%g); %s: %s; node types: %s",
            self.what,
            _fmt(self.shape),
            waited,
            self.seconds - waited,
            self.seconds,
            view.source or "no autoscaler",
            "growing" if view.growing else "launching nothing",
            "; ".join(str(t) for t in view.node_types) or "none",
        )

    def done(self) -> None:
        gauge("atlas_waiting_seconds", 0.0, {"setting": self.what, "shape": _fmt(self.shape)})


def ask(num_cpus: float, num_gpus: float, count: int) -> None:
    """Tell the autoscaler what is wanted: ``count`` bundles of this shape (replacing any
    earlier request; a cluster without an autoscaler ignores it). ``count`` 0 withdraws it."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[_shape(num_cpus, num_gpus)] * max(0, count))


def require(what: str, num_cpus: float = 0, num_gpus: float = 0, count: int = 1) -> None:
    """Make sure some node can run a task or actor of this shape. When none of the live nodes
    can, ask the autoscaler for ``count`` of them and wait up to ``cluster.wait_s`` for a node
    that fits (a GPU group that starts at zero replicas grows on demand), saying every 10 s
    what the wait is for. Refuse, naming the settings (``what``, e.g. ``cluster.render``), the
    shape and the node types, as soon as the autoscaler will not grow for it (a shape no node
    type holds: within a minute), or at the deadline (Ray would wait for it forever)."""
    shape = _shape(num_cpus, num_gpus)
    if _fitting(shape):
        return
    wait = _Wait(what, shape, _WAIT["seconds"])
    why = "no node has it and cluster.wait_s=0 (no waiting)"
    if wait.seconds > 0:
        log.info(
            "%s: no node has %s yet: asking the autoscaler for %d and waiting up to %.0f s",
            what,
            _fmt(shape),
            count,
            wait.seconds,
        )
        ask(num_cpus, num_gpus, count)
        why = f"none came within cluster.wait_s={wait.seconds:g} s"
        try:
            while time.monotonic() < wait.t0 + wait.seconds:
                time.sleep(1.0)
                if _fitting(shape):
                    return
                view = autoscaler()
                refusal = wait.refusal(view)
                if refusal:
                    waited = time.monotonic() - wait.t0
                    raise _no_node(what, shape, view, f"{refusal} ({waited:.0f} s after asking)")
                wait.progress(view)
        finally:
            wait.done()
    raise _no_node(what, shape, autoscaler(), why)


def _no_node(what: str, shape: Shape, view: AutoscalerView, why: str) -> ConfigError:
    types = "; ".join(str(t) for t in view.node_types) or "none"
    return ConfigError(
        what,
        {"num_cpus": shape["CPU"], "num_gpus": shape.get("GPU", 0.0)},
        fix=f"no node of this cluster can hold {_fmt(shape)}: {why}. Node types"
        f"{'' if view.complete else ' up'}: {types}. Lower the num_cpus / num_gpus of {what} "
        "to what a node type has, or add a node type that has it.",
    )


def grow(num_cpus: float, num_gpus: float, count: int) -> int:
    """How many of this shape the cluster holds once it has grown for them: ask the
    autoscaler for ``count``, wait until they fit or the capacity stops growing for a while
    (at most ``cluster.wait_s``), and return the capacity then (at least one: see require)."""
    have = capacity(num_cpus, num_gpus)
    if have >= count or _WAIT["seconds"] <= 0:
        return have
    ask(num_cpus, num_gpus, count)
    deadline, settle = time.monotonic() + _WAIT["seconds"], time.monotonic() + _WAIT["settle"]
    while have < count and time.monotonic() < min(deadline, settle):
        time.sleep(1.0)
        now = capacity(num_cpus, num_gpus)
        if now > have:  # still growing: wait for more
            have, settle = now, time.monotonic() + _WAIT["settle"]
    log.info(
        "the cluster holds %d of the %d asked (%g CPU / %g GPU each)",
        have,
        count,
        num_cpus,
        num_gpus,
    )
    return have


def release() -> None:
    """Withdraw every request to the autoscaler, so idle nodes can go."""
    if _WAIT["seconds"] > 0 and _ray().is_initialized():
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])


def capacity(num_cpus: float = 1, num_gpus: float = 0) -> int:
    """How many tasks or actors of this shape the cluster's live nodes hold at once."""
    total = 0
    for node in _ray().nodes():
        if not node.get("Alive"):
            continue
        r = node.get("Resources", {})
        fits = [r.get("CPU", 0) // num_cpus if num_cpus else float("inf")]
        fits.append(r.get("GPU", 0) // num_gpus if num_gpus else float("inf"))
        total += int(min(fits)) if min(fits) != float("inf") else 0
    return total


def where_am_i() -> dict[str, str]:
    """The node (Ray node id and host name) running the caller, for markers and manifests."""
    import socket

    ray = _ray()
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    return {"node": str(node or ""), "host": socket.gethostname()}


_REMOTES: dict[Callable[..., Any], Any] = {}


def put(value: Any) -> Any:
    """Put ``value`` in the object store once; pass the handle to many :func:`submit` calls."""
    return _ray().put(value)


def submit(
    fn: Callable[..., R],
    *args: Any,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 3,
) -> Any:
    """Start ``fn(*args)`` as one Ray task and return its handle at once.

    Handles (from :func:`put` or :func:`submit`) among ``args`` are resolved by Ray before the
    task starts, so chained submits form a task graph: a task waits for its inputs without holding
    a CPU, and nothing blocks in the driver. A task whose worker dies is retried (``max_retries``),
    and a lost result is rebuilt from its lineage.
    """
    remote = _REMOTES.get(fn)
    if remote is None:
        remote = _REMOTES[fn] = _ray().remote(fn)  # exported once per function, not per task
    opts = remote.options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
    return opts.remote(*args)


def gather(
    handles: Sequence[Any],
    *,
    desc: str = "tasks",
    labels: Sequence[str] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    unit: str = "task",
    keep: bool = True,
) -> list[Any]:
    """Wait for every handle (one progress bar); results in order (``keep=False``: each result
    is handed to ``on_result`` and dropped, so the driver holds one at a time; None is returned
    in its place).

    A failed task does not stop the wait: every other task runs to its end, then one RuntimeError
    names the failed ones (no task is left writing when this returns).
    """
    ray = _ray()
    index = {h: i for i, h in enumerate(handles)}
    names = list(labels) if labels is not None else [f"job {i}" for i in range(len(handles))]
    results: dict[int, Any] = {}
    errors: dict[int, Exception] = {}
    pending = list(handles)
    progress = Progress(desc, len(handles), unit)
    with tqdm(total=len(handles), desc=desc, unit=unit) as bar:
        while pending:
            # every finished handle at once (up to 256), so a wait over n tasks costs O(n), not
            # O(n^2): ray.wait scans the whole pending list each call
            done, pending = ray.wait(pending, num_returns=min(len(pending), 256), timeout=0.2)
            for ref in done:
                i = index[ref]
                try:
                    value = ray.get(ref)
                except Exception as exc:  # keep going: no task may outlive the call starting it
                    errors[i] = exc
                    log.error("%s: %s failed: %s", desc, names[i], exc)
                    count("atlas_task_failures", 1, {"stage": desc})
                    continue
                if on_result is not None:
                    on_result(i, value)
                results[i] = value if keep else None
                del value
                bar.update(1)
                progress.step()
    if errors:
        first = min(errors)
        for i in sorted(errors):  # a library error (a bad setting, a broken store) as itself
            cause = getattr(errors[i], "cause", None)
            if isinstance(cause, AtlasError):
                raise cause
        failed = ", ".join(names[i] for i in sorted(errors))
        raise RuntimeError(
            f"{desc}: {len(errors)} of {len(handles)} failed ({failed}); "
            f"the others finished and are committed, so re-running resumes. "
            f"First error: {errors[first]}"
        ) from errors[first]
    return [results[i] for i in range(len(handles))]


class Progress:
    """A progress line in the log (the job log of ``ray job submit``) at most every
    ``every`` seconds, with the rate and an ETA; and the stage's progress as Ray metrics."""

    def __init__(self, desc: str, total: int, unit: str, every: float = 30.0) -> None:
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.done, self.t0, self.last = 0, time.monotonic(), time.monotonic()

    def step(self, n: int = 1) -> None:
        self.done += n
        gauge("atlas_stage_done", self.done, {"stage": self.desc})
        gauge("atlas_stage_total", self.total, {"stage": self.desc})
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "%s: %d/%d %ss, %.2f/s, ETA %.0f s",
            self.desc,
            self.done,
            self.total,
            self.unit,
            rate,
            eta,
        )


_METRICS: dict[tuple[str, str], Any] = {}


def _metric(kind: str, name: str, tags: tuple[str, ...]) -> Any:
    """One Ray metric per name (``ray.util.metrics``: exported on each node's metrics port,
    which the dashboard's Prometheus scrapes as ``ray_<name>``)."""
    key = (kind, name)
    if key not in _METRICS:
        from ray.util import metrics

        cls = metrics.Counter if kind == "counter" else metrics.Gauge
        _METRICS[key] = cls(name, description=f"activation atlas: {name}", tag_keys=tags)
    return _METRICS[key]


def count(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    """Add ``value`` to counter ``name`` (images, icons, failures), from a task or the driver;
    a no-op outside Ray."""
    if value and _ray().is_initialized():
        _metric("counter", name, tuple(sorted(tags or {}))).inc(value, tags=tags or None)


def gauge(name: str, value: float, tags: dict[str, str] | None = None) -> None:
    if _ray().is_initialized():
        _metric("gauge", name, tuple(sorted(tags or {}))).set(value, tags=tags or None)


def settle(handles: Sequence[Any]) -> int:
    """Wait for tasks whose results nobody needs (warm-ups); failures are ignored. Returns how
    many succeeded."""
    ray = _ray()
    ok = 0
    for h in handles:
        try:
            ray.get(h)
            ok += 1
        except Exception as exc:  # a warm-up on a node that died: the work goes on elsewhere
            log.info("a warm-up task failed: %s", exc)
    return ok


def map_tasks(
    fn: Callable[..., R],
    jobs: Sequence[T],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    desc: str = "tasks",
    max_retries: int = 3,
    on_result: Callable[[int, R], None] | None = None,
    shared: Any = None,
    labels: Sequence[str] | None = None,
    keep: bool = True,
) -> list[R]:
    """Run ``fn(job)`` (or ``fn(job, shared)``) for every job as Ray tasks; results in job order,
    one progress bar. ``shared`` is put in the object store once, not sent with every task.

    A task whose worker dies is retried by Ray (``max_retries``). An exception raised by ``fn`` is
    not retried: every other task still runs to its end, then one RuntimeError names the failed
    jobs by ``labels`` (say, their shard numbers; no task is left writing when this returns).
    """
    extra = () if shared is None else (put(shared),)
    handles = [
        submit(fn, job, *extra, num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
        for job in jobs
    ]
    return gather(
        handles,
        desc=desc,
        labels=labels if labels is not None else [f"job {i}" for i in range(len(jobs))],
        on_result=on_result,
        unit="shard",
        keep=keep,
    )


class ActorPool:
    """A pool of stateful Ray actors fed work items, ``depth`` in flight per actor (the next
    item waits in the actor's queue, so it never idles between items); an actor that dies is
    replaced and its items re-run, so every item is processed (at least once; results are
    committed idempotently).

    factory: the class to run as an actor; args: its constructor arguments (built once per actor).
    """

    def __init__(
        self,
        factory: type,
        args: tuple[Any, ...],
        *,
        size: int,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_restarts_per_item: int = 3,
        depth: int = 2,
    ) -> None:
        ray = _ray()
        self._cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(factory)
        self._args = args
        self.size = max(1, size)
        self.depth = max(1, depth)
        self.max_restarts = max_restarts_per_item
        self.restarts = 0
        self.actors = [self._cls.remote(*args) for _ in range(self.size)]

    def map(
        self,
        method: str,
        items: Iterable[Any],
        *,
        desc: str = "items",
        on_result: Callable[[Any, Any], None] | None = None,
        total: int | None = None,
        extra: tuple[Any, ...] = (),
    ) -> int:
        """Call ``actor.method(item, *extra)`` for every item; ``on_result(item, result)`` in
        the driver. Returns the number of actor deaths survived."""
        ray = _ray()
        queue = list(items)
        tries: dict[int, int] = {}
        running: dict[Any, tuple[int, Any, Any]] = {}  # ref -> (slot, item, actor)
        inflight = [0] * self.size
        with tqdm(total=total if total is not None else len(queue), desc=desc) as bar:
            while queue or running:
                for slot in range(self.size):
                    while queue and inflight[slot] < self.depth:
                        item = queue.pop(0)
                        ref = getattr(self.actors[slot], method).remote(item, *extra)
                        running[ref] = (slot, item, self.actors[slot])
                        inflight[slot] += 1
                done, _ = ray.wait(list(running), num_returns=1)
                slot, item, actor = running.pop(done[0])
                inflight[slot] -= 1
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayActorError as exc:
                    key = id(item)
                    tries[key] = tries.get(key, 0) + 1
                    if tries[key] > self.max_restarts:
                        raise RuntimeError(f"{desc}: an item killed {tries[key]} actors") from exc
                    if self.actors[slot] is actor:  # the first of its items to report it
                        log.warning("actor died (%s); replacing it and re-running its items", exc)
                        self.restarts += 1
                        self.actors[slot] = self._cls.remote(*self._args)
                    queue.insert(0, item)
                    continue
                if on_result is not None:
                    on_result(item, result)
                bar.update(1)
        return self.restarts

    def grow(self, size: int) -> None:
        """Start actors until the pool has ``size``."""
        while len(self.actors) < size:
            self.actors.append(self._cls.remote(*self._args))
        self.size = len(self.actors)

    def call(self, index: int, method: str, *args: Any) -> Any:
        """Call one actor's method and wait for the result."""
        return _ray().get(getattr(self.actors[index], method).remote(*args))

    def kill(self, index: int) -> None:
        """Kill one actor (fault injection in tests)."""
        _ray().kill(self.actors[index], no_restart=True)

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
