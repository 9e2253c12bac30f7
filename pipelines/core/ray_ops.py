"""Every Ray call of the project, in one place.

Local runs bind to 127.0.0.1 with the dashboard off and usage stats disabled; a cluster run joins
``cluster.address`` (token authentication is Ray's default from 2.60: the cluster's token must be
in ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``, see infra/README.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
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
    ray.init(
        num_cpus=cluster.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace=cluster.namespace,
        log_to_driver=True,
        configure_logging=False,
    )


def shutdown() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


def cluster_resources() -> dict[str, float]:
    return dict(_ray().cluster_resources())


_WAIT = {"seconds": 0.0, "settle": 20.0}  # set by init() from cluster.wait_s


def _fitting(num_cpus: float, num_gpus: float) -> list[dict[str, float]]:
    nodes = [n.get("Resources", {}) for n in _ray().nodes() if n.get("Alive")]
    return [r for r in nodes if r.get("CPU", 0) >= num_cpus and r.get("GPU", 0) >= num_gpus]


def ask(num_cpus: float, num_gpus: float, count: int) -> None:
    """Tell the autoscaler what is wanted: ``count`` bundles of this shape (replacing any
    earlier request; a cluster without an autoscaler ignores it). ``count`` 0 withdraws it."""
    from ray.autoscaler.sdk import request_resources

    shape = {"CPU": float(num_cpus), **({"GPU": float(num_gpus)} if num_gpus else {})}
    request_resources(bundles=[shape] * max(0, count))


def require(what: str, num_cpus: float = 0, num_gpus: float = 0, count: int = 1) -> None:
    """Make sure some node can run a task or actor of this shape. When none of the live nodes
    can, ask the autoscaler for ``count`` of them and wait up to ``cluster.wait_s`` for a node
    that fits (a GPU group that starts at zero replicas grows on demand); then refuse, naming
    the setting (``what``, e.g. ``cluster.render``), the shape and what the nodes have (Ray
    would wait for it forever)."""
    deadline = time.monotonic() + _WAIT["seconds"]
    if not _fitting(num_cpus, num_gpus) and _WAIT["seconds"] > 0:
        log.info(
            "%s: no node has %g CPU / %g GPU yet: asking the autoscaler for %d and waiting "
            "up to %.0f s",
            what,
            num_cpus,
            num_gpus,
            count,
            _WAIT["seconds"],
        )
        ask(num_cpus, num_gpus, count)
        while not _fitting(num_cpus, num_gpus) and time.monotonic() < deadline:
            time.sleep(1.0)
    if not _fitting(num_cpus, num_gpus):
        nodes = [n.get("Resources", {}) for n in _ray().nodes() if n.get("Alive")]
        have = [f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU" for r in nodes]
        waited = f" within cluster.wait_s={_WAIT['seconds']:g} s" if _WAIT["seconds"] else ""
        raise ConfigError(
            what,
            {"num_cpus": num_cpus, "num_gpus": num_gpus},
            fix=f"no node of this cluster has that much{waited} (nodes: "
            f"{', '.join(have) or 'none'}); lower {what}.num_cpus / {what}.num_gpus, add nodes "
            "that have it, or let the autoscaler grow a group that has it (cluster.wait_s).",
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
