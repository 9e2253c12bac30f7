"""Robustness transforms: each ``make(settings) -> (x, streams) -> x`` on a batch (B, C, H, W).

Randomness comes only from the per-icon :class:`Streams` passed in: every offset, scale and angle
is drawn per image from that image's own stream (Lucid shares jitter offsets across a batch, which
makes an icon depend on its batch). Per-image crops are one batched gather, scale and rotation one
batched resampling: no Python loop over images. Draws and tables live on the images' device, so a
step never waits on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from atlas_core.featvis.streams import Streams

Transform = Callable[[torch.Tensor, Streams], torch.Tensor]


class _Table:
    """A constant table, copied to each device once (not once per step)."""

    def __init__(self, values: Sequence[float]) -> None:
        self.values = [float(v) for v in values]
        self.on: dict[torch.device, torch.Tensor] = {}

    def pick(self, rng: Streams) -> torch.Tensor:
        """(B,) one of the values per image, on the streams' device."""
        if rng.device not in self.on:
            self.on[rng.device] = torch.tensor(self.values, dtype=torch.float32, device=rng.device)
        return self.on[rng.device][rng.choice(len(self.values))]


def crop_each(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Crop image ``b`` of ``x`` (B, C, H, W) to rows ``top[b] + [0, h)``, columns
    ``left[b] + [0, w)``: one gather for the batch."""
    dev = x.device
    ys = (top.to(dev)[:, None] + torch.arange(h, device=dev))[:, :, None]  # (B, h, 1)
    xs = (left.to(dev)[:, None] + torch.arange(w, device=dev))[:, None, :]  # (B, 1, w)
    b = torch.arange(x.shape[0], device=dev)[:, None, None]
    return x[b, :, ys, xs].permute(0, 3, 1, 2)  # advanced indices first: (B, h, w, C)


def pad(width: int, value: float = 0.5) -> Transform:
    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        return F.pad(x, (width,) * 4, mode="constant", value=value)

    return t


def jitter(d: int) -> Transform:
    """Random crop of d pixels less on each axis, at a random offset per image."""

    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        off = (rng.uniform(2) * (d + 1)).long().clamp_(max=d)
        h, w = x.shape[-2:]
        return crop_each(x, off[:, 0], off[:, 1], h - d, w - d)

    return t


def scale_rotate(scales: Sequence[float], degrees: Sequence[float]) -> Transform:
    """Zoom by a random factor from ``scales`` and rotate by a random angle from ``degrees``,
    per image, about the centre, keeping the size (borders repeat the edge)."""

    scale_table, angle_table = _Table(scales), _Table(degrees)

    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        s = scale_table.pick(rng)
        a = angle_table.pick(rng) * (math.pi / 180.0)
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        zero = torch.zeros_like(cos)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return t


def crop_or_pad_to(size: int, value: float = 0.5) -> Transform:
    """Centre crop (or pad with ``value``) to ``size x size``."""

    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < size or w < size:
            ph, pw = max(0, size - h), max(0, size - w)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
            h, w = x.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        return x[..., top : top + size, left : left + size]

    return t


def noise(level: float) -> Transform:
    """Add Gaussian and uniform noise of scale ``level`` to every pixel, per image from its own
    stream (MACO's robustness noise)."""

    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        b, c, h, w = x.shape
        g = rng.normal(c, h, w).to(x.device, x.dtype)
        u = rng.uniform(c * h * w).reshape(b, c, h, w).to(x.device, x.dtype) - 0.5
        return x + level * (g + u)

    return t


def collapse_alpha() -> Transform:
    """RGBA -> RGB over a fresh random background each step (Lucid's alpha trick): only what the
    objective needs stays opaque. RGB input passes through unchanged."""

    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        if x.shape[1] != 4:
            return x
        b, _, h, w = x.shape
        bg = rng.uniform(3).reshape(b, 3, 1, 1).to(x.device, x.dtype)
        noise = rng.uniform(3 * h * w).reshape(b, 3, h, w).to(x.device, x.dtype)
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
    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        for f in transforms:
            x = f(x, rng)
        return x

    return t


ICON_SCALES = [0.995**n for n in range(-5, 80)] + [0.998**n for n in 2 * list(range(20, 40))]
ICON_DEGREES = [
    float(d) for d in list(range(-20, 20)) + list(range(-10, 10)) + list(range(-5, 5)) + 5 * [0]
]


def icon_transforms(size: int) -> list[Transform]:
    """The activation-atlas icon transforms: pad 16, jitter 4,4,8,8,8, random scale, random rotate
    (-20..20 degrees, biased to small angles), jitter 2, crop back to ``size``; as one resampling
    (:func:`fused_icon_transform`)."""
    return [fused_icon_transform(size)]


def fused_icon_transform(
    size: int,
    padding: int = 16,
    jitters: Sequence[int] = (4, 4, 8, 8, 8),
    scales: Sequence[float] = ICON_SCALES,
    degrees: Sequence[float] = ICON_DEGREES,
    last: int = 2,
) -> Transform:
    """pad, jitters, scale and rotate, a last jitter and the crop back to ``size`` as one affine
    map and one bilinear resampling of the batch (the chain's integer crops are translations, so
    they fold into the map). Per image it draws from its stream exactly what the chain draws, in
    the same order, and gives the chain's image wherever the rotated window stays inside the
    jittered crop (the chain repeats that crop's edge beyond it; this samples the padded image
    there, as if the crop were larger). For inputs of ``size`` x ``size``."""
    scale_table, angle_table = _Table(scales), _Table(degrees)
    inner = size + 2 * padding - sum(jitters)  # the side the chain rotates
    out = inner - last  # the side after the last jitter; crop_or_pad_to pads it back

    def t(x: torch.Tensor, rng: Streams) -> torch.Tensor:
        if x.shape[-1] != size or x.shape[-2] != size:
            raise ValueError(f"the icon transform is for {size} px images, got {x.shape}")
        dev, dt = x.device, x.dtype
        offset = torch.zeros(x.shape[0], 2, device=rng.device)  # (y, x), summed crop offsets
        for d in jitters:
            offset += (rng.uniform(2) * (d + 1)).long().clamp_(max=d)
        s = scale_table.pick(rng)
        a = angle_table.pick(rng) * (math.pi / 180.0)
        o6 = (rng.uniform(2) * (last + 1)).long().clamp_(max=last).float()
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        # pixel map (x, y): q_in = off + c + A (v + o6 - c), v the output pixel, c the centre of
        # the rotated square, in the frame of the padded image; then into x's frame (- padding)
        c = inner / 2 - 0.5
        ox, oy = offset[:, 1] - padding, offset[:, 0] - padding
        vx, vy = (out - 1) / 2 + o6[:, 1] - c, (out - 1) / 2 + o6[:, 0] - c
        bx = ox + c + cos * vx - sin * vy
        by = oy + c + sin * vx + cos * vy
        k = out / size  # output and input normalized frames differ in size
        theta = torch.stack(
            [
                torch.stack([cos * k, -sin * k, (2 * bx + 1) / size - 1], 1),
                torch.stack([sin * k, cos * k, (2 * by + 1) / size - 1], 1),
            ],
            1,
        ).to(dev, dt)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], out, out], align_corners=False)
        y = (
            F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            + 0.5
        )
        ph = size - out
        y = F.pad(y, (ph // 2, ph - ph // 2, ph // 2, ph - ph // 2), value=0.5)
        # channels-last: oneDNN's convolutions (and cuDNN's) run faster on it
        return y.contiguous(memory_format=torch.channels_last)

    return t
