"""The rows one extraction task writes, filled batch by batch.

Rows nothing was written to keep their hole values (NaN activations, class -1, status 0), so a
lost write is visible in the store.
"""

from __future__ import annotations

import numpy as np
import torch

from atlas_core.extract.extractor import ExtractBatch
from atlas_core.store.run_store import ShardResult, sample_rows


class ShardBuffers:
    """Buffers of ``n`` images with ``k`` samples each.

    channels: layer -> C; topk: top classes kept per image; attr: attribution columns (0: none).
    """

    def __init__(self, n: int, k: int, channels: dict[str, int], topk: int, attr: int) -> None:
        self.k = k
        self.channels = dict(channels)
        self.status = np.zeros(n, np.uint8)
        self.error = np.full(n, "", dtype=object)
        self.hashes = np.zeros(n, np.uint64)
        self.top_c = np.full((n, topk), -1, np.int32)
        self.top_p = np.full((n, topk), np.nan, np.float16)
        self.acts = {L: np.full((n * k, c), np.nan, np.float32) for L, c in channels.items()}
        self.attr = (
            {L: np.full((n * k, attr), np.nan, np.float32) for L in channels} if attr else None
        )
        self.moment: dict[str, torch.Tensor] = {}
        self.mcount = dict.fromkeys(channels, 0)

    def sample_rows(self, idx: np.ndarray) -> np.ndarray:
        """Sample rows (B * k,) of images ``idx`` (B,), image-major."""
        return sample_rows(idx, self.k)

    def add(self, idx: np.ndarray, out: ExtractBatch) -> None:
        """Store one batch's results for images ``idx`` (B,) of this shard."""
        rows = self.sample_rows(idx)
        for name, a in out.acts.items():
            self.acts[name][rows] = a
            per_image = out.moment[name]
            total = self.moment.setdefault(name, torch.zeros_like(per_image[0]))
            for m in per_image:  # image by image, in order: the same sum however batched
                total += m
            self.mcount[name] += out.moment_count[name]
            if self.attr is not None and out.attr is not None:
                self.attr[name][rows] = out.attr[name]
        if out.top_class.shape[1]:
            self.top_c[idx] = out.top_class
            self.top_p[idx] = out.top_prob

    def set_inputs(self, status: np.ndarray, error: np.ndarray, hashes: np.ndarray) -> None:
        """Per-image status, reason and content hash, as the reader recorded them."""
        self.status[:], self.error[:], self.hashes[:] = status, error, hashes

    def result(self, shard: int, start: int, stop: int, seconds: float) -> ShardResult:
        moment = {
            L: (self.moment[L].cpu().numpy() if L in self.moment else np.zeros((c, c)))
            for L, c in self.channels.items()
        }
        return ShardResult(
            shard,
            start,
            stop,
            self.status,
            self.error,
            self.hashes,
            self.top_c,
            self.top_p,
            self.acts,
            moment,
            self.mcount,
            self.attr,
            seconds,
        )
