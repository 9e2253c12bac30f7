"""Batched icon rendering: many cell directions optimized together, one objective per batch index.

The renderer is built once (model, layer, recipe: :mod:`atlas_core.featvis.recipe`) and called
on many batches. It composes the recipe's values and dispatches on none of the settings' names.
The forward pass
stops at the target layer and icons are rendered at their own size (Lucent upsamples to 224 px and
runs the whole network, about ten times the work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch

from atlas_core.featvis.objectives import Acts, Objective, direction_cosine, direction_cossim
from atlas_core.featvis.optimize import optimize
from atlas_core.featvis.recipe import IconRecipe
from atlas_core.featvis.streams import Streams, icon_seed
from atlas_core.featvis.transforms import flatten_alpha
from atlas_core.models.layers import TokenGrid, run_until, stop_at
from atlas_core.models.registry import LoadedModel


class Rendered(NamedTuple):
    """What :meth:`IconRenderer.render` gives: icons (B, px, px, 3) uint8, best final objective
    (B,) float32, fidelity cosine (B,) float32, alpha (B, px, px) uint8 or None."""

    icons: np.ndarray
    objective: np.ndarray
    cosine: np.ndarray
    alpha: np.ndarray | None

    @staticmethod
    def concatenate(parts: Sequence[Rendered]) -> Rendered:
        alphas = [p.alpha for p in parts]
        return Rendered(
            np.concatenate([p.icons for p in parts]),
            np.concatenate([p.objective for p in parts]),
            np.concatenate([p.cosine for p in parts]),
            None if any(a is None for a in alphas) else np.concatenate(alphas),  # type: ignore[arg-type]
        )


def render_px(model: LoadedModel, icon_px: int) -> int:
    """The size icons are optimized at: their own (``icon_px``), except for a transformer with
    fixed position embeddings (a token grid and no ``dynamic_img_size``), which only takes its
    own input size; those icons are optimized at the model's size and downsampled."""
    return int(model.preprocess.size) if TokenGrid.fixed_size(model.module) else icon_px


