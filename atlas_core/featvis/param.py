"""Image parameterizations: each returns ``(params, image_fn)``; ``image_fn()`` gives (B, 3, H, W).

The FFT parameterization scales each frequency by 1 / f^decay_power (Lucid's ``fft_image``),
and ``to_valid_rgb`` decorrelates colour with Lucid's ImageNet colour-correlation square root
before a sigmoid, so the optimizer works in a whitened colour space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from atlas_core.featvis.streams import Streams

ImageFn = Callable[[], torch.Tensor]

# Square root of ImageNet's colour correlation (Lucid's published constants), columns = channels.
_COLOR_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_COLOR_NORMALIZED = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
_COLOR_INVERSE = np.linalg.inv(_COLOR_NORMALIZED.T.astype(np.float64))  # decorrelate_colors


def _freqs(h: int, w: int) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def fft_image(
    shape: tuple[int, int, int, int],
    *,
    sd: float = 0.01,
    decay_power: float = 1.0,
    rng: Streams | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list[torch.Tensor], ImageFn]:
    """Spectrum parameterization of a batch of ``shape`` (B, C, H, W); unbounded values."""
    b, c, h, w = shape
    freqs = _freqs(h, w)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
    scale *= np.sqrt(w * h)
    scale_t = torch.tensor(scale, dtype=torch.float32, device=device)[None, None, :, :, None]
    rng = rng or Streams.from_seed(0, b, device=device)
    init = rng.normal(c, *freqs.shape, 2) * sd  # each icon from its own stream
    spectrum = init.to(device).requires_grad_(True)

    def image_fn() -> torch.Tensor:
        spec = torch.view_as_complex(spectrum * scale_t)
        return torch.fft.irfft2(spec, s=(h, w)) / 4.0

    return [spectrum], image_fn


def _standardize(t: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per image (B, ...): never across the batch, so an icon does
    not depend on the icons it is optimized with."""
    dims = tuple(range(1, t.ndim))
    return (t - t.mean(dims, keepdim=True)) / (t.std(dims, keepdim=True) + 1e-4)


def decorrelate_colors(x: torch.Tensor) -> torch.Tensor:
    """RGB images (B, 3, H, W) in the decorrelated colour space ``to_valid_rgb`` maps from (the
    inverse of its colour matrix): what a magnitude spectrum for :func:`maco_image` is taken of."""
    inv = torch.tensor(_COLOR_INVERSE, dtype=x.dtype, device=x.device)
    # to_valid_rgb maps t -> einsum("bchw,cd->bdhw", t, M) with M = _COLOR_NORMALIZED.T, so the
    # inverse map is the same contraction with inv(M)
    return torch.einsum("bchw,cd->bdhw", x, inv)


