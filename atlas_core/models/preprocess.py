"""Input preprocessing of a classifier: resize, centre crop, scale to [0, 1], normalize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input.

    size: side of the square input in pixels (default 224).
    crop_pct: the centre crop covers this fraction of the resized shorter side (timm's convention),
        so images are resized to ``round(size / crop_pct)`` before cropping.
    mean, std: per-channel normalization applied to RGB values in [0, 1].
    mode: ``"crop"`` resizes the shorter side then centre-crops (torchvision/timm); ``"squash"``
        resizes the whole image to ``size x size``, ignoring the aspect ratio.
    """

    size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mode: str = "crop"

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "squash"):
            raise ValueError(f"Preprocess.mode must be 'crop' or 'squash', got {self.mode!r}")

    @property
    def resize(self) -> int:
        return round(self.size / self.crop_pct)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> uint8 array (size, size, 3), resized (bicubic) and cropped."""
        if self.mode == "squash":
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
        w, h = image.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image, dtype=np.uint8)

    def tensor_to_input(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) on any device -> float (3, size, size) in [0, 1], resized (bicubic,
        antialiased) and cropped like :meth:`to_array`, on the same device (the GPU path)."""
        import torch.nn.functional as F

        x = img.unsqueeze(0).float().div_(255.0)
        h, w = x.shape[-2:]
        if self.mode == "squash":
            size = (self.size, self.size)
        else:
            scale = self.resize / min(w, h)
            size = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        return x[0, :, top : top + self.size, left : left + self.size].clamp_(0.0, 1.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float tensor in [0, 1], shape (B, 3, H, W) -> the model's input scale."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input scale -> [0, 1] (the inverse of :meth:`normalize`)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x * std + mean

    def batch(self, arrays: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 array (B, H, W, 3) -> normalized float32 tensor (B, 3, H, W) on ``device``."""
        x = torch.from_numpy(np.array(arrays, dtype=np.uint8, copy=True)).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return self.normalize(x)
