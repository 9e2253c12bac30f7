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

from atlas_core.errors import ConfigError
from atlas_core.extract.sampling import map_positions
from atlas_core.models.layers import (
    TokenGrid,
    capture,
    capture_leaves,
    prefix_key,
    run_until,
    stop_at,
)
from atlas_core.models.registry import LoadedModel


@dataclass
class ExtractBatch:
    """Results of one batch of B images with k samples each.

    acts: layer -> float32 array (B * k, C), image-major.
    moment: layer -> float64 tensor (B, C, C) on the extractor's device: per image, the sum of
        x x^T over its spatial positions (per image, so a shard's total, added image by image,
        does not depend on how its images were batched).
    moment_count: layer -> number of vectors summed into ``moment`` (all images).
    top_class, top_prob: (B, topk) int64 / float32 (empty when topk = 0).
    attr: layer -> float32 (B * k, A): activation x gradient of class logits at each sample's
        position (A = the image's top ``attr_classes`` predictions, in ``top_class`` order, or
        every class when ``attr_classes`` is -1); None when attribution is off.
    """

    acts: dict[str, np.ndarray]
    moment: dict[str, torch.Tensor]
    moment_count: dict[str, int]
    top_class: np.ndarray
    top_prob: np.ndarray
    attr: dict[str, np.ndarray] | None = None

    def head(self, n: int, k: int) -> ExtractBatch:
        """The first ``n`` images (a padded batch's real ones)."""
        counts = {
            name: self.moment_count[name] // max(len(m), 1) * n for name, m in self.moment.items()
        }
        return ExtractBatch(
            {name: a[: n * k] for name, a in self.acts.items()},
            {name: m[:n] for name, m in self.moment.items()},
            counts,
            self.top_class[:n],
            self.top_prob[:n],
            None if self.attr is None else {name: a[: n * k] for name, a in self.attr.items()},
        )

    @staticmethod
    def join(parts: list[ExtractBatch]) -> ExtractBatch:
        """Several batches' results as one (in order)."""
        first = parts[0]
        cat = np.concatenate
        return ExtractBatch(
            {n: cat([p.acts[n] for p in parts]) for n in first.acts},
            {n: torch.cat([p.moment[n] for p in parts]) for n in first.moment},
            {n: sum(p.moment_count[n] for p in parts) for n in first.moment_count},
            cat([p.top_class for p in parts]),
            cat([p.top_prob for p in parts]),
            None
            if first.attr is None
            else {n: cat([p.attr[n] for p in parts if p.attr]) for n in first.attr},
        )


