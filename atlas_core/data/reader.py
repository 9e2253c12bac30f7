"""One shard's inputs as model-ready batches; every row gets a status, a reason and a hash.

Three strategies, chosen from the inputs, behind one iterator:

- tar members, streamed (each tar read once, never extracted);
- JPEGs decoded a batch at a time by torchvision (nvJPEG on CUDA), anything it refuses through
  the PIL policy;
- the PIL policy on a thread pool, decoding ahead of the consumer; crops of one source file (the
  photo source) decode that file once per reader.

A row that cannot be decoded is skipped in the batches and keeps its status and reason (whatever
the decoder raised on it: a file's fault is never the task's); rows are never substituted, so row
``i`` is always input ``i``.

Reading, decoding, resizing and collating run in a producer thread ahead of the consumer's
forward pass, ``prefetch`` batches deep (a bounded queue: memory stays about ``prefetch`` + 2
batches whatever the shard's size: the queue, the batch being collated and the decode pool's
window of one batch of rows ahead). One producer keeps the rows in order; an error in it is
raised in the consumer; a consumer that stops early stops it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch

from atlas_core.data.decode import (
    Decoded,
    DecodePolicy,
    Status,
    as_text,
    content_hash,
    cropped,
    decode,
    read_bytes,
)
from atlas_core.data.jpeg import decode_jpegs
from atlas_core.data.tars import PREFIX as TAR_PREFIX
from atlas_core.data.tars import stream_members


class Preprocess(Protocol):
    """What the reader needs of a model's preprocessing (``atlas_core.models.preprocess``)."""

    def to_array(self, image: Any) -> np.ndarray: ...
    def batch(self, arrays: np.ndarray) -> torch.Tensor: ...
    def normalize(self, x: torch.Tensor) -> torch.Tensor: ...
    def tensor_to_input(self, t: torch.Tensor) -> torch.Tensor: ...


_END = object()


