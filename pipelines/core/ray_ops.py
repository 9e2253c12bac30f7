"""Every Ray call of the project, in one place.

Local runs bind to 127.0.0.1 with the dashboard off and usage stats disabled; a cluster run joins
``cluster.address`` (token authentication is Ray's default from 2.60: the cluster's token must be
in ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``, see infra/README.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm

from atlas_core.errors import AtlasError, ConfigError
from pipelines.core.schema import ClusterBase

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


def init(cluster: ClusterBase) -> None:
    """Start (or join) Ray once per process; a second call is a no-op. Joining a cluster
    (``cluster.address``) refuses to start without token authentication."""
    if cluster.address:
        check_token_auth()
    if not cluster.address:
        # Local runs stay on loopback: with this, Ray resolves every node address to 127.0.0.1
        # instead of the machine's interface (read when ray is first imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
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


def require(what: str, num_cpus: float = 0, num_gpus: float = 0) -> None:
    """Refuse at once a task or actor shape that no node of the cluster can ever run (Ray
    would wait for it forever): ``what`` names the setting, e.g. ``cluster.render``."""
    ray = _ray()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = any(r.get("CPU", 0) >= num_cpus and r.get("GPU", 0) >= num_gpus for r in nodes)
    if not fits:
        have = [f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU" for r in nodes]
        raise ConfigError(
            what, {"num_cpus": num_cpus, "num_gpus": num_gpus},
            fix=f"no node of this cluster has that much (nodes: {', '.join(have) or 'none'}); "
            f"lower {what}.num_cpus / {what}.num_gpus or add nodes that have it.",
        )  # fmt: skip


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
    with tqdm(total=len(handles), desc=desc, unit=unit) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            try:
                value = ray.get(done[0])
            except Exception as exc:  # keep going: no task may outlive the call that started it
                errors[i] = exc
                log.error("%s: %s failed: %s", desc, names[i], exc)
                continue
            if on_result is not None:
                on_result(i, value)
            results[i] = value if keep else None
            del value
            bar.update(1)
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