def _resize(x: torch.Tensor, px: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, px, px), antialiased; unchanged when already that size."""
    if x.shape[-1] == px and x.shape[-2] == px:
        return x
    return torch.nn.functional.interpolate(
        x, size=(px, px), mode="bilinear", antialias=True, align_corners=False
    )


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def whitening_matrix(second_moment: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """S = inverse of the uncentred second moment E[x x^T] (C, C), ridge ``eps * mean diag``."""
    m = np.asarray(second_moment, dtype=np.float64)
    ridge = eps * float(np.mean(np.diag(m))) * np.eye(len(m))
    return np.linalg.inv(m + ridge).astype(np.float32)


class IconRenderer:
    """Renders icons for directions at ``layer`` of ``model`` with one :class:`IconRecipe`."""

    def __init__(
        self,
        model: LoadedModel,
        layer: str,
        recipe: IconRecipe,
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.layer = layer
        self.recipe = recipe
        self.param = recipe.param
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.model.module.to(self.device)
        if self.cuda:
            self.model.module.to(memory_format=torch.channels_last)
        self.px = render_px(model, recipe.px)
        self.transforms = [*recipe.alpha.first(), *recipe.transforms.build(self.px)]

    def forward(self, images: torch.Tensor) -> Acts:
        """[0, 1] images (B, 3, H, W) -> {layer: output}, stopping the pass at the layer."""
        x = self.model.preprocess.normalize(images)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.cuda and self.recipe.amp
            else nullcontext()
        )
        with amp, stop_at(self.model.module, [self.layer]) as out:
            run_until(self.model.module, x)
        return {k: v.float() for k, v in out.items()}

    def render(
        self,
        directions: np.ndarray,
        *,
        seeds: Sequence[int],
        on_step: Callable[[int], None] | None = None,
    ) -> Rendered:
        """Icons for ``directions`` (B, C), optimized together as one tensor; with best-of-N,
        the N attempts of every icon are rows of that tensor too (attempt-major).

        Returns :class:`Rendered`: icons uint8 (B, px, px, 3), best final objective (B,) float32,
        cosine (B,) between each icon's activation at the layer's centre and its direction, and
        with an alpha the alpha uint8 (B, px, px) (the icons then unflattened).
        Best-of-N: each icon keeps the attempt with the highest final objective (the first
        such attempt on ties).
        seeds: (B,) one per icon (:func:`icon_seed` of the run's seed and the icon's identity);
        every random draw of attempt ``a`` of icon ``i`` comes from
        ``icon_seed(seeds[i], "attempt", a)``. Which icons share the tensor is the caller's:
        :meth:`render_groups` always optimizes the same icons together.
        """
        if len(seeds) != len(directions):
            raise ValueError(f"{len(directions)} directions but {len(seeds)} seeds")
        r = self.recipe
        b, n, px = len(directions), r.attempts, self.px
        vecs = torch.tensor(np.asarray(directions, np.float32), device=self.device)
        objective = self.objective(vecs.repeat(n, 1))
        gen = Streams(
            [icon_seed(int(x), "attempt", a) for a in range(n) for x in seeds], device=self.device
        )
        params, image_fn = r.param((b * n, r.alpha.channels, px, px), gen, self.device)
        img, score, _, seen = optimize(  # final scores see the icon flattened on white
            self.forward,
            objective,
            params,
            image_fn,
            steps=r.steps,
            optimizer=r.optimizer,
            transforms=self.transforms,
            rng=gen,
            on_step=on_step,
            saliency=r.alpha.saliency,
        )
        img = r.alpha.finish(img, seen)  # drawn, and judged, with its alpha
        alpha = img[:, 3] if img.shape[1] == 4 else None
        return self._best(img, alpha, score.reshape(n, b), vecs)

    def objective(self, vecs: torch.Tensor) -> Objective:
        """The recipe's objective for directions ``vecs`` (B, C)."""
        return self.recipe.objective.build(self.layer, vecs)

    def _best(
        self, img: torch.Tensor, alpha: torch.Tensor | None, score: torch.Tensor, vecs: torch.Tensor
    ) -> Rendered:
        """Each icon's best attempt (``score`` (N, B)), as uint8 arrays."""
        n, b = score.shape
        px = img.shape[-1]
        pick = score.argmax(dim=0)
        rows = torch.arange(b, device=score.device)
        flat = flatten_alpha(img).reshape(n, b, 3, px, px)[pick, rows]
        keep = img[:, :3].reshape(n, b, 3, px, px)[pick, rows] if alpha is not None else flat
        a8 = None
        if alpha is not None:
            a8 = _to_uint8(
                _resize(alpha.reshape(n, b, 1, px, px)[pick, rows], self.recipe.px)[:, 0]
            )
        keep = _resize(keep, self.recipe.px)
        return Rendered(
            _to_uint8(keep.permute(0, 2, 3, 1)),
            score[pick, rows].cpu().numpy().astype(np.float32),
            self.cosine(flat, vecs),
            a8,
        )

    def render_groups(
        self, directions: np.ndarray, *, seeds: Sequence[int], group: int
    ) -> Rendered:
        """Icons for consecutive groups of ``group`` directions, one :meth:`render` each.

        This is what makes an icon depend on its cell only: the same group always holds the
        same icons in the same order, so every kernel sees the same shapes and the same bytes
        whatever the work split, the actor or the machine's load."""
        out = [
            self.render(directions[a : a + group], seeds=seeds[a : a + group])
            for a in range(0, len(directions), group)
        ]
        return Rendered.concatenate(out)

    def suggest_group(self, *, probe: int = 8, fraction: float = 0.5, cap: int = 256) -> int:
        """Icons to optimize together: 16 on a CPU; on CUDA the largest power of two up to
        ``cap`` whose step (with every attempt) fits in ``fraction`` of the free memory,
        measured by one optimization step on ``probe`` icons."""
        if not self.cuda:
            return 16
        r = self.recipe
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        vecs = torch.randn(probe, self.model.module_channels(self.layer), device=self.device)
        shape = (probe, r.alpha.channels, self.px, self.px)
        params, image_fn = r.param(shape, Streams.from_seed(0, probe), self.device)
        optimize(
            self.forward,
            direction_cossim(self.layer, vecs),
            params,
            image_fn,
            steps=1,
            transforms=self.transforms,
            optimizer=r.optimizer,
            saliency=r.alpha.saliency,
        )
        per_image = max(1, (torch.cuda.max_memory_allocated(self.device) - base) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int(fraction * free // (per_image * max(1, r.attempts)))
        group = 1
        while group * 2 <= min(cap, fits):
            group *= 2
        return group

    @torch.no_grad()
    def cosine(self, images: torch.Tensor, vecs: torch.Tensor) -> np.ndarray:
        """Cosine between each image's centre activation and its direction (fidelity), (B,)."""
        cos = direction_cosine(self.layer, vecs)(self.forward(images.to(self.device)))
        return cos.cpu().numpy().astype(np.float32)
