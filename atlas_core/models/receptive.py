"""A layer's receptive field, measured from the model by back-propagation, not looked up.

The gradient of one feature-map position's channels with respect to the input is non-zero exactly
on the input pixels that position can see (its theoretical receptive field). Its bounding box, over
a few random inputs (a ReLU that is off for one input is on for another), is the field; it is
clipped to the input, so a field wider than the input is the whole input. The effective field
(Luo et al., 2016) is smaller: the centred square holding ``mass`` of the gradient's absolute
value, averaged over the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atlas_core.models.layers import capture_leaves


@dataclass(frozen=True)
class ReceptiveField:
    """Sides in input pixels of the theoretical and effective fields, and the layer's grid."""

    theoretical: int
    effective: int
    grid: tuple[int, int]
    input_px: int

    def side(self, kind: str) -> int:
        if kind not in ("theoretical", "effective"):
            raise ValueError(f"receptive field kind must be theoretical or effective, not {kind!r}")
        return self.theoretical if kind == "theoretical" else self.effective


def receptive_field(
    model: nn.Module,
    layer: str,
    input_px: int,
    *,
    trials: int = 3,
    mass: float = 0.9,
    seed: int = 0,
) -> ReceptiveField:
    """The receptive field of ``layer``'s centre position for a ``input_px`` square input."""
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = torch.zeros(input_px, input_px, dtype=torch.float64)
    grid = (1, 1)
    for _ in range(trials):
        x = torch.randn(1, 3, input_px, input_px, generator=gen).to(device).requires_grad_(True)
        with capture_leaves(model, [layer]) as out:
            model(x)
        feat = out[layer]
        grid = (int(feat.shape[-2]), int(feat.shape[-1]))
        (grad,) = torch.autograd.grad(feat[0, :, grid[0] // 2, grid[1] // 2].sum(), x)
        total += grad[0].abs().sum(0).double().cpu()
    seen = torch.nonzero(total > 0)
    if len(seen) == 0:
        return ReceptiveField(1, 1, grid, input_px)
    ys, xs = seen[:, 0], seen[:, 1]
    theoretical = int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1
    centre = (
        (float(ys.min()) + float(ys.max()) + 1) / 2,
        (float(xs.min()) + float(xs.max()) + 1) / 2,
    )
    effective = min(theoretical, _effective(total, centre, mass))
    return ReceptiveField(theoretical, effective, grid, input_px)


def _effective(total: torch.Tensor, centre: tuple[float, float], mass: float) -> int:
    """Side of the smallest square centred on the field's centre holding ``mass`` of the
    gradient's absolute value."""
    n = total.shape[0]
    cy, cx = centre
    ys = torch.arange(n, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(n, dtype=torch.float64)[None, :] + 0.5
    cheb = torch.maximum((ys - cy).abs(), (xs - cx).abs())  # square "radius" of each pixel
    order = torch.argsort(cheb.flatten())
    cum = torch.cumsum(total.flatten()[order], 0)
    k = int(torch.searchsorted(cum, mass * cum[-1]))
    radius = float(cheb.flatten()[order][min(k, len(order) - 1)])
    return max(1, min(n, round(2 * radius)))
