"""The run's amplitude spectrum (what MACO icons keep fixed): each image's own rfft2 magnitude in
the decorrelated colour space, summed over a fixed subset of rows whatever the batching, and
resampled by frequency to an icon's size."""

from __future__ import annotations

import numpy as np
import torch

from atlas_core.extract.spectrum import STRIDE, SpectrumSum, amplitudes
from atlas_core.featvis.param import _COLOR_NORMALIZED, resize_spectrum, to_valid_rgb


def test_amplitudes_are_each_images_own_spectrum_in_decorrelated_colour() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    got = amplitudes(x).numpy()
    m = _COLOR_NORMALIZED.T.astype(np.float64)  # to_valid_rgb's colour matrix
    for i in range(3):
        d = np.einsum("chw,cd->dhw", x[i].double().numpy(), np.linalg.inv(m))
        d -= d.mean(axis=(1, 2), keepdims=True)
        want = np.abs(np.fft.rfft2(d))
        assert np.allclose(got[i], want, rtol=1e-4, atol=1e-4)
    # the decorrelation is the inverse of what icons are drawn through (before the sigmoid)
    t = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    rgb = torch.einsum("bchw,cd->bdhw", t, torch.tensor(m))
    back = torch.einsum("bchw,cd->bdhw", rgb, torch.tensor(np.linalg.inv(m)))
    assert torch.allclose(back, t) and to_valid_rgb(lambda: t.float())().shape == (1, 3, 4, 4)


def test_the_sum_does_not_depend_on_the_batching() -> None:
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    rows = np.arange(100, 140)
    whole, parts = SpectrumSum(), SpectrumSum()
    whole.add(x, rows)
    for a, b in ((0, 7), (7, 8), (8, 31), (31, 40)):
        parts.add(x[a:b], rows[a:b])
    assert whole.count == parts.count == int((rows % STRIDE == 0).sum()) == 5
    assert np.array_equal(whole.result(), parts.result())  # bit for bit
    picked = x[torch.as_tensor(np.flatnonzero(rows % STRIDE == 0))]
    assert np.allclose(whole.result(), amplitudes(picked).sum(0).numpy(), atol=1e-3)
    assert SpectrumSum().result() is None


def test_a_spectrum_resized_by_frequency_keeps_its_power_law() -> None:
    """A 1/f amplitude spectrum of 64 px images resampled to 32 px is, up to one factor, the
    1/f spectrum of 32 px images (the overall scale does not matter: icons standardize)."""

    def one_over_f(n: int) -> np.ndarray:
        fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
        f = np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / n)
        return np.stack([1.0 / f] * 3).astype(np.float32)

    assert np.allclose(resize_spectrum(one_over_f(32), 32, 32), one_over_f(32), rtol=1e-5)
    got, want = resize_spectrum(one_over_f(64), 32, 32), one_over_f(32)
    mid = (slice(None), slice(2, 14), slice(2, 14))  # away from DC and Nyquist
    ratio = got[mid] / want[mid]
    assert ratio.std() / ratio.mean() < 0.1
