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
        """Icons for ``directions`` (B, C).

        Returns (icons uint8 (B, px, px, 3), best final objective (B,) float32, cosine (B,)
        between each icon's activation at the layer's centre and its direction).
        Best-of-N: each icon keeps the attempt with the highest final objective.
        seeds: (B,) one per icon (:func:`icon_seed` of the run's seed and the icon's identity);
        every random draw of icon ``i`` comes from ``seeds[i]``, so an icon does not depend on
        which batch it is rendered in.
        """
        if len(seeds) != len(directions):
            raise ValueError(f"{len(directions)} directions but {len(seeds)} seeds")
        s = self.settings
        b = len(directions)
        vecs = torch.tensor(np.asarray(directions, np.float32), device=self.device)
        wt = (
            torch.tensor(np.array(whiten, np.float32), device=self.device)
            if s.whiten and whiten is not None
            else None
        )
        objective = direction_cossim(self.layer, vecs, power=s.cos_power, whiten=wt)
        best_img = torch.zeros(b, 3, s.icon_px, s.icon_px)
        best = torch.full((b,), -torch.inf)
        for attempt in range(s.attempts):
            gen = Streams([icon_seed(int(x), "attempt", attempt) for x in seeds])
            shape = (b, 4 if s.alpha else 3, s.icon_px, s.icon_px)
            if s.param == "fft":
                params, raw = fft_image(
                    shape, sd=s.sd, decay_power=s.decay_power, rng=gen, device=self.device
                )
            else:
                params, raw = pixel_image(shape, sd=s.sd, rng=gen, device=self.device)
            image_fn = to_valid_rgb(raw, decorrelate=s.param == "fft")
            img, score, _ = optimize(  # final scores see the icon flattened on white
                self.forward,
                objective,
                params,
                image_fn,
                steps=s.steps,
                lr=s.lr,
                transforms=self.transforms,
                rng=gen,
                on_step=on_step,
            )
            img = flatten_alpha(img)
            better = score.cpu() > best
            best = torch.where(better, score.cpu(), best)
            best_img[better] = img.cpu()[better]
        cosine = self.cosine(best_img, vecs)
        icons = (best_img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        return icons.numpy(), best.numpy().astype(np.float32), cosine

    def suggest_batch_size(
        self, *, probe: int = 8, fraction: float = 0.6, cap: int = 1024, cpu_default: int = 64
    ) -> int:
        """Icons per batch that fit in ``fraction`` of the device's free memory.

        On CUDA, one optimization step on ``probe`` icons measures the memory per icon; on CPU,
        where memory is rarely the limit and larger batches stop paying off, ``cpu_default``.
        """
        if not self.cuda:
            return cpu_default
        s = self.settings
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        vecs = torch.randn(probe, self.model.module_channels(self.layer), device=self.device)
        params, raw = fft_image((probe, 3, s.icon_px, s.icon_px), device=self.device)
        optimize(
            self.forward,
            direction_cossim(self.layer, vecs),
            params,
            to_valid_rgb(raw),
            steps=1,
            transforms=self.transforms,
        )
        per_icon = max(1, (torch.cuda.max_memory_allocated(self.device) - base) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(cap, fraction * free // per_icon)))

    @torch.no_grad()
    def cosine(self, images: torch.Tensor, vecs: torch.Tensor) -> np.ndarray:
        """Cosine between each image's centre activation and its direction (fidelity), (B,)."""
        out = self.forward(images.to(self.device))[self.layer]
        a = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
        cos = torch.nn.functional.cosine_similarity(a, vecs.to(a.device), dim=-1)
        return cos.cpu().numpy().astype(np.float32)
