"""The stages: one module per stage, each ending with its declaration (``STAGE = Stage(...)``).

Adding a stage is adding a module here: the registry below finds every module of this package
whose name does not start with ``_`` and takes its ``STAGE``. The run order, fingerprints, the
config tree (``pipelines/settings.py``), ``stages=[...]`` checks, ``atlas verify`` and the table
in docs/architecture.md (``atlas stages``) all come from these declarations.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipelines.core.stage import Registry, Stage


def _discover() -> Registry:
    found: list[Stage] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        stage = getattr(module, "STAGE", None)
        if not isinstance(stage, Stage):
            raise TypeError(f"{module.__name__} is a stage module without a STAGE declaration")
        found.append(stage)
    return Registry(found)


REGISTRY = _discover()
