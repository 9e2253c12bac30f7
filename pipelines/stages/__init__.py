"""The stages, in one written-out list: one module per stage, each ending with its declaration
(``STAGE = Stage(...)``).

Adding a stage is adding its module here, its settings group to
:class:`pipelines.core.settings.Settings` and its resources to
:class:`pipelines.core.settings.ClusterConf` (``tests/pipelines/test_config.py`` checks the three
agree). The run order, fingerprints, ``stages=[...]`` checks, ``atlas verify`` and the table in
docs/architecture.md (``atlas stages``) all come from these declarations.
"""

from __future__ import annotations

from pipelines.core.stage import Registry
from pipelines.stages import (
    compose,
    exemplars,
    extract,
    grid,
    neighbours,
    patches,
    plausibility,
    reduce,
    render,
)

REGISTRY = Registry(
    [
        extract.STAGE,
        reduce.STAGE,
        grid.STAGE,
        render.STAGE,
        exemplars.STAGE,
        plausibility.STAGE,
        compose.STAGE,
        patches.STAGE,
        neighbours.STAGE,
    ]
)
