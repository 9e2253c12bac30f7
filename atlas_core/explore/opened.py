"""A finished run as opened: where it is, its store (read-only), its layer, its model's card
and manifest. The one value :class:`~atlas_core.explore.Atlas` and its helpers (locate, icons on
demand) share, so none of them needs the others."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atlas_core.models.card import ModelCard
from atlas_core.store import RunLocation, RunStore


@dataclass(frozen=True)
class OpenRun:
    """loc: the run (and view) opened; store: its store, read-only, scoped to the view; layer:
    the atlas's layer; card: the model's card (None for a store that predates it); manifest:
    the run's manifest (empty when it has none yet)."""

    loc: RunLocation
    store: RunStore
    layer: str
    card: ModelCard | None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> list[int]:
        """The grid sizes of this view, ascending (each a zoom level)."""
        return self.store.level_sizes(self.layer)

    def class_name(self, c: int) -> str:
        if c < 0:
            return ""
        return self.card.class_name(int(c)) if self.card else f"class {c}"
