"""An icon recipe: how an icon is made, as one value built once at the edge.

:class:`IconSettings` is the settings group a person writes (``render.*`` in the config tree:
the pipeline's group derives from it). :meth:`IconRecipe.from_settings` turns it, with the run's
own data (the whitening matrix of Lucid's objective, the amplitude spectrum of MACO's
parameterization), into the values the renderer composes: a parameterization, a transform
chain, an objective, an optimizer and an alpha. The renderer dispatches on none of the settings'
strings; :meth:`IconRecipe.identity` is exactly what changes an icon (an inactive setting, such
as ``fill`` under Lucid's objective, is not part of it), and is what the stage's fingerprint and
the icon cache key cover.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlas_core.config import Group, choice, in_range
from atlas_core.errors import ConfigError
from atlas_core.featvis.objectives import Objective, direction_cosine, direction_cossim
from atlas_core.featvis.param import Fourier, Parameterization, PhaseOnly, Pixels
from atlas_core.featvis.transforms import Transform, collapse_alpha, icon_transforms, noise

PARAMS = ("fft", "pixel", "maco")
OBJECTIVES = ("lucid", "cosine")
ALPHAS = ("none", "channel", "saliency")
OPTIMIZERS = ("adam", "nadam")


def array_digest(a: np.ndarray | None) -> str | None:
    """A short digest of an array's float32 bytes and shape (None for None)."""
    if a is None:
        return None
    x = np.ascontiguousarray(a, np.float32)
    return hashlib.sha256(str(x.shape).encode() + x.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class IconSettings(Group):
    """An icon's settings (R3 defaults: 80 px, 1024 steps, best of 4, Lucid's objective). The
    cosine objective is closer to the cells' exemplars at the same steps (docs/icons.md)."""

    icon_px: int = 80  # side of the stored icon, in pixels
    steps: int = 1024  # optimization steps
    attempts: int = 4  # best of N per icon (the N attempts are optimized in one tensor)
    lr: float = 0.05  # the optimizer's learning rate
    # lucid: Lucid's mean(a * Sv) * max(0.1, cos)^cos_power at the centre | cosine: the cosine
    # between the centre activation and the cell's direction
    objective: str = "lucid"
    fill: float = 0.5  # cosine objective: weight of the mean cosine over every position
    cos_power: float = 4.0  # lucid objective: the power n of cos^n
    whiten: bool = True  # lucid objective: the direction whitened by the inverse second moment
    # fft: Lucid's 1/f spectrum and decorrelated colour | maco: MACO's phase only, the magnitude
    # the run's own images' mean amplitude spectrum | pixel: plain pixels
    param: str = "fft"
    sd: float = 0.01  # fft and pixel: the initial values' scale
    decay_power: float = 1.0  # fft: the spectrum scaled by 1 / f^decay_power
    optimizer: str = "adam"  # adam | nadam (MACO's)
    noise: float = 0.0  # Gaussian + uniform noise added to the transformed image each step
    # none | channel (Lucid: an optimized alpha over random backgrounds) | saliency (MACO:
    # where the objective's input gradients were); compose draws each icon with it
    alpha: str = "none"
    saliency_percentile: float = 80.0  # alpha=saliency: each map is clipped at this percentile
    amp: bool = True  # bfloat16 autocast on CUDA
    transforms: bool = True  # Lucid's atlas transforms (pad, jitter, scale, rotate) each step

    def __post_init__(self) -> None:
        if str(self.alpha) in ("True", "False", "true", "false"):  # the old boolean setting
            legacy = "channel" if str(self.alpha).lower() == "true" else "none"
            object.__setattr__(self, "alpha", legacy)
        self._choice("param", PARAMS)
        self._choice("alpha", ALPHAS)
        self._choice("optimizer", OPTIMIZERS)
        self._choice("objective", OBJECTIVES)
        if self.param == "maco" and self.alpha == "channel":
            raise ConfigError(
                self.key("alpha"),
                self.alpha,
                fix="MACO's parameterization has no alpha channel: set alpha=saliency (MACO's "
                "own) or none, or param=fft.",
            )
        self._ranges(
            {
                "icon_px": (8, 1024),
                "steps": (1, None),
                "attempts": (1, 64),
                "lr": (1e-6, 10.0),
                "cos_power": (0.0, 16.0),
                "fill": (0.0, 1.0),
                "noise": (0.0, 1.0),
                "sd": (0.0, 10.0),
                "decay_power": (0.0, 4.0),
                "saliency_percentile": (1.0, 100.0),
            }
        )

    def identity(self) -> dict[str, Any]:
        """Only the settings that change an icon in this configuration."""
        out = super().identity()
        inactive = {
            "fill": self.objective != "cosine",
            "cos_power": self.objective != "lucid",
            "whiten": self.objective != "lucid",
            "sd": self.param == "maco",
            "decay_power": self.param != "fft",
            "saliency_percentile": self.alpha != "saliency",
        }
        return {k: v for k, v in out.items() if not inactive.get(k, False)}


# ------------------------------------------------------------------------------ objectives
@dataclass(frozen=True)
class LucidObjective:
    """Lucid's ``dot * cos^power`` at the centre, on the whitened direction ``S v`` when a
    whitening matrix ``S`` (C, C) is given (:func:`direction_cossim`)."""

    power: float = 4.0
    whiten: np.ndarray | None = field(default=None, repr=False, compare=False)

    def build(self, layer: str, vecs: torch.Tensor) -> Objective:
        s = self.whiten
        wt = None if s is None else torch.tensor(np.asarray(s, np.float32), device=vecs.device)
        return direction_cossim(layer, vecs, power=self.power, whiten=wt)

    def identity(self) -> dict[str, Any]:
        return {"objective": "lucid", "power": self.power, "whiten": array_digest(self.whiten)}


@dataclass(frozen=True)
class CosineObjective:
    """The cosine to the direction at the centre, ``fill`` of the mean over every position
    weighed in (:func:`direction_cosine`); never whitened."""

    fill: float = 0.0

    def build(self, layer: str, vecs: torch.Tensor) -> Objective:
        return direction_cosine(layer, vecs, fill=self.fill)

    def identity(self) -> dict[str, Any]:
        return {"objective": "cosine", "fill": self.fill}


IconObjective = LucidObjective | CosineObjective


# ------------------------------------------------------------------------------ optimizer, alpha
@dataclass(frozen=True)
class Optimizer:
    """``adam`` or ``nadam`` at learning rate ``lr``."""

    name: str = "adam"
    lr: float = 0.05

    def __post_init__(self) -> None:
        choice("optimizer", self.name, OPTIMIZERS)
        in_range("lr", self.lr, 1e-6, 10.0)

    def make(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        cls = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}[self.name]
        return cls(params, lr=self.lr)


@dataclass(frozen=True)
class Alpha:
    """An icon's transparency. ``none``: opaque RGB. ``channel``: a fourth, optimized channel,
    collapsed over a fresh random background every step (Lucid). ``saliency``: opaque while it
    is optimized, then the summed input-gradient magnitude clipped at its ``percentile`` (MACO)."""

    kind: str = "none"
    percentile: float = 80.0

    def __post_init__(self) -> None:
        choice("alpha", self.kind, ALPHAS)

    @property
    def channels(self) -> int:
        return 4 if self.kind == "channel" else 3

    @property
    def saliency(self) -> bool:
        return self.kind == "saliency"

    def first(self) -> list[Transform]:
        """Transforms that come before the recipe's own."""
        return [collapse_alpha()] if self.kind == "channel" else []

    def finish(self, img: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """The optimized images (B, C, H, W) with their alpha as a fourth channel, if any."""
        if self.saliency and seen is not None:
            a = saliency_alpha(seen, self.percentile)[:, None].to(img.dtype)
            return torch.cat([img, a], 1)
        return img

    def identity(self) -> dict[str, Any]:
        return {"alpha": self.kind, **({"percentile": self.percentile} if self.saliency else {})}


def saliency_alpha(seen: torch.Tensor, percentile: float = 80.0) -> torch.Tensor:
    """(B, H, W) summed input-gradient magnitudes -> alpha in [0, 1]: each icon's map clipped
    at its own ``percentile`` and divided by it (MACO's transparency)."""
    flat = seen.flatten(1).float()
    top = torch.quantile(flat, percentile / 100.0, dim=1).clamp_min(1e-12)
    return (flat / top[:, None]).clamp(0.0, 1.0).reshape(seen.shape)


@dataclass(frozen=True)
class TransformChain:
    """The transforms every step applies: Lucid's atlas list (``atlas``) or none, then noise of
    scale ``noise`` when above 0. Built for the size icons are optimized at."""

    kind: str = "atlas"
    noise: float = 0.0

    def build(self, px: int) -> list[Transform]:
        out = icon_transforms(px) if self.kind == "atlas" else []
        return [*out, noise(self.noise)] if self.noise > 0 else out

    def identity(self) -> dict[str, Any]:
        return {"transforms": self.kind, "noise": self.noise}


# ------------------------------------------------------------------------------ the recipe
def _param_identity(p: Parameterization) -> dict[str, Any]:
    if isinstance(p, PhaseOnly):
        return {"param": "maco", "sd": p.sd, "spectrum": array_digest(p.magnitude)}
    if isinstance(p, Pixels):
        return {"param": "pixel", "sd": p.sd}
    if isinstance(p, Fourier):
        return {"param": "fft", "sd": p.sd, "decay_power": p.decay_power}
    raise TypeError(f"unknown parameterization {type(p).__name__}")


@dataclass(frozen=True)
class IconRecipe:
    """Everything that makes an icon, as values: its size, steps and best-of-N attempts, the
    parameterization, the transform chain, the objective, the optimizer, the alpha, and bf16
    autocast on CUDA (``amp``)."""

    px: int
    steps: int
    attempts: int
    param: Parameterization
    transforms: TransformChain
    objective: IconObjective
    optimizer: Optimizer
    alpha: Alpha
    amp: bool = True

    @classmethod
    def from_settings(
        cls,
        s: IconSettings,
        *,
        spectrum: np.ndarray | None = None,
        whiten: np.ndarray | None = None,
    ) -> IconRecipe:
        """The recipe ``s`` names. ``spectrum``: the run's amplitude spectrum (C, H, W // 2 + 1),
        needed by ``param=maco``; ``whiten``: the layer's whitening matrix (C, C), used by
        Lucid's objective when ``s.whiten``."""
        return cls(
            px=s.icon_px,
            steps=s.steps,
            attempts=s.attempts,
            param=_parameterization(s, spectrum),
            transforms=TransformChain("atlas" if s.transforms else "none", s.noise),
            objective=(
                CosineObjective(s.fill)
                if s.objective == "cosine"
                else LucidObjective(s.cos_power, whiten if s.whiten else None)
            ),
            optimizer=Optimizer(s.optimizer, s.lr),
            alpha=Alpha(s.alpha, s.saliency_percentile),
            amp=s.amp,
        )

    def identity(self) -> dict[str, Any]:
        """Exactly what changes an icon (arrays by digest): the stage's fingerprint covers the
        settings it comes from, the icon cache key covers this."""
        return {
            "px": self.px,
            "steps": self.steps,
            "attempts": self.attempts,
            **_param_identity(self.param),
            **self.transforms.identity(),
            **self.objective.identity(),
            "optimizer": self.optimizer.name,
            "lr": self.optimizer.lr,
            **self.alpha.identity(),
            "amp": self.amp,
        }


def _parameterization(s: IconSettings, spectrum: np.ndarray | None) -> Parameterization:
    if s.param == "maco":
        if spectrum is None:
            raise ConfigError(
                s.key("param"),
                "maco",
                fix="MACO needs the run's amplitude spectrum (measured by the extract stage): "
                "re-extract, or use param=fft.",
            )
        return PhaseOnly(np.asarray(spectrum, np.float32))
    if s.param == "pixel":
        return Pixels(s.sd)
    return Fourier(s.sd, s.decay_power)
