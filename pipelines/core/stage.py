"""What a stage is: one declaration (:class:`Stage`) per stage module, and the value a stage's
runner receives (:class:`StageRun`).

A declaration names the stage, the stages it needs, its settings group (a frozen dataclass whose
fields become ``<group>.*`` in the config tree), the other groups its output depends on, its
resources under ``cluster``, its runner, and the outputs ``atlas verify`` checks. Everything else
is derived from the declarations (``pipelines/stages/__init__.py``): the run order, fingerprints
(a stage's own settings and those of every stage it needs, transitively), ``stages=[...]``
checks, the config tree, ``atlas verify`` and the table in ``docs/architecture.md``.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from atlas_core.config import Group, choice
from atlas_core.models.card import ModelCard
from atlas_core.store.location import Mode, RunLocation
from pipelines.core.settings import Resources, Settings
from pipelines.core.views import View

if TYPE_CHECKING:
    from atlas_core.store import RunStore

G = TypeVar("G", bound=Group)
VIEW_KINDS = ("atlas", "class", "compare")


@dataclass
class StageResult:
    """What a stage reports to the manifest: status, counts and any details."""

    status: str = "done"
    counts: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageRun:
    """One stage in one view of one run: the settings, the view, the stage's fingerprint and the
    model's card. This is what a runner receives (a plain, picklable value); it never holds a
    config object."""

    stage: str
    s: Settings
    view: View
    fp: str
    card: ModelCard

    @property
    def loc(self) -> RunLocation:
        """The run's location, seen from this view (its store group, markers and folder)."""
        return self.s.location.in_view(self.view.slug)

    def conf(self, cls: type[G]) -> G:
        """The view's value of the settings group ``cls`` (a view may set its own grid)."""
        value = self.view.group(self.s, cls.GROUP)
        if not isinstance(value, cls):
            raise TypeError(f"{cls.GROUP} is a {type(value).__name__} in view {self.view.slug!r}")
        return value

    def resources(self, name: str | None = None) -> Resources:
        """``cluster.<name>`` (default: the entry named like the stage)."""
        return self.s.cluster.of(name or self.stage)

    def device(self, name: str | None = None) -> str:
        """The device the tasks of ``cluster.<name>`` ask for: as set, except that on a cluster
        a stage given GPUs with ``device: auto`` asks for CUDA, so a node where CUDA does not
        work fails loudly instead of computing on its CPU (``auto`` stays for local runs)."""
        res = self.resources(name)
        if res.device == "auto" and res.num_gpus > 0 and self.s.cluster.address:
            return "cuda"
        return res.device

    def open_store(self, mode: Mode = "r") -> RunStore:
        """The run store, scoped to this view (its layouts, levels and exemplars)."""
        return self.loc.open_store(mode)


Runner = Callable[[StageRun], StageResult]
Verifier = Callable[["StageRun", "RunStore"], list[str]]


@dataclass(frozen=True)
class Stage:
    """One stage, declared once, in its own module (``STAGE = Stage(...)``).

    name: the stage's name (``stages=[...]``, markers, the manifest).
    run: the runner, ``run(StageRun) -> StageResult``.
    needs: the stages whose outputs it reads; its fingerprint covers theirs.
    settings: its settings group (``<settings.GROUP>.*`` in the config tree), or None.
    inputs: other groups its output depends on (the extraction's ``model`` and ``data``).
    resources: its entries under ``cluster`` with their defaults.
    outputs: what ``atlas verify`` checks once the stage is marked done (a list of problems).
    scope: ``run`` (once per run: the extraction) or ``view`` (in every view it applies to).
    kinds: the view kinds it runs in (atlas, class, compare).
    extra: more fingerprint input computed from the run (the reduce stage's aligned runs).
    reads, writes, ray: one line each for the table in docs/architecture.md.
    """

    name: str
    run: Runner
    needs: tuple[str, ...] = ()
    settings: type[Group] | None = None
    inputs: tuple[str, ...] = ()
    resources: Mapping[str, Resources] = field(default_factory=dict)
    outputs: Verifier | None = None
    scope: str = "view"
    kinds: tuple[str, ...] = VIEW_KINDS
    extra: Callable[[StageRun], Any] | None = None
    reads: str = ""
    writes: str = ""
    ray: str = ""

    def __post_init__(self) -> None:
        if self.scope not in ("run", "view"):
            raise ValueError(f"stage {self.name}: scope must be run or view, not {self.scope!r}")
        unknown = set(self.kinds) - set(VIEW_KINDS)
        if unknown:
            raise ValueError(f"stage {self.name}: unknown view kinds {sorted(unknown)}")

    @property
    def group(self) -> str | None:
        return self.settings.GROUP if self.settings is not None else None

    def applies_to(self, view: View) -> bool:
        return self.scope == "view" and view.kind in self.kinds


class Registry:
    """Every declared stage, in run order: a topological order of ``needs`` (ties by name)."""

    def __init__(self, stages: Iterable[Stage]) -> None:
        by_name: dict[str, Stage] = {}
        for st in stages:
            if st.name in by_name:
                raise ValueError(f"stage {st.name} is declared twice")
            by_name[st.name] = st
        for st in by_name.values():
            missing = [n for n in st.needs if n not in by_name]
            if missing:
                raise ValueError(f"stage {st.name} needs undeclared stages {missing}")
        sorter = graphlib.TopologicalSorter({n: set(s.needs) for n, s in by_name.items()})
        sorter.prepare()
        order: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready())
            order += ready
            sorter.done(*ready)
        self.stages = tuple(by_name[n] for n in order)
        self.by_name = by_name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def __getitem__(self, name: str) -> Stage:
        return self.by_name[name]

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def upstream(self, name: str) -> set[str]:
        """Every stage ``name`` needs, transitively."""
        out: set[str] = set()
        todo = list(self.by_name[name].needs)
        while todo:
            n = todo.pop()
            if n not in out:
                out.add(n)
                todo += self.by_name[n].needs
        return out

    def groups(self) -> dict[str, type[Group]]:
        """Settings group name -> its schema, of every stage that declares one."""
        return {s.group: s.settings for s in self.stages if s.group and s.settings}

    def resources(self) -> dict[str, Resources]:
        """``cluster`` entry -> its default, of every stage."""
        out: dict[str, Resources] = {}
        for st in self.stages:
            for key, default in st.resources.items():
                if key in out:
                    raise ValueError(f"cluster.{key} is declared by two stages")
                out[key] = default
        return out

    def check(self, s: Settings) -> Settings:
        """``stages=[...]`` names declared stages (empty: every stage); returns the settings
        with the list filled in."""
        for name in s.stages:
            choice("stages", name, self.names)
        return s if s.stages else s.with_(stages=self.names)
