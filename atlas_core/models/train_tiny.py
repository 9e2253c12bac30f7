"""A tiny network that changes: the registry's ``tiny`` architecture trained on generated images.

Comparing two atlases needs a model whose representation moves between two checkpoints. This
module makes one in seconds on a CPU, with nothing downloaded: six classes of 64 px images drawn
in code, a seeded, single-threaded training of :class:`~atlas_core.models.tiny.TinyNet`, and two
safetensors checkpoints that ``model=tiny model.weights=<file>`` loads:

- ``early``: a few steps. The colour classes are learnt first (one channel's mean decides them);
- ``late``: trained. The stripe classes, which differ only in orientation, are learnt too.

So the diff of the two concentrates on the stripe images: their predictions flip (mostly wrong
to right) and their neighbourhoods move, while the colour images stay put.

Classes (label = index; the image folder names sort in this order, so ``data.labels=folder``
gives the same labels): 0 red, 1 green, 2 blue (a saturated blob, disc or square, anywhere, on a
dark grey ground), 3 horizontal, 4 vertical, 5 diagonal (grey sinusoidal stripes of random
period, phase and contrast). Every image has pixel noise.

Command line (writes ``OUT/early.safetensors``, ``OUT/late.safetensors``, ``OUT/images/<c>/``)::

    python -m atlas_core.models.train_tiny OUT [--per-class 64]
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlas_core.determinism import one_thread
from atlas_core.models.preprocess import Preprocess
from atlas_core.models.tiny import TinyNet

log = logging.getLogger(__name__)

CLASSES = ("red", "green", "blue", "horizontal", "vertical", "diagonal")
SIZE = 64  # the registry's tiny input size: images are drawn at it, so preprocessing is exact
PREPROCESS = Preprocess(size=SIZE, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
NOISE = 0.12  # pixel noise sd (images in [0, 1])
_HUES = np.array([[0.9, 0.15, 0.1], [0.1, 0.85, 0.15], [0.15, 0.2, 0.95]])


def make_images(n_per_class: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated images of :data:`CLASSES`, ``n_per_class`` each, classes interleaved.

    Returns (images (n, 64, 64, 3) uint8, labels (n,) int64), n = 6 * n_per_class; the same
    seed gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    n = n_per_class * len(CLASSES)
    labels = np.tile(np.arange(len(CLASSES)), n_per_class)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    colour = labels < 3
    out[colour] = _blobs(rng, labels[colour], yy, xx)
    out[~colour] = _stripes(rng, labels[~colour] - 3, yy, xx)
    out += rng.normal(0.0, NOISE, out.shape).astype(np.float32)
    return (np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8), labels.astype(np.int64)


def _blobs(rng: np.random.Generator, hue: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A disc or a square of colour ``_HUES[hue]`` (jittered) on dark grey: (m, H, W, 3)."""
    m = len(hue)
    cy, cx = rng.uniform(16, 48, (2, m, 1, 1))
    r = rng.uniform(8, 18, (m, 1, 1))
    disc = np.hypot(yy - cy, xx - cx) < r
    square = np.maximum(np.abs(yy - cy), np.abs(xx - cx)) < r * 0.85
    inside = np.where(rng.random((m, 1, 1)) < 0.5, disc, square)[..., None]
    ground = rng.uniform(0.1, 0.35, (m, 1, 1, 1))
    fg = np.clip(_HUES[hue] + rng.normal(0, 0.06, (m, 3)), 0, 1)[:, None, None, :]
    return np.where(inside, fg, ground)


