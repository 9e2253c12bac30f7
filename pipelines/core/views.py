"""Views: which samples an atlas shows and how they are laid out, as typed values.

The atlas of every activation is the run's main view (slug ``""``). A class activation atlas of
class c (``classes.atlases``) and a two-class comparison of a and b (``classes.pairs``) are views
too (DESIGN.md section 8): a selection of rows (:class:`ViewLayout`) plus a way to lay them out,
with their own grid (``classes.grid`` cells a side, at least ``classes.min_count`` each, and both
classes' heat). The runner expands the settings into views (:func:`plan_views`) and runs every
per-view stage in each; a view writes under ``views/<slug>/`` of the run's store and of the run
directory, and reads the run's one extraction. Nothing here is a user-visible key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from atlas_core.config import Group
from atlas_core.models.card import ModelCard
from pipelines.core.settings import ClassesConf, Settings, setting


@dataclass(frozen=True)
class ViewLayout(Group):
    """The layout of a class view, in place of the run's ``reduce`` settings.

    rows: ``class`` (the samples whose top attribution class is ``classes[0]``, plus the
    ``top_n`` with the largest positive attribution to it) or ``compare`` (the samples either
    class keeps; x = attribution difference, y = a 1-D layout).
    """

    rows: str
    classes: tuple[int, ...]
    top_n: int
    method: str
    n_neighbors: int
    min_dist: float
    metric: str


@dataclass(frozen=True)
class View:
    """One view of a run. ``kind``: atlas (every sample), class, compare. ``groups``: the
    settings groups whose value differs from the run's (``grid``; ``reduce`` -> a
    :class:`ViewLayout`)."""

    slug: str = ""
    kind: str = "atlas"
    classes: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    title: str = ""
    groups: tuple[tuple[str, Group], ...] = ()

    @property
    def is_main(self) -> bool:
        return not self.slug

    def group(self, s: Settings, name: str) -> Group:
        """The view's value of settings group ``name``."""
        own = dict(self.groups)
        return own[name] if name in own else s.group(name)

    @property
    def layout(self) -> ViewLayout | None:
        value = dict(self.groups).get("reduce")
        return value if isinstance(value, ViewLayout) else None

    def identity(self) -> dict[str, Any]:
        """What every per-view fingerprint covers besides the settings."""
        return {
            "view": self.slug,
            "kind": self.kind,
            "classes": list(self.classes),
            "names": list(self.names),
        }


MAIN = View(title="")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "class"


def _class_view(s: Settings, kind: str, cs: tuple[int, ...], names: tuple[str, ...]) -> View:
    c: ClassesConf = s.classes
    if kind == "class":
        slug, title = f"atlas-{cs[0]}-{_slug(names[0])}", f"class activation atlas: {names[0]}"
    else:
        slug = f"compare-{cs[0]}-{cs[1]}-{_slug(names[0])}-vs-{_slug(names[1])}"[:80]
        title = f"{names[0]} vs {names[1]}"
    layout = ViewLayout(kind, cs, c.top_n, c.method, c.n_neighbors, c.min_dist, c.metric)
    grid = replace(
        s.grid, sizes=(c.grid,), min_count=c.min_count, heatmap=tuple(str(x) for x in cs)
    )
    return View(slug, kind, cs, names, title, (("reduce", layout), ("grid", grid)))


def plan_views(s: Settings, card: ModelCard) -> list[View]:
    """Every view the settings ask for, the main one first (unless ``classes.only``), their
    classes resolved by the model's names."""
    class_index, class_name = card.class_index, card.class_name
    views = [] if s.classes.only else [replace(MAIN, title=f"{s.model.name} {s.layer}")]
    with setting("classes", {"class": "atlases"}):
        for name in s.classes.atlases:
            c = class_index(name)
            views.append(_class_view(s, "class", (c,), (class_name(c),)))
    with setting("classes", {"class": "pairs"}):
        for a_name, b_name in s.classes.pairs:
            a, b = class_index(a_name), class_index(b_name)
            views.append(_class_view(s, "compare", (a, b), (class_name(a), class_name(b))))
    return views
