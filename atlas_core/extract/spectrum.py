"""The run's images' mean amplitude spectrum: what magnitude-constrained icons (MACO) keep fixed.

Accumulated during extraction like the second moment: for every ``STRIDE``-th image of the
manifest (row % STRIDE == 0: a fixed subset, whatever the batching; a mean spectrum converges
long before it sees every image) the rfft2 magnitude of its model-sized input in the
decorrelated colour space the icons are parameterized in, computed one image a call (a batched
FFT's last bits depend on the batch) and added in row order in float64 (so the sum does not
depend on how images were batched), per shard, then over shards in
the fixed tree of :class:`~atlas_core.extract.moments.MomentTree` under the key
:data:`SPECTRUM`. Nothing is downloaded: the spectrum is the run's own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from atlas_core.featvis.param import decorrelate_colors

SPECTRUM = "~spectrum"  # the moment tree's key for it (no layer name starts with "~")
STRIDE = 8  # one image in eight: 0.5 ms an image at 224 px on one CPU thread


def amplitudes(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (B, 3, H, W) -> their rfft2 magnitudes (B, 3, H, W // 2 + 1) float64, each
    image's own, in float32 then widened."""
    d = decorrelate_colors(x01.float())
    return torch.fft.rfft2(d - d.mean(dim=(2, 3), keepdim=True)).abs().double()


class SpectrumSum:
    """A shard's sum of per-image magnitudes, added image by image in order."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(
        self,
        x: torch.Tensor,
        rows: np.ndarray,
        to01: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Images ``x`` (B, 3, H, W) of manifest rows ``rows`` (B,): those with
        row % STRIDE == 0 are added, in order; ``to01`` maps the picked images to [0, 1] (the
        model input's inverse normalization; none: already in [0, 1]), where ``x`` is."""
        pick = np.flatnonzero(np.asarray(rows) % STRIDE == 0)
        if not len(pick):
            return
        for i in pick:  # one image a call: a batched FFT's last bits depend on the batch
            one = x[int(i) : int(i) + 1]
            a = amplitudes(one if to01 is None else to01(one))[0]
            self.total = a if self.total is None else self.total + a
            self.count += 1

    def result(self) -> np.ndarray | None:
        return None if self.total is None else self.total.cpu().numpy()
