"""Plausibility: does an icon look like the images behind its cell?

Fidelity (the icon's activation against its direction, at the atlas's layer) says an icon
carries its direction; it does not say a person would recognise what the cell's images show.
Human studies (Borowski et al. 2021; Zimmermann et al. 2023) find natural exemplars the better
guide, so the bar here is the exemplars: each icon and each exemplar patch goes through a judge
network's pooled features (the input of its last linear layer, a global average of its final
feature map for the conv nets here); a cell's prototype is the mean of its exemplars' unit
features. Per icon:

- ``margin``: cosine to its own cell's prototype minus the mean cosine to the other cells';
- ``rank``: where its own cell comes among all cells' prototypes (1: the closest).

:func:`exemplar_reference` gives the same figures for a real exemplar put in the icon's place
(leave-one-out: the cell's first exemplar against a prototype of its others), the ceiling an
icon could reach. What this does not show: the judge sees 2-D crops at one size, so a margin
near zero can also mean the cells' exemplars look alike; and a judge that is the atlas's own
model shares its biases (use another network as the judge to check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Plausibility:
    """Per cell: ``margin`` (M,) float32 (NaN where the cell has no exemplar) and ``rank`` (M,)
    int32 (0 there)."""

    margin: np.ndarray
    rank: np.ndarray

    def summary(self) -> dict[str, float]:
        ok = self.rank > 0
        n = int(ok.sum())
        if not n:
            return {"cells": 0}
        r = self.rank[ok]
        return {"cells": n, "margin_mean": round(float(np.nanmean(self.margin[ok])), 4),
                "top1": round(float((r <= 1).mean()), 4), "top5": round(float((r <= 5).mean()), 4),
                "chance_top5": round(min(5, n) / n, 4),
                "rank_median": float(np.median(r))}  # fmt: skip


def _pool_input(module: nn.Module) -> nn.Module | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@torch.no_grad()
def pooled_features(
    module: nn.Module,
    preprocess: Any,
    images: np.ndarray,
    *,
    input_px: int = 128,
    batch: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Unit-length pooled features (N, D) float32 of uint8 images (N, h, w, 3), each resized
    (bilinear, antialiased) to ``input_px`` square and normalized as ``preprocess`` says: the
    input of the module's last linear layer, or its output when it has none."""
    head = _pool_input(module)
    got: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        got.append(args[0].flatten(1))

    handle = head.register_forward_pre_hook(grab) if head is not None else None
    out = []
    try:
        for a in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[a : a + batch])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = F.interpolate(x, size=(input_px, input_px), mode="bilinear", antialias=True,
                              align_corners=False)  # fmt: skip
            y = module(preprocess.normalize(x))
            feats = got.pop() if head is not None else y.flatten(1)
            got.clear()
            out.append(F.normalize(feats.float(), dim=1).cpu())
    finally:
        if handle is not None:
            handle.remove()
    if not out:
        return np.zeros((0, 0), np.float32)
    return torch.cat(out).numpy()


def _prototypes(ex: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit mean of each cell's valid exemplar features (M, D), whether it has any (M,))."""
    w = ok.astype(np.float32)[..., None]
    mean = (ex * w).sum(1) / np.maximum(w.sum(1), 1.0)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    has = ok.any(1) & (norm[:, 0] > 0)
    return np.where(has[:, None], mean / np.maximum(norm, 1e-12), 0.0), has


def _score(feats: np.ndarray, protos: np.ndarray, has: np.ndarray, own: np.ndarray | None = None
           ) -> Plausibility:  # fmt: skip
    sims = feats @ protos.T  # (M, M): icon i against cell j
    m = len(feats)
    idx = np.arange(m)
    own_sim = sims[idx, idx] if own is None else own
    n = int(has.sum())
    other = (np.where(has[None, :], sims, 0.0).sum(1) - np.where(has, sims[idx, idx], 0.0)) / \
        max(n - 1, 1)  # fmt: skip
    margin = np.where(has, own_sim - other, np.nan).astype(np.float32)
    other_cell = idx[None, :] != idx[:, None]
    beats = (np.where(has[None, :], sims, -np.inf) > own_sim[:, None]) & other_cell
    rank = np.where(has, 1 + beats.sum(1), 0).astype(np.int32)
    return Plausibility(margin, rank)


def plausibility(icons: np.ndarray, exemplars: np.ndarray, ok: np.ndarray) -> Plausibility:
    """Icons' unit features (M, D) against their cells' exemplars' (M, k, D), ``ok`` (M, k)
    marking the exemplars that exist (a cell with none gets NaN and rank 0)."""
    protos, has = _prototypes(exemplars, ok)
    return _score(icons, protos, has)


def exemplar_reference(exemplars: np.ndarray, ok: np.ndarray) -> Plausibility:
    """The same figures for each cell's first exemplar in its icon's place: against its own
    cell's prototype of the other exemplars (leave-one-out) and the other cells' full ones.
    Cells with fewer than two exemplars get NaN and rank 0."""
    first = np.argmax(ok, axis=1)
    m = len(exemplars)
    probe = exemplars[np.arange(m), first]
    rest = ok.copy()
    rest[np.arange(m), first] = False
    loo, has_loo = _prototypes(exemplars, rest)
    protos, has = _prototypes(exemplars, ok)
    own = np.einsum("md,md->m", probe, loo)
    scored = _score(probe, protos, has, own=own)
    keep = has_loo & ok[np.arange(m), first]
    return Plausibility(np.where(keep, scored.margin, np.nan).astype(np.float32),
                        np.where(keep, scored.rank, 0).astype(np.int32))  # fmt: skip
