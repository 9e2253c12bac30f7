"""Image parameterizations: each returns ``(params, image_fn)``; ``image_fn()`` gives (B, 3, H, W).

The FFT parameterization scales each frequency by 1 / f^decay_power (Lucid's ``fft_image``),
and ``to_valid_rgb`` decorrelates colour with Lucid's ImageNet colour-correlation square root
before a sigmoid, so the optimizer works in a whitened colour space.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from atlas_core.featvis.streams import Streams

ImageFn = Callable[[], torch.Tensor]

# Square root of ImageNet's colour correlation (Lucid's published constants), columns = channels.
_COLOR_SVD_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_COLOR_NORMALIZED = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))


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