def _ahead(pool: ThreadPoolExecutor, fn: Any, n: int, window: int) -> Iterator[Any]:
    """``fn(0) .. fn(n - 1)`` in order, on the pool, at most ``window`` ahead of the consumer
    (``pool.map`` would submit all n at once and hold every result)."""
    from collections import deque

    pending: deque[Any] = deque()
    nxt = 0
    while nxt < n or pending:
        while nxt < n and len(pending) < window:
            pending.append(pool.submit(fn, nxt))
            nxt += 1
        yield pending.popleft().result()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ImageReader:
    """Rows of one shard: ``uris`` (n,) str and ``crops`` (n, 4) int32 (-1: whole image).

    decoder: ``"auto"`` (torchvision's batched JPEG decoder on CUDA, PIL on CPU),
    ``"torchvision"`` or ``"pil"``. After iterating, ``status`` (n,) uint8, ``error`` (n,) str and
    ``hashes`` (n,) uint64 describe every row.
    """

    def __init__(
        self,
        uris: np.ndarray,
        crops: np.ndarray,
        preprocess: Preprocess,
        *,
        root: str | None = None,
        policy: DecodePolicy | None = None,
        device: str = "cpu",
        decoder: str = "auto",
        batch_size: int = 64,
        threads: int = 2,
        prefetch: int = 2,
    ) -> None:
        self.uris = [str(u) for u in uris]
        self.crops = np.asarray(crops)
        self.pre = preprocess
        self.root = root
        self.policy = policy or DecodePolicy()
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.prefetch = max(1, prefetch)
        n = len(self.uris)
        self.status = np.zeros(n, np.uint8)
        self.error = np.full(n, "", dtype=object)
        self.hashes = np.zeros(n, np.uint64)
        self.repeated = bool((self.crops[:, 0] >= 0).any()) if n else False
        self.tar = n > 0 and self.uris[0].startswith(TAR_PREFIX)
        tv = decoder == "torchvision" or (decoder == "auto" and device == "cuda")
        self.torchvision = tv and not self.tar and not self.repeated
        self._whole = lru_cache(maxsize=32)(self._decode_whole)

    @property
    def strategy(self) -> str:
        return "tar" if self.tar else "torchvision" if self.torchvision else "pil"

    def batches(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(row indices (B,), normalized input (B, 3, H, W)) for the rows that decoded, made
        ``prefetch`` batches ahead in a producer thread. ``status``, ``error`` and ``hashes``
        are complete once the iteration has ended."""
        q: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for b in self._batches():
                    if not put(b):
                        return
                put(_END)
            except BaseException as exc:  # raised in the consumer
                put(_Failed(exc))

        worker = threading.Thread(target=produce, name="atlas-reader", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            stop.set()
            worker.join()

    def _batches(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            if self.tar:
                rows: Iterator[tuple[int, Any]] = self._from_tar()
            elif self.torchvision:
                rows = self._by_torchvision(pool)
            else:
                rows = _ahead(pool, self._load, len(self.uris), self.batch_size)
            batch: list[tuple[int, Any]] = []
            for i, item in rows:
                if item is not None:
                    batch.append((i, item))
                if len(batch) == self.batch_size:
                    yield self._collate(batch)
                    batch = []
            if batch:
                yield self._collate(batch)

    # ------------------------------------------------------------------ strategies
    def _record(self, i: int, d: Decoded) -> np.ndarray | None:
        self.status[i], self.error[i], self.hashes[i] = (
            int(d.status),
            as_text(d.detail[:500]),
            d.content_hash,
        )
        return self.pre.to_array(d.image) if d.image is not None else None

    def _decode_whole(self, uri: str) -> Decoded:
        return decode(uri, None, policy=self.policy, root=self.root)

    def _load(self, i: int) -> tuple[int, np.ndarray | None]:
        try:
            if self.repeated:
                d = cropped(self._whole(self.uris[i]), self.crops[i])
            else:
                d = decode(self.uris[i], self.crops[i], policy=self.policy, root=self.root)
            return i, self._record(i, d)
        except Exception as exc:  # decode never raises; this is the resize of a hostile image
            bad = Decoded(Status.DECODER_ERROR, detail=f"{type(exc).__name__}: {exc}")
            return i, self._record(i, bad)

    def _from_tar(self) -> Iterator[tuple[int, np.ndarray | None]]:
        got = dict(stream_members(self.uris, self.policy))
        for i in range(len(self.uris)):
            yield i, self._record(i, got[i])

    def _read(self, i: int) -> bytes | Decoded:
        return read_bytes(self.uris[i], self.root, policy=self.policy)

    def _by_torchvision(self, pool: ThreadPoolExecutor) -> Iterator[tuple[int, Any]]:
        """Model-sized [0, 1] tensors; files torchvision refuses go through the PIL policy."""
        n = len(self.uris)
        for start in range(0, n, self.batch_size):
            ids = list(range(start, min(n, start + self.batch_size)))
            raw = list(pool.map(self._read, ids))
            datas = [r if isinstance(r, bytes) else b"" for r in raw]
            decoded = decode_jpegs(datas, device=self.device, policy=self.policy)
            for i, r, t in zip(ids, raw, decoded, strict=True):
                if t is not None and isinstance(r, bytes):
                    self.status[i], self.hashes[i] = int(Status.OK), content_hash(r)
                    yield i, self.pre.tensor_to_input(t)
                    continue
                _, arr = self._load(i)
                if arr is None:
                    yield i, None
                    continue
                yield i, torch.from_numpy(np.array(arr)).permute(2, 0, 1) / 255.0

    def _collate(self, batch: list[tuple[int, Any]]) -> tuple[np.ndarray, torch.Tensor]:
        idx = np.array([j for j, _ in batch])
        if isinstance(batch[0][1], torch.Tensor):
            items = [t.to(self.device).float() for _, t in batch]
            return idx, self.pre.normalize(torch.stack(items))
        x = self.pre.batch(np.stack([a for _, a in batch]))
        return idx, x.pin_memory() if self.device == "cuda" else x
