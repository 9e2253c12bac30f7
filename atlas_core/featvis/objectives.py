"""Objectives as values: each maps captured layer outputs to one score per batch index, shape (B,).

They add, subtract and scale like numbers (Lucid's optvis style), and know which layers they read,
so the renderer can stop the forward pass after the deepest one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Acts = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """fn: captured outputs -> (B,) scores; layers: the layer names fn reads."""

    fn: Callable[[Acts], torch.Tensor]
    layers: frozenset[str]
    name: str = "objective"

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                lambda a: self(a) + other(a),
                self.layers | other.layers,
                f"({self.name} + {other.name})",
            )
        return Objective(lambda a: self(a) + other, self.layers, f"({self.name} + {other})")

    __radd__ = __add__

    def __mul__(self, k: float) -> Objective:
        return Objective(lambda a: self(a) * k, self.layers, f"{k} * {self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)


def _centre(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) at the middle cell (H // 2, W // 2)."""
    return t[:, :, t.shape[2] // 2, t.shape[3] // 2]


def channel(layer: str, index: int) -> Objective:
    """Mean activation of one channel over all positions."""
    return Objective(
        lambda a: a[layer][:, index].mean(dim=(1, 2)),
        frozenset([layer]),
        f"channel({layer}:{index})",
    )


def neuron(layer: str, index: int) -> Objective:
    """One channel at the centre position."""
    return Objective(
        lambda a: _centre(a[layer])[:, index], frozenset([layer]), f"neuron({layer}:{index})"
    )


def direction(layer: str, vecs: torch.Tensor) -> Objective:
    """Dot product with a direction per batch index at the centre. vecs: (B, C) or (C,)."""
    return Objective(
        lambda a: (_centre(a[layer]) * vecs.to(a[layer].device)).sum(-1),
        frozenset([layer]),
        f"direction({layer})",
    )


def direction_cossim(
    layer: str,
    vecs: torch.Tensor,
    *,
    power: float = 4.0,
    whiten: torch.Tensor | None = None,
) -> Objective:
    """The activation-atlas icon objective, one direction per batch index, at the centre cell.

    With a = activation at the centre (B, C) and v = vecs (B, C), optionally whitened as S v:
        dot = mean(a * v);  cos = max(0.1, dot / (|a| + 1e-4));  objective = dot * cos ** power
    as Lucid's ``direction_neuron_cossim_S`` computes it (not divided by |v|).
    """
    v = vecs if whiten is None else vecs @ whiten.T

    def fn(acts: Acts) -> torch.Tensor:
        c = _centre(acts[layer]).float()
        vv = v.to(c.device, c.dtype)
        dot = (c * vv).mean(-1)
        cos = torch.clamp(dot / (c.norm(dim=-1) + 1e-4), min=0.1)
        return dot * cos**power

    return Objective(fn, frozenset([layer]), f"direction_cossim({layer}, pow={power})")


def direction_cosine(layer: str, vecs: torch.Tensor, *, fill: float = 0.0) -> Objective:
    """The cosine between the activation at the centre cell and its direction, one direction per
    batch index (B, C): what fidelity measures, so an icon is pushed towards its cell's
    direction, not towards a larger activation along it. ``fill`` in [0, 1] weighs in the mean
    cosine over every position: ``(1 - fill) * cos(centre) + fill * mean(cos(every position))``,
    an icon filled with its cell's pattern rather than a centre on a grey field. Measured on the
    demo (docs/icons.md), icons closer to their cells' exemplars than Lucid's ``dot * cos^n``."""

    def fn(acts: Acts) -> torch.Tensor:
        t = acts[layer].float()
        v = vecs.to(t.device, t.dtype)
        out = torch.nn.functional.cosine_similarity(_centre(t), v, dim=-1)
        if fill:
            every = torch.nn.functional.cosine_similarity(t, v[:, :, None, None], dim=1)
            out = (1.0 - fill) * out + fill * every.mean((1, 2))
        return out

    return Objective(fn, frozenset([layer]), f"direction_cosine({layer}, fill={fill})")
