"""The activation extractor: built once (model, layers, device), then called on many batches.

One call runs the model on a batch, gathers each layer's activation vectors at the sampled
positions, accumulates each layer's uncentred second-moment matrix over every spatial position
(needed later for whitening, so computed here, during extraction), and keeps each image's top
predictions. It is a plain class: testable on one batch without Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from atlas_core.extract.sampling import map_positions
from atlas_core.models.layers import capture, run_until, stop_at
from atlas_core.models.registry import LoadedModel


@dataclass
class ExtractBatch:
    """Results of one batch of B images with k samples each.

    acts: layer -> float32 array (B * k, C), image-major.
    moment: layer -> float64 array (C, C), sum over every spatial position of x x^T.
    moment_count: layer -> number of vectors summed into ``moment``.
    top_class, top_prob: (B, topk) int64 / float32 (empty when topk = 0).
    """

    acts: dict[str, np.ndarray]
    moment: dict[str, np.ndarray]
    moment_count: dict[str, int]
    top_class: np.ndarray
    top_prob: np.ndarray


class ActivationExtractor:
    """Activations of ``layers`` at given positions.

    grids: layer -> (H, W) of its feature map; positions passed to ``__call__`` are on the
    coarsest grid (fewest cells) and mapped to the others with :func:`map_positions`.
    topk: how many top predictions to keep per image (0: stop the forward pass at the deepest
    layer instead of running the classifier).
    amp_dtype: autocast dtype on CUDA (bfloat16 by default); ignored on CPU, which runs fp32.
    """

    def __init__(
        self,
        model: LoadedModel,
        layers: Sequence[str],
        grids: dict[str, tuple[int, int]],
        *,
        topk: int = 5,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.grids = grids
        self.coarse = min(self.layers, key=lambda n: grids[n][0] * grids[n][1])
        self.topk = topk
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.amp_dtype = amp_dtype
        if self.cuda:
            self.model.module.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, pos: np.ndarray) -> ExtractBatch:
        """x: normalized input (B, 3, H, W); pos: int (B * k, 2) (y, x) on the coarsest grid."""
        b = x.shape[0]
        k = len(pos) // b
        x = x.to(self.device, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cuda", dtype=self.amp_dtype) if self.cuda else nullcontext()
        logits = None
        with amp:
            if self.topk:
                with capture(self.model.module, self.layers) as feats:
                    logits = self.model.module(x)
            else:
                with stop_at(self.model.module, self.layers) as feats:
                    run_until(self.model.module, x)
        img = torch.arange(b, device=self.device).repeat_interleave(k)
        acts, moment, count = {}, {}, {}
        for name in self.layers:
            f = feats[name].float()
            p = map_positions(pos, self.grids[self.coarse], self.grids[name])
            py = torch.as_tensor(p[:, 0], device=self.device, dtype=torch.long)
            px = torch.as_tensor(p[:, 1], device=self.device, dtype=torch.long)
            acts[name] = f[img, :, py, px].cpu().numpy()
            flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double()
            moment[name] = (flat.T @ flat).cpu().numpy()
            count[name] = int(flat.shape[0])
        if logits is not None:
            prob, cls = logits.float().softmax(-1).topk(min(self.topk, logits.shape[-1]), dim=-1)
            top_class, top_prob = cls.cpu().numpy(), prob.cpu().numpy()
        else:
            top_class = np.zeros((b, 0), np.int64)
            top_prob = np.zeros((b, 0), np.float32)
        return ExtractBatch(acts, moment, count, top_class, top_prob)
