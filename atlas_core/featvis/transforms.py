"""Robustness transforms: each ``make(settings) -> (x, gen) -> x`` on a batch (B, C, H, W).

Randomness comes only from the explicit ``torch.Generator`` passed in. Jitter offsets are shared
by the batch (as in Lucid); scale and rotation are drawn per image and applied in one resampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _pick(values: Sequence[float], n: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(values), (n,), generator=gen)
    return torch.tensor(values, dtype=torch.float32)[idx]


def pad(width: int, value: float = 0.5) -> Transform:
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return F.pad(x, (width,) * 4, mode="constant", value=value)

    return t


def jitter(d: int) -> Transform:
    """Random crop of d pixels less on each axis, at a random offset shared by the batch."""

    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=gen))
        h, w = x.shape[-2:]
        return x[..., dy : h - d + dy, dx : w - d + dx]

    return t


def scale_rotate(scales: Sequence[float], degrees: Sequence[float]) -> Transform:
    """Zoom by a random factor from ``scales`` and rotate by a random angle from ``degrees``,
    per image, about the centre, keeping the size (borders repeat the edge)."""

    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        s = _pick(scales, b, gen)
        a = _pick(degrees, b, gen) * (math.pi / 180.0)
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        theta = torch.stack(
            [
                torch.stack([cos, -sin, torch.zeros(b)], 1),
                torch.stack([sin, cos, torch.zeros(b)], 1),
            ],
            1,
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return t


def crop_or_pad_to(size: int, value: float = 0.5) -> Transform:
    """Centre crop (or pad with ``value``) to ``size x size``."""

    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < size or w < size:
            ph, pw = max(0, size - h), max(0, size - w)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
            h, w = x.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        return x[..., top : top + size, left : left + size]

    return t


def collapse_alpha() -> Transform:
    """RGBA -> RGB over a fresh random background each step (Lucid's alpha trick): only what the
    objective needs stays opaque. RGB input passes through unchanged."""

    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if x.shape[1] != 4:
            return x
        bg = torch.rand((x.shape[0], 3, 1, 1), generator=gen).to(x.device, x.dtype)
        noise = torch.rand(x.shape[0], 3, *x.shape[2:], generator=gen).to(x.device, x.dtype)
        bg = 0.5 * bg + 0.5 * noise
        a = x[:, 3:]
        return x[:, :3] * a + bg * (1 - a)

    return t


def flatten_alpha(x: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """RGBA -> RGB over a plain background (white by default), for the finished icon."""
    if x.shape[1] != 4:
        return x
    return x[:, :3] * x[:, 3:] + background * (1 - x[:, 3:])


def compose(transforms: Sequence[Transform]) -> Transform:
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for f in transforms:
            x = f(x, gen)
        return x

    return t


def icon_transforms(size: int) -> list[Transform]:
    """The activation-atlas icon transforms: pad 16, jitter 4,4,8,8,8, random scale, random rotate
    (-20..20 degrees, biased to small angles), jitter 2, crop back to ``size``."""
    scales = [0.995**n for n in range(-5, 80)] + [0.998**n for n in 2 * list(range(20, 40))]
    degrees = list(range(-20, 20)) + list(range(-10, 10)) + list(range(-5, 5)) + 5 * [0]
    return [
        pad(16),
        jitter(4),
        jitter(4),
        jitter(8),
        jitter(8),
        jitter(8),
        scale_rotate(scales, [float(d) for d in degrees]),
        jitter(2),
        crop_or_pad_to(size),
    ]
