"""Icons on demand: an icon for any direction (a selection's mean, a neighbourhood, a located
image's position), made with the run's own recipe and cached by its direction and recipe.

The recipe is the run's render settings, as its manifest recorded them, with the run's own
whitening matrix (Lucid's objective) or amplitude spectrum (MACO's parameterization), exactly
as the render stage builds it; the icon's random streams come from the run's seed and the
direction's bytes, so the same question gives the same icon. The icon cache is the run's own
(``<run_dir>/icon-cache``, or the one its settings named); a cache that cannot be written (a
read-only object store) only costs a re-render.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas_core.errors import ConfigError
from atlas_core.featvis.recipe import IconRecipe, IconSettings
from atlas_core.featvis.render import IconRenderer, whitening_matrix
from atlas_core.featvis.streams import icon_seed
from atlas_core.models import load_model
from atlas_core.store import CachedGroup, group_key

if TYPE_CHECKING:
    from atlas_core.explore.opened import OpenRun

log = logging.getLogger(__name__)


def icon_settings(config: dict[str, Any]) -> IconSettings:
    """The icon settings a run's recorded ``render`` config holds (other keys ignored)."""
    names = {f.name for f in dataclasses.fields(IconSettings)}
    return IconSettings(**{k: v for k, v in (config or {}).items() if k in names})


class Painter:
    """Set up once per atlas (the model, the renderer with the run's recipe, the cache); each
    call renders, or finds, the icon of one direction."""

    def __init__(self, atlas: OpenRun) -> None:
        if atlas.card is None:
            raise ConfigError("run", atlas.loc.root, fix="this run records no model card.")
        config = atlas.manifest.get("config") or {}
        render = config.get("render") or {}
        s = icon_settings(render)
        store = atlas.store
        whiten = None
        if s.objective == "lucid" and s.whiten:
            whiten = whitening_matrix(store.extraction(atlas.layer).second_moment())
        spectrum = store.images.spectrum() if s.param == "maco" else None
        self.recipe = IconRecipe.from_settings(s, spectrum=spectrum, whiten=whiten)
        self.renderer = IconRenderer(load_model(atlas.card.spec), atlas.layer, self.recipe)
        self.atlas = atlas
        self.seed = int(config.get("seed", 0))
        self.cache = atlas.loc.icon_cache(render.get("cache_dir"))
        self.context = {
            "model": dataclasses.asdict(atlas.card.spec),
            "layer": atlas.layer,
            "recipe": self.recipe.identity(),
        }

    def __call__(self, direction: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """The icon (px, px, 3) uint8 of ``direction`` (C,), as drawn on white."""
        d = np.ascontiguousarray(direction, np.float32)[None]
        digest = hashlib.sha256(d.tobytes()).hexdigest()[:16]
        s = icon_seed(self.seed + seed, self.atlas.layer, "direction", digest)
        key = group_key(d, [s], self.context)
        found = self.cache.get_many([key]).get(key)
        if found is not None:
            return _drawn(found.icons[0], found.alpha)
        out = self.renderer.render(d, seeds=[s])
        try:
            self.cache.put_many({key: CachedGroup(*out)})
        except OSError as exc:  # advisory: a cache that cannot be written costs a re-render
            log.warning("icon cache not written (%s)", exc)
        return _drawn(out.icons[0], out.alpha)


def _drawn(icon: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return icon
    w = alpha[0][..., None].astype(np.float32) / 255.0
    return np.round(icon * w + 255 * (1.0 - w)).astype(np.uint8)
