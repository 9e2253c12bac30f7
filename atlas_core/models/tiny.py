"""A tiny convolutional classifier for tests and smoke runs: seeded weights, builds in milliseconds.

Layer names follow the big models' pattern: ``blocks.0`` .. ``blocks.3`` then ``head``.
Spatial sizes at 64 px input: blocks.0 32x32, blocks.1 16x16, blocks.2 8x8, blocks.3 4x4.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1),
                    nn.BatchNorm2d(chans[i + 1]),
                    nn.ReLU(),
                )
                for i in range(4)
            ]
        )
        self.head = nn.Linear(chans[-1], num_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.fill_(1.0)
                    m.bias.fill_(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(2, 3)))
