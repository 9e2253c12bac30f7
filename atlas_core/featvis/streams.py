"""One random stream per icon, so an icon's pixels depend on its own seed only.

Batching many icons must not couple them: every draw an icon sees (its initial image, each
jitter offset, scale, angle and background) comes from its own ``torch.Generator``, seeded from
the run's seed and the icon's identity. The same icon then renders to the same bytes in a batch
of 4 or 64, on any actor, before or after a resume.

Uniform draws are taken from each generator in blocks (one call per icon per block, not per step),
so per-icon streams cost next to nothing at batch sizes in the thousands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def icon_seed(seed: int, *identity: object) -> int:
    """A 63-bit seed from the run's seed and an icon's identity (say layer, grid size, cell)."""
    text = "/".join(str(x) for x in (seed, *identity)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


class Streams:
    """Independent random streams, one per batch item (B = ``len(seeds)``)."""

    def __init__(self, seeds: Sequence[int], *, block: int = 1024) -> None:
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.block = block
        self._buf = torch.empty(len(seeds), 0)
        self._pos = 0

    @classmethod
    def from_seed(cls, seed: int, n: int) -> Streams:
        """``n`` streams derived from one seed (item ``i`` gets ``icon_seed(seed, i)``)."""
        return cls([icon_seed(seed, i) for i in range(n)])

    def __len__(self) -> int:
        return len(self.gens)

    def uniform(self, k: int) -> torch.Tensor:
        """(B, k) float32 in [0, 1): the next ``k`` draws of every stream."""
        if self._pos + k > self._buf.shape[1]:
            n = max(self.block, k)
            fresh = torch.stack([torch.rand(n, generator=g) for g in self.gens])
            self._buf = torch.cat([self._buf[:, self._pos :], fresh], dim=1)
            self._pos = 0
        out = self._buf[:, self._pos : self._pos + k]
        self._pos += k
        return out

    def choice(self, n: int) -> torch.Tensor:
        """(B,) int64 in [0, n): one uniform index per stream."""
        return (self.uniform(1)[:, 0] * n).long().clamp_(max=n - 1)

    def normal(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal, each item from its own generator."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.gens])