def _stripes(
    rng: np.random.Generator, kind: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Grey sinusoidal stripes, horizontal (0), vertical (1) or diagonal (2): (m, H, W, 3)."""
    m = len(kind)
    angle = np.array([0.0, np.pi / 2, np.pi / 4])[kind] + rng.normal(0, 0.08, m)
    period = rng.uniform(7, 14, m)
    phase = rng.uniform(0, 2 * np.pi, m)
    u = yy[None] * np.cos(angle)[:, None, None] + xx[None] * np.sin(angle)[:, None, None]
    wave = np.sin(2 * np.pi * u / period[:, None, None] + phase[:, None, None])
    mean = rng.uniform(0.35, 0.65, (m, 1, 1))
    contrast = rng.uniform(0.05, 0.12, (m, 1, 1))  # faint under the noise: learnt late
    grey = mean + contrast * wave
    return np.repeat(grey[..., None], 3, axis=-1)


@dataclass(frozen=True)
class TrainPlan:
    """How the two checkpoints are trained (defaults: a few seconds on one CPU thread).

    per_class: training images per class; batch: images per step; lr: Adam's learning rate;
    early_steps, late_steps: steps before each checkpoint (late counts from the start);
    seed: images, initial weights (TinyNet's own seed) and batch order.
    """

    per_class: int = 160
    batch: int = 32
    lr: float = 3e-3
    early_steps: int = 30
    late_steps: int = 150
    seed: int = 0


def train(plan: TrainPlan = TrainPlan()) -> dict[str, dict[str, torch.Tensor]]:
    """Train TinyNet (10 outputs, as the registry builds it; labels 0-5 used) on
    :func:`make_images` and return the state dicts ``{"early": ..., "late": ...}``.

    Each checkpoint's BatchNorm statistics are recomputed over the training images in eval-like
    fashion (a cumulative average, no gradient) before it is saved, so eval mode sees the
    statistics of the weights it holds and not a running average of earlier weights.
    """
    images, labels = make_images(plan.per_class, seed=plan.seed)
    x_all = PREPROCESS.batch(images)
    y_all = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(plan.seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    with one_thread():
        model = TinyNet(seed=plan.seed)
        opt = torch.optim.Adam(model.parameters(), lr=plan.lr)
        for step in range(plan.late_steps):
            if step == plan.early_steps:
                out["early"] = _snapshot(model, x_all)
            idx = torch.randint(0, len(x_all), (plan.batch,), generator=gen)
            model.train()
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["late"] = _snapshot(model, x_all)
    return out


def _snapshot(model: TinyNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of the model's state with BatchNorm statistics recomputed over ``x``."""
    snap = TinyNet(seed=0)
    snap.load_state_dict(model.state_dict())
    for m in snap.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    snap.train()
    with torch.no_grad():
        for a in range(0, len(x), 256):
            snap(x[a : a + 256])
    return {k: v.detach().clone().contiguous() for k, v in snap.state_dict().items()}


def accuracy(state: dict[str, torch.Tensor], images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of TinyNet with ``state`` (eval mode) on uint8 ``images`` (n, 64, 64, 3)."""
    return float((predict(state, images) == labels).mean())


def predict(state: dict[str, torch.Tensor], images: np.ndarray) -> np.ndarray:
    """Top-1 class (n,) int64 of TinyNet with ``state`` (eval mode) on uint8 images."""
    model = TinyNet()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(PREPROCESS.batch(images)).argmax(1).numpy()


def save(states: dict[str, dict[str, torch.Tensor]], folder: Path) -> dict[str, Path]:
    """Write each state as ``folder/<name>.safetensors``; returns the paths by name."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, state in states.items():
        paths[name] = folder / f"{name}.safetensors"
        save_file(state, str(paths[name]))
    return paths


def write_images(folder: Path, n_per_class: int, *, seed: int = 1) -> list[Path]:
    """Generated images as PNG files ``folder/<i>-<class>/<j>.png`` (64 px): folder names sort
    in class order, so ``data=folder data.labels=folder`` labels them 0-5 like the model.
    The default seed differs from training's: the atlas is of images the model never saw."""
    from PIL import Image

    images, labels = make_images(n_per_class, seed=seed)
    paths = []
    for j, (img, c) in enumerate(zip(images, labels, strict=True)):
        sub = folder / f"{c}-{CLASSES[c]}"
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(sub / f"{j:05d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the checkpoints and images/")
    parser.add_argument("--per-class", type=int, default=64, help="atlas images per class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    states = train()
    paths = save(states, args.out)
    write_images(args.out / "images", args.per_class)
    test_images, test_labels = make_images(64, seed=2)
    for name, path in paths.items():
        acc = accuracy(states[name], test_images, test_labels)
        log.info("%s: %s (held-out accuracy %.3f)", name, path, acc)
    log.info("images: %s", args.out / "images")


if __name__ == "__main__":
    main()
