"""Batched icon rendering: many cell directions optimized together, one objective per batch index.

The renderer is built once (model, layer, settings) and called on many batches. The forward pass
stops at the target layer and icons are rendered at their own size (Lucent upsamples to 224 px and
runs the whole network, about ten times the work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from atlas_core.featvis.objectives import Acts, direction_cossim
from atlas_core.featvis.optimize import optimize
from atlas_core.featvis.param import fft_image, pixel_image, to_valid_rgb
from atlas_core.featvis.streams import Streams, icon_seed
from atlas_core.featvis.transforms import collapse_alpha, flatten_alpha, icon_transforms
from atlas_core.models.layers import run_until, stop_at
from atlas_core.models.registry import LoadedModel


@dataclass(frozen=True)
class RenderSettings:
    """Icon rendering settings (R3 defaults: 80 px, 1024 steps, best of 4, cosine power 4).

    param: ``"fft"`` (decorrelated colour, sigmoid) or ``"pixel"``.
    alpha: optimize an alpha channel too, over random backgrounds; icons are flattened on white.
    whiten: use S = inverse second-moment matrix on the directions.
    amp: bfloat16 autocast on CUDA (ignored on CPU).
    """

    icon_px: int = 80
    steps: int = 1024
    attempts: int = 4
    lr: float = 0.05
    cos_power: float = 4.0
    whiten: bool = True
    param: str = "fft"
    sd: float = 0.01
    decay_power: float = 1.0
    transforms: bool = True
    amp: bool = True
    alpha: bool = False


def whitening_matrix(second_moment: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """S = inverse of the uncentred second moment E[x x^T] (C, C), ridge ``eps * mean diag``."""
    m = np.asarray(second_moment, dtype=np.float64)
    ridge = eps * float(np.mean(np.diag(m))) * np.eye(len(m))
    return np.linalg.inv(m + ridge).astype(np.float32)


class IconRenderer:
    """Renders icons for directions at ``layer`` of ``model``."""

    def __init__(
        self,
        model: LoadedModel,
        layer: str,
        settings: RenderSettings,
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.layer = layer
        self.settings = settings
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.model.module.to(self.device)
        if self.cuda:
            self.model.module.to(memory_format=torch.channels_last)
        self.transforms = icon_transforms(settings.icon_px) if settings.transforms else []
        if settings.alpha:
            self.transforms = [collapse_alpha(), *self.transforms]

    def forward(self, images: torch.Tensor) -> Acts:
        """[0, 1] images (B, 3, H, W) -> {layer: output}, stopping the pass at the layer."""
        x = self.model.preprocess.normalize(images)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.cuda and self.settings.amp
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
        whiten: np.ndarray | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Icons for ``directions`` (B, C), optimized together as one tensor; with best-of-N,
        the N attempts of every icon are rows of that tensor too (attempt-major).

        Returns (icons uint8 (B, px, px, 3), best final objective (B,) float32, cosine (B,)
        between each icon's activation at the layer's centre and its direction).
        Best-of-N: each icon keeps the attempt with the highest final objective (the first
        such attempt on ties).
        seeds: (B,) one per icon (:func:`icon_seed` of the run's seed and the icon's identity);
        every random draw of attempt ``a`` of icon ``i`` comes from
        ``icon_seed(seeds[i], "attempt", a)``. Which icons share the tensor is the caller's:
        :meth:`render_groups` always optimizes the same icons together.
        """
        if len(seeds) != len(directions):
            raise ValueError(f"{len(directions)} directions but {len(seeds)} seeds")
        s = self.settings
        b, n = len(directions), s.attempts
        vecs = torch.tensor(np.asarray(directions, np.float32), device=self.device)
        wt = (
            torch.tensor(np.array(whiten, np.float32), device=self.device)
            if s.whiten and whiten is not None
            else None
        )
        objective = direction_cossim(self.layer, vecs.repeat(n, 1), power=s.cos_power, whiten=wt)
        gen = Streams([icon_seed(int(x), "attempt", a) for a in range(n) for x in seeds],
                      device=self.device)  # fmt: skip
        shape = (b * n, 4 if s.alpha else 3, s.icon_px, s.icon_px)
        if s.param == "fft":
            params, raw = fft_image(
                shape, sd=s.sd, decay_power=s.decay_power, rng=gen, device=self.device
            )
        else:
            params, raw = pixel_image(shape, sd=s.sd, rng=gen, device=self.device)
        image_fn = to_valid_rgb(raw, decorrelate=s.param == "fft")
        img, score, _ = optimize(  # final scores see the icon flattened on white
            self.forward, objective, params, image_fn, steps=s.steps, lr=s.lr,
            transforms=self.transforms, rng=gen, on_step=on_step,
        )  # fmt: skip
        img = flatten_alpha(img).reshape(n, b, 3, s.icon_px, s.icon_px)
        score = score.reshape(n, b)
        pick = score.argmax(dim=0)
        rows = torch.arange(b, device=score.device)
        best, best_img = score[pick, rows], img[pick, rows]
        cosine = self.cosine(best_img, vecs)
        icons = (best_img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return icons.cpu().numpy(), best.cpu().numpy().astype(np.float32), cosine

    def render_groups(
        self, directions: np.ndarray, *, seeds: Sequence[int], group: int,
        whiten: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Icons for consecutive groups of ``group`` directions, one :meth:`render` each.

        This is what makes an icon depend on its cell only: the same group always holds the
        same icons in the same order, so every kernel sees the same shapes and the same bytes
        whatever the work split, the actor or the machine's load."""
        out = [self.render(directions[a : a + group], seeds=seeds[a : a + group], whiten=whiten)
               for a in range(0, len(directions), group)]  # fmt: skip
        return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]

    def suggest_group(self, *, probe: int = 8, fraction: float = 0.5, cap: int = 256) -> int:
        """Icons to optimize together: 16 on a CPU; on CUDA the largest power of two up to
        ``cap`` whose step (with every attempt) fits in ``fraction`` of the free memory,
        measured by one optimization step on ``probe`` icons."""
        if not self.cuda:
            return 16
        s = self.settings
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        vecs = torch.randn(probe, self.model.module_channels(self.layer), device=self.device)
        params, raw = fft_image((probe, 3, s.icon_px, s.icon_px), device=self.device)
        optimize(self.forward, direction_cossim(self.layer, vecs), params, to_valid_rgb(raw),
                 steps=1, transforms=self.transforms)  # fmt: skip
        per_image = max(1, (torch.cuda.max_memory_allocated(self.device) - base) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int(fraction * free // (per_image * max(1, s.attempts)))
        group = 1
        while group * 2 <= min(cap, fits):
            group *= 2
        return group

    @torch.no_grad()
    def cosine(self, images: torch.Tensor, vecs: torch.Tensor) -> np.ndarray:
        """Cosine between each image's centre activation and its direction (fidelity), (B,)."""
        out = self.forward(images.to(self.device))[self.layer]
        a = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
        cos = torch.nn.functional.cosine_similarity(a, vecs.to(a.device), dim=-1)
        return cos.cpu().numpy().astype(np.float32)