def resize_spectrum(magnitude: np.ndarray, h: int, w: int) -> np.ndarray:
    """An rfft2 magnitude (C, H, W // 2 + 1) of H x W images resampled to that of h x w images,
    by frequency (cycles per pixel): rows are moved to centred order, resized (bilinear,
    antialiased), and moved back; values are scaled by the pixel ratio (an FFT sums pixels)."""
    import torch.nn.functional as F

    m = torch.tensor(np.fft.fftshift(np.asarray(magnitude, np.float32), axes=1))
    big_h = m.shape[1]
    big_w = 2 * (m.shape[2] - 1)
    out = F.interpolate(
        m[None], size=(h, w // 2 + 1), mode="bilinear", antialias=True, align_corners=False
    )[0]
    return np.fft.ifftshift(out.numpy(), axes=1) * (h * w) / (big_h * big_w)


def maco_image(
    shape: tuple[int, int, int, int],
    magnitude: np.ndarray,
    *,
    sd: float = 1.0,
    rng: Streams | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list[torch.Tensor], ImageFn]:
    """Magnitude-constrained parameterization (MACO: Fel et al., NeurIPS 2023): only the Fourier
    phase (B, C, H, W // 2 + 1) is optimized; the magnitude is fixed to ``magnitude`` (a natural
    images' mean amplitude spectrum in the decorrelated colour space, resized to H x W with
    :func:`resize_spectrum`). The phase and the image are standardized per image; feed the
    result to ``to_valid_rgb(..., decorrelate=True)`` like :func:`fft_image`'s."""
    b, c, h, w = shape
    mag = np.asarray(magnitude, np.float32)
    if mag.shape[-2:] != (h, w // 2 + 1):
        mag = resize_spectrum(mag, h, w)
    mag_t = torch.tensor(mag[:c], dtype=torch.float32, device=device)[None]
    rng = rng or Streams.from_seed(0, b, device=device)
    phase = (rng.normal(c, h, w // 2 + 1) * sd).to(device).requires_grad_(True)

    def image_fn() -> torch.Tensor:
        spec = torch.polar(mag_t.expand_as(phase), _standardize(phase))
        return _standardize(torch.fft.irfft2(spec, s=(h, w)))

    return [phase], image_fn


def pixel_image(
    shape: tuple[int, int, int, int],
    *,
    sd: float = 0.01,
    rng: Streams | None = None,
    device: torch.device | str = "cpu",
) -> tuple[list[torch.Tensor], ImageFn]:
    """Plain pixel parameterization, unbounded values."""
    rng = rng or Streams.from_seed(0, shape[0], device=device)
    pixels = (rng.normal(*shape[1:]) * sd).to(device).requires_grad_(True)
    return [pixels], lambda: pixels


def to_valid_rgb(image_fn: ImageFn, *, decorrelate: bool = True, sigmoid: bool = True) -> ImageFn:
    """Map an unbounded parameterization to RGB in [0, 1]. A 4th channel, if any, is alpha: it
    is not decorrelated and always goes through a sigmoid (RGBA out)."""
    mat = torch.tensor(_COLOR_NORMALIZED.T)

    def rgb() -> torch.Tensor:
        t = image_fn()
        alpha = t[:, 3:]
        t = t[:, :3]
        if decorrelate:
            t = torch.einsum("bchw,cd->bdhw", t, mat.to(t.device, t.dtype))
        t = torch.sigmoid(t) if sigmoid else t.clamp(0.0, 1.0)
        return torch.cat([t, torch.sigmoid(alpha)], dim=1) if alpha.shape[1] else t

    return rgb


Shape = tuple[int, int, int, int]


class Parameterization(Protocol):
    """A parameterization as a value: ``param(shape, rng, device)`` gives ``(params, image_fn)``
    with ``image_fn()`` a batch of valid images (B, C, H, W) in [0, 1] (C = 4: RGBA). Every
    random draw of image ``i`` comes from stream ``i`` of ``rng``."""

    def __call__(
        self, shape: Shape, rng: Streams, device: torch.device | str
    ) -> tuple[list[torch.Tensor], ImageFn]: ...


@dataclass(frozen=True)
class Fourier:
    """Lucid's parameterization: a spectrum scaled by 1 / f^decay_power, decorrelated colour,
    sigmoid (:func:`fft_image`, :func:`to_valid_rgb`)."""

    sd: float = 0.01
    decay_power: float = 1.0

    def __call__(
        self, shape: Shape, rng: Streams, device: torch.device | str
    ) -> tuple[list[torch.Tensor], ImageFn]:
        params, raw = fft_image(
            shape, sd=self.sd, decay_power=self.decay_power, rng=rng, device=device
        )
        return params, to_valid_rgb(raw)


@dataclass(frozen=True)
class PhaseOnly:
    """MACO's magnitude-constrained parameterization (:func:`maco_image`): only the phase is
    optimized, the magnitude is ``magnitude`` (C, H, W // 2 + 1), a natural-image amplitude
    spectrum in the decorrelated colour space (the run's own, measured during extraction)."""

    magnitude: np.ndarray = field(repr=False)
    sd: float = 1.0

    def __call__(
        self, shape: Shape, rng: Streams, device: torch.device | str
    ) -> tuple[list[torch.Tensor], ImageFn]:
        params, raw = maco_image(shape, self.magnitude, sd=self.sd, rng=rng, device=device)
        return params, to_valid_rgb(raw)


@dataclass(frozen=True)
class Pixels:
    """Plain pixels through a sigmoid, no colour decorrelation (a baseline)."""

    sd: float = 0.01

    def __call__(
        self, shape: Shape, rng: Streams, device: torch.device | str
    ) -> tuple[list[torch.Tensor], ImageFn]:
        params, raw = pixel_image(shape, sd=self.sd, rng=rng, device=device)
        return params, to_valid_rgb(raw, decorrelate=False)
