"""Pipelines: orchestration only, in three kinds of module.

- ``stages/``: one module per stage, each ending with its declaration (the registry is built
  from them);
- ``commands/``: what a user runs (``atlas`` and its Hydra entry point, the runner, sweeps and
  schedules, verify, serve, the index of runs);
- ``core/``: plumbing (every Ray call, the configuration's building blocks, what a stage and a
  view are, small helpers).

``settings.py`` assembles the typed configuration from the stage registry.
"""
