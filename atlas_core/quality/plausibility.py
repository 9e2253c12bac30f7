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

from atlas_core.models.layers import TokenGrid


@dataclass(frozen=True)
class Plausibility:
    """Per cell: ``margin`` (M,) float32 (NaN where the cell has no exemplar), ``rank`` (M,)
    int32 (0 there) and ``candidates`` (M,) int32, the cells its own was ranked among."""

    margin: np.ndarray
    rank: np.ndarray
    candidates: np.ndarray

    def summary(self) -> dict[str, float]:
        ok = self.rank > 0
        n = int(ok.sum())
        if not n:
            return {"cells": 0}
        r, cand = self.rank[ok], self.candidates[ok]
        return {
            "cells": n,
            "margin_mean": round(float(np.nanmean(self.margin[ok])), 4),
            "top1": round(float((r <= 1).mean()), 4),
            "top5": round(float((r <= 5).mean()), 4),
            "chance_top5": round(float(np.mean(np.minimum(5, cand) / cand)), 4),
            "ranked_among": int(cand.max()),
            "rank_median": float(np.median(r)),
        }

    @staticmethod
    def concatenate(parts: list[Plausibility]) -> Plausibility:
        return Plausibility(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("margin", "rank", "candidates")
            )
        )


def _pool_input(module: nn.Module) -> nn.Module | None:
    """The classifier whose input is the pooled features: none for a headless timm model (its
    output is the pooled features), timm's ``head`` when it is a linear layer, else the last
    linear layer."""
    if getattr(module, "num_classes", None) == 0:
        return None
    head = getattr(module, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def feature_dim(module: nn.Module, preprocess: Any, input_px: int) -> int:
    """The size D of :func:`pooled_features` of this module (one blank image through it)."""
    blank = np.zeros((1, 8, 8, 3), np.uint8)
    return int(pooled_features(module, preprocess, blank, input_px=input_px).shape[1])


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
    (bilinear, antialiased) to ``input_px`` square (a transformer with fixed position embeddings:
    its own input size) and normalized as ``preprocess`` says: the input of the module's last
    linear layer, or its output when it has none (a headless model's pooled features)."""
    if TokenGrid.fixed_size(module):
        input_px = int(preprocess.size)
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
            x = F.interpolate(
                x, size=(input_px, input_px), mode="bilinear", antialias=True, align_corners=False
            )
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


def prototypes(ex: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit mean of each cell's valid exemplar features (M, D), whether it has any (M,)),
    from exemplar features (M, k, D) and ``ok`` (M, k)."""
    w = ok.astype(np.float32)[..., None]
    mean = (ex * w).sum(1) / np.maximum(w.sum(1), 1.0)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    has = ok.any(1) & (norm[:, 0] > 0)
    return np.where(has[:, None], mean / np.maximum(norm, 1e-12), 0.0).astype(np.float32), has


def choose_pool(cells_with_exemplars: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """The cells every icon is ranked among: all of ``cells_with_exemplars`` (indices) when
    there are at most ``size``, else a seeded sample of ``size`` of them, sorted. Ranking
    among a fixed pool keeps the cost linear in the cells (a level of 320 has up to 102,400)."""
    cells = np.asarray(cells_with_exemplars, np.int64)
    if len(cells) <= size:
        return cells
    return np.sort(np.random.default_rng(seed).choice(cells, size, replace=False))


def score(
    feats: np.ndarray,
    own: np.ndarray,
    has: np.ndarray,
    ids: np.ndarray,
    pool_ids: np.ndarray,
    pool_protos: np.ndarray,
) -> Plausibility:
    """Features ``feats`` (n, D) of probes (icons) for cells ``ids`` (n,), their cosine to their
    own cell's prototype ``own`` (n,) and whether it has one ``has`` (n,), against the pool's
    prototypes (P, D) of cells ``pool_ids`` (P,): the margin over the mean of the pool's other
    cells and the own cell's rank among them."""
    sims = feats @ pool_protos.T  # (n, P)
    other = pool_ids[None, :] != ids[:, None]
    n_other = other.sum(1)
    mean_other = np.where(other, sims, 0.0).sum(1) / np.maximum(n_other, 1)
    margin = np.where(has, own - mean_other, np.nan).astype(np.float32)
    rank = np.where(has, 1 + ((sims > own[:, None]) & other).sum(1), 0).astype(np.int32)
    return Plausibility(margin, rank, (n_other + 1).astype(np.int32))


def plausibility(
    icons: np.ndarray,
    exemplars: np.ndarray,
    ok: np.ndarray,
    pool: np.ndarray | None = None,
    pool_protos: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> Plausibility:
    """Icons' unit features (M, D) against their cells' exemplars' (M, k, D), ``ok`` (M, k)
    marking the exemplars that exist (a cell with none gets NaN and rank 0), ranked among the
    cells ``pool`` (default: every cell with exemplars) whose prototypes are ``pool_protos``
    (default: those of these cells). ``ids``: the cells' indices in the level (default
    0..M-1), for cells scored in parts against a pool of the whole level."""
    protos, has = prototypes(exemplars, ok)
    pool = np.flatnonzero(has) if pool is None else pool
    pool_protos = protos[pool] if pool_protos is None else pool_protos
    ids = np.arange(len(icons)) if ids is None else ids
    own = np.einsum("md,md->m", icons, protos)
    return score(icons, own, has, ids, pool, pool_protos)


def exemplar_reference(
    exemplars: np.ndarray,
    ok: np.ndarray,
    pool: np.ndarray | None = None,
    pool_protos: np.ndarray | None = None,
    ids: np.ndarray | None = None,
) -> Plausibility:
    """The same figures for each cell's first exemplar in its icon's place: against its own
    cell's prototype of the other exemplars (leave-one-out) and the pool's full prototypes
    (default: every cell of ``exemplars``). Cells with fewer than two exemplars get NaN and
    rank 0. ``ids``: the cells' indices in the level (default 0..M-1)."""
    m = len(exemplars)
    first = np.argmax(ok, axis=1)
    probe = exemplars[np.arange(m), first]
    rest = ok.copy()
    rest[np.arange(m), first] = False
    loo, has_loo = prototypes(exemplars, rest)
    ids = np.arange(m) if ids is None else ids
    if pool is None or pool_protos is None:
        protos, has = prototypes(exemplars, ok)
        pool = np.flatnonzero(has)
        pool_protos = protos[pool]
    keep = has_loo & ok[np.arange(m), first]
    own = np.einsum("md,md->m", probe, loo)
    return score(probe, own, keep, ids, pool, pool_protos)