class ActivationExtractor:
    """Activations of ``layers`` at given positions.

    grids: layer -> (H, W) of its feature map; positions passed to ``__call__`` are on the
    coarsest grid (fewest cells) and mapped to the others with :func:`map_positions`.
    topk: how many top predictions to keep per image (0: stop the forward pass at the deepest
    layer instead of running the classifier).
    amp_dtype: autocast dtype on CUDA (bfloat16 by default, float16, or None for fp32); ignored
        on CPU, which runs fp32.
    attr_classes: 0 = no attribution; n > 0 = for the image's top n classes; -1 = every class
        (batched vector-Jacobian products, ``class_chunk`` classes at a time).
    micro: images per forward pass, whatever a call passes (default: 32 on a CPU, 128 on CUDA);
        part of what an activation's last bits depend on, like the device.
    pool: ``"position"`` (the activation at each sampled position), ``"mean"`` (the mean over
        every position of the map: the spatial mean, or the mean of a transformer's patch
        tokens) or ``"cls"`` (a transformer's class token). The last two take one sample per
        image and no attribution.
    """

    def __init__(
        self,
        model: LoadedModel,
        layers: Sequence[str],
        grids: dict[str, tuple[int, int]],
        *,
        topk: int = 5,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = torch.bfloat16,
        attr_classes: int = 0,
        class_chunk: int = 16,
        micro: int | None = None,
        pool: str = "position",
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.grids = grids
        self.coarse = min(self.layers, key=lambda n: grids[n][0] * grids[n][1])
        self.topk = topk
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.amp_dtype = amp_dtype
        self.attr_classes = attr_classes
        self.class_chunk = class_chunk
        self.micro = micro or (128 if self.cuda else 32)
        if attr_classes and not topk:
            raise ConfigError("topk", topk, fix="attribution needs the logits: topk >= 1.")
        if attr_classes > topk:
            raise ConfigError(
                "attr_classes",
                attr_classes,
                valid=f"[-1, topk={topk}]",
                fix="keep at least as many top classes as attribution columns.",
            )
        self.pool = pool
        if pool not in ("position", "mean", "cls"):
            raise ValueError(f"pool must be position, mean or cls, not {pool!r}")
        if pool != "position" and attr_classes:
            raise ConfigError(
                "sampling",
                pool,
                fix="attribution is per position: sample "
                "positions (random, centre, all) or set attr_classes=0.",
            )
        if pool == "cls":
            grid = TokenGrid.of(model.module)
            if grid is None or not grid.prefix:
                raise ConfigError(
                    "sampling",
                    "cls",
                    fix=f"{model.spec.name} has no class token: use random, centre, all or mean.",
                )
        if self.cuda:
            self.model.module.to(memory_format=torch.channels_last)

    @property
    def attr_width(self) -> int:
        """Attribution columns per sample (0: attribution off)."""
        if self.attr_classes < 0:
            return self.model.num_classes
        return self.attr_classes

    def __call__(self, x: torch.Tensor, pos: np.ndarray) -> ExtractBatch:
        """x: normalized input (B, 3, H, W); pos: int (B * k, 2) (y, x) on the coarsest grid.

        The model always sees batches of :attr:`micro` images (the last padded with zeros), so
        an image's activations do not depend on how many images came with it: CPU kernels pick
        their blocking by batch shape, and a different shape can change the last bits."""
        b = x.shape[0]
        k = len(pos) // max(b, 1)
        parts = []
        for a in range(0, b, self.micro):
            n = min(self.micro, b - a)
            xm, pm = x[a : a + n], pos[a * k : (a + n) * k]
            if n < self.micro:
                pad = self.micro - n
                xm = torch.cat([xm, xm.new_zeros((pad, *xm.shape[1:]))])
                pm = np.concatenate([pm, np.zeros((pad * k, 2), pm.dtype)])
            parts.append(self._fixed(xm, pm).head(n, k))
        return ExtractBatch.join(parts)

    def _fixed(self, x: torch.Tensor, pos: np.ndarray) -> ExtractBatch:
        """One batch of exactly :attr:`micro` images."""
        b = x.shape[0]
        k = len(pos) // b
        x = x.to(self.device, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.cuda and self.amp_dtype
            else nullcontext()
        )
        logits = None
        grad = torch.enable_grad() if self.attr_classes else torch.no_grad()
        with grad, amp:
            if self.attr_classes:
                with capture_leaves(self.model.module, self.layers) as feats:
                    logits = self.model.module(x)
            elif self.topk:
                with capture(self.model.module, self.layers) as feats:
                    logits = self.model.module(x)
            else:
                with stop_at(self.model.module, self.layers) as feats:
                    run_until(self.model.module, x)
        img = torch.arange(b, device=self.device).repeat_interleave(k)
        where = {}
        for name in self.layers:
            p = map_positions(pos, self.grids[self.coarse], self.grids[name])
            where[name] = (
                torch.as_tensor(p[:, 0], device=self.device, dtype=torch.long),
                torch.as_tensor(p[:, 1], device=self.device, dtype=torch.long),
            )
        acts, moment, count = {}, {}, {}
        with torch.no_grad():
            for name in self.layers:
                f = feats[name].detach().float()
                py, px = where[name]
                if self.pool == "mean":
                    vec = f.mean((2, 3))[img]
                elif self.pool == "cls":
                    vec = feats[prefix_key(name)].detach().float()[img, 0]
                else:
                    vec = f[img, :, py, px]
                acts[name] = vec.cpu().numpy()
                flat = f.flatten(2).double()  # (B, C, H*W): one fixed-size product per image
                moment[name] = torch.bmm(flat, flat.transpose(1, 2))
                count[name] = int(flat.shape[0] * flat.shape[2])
        top_class = np.zeros((b, 0), np.int64)
        top_prob = np.zeros((b, 0), np.float32)
        cls = None
        if logits is not None:
            with torch.no_grad():
                n = min(max(self.topk, self.attr_classes), logits.shape[-1])
                prob, cls = logits.detach().float().softmax(-1).topk(n, dim=-1)
            top_class = cls[:, : self.topk].cpu().numpy()
            top_prob = prob[:, : self.topk].cpu().numpy()
        attr = None
        if self.attr_classes and logits is not None and cls is not None:
            attr = self._attribution(logits, feats, where, img, cls)
        return ExtractBatch(acts, moment, count, top_class, top_prob, attr)

    def _attribution(
        self,
        logits: torch.Tensor,
        feats: dict[str, torch.Tensor],
        where: dict[str, tuple[torch.Tensor, torch.Tensor]],
        img: torch.Tensor,
        cls: torch.Tensor,
    ) -> dict[str, np.ndarray]:
        """a . d logit_c / d a at each sample's position, for A classes: (B * k, A) per layer.

        Each class column is one vector-Jacobian product (a one-hot cotangent per image, at its
        own class), computed ``class_chunk`` at a time with batched gradients.
        """
        b, n_cls = logits.shape
        if self.attr_classes < 0:
            targets = torch.arange(n_cls, device=logits.device).expand(b, n_cls)
        else:
            targets = cls[:, : self.attr_classes]
        a = targets.shape[1]
        leaves = [feats[n] for n in self.layers]
        out = {n: np.zeros((len(img), a), np.float32) for n in self.layers}
        for start in range(0, a, self.class_chunk):
            cols = targets[:, start : start + self.class_chunk]  # (B, c)
            onehot = torch.zeros(cols.shape[1], b, n_cls, device=logits.device, dtype=logits.dtype)
            onehot.scatter_(2, cols.T.unsqueeze(-1), 1.0)
            grads = torch.autograd.grad(
                logits, leaves, grad_outputs=onehot, is_grads_batched=True, retain_graph=True
            )
            for name, f, g in zip(self.layers, leaves, grads, strict=True):
                py, px = where[name]
                av = f.detach().float()[img, :, py, px]  # (S, C)
                gv = g.float().permute(1, 3, 4, 0, 2)[img, py, px]  # (S, c, C)
                out[name][:, start : start + cols.shape[1]] = (
                    (gv * av.unsqueeze(1)).sum(-1).cpu().numpy()
                )
        return out
