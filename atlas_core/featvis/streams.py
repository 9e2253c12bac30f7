"""One random stream per icon, so an icon's pixels depend on its own seed only.

Batching many icons must not couple them: every draw an icon sees (its initial image, each
jitter offset, scale, angle and background) comes from its own stream, seeded from the run's
seed and the icon's identity. The streams are counter-based: draw ``j`` of icon ``i`` is a hash
of (the icon's seed, ``j``) computed with exact integer tensor arithmetic on the icons' device,
so a draw costs no host round trip (no synchronisation inside the optimization loop), needs no
per-icon generator object, and is the same integer on every CPU and GPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_M32 = 0xFFFFFFFF


def icon_seed(seed: int, *identity: object) -> int:
    """A 63-bit seed from the run's seed and an icon's identity (say layer, grid size, cell)."""
    text = "/".join(str(x) for x in (seed, *identity)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 32-bit values held in int64, without overflowing int64."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Streams:
    """Independent random streams, one per batch item (B = ``len(seeds)``), on ``device``."""

    def __init__(self, seeds: Sequence[int], *, device: torch.device | str = "cpu") -> None:
        s = [int(v) & ((1 << 63) - 1) for v in seeds]
        self.device = torch.device(device)
        self.lo = torch.tensor([v & _M32 for v in s], dtype=torch.int64, device=self.device)
        self.hi = torch.tensor([v >> 32 for v in s], dtype=torch.int64, device=self.device)
        self.counter = 0

    @classmethod
    def from_seed(cls, seed: int, n: int, *, device: torch.device | str = "cpu") -> Streams:
        """``n`` streams derived from one seed (item ``i`` gets ``icon_seed(seed, i)``)."""
        return cls([icon_seed(seed, i) for i in range(n)], device=device)

    def __len__(self) -> int:
        return len(self.lo)

    def _bits(self, k: int) -> torch.Tensor:
        """(B, k) int64 holding 24 random bits each: the next ``k`` draws of every stream."""
        j = torch.arange(self.counter, self.counter + k, dtype=torch.int64, device=self.device)
        self.counter += k
        x = _hash32((j[None, :] ^ self.lo[:, None]) & _M32)
        x = _hash32(x ^ self.hi[:, None] ^ ((j[None, :] >> 32) & _M32))
        return x >> 8

    def uniform(self, k: int) -> torch.Tensor:
        """(B, k) float32 in [0, 1)."""
        return self._bits(k).to(torch.float32) * (1.0 / (1 << 24))

    def choice(self, n: int) -> torch.Tensor:
        """(B,) int64 in [0, n): one uniform index per stream."""
        return (self.uniform(1)[:, 0] * n).long().clamp_(max=n - 1)

    def normal(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal (Box-Muller over two uniform draws per value)."""
        n = 1
        for d in shape:
            n *= d
        u1 = (self._bits(n).to(torch.float64) + 1.0) * (1.0 / ((1 << 24) + 1))
        u2 = self.uniform(n).to(torch.float64)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
        return z.to(torch.float32).reshape(len(self), *shape)
