"""Expensive calls off the event loop: a fixed pool of worker threads and a bounded queue.

A call takes a slot (``workers`` running plus ``queue`` waiting) or is refused at once with
:class:`Busy` (the app answers 503 with Retry-After). An upload takes its slot before its body
is read (:meth:`Jobs.reserve`), so the uploads held in memory are bounded by the slots too. A
call that runs past ``timeout_s`` is answered 504; its thread cannot be stopped, so its slot
stays taken until it really ends: a backend that hangs makes the server say it is busy rather
than pile up threads.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(Exception):
    """Every slot is taken; ``retry_after`` (whole seconds) is when one is likely free."""

    def __init__(self, running: int, waiting: int, retry_after: int) -> None:
        super().__init__(
            f"busy: {running} requests running and {waiting} waiting (the server's limit); "
            f"retry in {retry_after} s"
        )
        self.retry_after = retry_after


class JobTimeout(Exception):
    """A call ran past its deadline."""


class Jobs:
    """``workers`` threads and ``queue`` waiting places; each call times out after
    ``timeout_s`` seconds (its thread finishes on its own)."""

    def __init__(self, workers: int, queue: int, timeout_s: float) -> None:
        self.workers, self.queue, self.timeout_s = workers, queue, timeout_s
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="atlas-job")
        self._lock = threading.Lock()
        self._taken = 0
        self._running = 0
        self._mean_s = 1.0  # running mean of a call's seconds, for Retry-After

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": self.workers,
                "queue": self.queue,
                "running": self._running,
                "waiting": self._taken - self._running,
            }

    def reserve(self) -> Slot:
        """A slot, held until a call made with it ends (or the ``with`` block, if none was
        made); raises Busy when every slot is taken."""
        with self._lock:
            if self._taken >= self.workers + self.queue:
                waiting = self._taken - self._running
                wait = self._mean_s * math.ceil(self._taken / self.workers)
                raise Busy(self._running, waiting, max(1, math.ceil(wait)))
            self._taken += 1
        return Slot(self)

    async def run(self, fn: Callable[..., T], *args: Any, slot: Slot | None = None) -> T:
        """``fn(*args)`` on a worker thread, in ``slot`` or a new one; raises Busy, JobTimeout,
        or what ``fn`` raised."""
        slot = slot or self.reserve()
        slot.used = True
        future: Future[T] = self._pool.submit(self._call, fn, *args)
        future.add_done_callback(lambda _: self._release())  # also when cancelled unstarted
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            raise JobTimeout(f"the computation ran past {self.timeout_s:g} s") from None

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        start = time.perf_counter()
        with self._lock:
            self._running += 1
        try:
            return fn(*args)
        finally:
            took = time.perf_counter() - start
            with self._lock:
                self._running -= 1
                self._mean_s = 0.8 * self._mean_s + 0.2 * took

    def _release(self) -> None:
        with self._lock:
            self._taken -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Slot:
    """A reserved place; ``with`` it, so an unused one is given back."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs, self.used = jobs, False

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.used:  # no call took it over: give it back
            self.used = True
            self.jobs._release()
