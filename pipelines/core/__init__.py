"""Plumbing the stages and commands share: every Ray call (``ray_ops``), the typed
configuration's building blocks (``schema``), what a stage is (``stage``), views as values
(``views``) and small helpers (``common``). Imports neither stages nor commands."""
