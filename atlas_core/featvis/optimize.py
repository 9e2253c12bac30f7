"""The optimization loop: no display, no file I/O, all randomness from per-icon streams."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from atlas_core.featvis.objectives import Acts, Objective
from atlas_core.featvis.param import ImageFn
from atlas_core.featvis.recipe import Optimizer
from atlas_core.featvis.streams import Streams
from atlas_core.featvis.transforms import Transform, compose, flatten_alpha

Forward = Callable[[torch.Tensor], Acts]


def optimize(
    forward: Forward,
    objective: Objective,
    params: Sequence[torch.Tensor],
    image_fn: ImageFn,
    *,
    steps: int,
    optimizer: Optimizer | None = None,
    transforms: Sequence[Transform] = (),
    rng: Streams | None = None,
    on_step: Callable[[int], None] | None = None,
    saliency: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[float], torch.Tensor | None]:
    """Maximize ``objective`` (summed over the batch) with ``optimizer`` (Adam, lr 0.05).

    forward: image batch in [0, 1] (B, 3, H, W) -> captured layer outputs.
    Returns (final images (B, 3, H, W) in [0, 1], final objective per image (B,) evaluated on the
    untransformed image (RGBA flattened on white), the summed objective of every step, and with
    ``saliency`` the sum over steps of |d objective / d image| per pixel (B, H, W): where the
    objective looked, MACO's transparency; else None).
    rng: the batch's per-icon random streams (default: streams from seed 0).
    Nothing in the loop waits on the host: the history stays on the device until the end.
    """
    transform = compose(list(transforms))
    opt = (optimizer or Optimizer()).make(list(params))
    history: list[torch.Tensor] = []
    gen = rng if rng is not None else Streams.from_seed(0, len(params[0]), device=params[0].device)
    seen: torch.Tensor | None = None
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        img = image_fn()
        if saliency:
            img.retain_grad()
        score = objective(forward(transform(img, gen)))
        (-score.sum()).backward()
        if saliency and img.grad is not None:
            g = img.grad.detach().abs().sum(1)
            seen = g if seen is None else seen + g
        opt.step()
        history.append(score.detach().sum())
        if on_step is not None:
            on_step(step)
    with torch.no_grad():
        final = image_fn().detach()
        final_score = objective(forward(flatten_alpha(final))).detach().float()
    hist = torch.stack(history).float().cpu().tolist() if history else []
    return final, final_score, hist, seen
